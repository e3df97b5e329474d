"""The outermost server interceptor: request context for logs, RPC metrics and the access log."""

from __future__ import annotations

import logging
import os
import re
import time
from datetime import datetime
from typing import Any

import grpc

from orchestra_server.observability.logs import RequestInfo, bind_request, current_request, unbind_request
from orchestra_server.observability.metrics import Metrics
from orchestra_server.service.processes import Caller
from orchestra_server.transport.guard import Authenticates
from orchestra_server.transport.interception import MethodWrapper

REQUEST_ID_METADATA = "x-request-id"
# Load balancer probes would otherwise drown the access log; they still count in the metrics.
QUIET_SERVICE_PREFIX = "/grpc.health.v1.Health/"
# The edge's ids are UUIDs; anything else a client sends is kept only if it cannot garble a log line.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

access_log = logging.getLogger("orchestra.access")


def request_id_from(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_METADATA:
            text = value if isinstance(value, str) else value.decode("latin-1")
            if _REQUEST_ID.fullmatch(text):
                return text
            break
    return os.urandom(16).hex()


def status_name(code: object) -> str:
    if code is None:
        return "OK"
    name = getattr(code, "name", None)
    return name if isinstance(name, str) else str(code)


class ObservabilityInterceptor(MethodWrapper):
    """Must come before the guard, so that calls it refuses are counted and logged too."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._metrics = metrics

    def wrap(self, handler: Any, method: str) -> Any:
        if handler.unary_unary is None:
            # Streams (health Watch, reflection) are long-lived; a duration per call would mislead.
            return handler
        rpc = method.rsplit("/", 1)[-1]
        level = logging.DEBUG if method.startswith(QUIET_SERVICE_PREFIX) else logging.INFO
        inner = handler.unary_unary
        observe = self._metrics.observe_rpc

        def observed(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            info = RequestInfo(request_id_from(context), rpc)
            token = bind_request(info)
            failed = False
            try:
                return inner(request, context)
            except BaseException:
                failed = True
                raise
            finally:
                seconds = time.perf_counter() - started
                code = context.code()  # type: ignore[attr-defined]  # the stubs predate code()
                # An exception that escapes without an abort becomes UNKNOWN once it leaves grpc's handler.
                status = "UNKNOWN" if failed and code is None else status_name(code)
                observe(rpc, status, seconds)
                if access_log.isEnabledFor(level):
                    access_log.handle(access_record(level, rpc, status, seconds))
                unbind_request(token)

        return grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def access_record(level: int, rpc: str, status: str, seconds: float) -> logging.LogRecord:
    """The access line of one call, built as `Logger.log` would build it but without looking
    up the calling frame, the part of a line that costs most and that an access line never shows.

    Handed to `Logger.handle`, it meets the same filters and handlers as any other line.
    """
    milliseconds = seconds * 1000
    record = logging.LogRecord(
        access_log.name, level, __file__, 0, "%s %s %.2f ms", (rpc, status, milliseconds), None, "observed"
    )
    record.status = status
    record.duration_ms = round(milliseconds, 3)
    return record


def recording_caller(authenticate: Authenticates) -> Authenticates:
    """Wraps the guard's authenticate so the call's log context learns its tenant and consumer.

    The guard unbinds its caller before the call returns, so the access line written after it
    could not read it there; the caller is recorded as soon as it is known instead.
    """

    def authenticated(authorization: str | None, tenant_hint: str | None, now: datetime) -> Caller:
        caller = authenticate(authorization, tenant_hint, now)
        info = current_request()
        if info is not None:
            info.tenant = caller.tenant_id
            info.consumer = caller.actor
        return caller

    return authenticated
