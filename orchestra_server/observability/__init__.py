"""Operational visibility: structured logs, Prometheus metrics and the RPC interceptor feeding both."""

from orchestra_server.observability.interceptor import ObservabilityInterceptor
from orchestra_server.observability.logs import (
    JsonFormatter,
    RequestInfo,
    TextFormatter,
    configure_logging,
    current_request,
)
from orchestra_server.observability.metrics import Metrics, start_metrics_server

__all__ = [
    "JsonFormatter",
    "Metrics",
    "ObservabilityInterceptor",
    "RequestInfo",
    "TextFormatter",
    "configure_logging",
    "current_request",
    "start_metrics_server",
]
