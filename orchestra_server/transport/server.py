"""The gRPC server factory and the serving loop with graceful shutdown."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from orchestra.v1 import (
    auth_service_pb2,
    diagnostics_service_pb2,
    operations_service_pb2,
    orchestra_service_pb2,
)
from orchestra.v1 import auth_service_pb2_grpc as auth_grpc
from orchestra.v1 import diagnostics_service_pb2_grpc as diag_grpc
from orchestra.v1 import operations_service_pb2_grpc as ops_grpc
from orchestra.v1 import orchestra_service_pb2_grpc as pb_grpc

from orchestra_server.identity.token_endpoint import TokenEndpoint
from orchestra_server.observability.interceptor import ObservabilityInterceptor, recording_caller
from orchestra_server.observability.metrics import Metrics
from orchestra_server.service.operations import OperationsService
from orchestra_server.service.processes import ProcessService
from orchestra_server.transport.decoding import RequestDecodingInterceptor
from orchestra_server.transport.guard import Authenticates, GuardInterceptor
from orchestra_server.transport.interception import WrapperChain
from orchestra_server.transport.operations import OperationsServicer
from orchestra_server.transport.reflection import enable_reflection
from orchestra_server.transport.servicers import AuthServicer, DiagnosticsServicer, OrchestraServicer
from orchestra_server.wire.message_sizes import MAX_REQUEST_MESSAGE_BYTES, MAX_RESPONSE_MESSAGE_BYTES

SERVICE_NAMES = (
    orchestra_service_pb2.DESCRIPTOR.services_by_name["OrchestraService"].full_name,
    auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name,
    diagnostics_service_pb2.DESCRIPTOR.services_by_name["DiagnosticsService"].full_name,
    operations_service_pb2.DESCRIPTOR.services_by_name["OperationsService"].full_name,
)
_log = logging.getLogger("orchestra.server")


@dataclass(frozen=True)
class ServerDependencies:
    """What the server calls: the use cases and the few functions around them (bootstrap builds it)."""

    processes: ProcessService
    operations: OperationsService
    token_endpoint: TokenEndpoint
    # The published JSON Web Key Set at a moment, as the JWKS endpoint answers it.
    key_set: Callable[[datetime], bytes]
    authenticate: Authenticates
    metrics: Metrics
    clock: Callable[[], datetime]
    # What keeps this process from serving well; empty when it serves.
    health_problems: Callable[[], list[str]]


@dataclass(frozen=True)
class ServerOptions:
    # Threads that run calls; admitted calls beyond them wait in line. A worker takes this from
    # Settings.call_threads, and its database pool is at least as large, so a running call never
    # waits for a connection.
    max_workers: int = 16
    # Calls admitted at once before new ones are refused with RESOURCE_EXHAUSTED (load shedding).
    max_concurrent_rpcs: int = 256
    # Sized from the published limits (see message_sizes): every valid request and answer fits.
    max_receive_bytes: int = MAX_REQUEST_MESSAGE_BYTES
    max_send_bytes: int = MAX_RESPONSE_MESSAGE_BYTES
    grace_seconds: float = 10.0
    # SO_REUSEPORT: only `orchestra serve --workers N` shares one port between its own workers.
    # Otherwise a port another program holds fails the bind, and no program can join ours.
    share_port: bool = False


class CallThreads(futures.ThreadPoolExecutor):
    """The threads that run calls, knowing whether any call is running or waiting for one of them.

    The server hands a call to these threads as soon as it takes the call up; until then the call
    sits in the transport, where stopping the server would cancel it. `quiet_for` is how the
    serving loop tells that nothing is left there before it stops (see `_drain`).
    """

    def __init__(self, max_workers: int, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix="rpc")
        self._clock = clock
        self._lock = threading.Lock()
        self._unfinished = 0
        self._last_taken = clock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future[Any]:
        with self._lock:
            self._unfinished += 1
            self._last_taken = self._clock()
        try:
            future = super().submit(fn, *args, **kwargs)
        except BaseException:
            self._finished(None)
            raise
        future.add_done_callback(self._finished)
        return future

    def _finished(self, _future: futures.Future[Any] | None) -> None:
        with self._lock:
            self._unfinished -= 1

    def quiet_for(self) -> float:
        """Seconds since the last call was taken up, or 0 while any call is running or waiting."""
        with self._lock:
            return 0.0 if self._unfinished else max(0.0, self._clock() - self._last_taken)


@dataclass(frozen=True)
class BuiltServer:
    """A server not yet started, with what `serve` drives it by."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    calls: CallThreads


def create_server(
    address: str, deps: ServerDependencies, options: ServerOptions | None = None
) -> BuiltServer:
    """Builds a server bound to `address` (port 0 picks a free port); returns it unstarted with its port."""
    options = options or ServerOptions()
    calls = CallThreads(options.max_workers)
    server = grpc.server(
        calls,
        interceptors=[call_interceptor(deps)],
        maximum_concurrent_rpcs=options.max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", options.max_receive_bytes),
            ("grpc.max_send_message_length", options.max_send_bytes),
            ("grpc.so_reuseport", 1 if options.share_port else 0),
        ],
    )
    add_servicers(server, deps)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in (*SERVICE_NAMES, ""):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    enable_reflection((*SERVICE_NAMES, health.SERVICE_NAME), server)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:  # grpcio raises where older versions returned 0
        port = 0
    if port == 0:
        raise OSError(f"cannot bind {address}")
    return BuiltServer(server, port, health_servicer, calls)


