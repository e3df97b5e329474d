"""The REST edge: Envoy transcodes the public HTTP/JSON contract to the gRPC service.

``config`` renders the bootstrap from ``envoy/``; ``proxy`` runs and checks it.
"""

from orchestra_server.edge.config import (
    EdgeSettings,
    TenantRateLimit,
    Upstream,
    render_envoy_config,
    render_tenant_limits,
)
from orchestra_server.edge.proxy import EdgeConfigError, EdgeError, EnvoyProcess, find_envoy, validate_config

__all__ = [
    "EdgeConfigError",
    "EdgeError",
    "EdgeSettings",
    "EnvoyProcess",
    "TenantRateLimit",
    "Upstream",
    "find_envoy",
    "render_envoy_config",
    "render_tenant_limits",
    "validate_config",
]
