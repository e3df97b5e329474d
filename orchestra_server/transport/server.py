"""The gRPC server factory and the serving loop with graceful shutdown."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from orchestra.v1 import auth_service_pb2, diagnostics_service_pb2, orchestra_service_pb2
from orchestra.v1 import auth_service_pb2_grpc as auth_grpc
from orchestra.v1 import diagnostics_service_pb2_grpc as diag_grpc
from orchestra.v1 import orchestra_service_pb2_grpc as pb_grpc

from orchestra_server.bootstrap import Application
from orchestra_server.observability.interceptor import ObservabilityInterceptor, recording_caller
from orchestra_server.transport.decoding import RequestDecodingInterceptor
from orchestra_server.transport.guard import GuardInterceptor
from orchestra_server.transport.message_sizes import MAX_REQUEST_MESSAGE_BYTES, MAX_RESPONSE_MESSAGE_BYTES
from orchestra_server.transport.servicers import AuthServicer, DiagnosticsServicer, OrchestraServicer

SERVICE_NAMES = (
    orchestra_service_pb2.DESCRIPTOR.services_by_name["OrchestraService"].full_name,
    auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name,
    diagnostics_service_pb2.DESCRIPTOR.services_by_name["DiagnosticsService"].full_name,
)
_log = logging.getLogger("orchestra.server")


@dataclass(frozen=True)
class ServerOptions:
    # Threads that run calls; the database pool is sized to match.
    max_workers: int = 16
    # Calls admitted at once before new ones are refused with RESOURCE_EXHAUSTED (load shedding).
    max_concurrent_rpcs: int = 256
    # Sized from the published limits (see message_sizes): every valid request and answer fits.
    max_receive_bytes: int = MAX_REQUEST_MESSAGE_BYTES
    max_send_bytes: int = MAX_RESPONSE_MESSAGE_BYTES
    grace_seconds: float = 10.0


def create_server(
    address: str, app: Application, options: ServerOptions | None = None
) -> tuple[grpc.Server, int, health.HealthServicer]:
    """Builds a server bound to `address` (port 0 picks a free port); returns it unstarted with its port."""
    options = options or ServerOptions()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=options.max_workers, thread_name_prefix="rpc"),
        # Observability first: it must also see the calls the guard refuses. Decoding last:
        # the decoder it wraps is the one every outer handler passes on.
        interceptors=[
            ObservabilityInterceptor(app.metrics),
            GuardInterceptor(recording_caller(app.authenticate), app.clock),
            RequestDecodingInterceptor(),
        ],
        maximum_concurrent_rpcs=options.max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", options.max_receive_bytes),
            ("grpc.max_send_message_length", options.max_send_bytes),
            ("grpc.so_reuseport", 1),
        ],
    )
    pb_grpc.add_OrchestraServiceServicer_to_server(OrchestraServicer(app.processes), server)
    auth_grpc.add_AuthServiceServicer_to_server(
        AuthServicer(app.token_endpoint, app.jwks_json, app.clock), server
    )
    diag_grpc.add_DiagnosticsServiceServicer_to_server(DiagnosticsServicer(), server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in (*SERVICE_NAMES, ""):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind {address}")
    return server, port, health_servicer


HEALTH_CHECK_SECONDS = 2.0


def _watch_health(app: Application, health_servicer: health.HealthServicer, stop: threading.Event) -> None:
    """Reports NOT_SERVING while the database or the scheduler is down, so the edge routes elsewhere."""
    serving = True
    while not stop.wait(HEALTH_CHECK_SECONDS):
        problems = app.health_problems()
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
    app: Application,
    options: ServerOptions | None = None,
    *,
    ready: threading.Event | None = None,
) -> None:
    """Serves until SIGTERM or SIGINT, then stops taking calls and lets running ones finish."""
    options = options or ServerOptions()
    server, port, health_servicer = create_server(address, app, options)
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        _log.info("stopping on signal %s", signum)
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    server.start()
    _log.info("serving gRPC on port %d", port)
    monitor = threading.Thread(
        target=_watch_health, args=(app, health_servicer, stop), name="health-monitor", daemon=True
    )
    monitor.start()
    if ready is not None:
        ready.set()
    try:
        while not stop.wait(1.0):
            pass
        # Tell health checkers first so the edge stops routing here, then drain.
        health_servicer.enter_graceful_shutdown()
        server.stop(options.grace_seconds).wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        app.close()