def call_interceptor(deps: ServerDependencies) -> grpc.ServerInterceptor:  # type: ignore[type-arg]
    """The one interceptor of every call: three layers around each method's handler.

    Observability outermost: it must also see the calls the guard refuses. Decoding innermost:
    the decoder it wraps is the one every outer handler passes on.
    """
    return WrapperChain(
        ObservabilityInterceptor(deps.metrics),
        GuardInterceptor(recording_caller(deps.authenticate), deps.clock),
        RequestDecodingInterceptor(),
    )


def add_servicers(server: grpc.Server, deps: ServerDependencies) -> None:
    """Registers Orchestra's four services on `server` (health and reflection are the server's own)."""
    pb_grpc.add_OrchestraServiceServicer_to_server(OrchestraServicer(deps.processes), server)
    auth_grpc.add_AuthServiceServicer_to_server(
        AuthServicer(deps.token_endpoint, deps.key_set, deps.clock), server
    )
    diag_grpc.add_DiagnosticsServiceServicer_to_server(DiagnosticsServicer(), server)
    ops_grpc.add_OperationsServiceServicer_to_server(OperationsServicer(deps.operations), server)


HEALTH_CHECK_SECONDS = 2.0
HEALTH_RECHECK_SECONDS = 0.5
# Once the process is exiting, its call threads have this long to end: a call still hung after the
# grace period (its thread cannot be stopped, and Python waits for it at exit) does not keep the
# process alive.
EXIT_DEADLINE_SECONDS = 2.0
# After SIGTERM, a worker serves on until it has been idle this long (see `_drain`)...
DRAIN_QUIET_SECONDS = 0.1
DRAIN_POLL_SECONDS = 0.02
# ...but for no more than this share of the grace period: the rest is for the calls still running.
DRAIN_SHARE_OF_GRACE = 0.5


def _watch_health(
    health_problems: Callable[[], list[str]], health_servicer: health.HealthServicer, stop: threading.Event
) -> None:
    """Reports NOT_SERVING while the database or the scheduler is down, so the edge routes elsewhere."""
    serving = True
    # Checked more often while not serving, so the edge routes here again soon after a recovery.
    while not stop.wait(HEALTH_CHECK_SECONDS if serving else HEALTH_RECHECK_SECONDS):
        problems = health_problems()
        if serving == (not problems):
            continue
        serving = not problems
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        _log.warning("health: %s", "serving" if serving else ", ".join(problems))
        for name in (*SERVICE_NAMES, ""):
            health_servicer.set(name, status)


def serve(
    address: str,
    deps: ServerDependencies,
    options: ServerOptions | None = None,
    *,
    ready: threading.Event | None = None,
) -> None:
    """Serves until SIGTERM or SIGINT, then drains (see `_drain`), stops taking calls and lets
    running ones finish.

    Calls still running `options.grace_seconds` after the signal are cancelled; if one of them still holds
    its thread when the process exits, the process ends EXIT_DEADLINE_SECONDS later with status
    1 rather than being kept alive by it.
    """
    options = options or ServerOptions()
    built = create_server(address, deps, options)
    server, port, health_servicer = built.server, built.port, built.health
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        _log.info("stopping on signal %s", signum)
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    server.start()
    _log.info("serving gRPC on port %d", port)
    monitor = threading.Thread(
        target=_watch_health,
        args=(deps.health_problems, health_servicer, stop),
        name="health-monitor",
        daemon=True,
    )
    monitor.start()
    if ready is not None:
        ready.set()
    try:
        while not stop.wait(1.0):
            pass
        # Tell health checkers first so the edge stops routing here, then drain.
        health_servicer.enter_graceful_shutdown()
        stopping = time.monotonic()
        _drain(built.calls, options.grace_seconds * DRAIN_SHARE_OF_GRACE)
        server.stop(max(0.0, options.grace_seconds - (time.monotonic() - stopping))).wait()
        _bound_the_exit(EXIT_DEADLINE_SECONDS)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _drain(
    calls: CallThreads,
    longest: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Keeps serving until no call has been running, waiting or taken up for DRAIN_QUIET_SECONDS,
    or for `longest` seconds at most.

    Stopping the server cancels every call that reached the transport but was not yet taken up,
    and taking one up needs the interpreter, which busy call threads keep to themselves for long
    stretches: stopping at once would cut calls a client (or the edge) had already handed over.
    Calls that come meanwhile are served like any other; once the edge has seen the health status
    and routes elsewhere, none come.
    """
    deadline = clock() + longest
    while calls.quiet_for() < DRAIN_QUIET_SECONDS:
        left = deadline - clock()
        if left <= 0:
            return
        sleep(min(DRAIN_POLL_SECONDS, left))


def _bound_the_exit(seconds: float) -> None:
    """At interpreter exit, before Python joins the call threads, starts a clock: if the joins take
    longer than `seconds` (a call hung past the grace period), the process ends with status 1.

    `threading._register_atexit` is the hook concurrent.futures itself uses to join its threads;
    the `atexit` module's hooks run only after those joins, too late.
    """

    def end_later() -> None:
        time.sleep(seconds)
        _log.error("calls still running after the grace period; exiting without them")
        logging.shutdown()
        os._exit(1)

    def start_clock() -> None:
        threading.Thread(target=end_later, name="exit-deadline", daemon=True).start()

    register: Callable[[Callable[[], None]], None] = getattr(threading, "_register_atexit")  # noqa: B009
    register(start_clock)
