"""Renders the Envoy bootstrap of the REST edge.

API:

- ``EdgeSettings``: every parameter of the edge (listen address, upstream
  gRPC endpoints, descriptor set, issuer, audience, JWKS cache period, body
  limit, admin port, per-tenant rate limit).
- ``Upstream``: one gRPC worker process, ``host:port``.
- ``TenantRateLimit``: the per-tenant token bucket.
- ``render_envoy_config(settings) -> str``: the bootstrap YAML.
- ``edge_dir(override)``: where ``edge.yaml.tmpl`` and ``edge.lua`` are read
  from: ``override`` when given (``ORCHESTRA_EDGE_DIR``, read by the
  settings), else ``envoy/`` at the repository root.

Every value is written as a JSON scalar (valid YAML), so no setting can
inject configuration.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

from orchestra_server.wire import limits
from orchestra_server.wire.message_sizes import MAX_REST_RESPONSE_BYTES, protobuf_bound

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_NAME = "edge.yaml.tmpl"
LUA_NAME = "edge.lua"
DEFAULT_DESCRIPTOR = REPO_ROOT / "gen" / "orchestra.pb"
# The published request body limit. The service itself allows 1 MiB per
# variable, so a body carrying one maximal variable still fits.
DEFAULT_MAX_REQUEST_BYTES = limits.MAX_REQUEST_BYTES
# The edge refetches the JWKS at this period and not on an unknown key id, so
# the key ring publishes a new key longer than this before signing with it
# (twice: identity.keys.DEFAULT_PUBLISH_LEAD, 60 s).
DEFAULT_JWKS_CACHE_SECONDS = 30
TENANT_HEADER = "x-orchestra-tenant"
# The token and JWKS endpoints carry no tenant; together they get this many
# times one tenant's budget.
UNAUTHENTICATED_RATE_FACTOR = 10


@dataclass(frozen=True)
class Upstream:
    """One gRPC worker of the service."""

    host: str
    port: int


@dataclass(frozen=True)
class TenantRateLimit:
    """A token bucket per tenant: ``burst`` requests at once, refilled by
    ``requests_per_second`` every second. Counted per Envoy process."""

    requests_per_second: int = 200
    burst: int = 400


@dataclass(frozen=True)
class EdgeSettings:
    """Parameters of one edge process.

    ``rest_port`` must be a real port (not 0): the edge fetches the JWKS
    through its own listener. ``admin_port`` 0 lets the OS choose (see
    ``EnvoyProcess``); ``None`` runs without the admin interface.
    """

    rest_port: int
    upstreams: tuple[Upstream, ...]
    rest_host: str = "127.0.0.1"
    descriptor_path: Path = DEFAULT_DESCRIPTOR
    issuer: str = "orchestra"
    audience: str = "orchestra-api"
    jwks_cache_seconds: int = DEFAULT_JWKS_CACHE_SECONDS
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    admin_port: int | None = 0
    tenant_rate_limit: TenantRateLimit | None = field(default_factory=TenantRateLimit)
    # Where the template and the Lua source are read from (None: ``envoy/``).
    template_dir: Path | None = None

    def __post_init__(self) -> None:
        if not 0 < self.rest_port < 65536:
            raise ValueError("rest_port must be a port number between 1 and 65535")
        if not self.upstreams:
            raise ValueError("at least one upstream is needed")
        for upstream in self.upstreams:
            if not 0 < upstream.port < 65536:
                raise ValueError(f"bad upstream port {upstream.port}")
        if self.admin_port is not None and not 0 <= self.admin_port < 65536:
            raise ValueError("admin_port must be between 0 and 65535")
        if self.jwks_cache_seconds < 1:
            raise ValueError("jwks_cache_seconds must be at least 1")
        if self.max_request_bytes < 1:
            raise ValueError("max_request_bytes must be positive")
        if self.tenant_rate_limit is not None and (
            self.tenant_rate_limit.requests_per_second < 1 or self.tenant_rate_limit.burst < 1
        ):
            raise ValueError("rate limit values must be positive")


def edge_dir(override: Path | None = None) -> Path:
    """The directory holding the template and the Lua source."""
    return override if override is not None else REPO_ROOT / "envoy"


def _q(value: str | int) -> str:
    return json.dumps(value)


def connect_host(listen_host: str) -> str:
    """An address at which this host reaches a listener bound to ``listen_host``."""
    try:
        address = ipaddress.ip_address(listen_host)
    except ValueError:
        return listen_host
    # A wildcard listener is reachable on loopback.
    if address.is_unspecified:
        return "::1" if address.version == 6 else "127.0.0.1"
    return listen_host


def url_host(host: str) -> str:
    """``host`` as written in a URL (IPv6 in brackets)."""
    return f"[{host}]" if ":" in host else host


def _admin_block(admin_port: int | None) -> str:
    if admin_port is None:
        return ""
    return f"admin:\n  address:\n    socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }}\n"


def _endpoints(upstreams: tuple[Upstream, ...]) -> str:
    indent = " " * 8
    return "\n".join(
        f"{indent}- endpoint: {{ address: {{ socket_address: "
        f"{{ address: {_q(u.host)}, port_value: {u.port} }} }} }}"
        for u in upstreams
    )


def _rate_limit_filter(limit: TenantRateLimit | None) -> str:
    if limit is None:
        return ""
    indent = " " * 10
    lines = [
        "# One token bucket per tenant, keyed on the verified tenant header.",
        "# Requests without it (token and JWKS calls) share the filter-wide",
        "# bucket instead.",
        "- name: envoy.filters.http.local_ratelimit",
        "  typed_config:",
        '    "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit',
        "    stat_prefix: tenant_rate_limit",
        "    token_bucket:",
        f"      max_tokens: {limit.burst * UNAUTHENTICATED_RATE_FACTOR}",
        f"      tokens_per_fill: {limit.requests_per_second * UNAUTHENTICATED_RATE_FACTOR}",
        "      fill_interval: 1s",
        "    filter_enabled:",
        "      default_value: { numerator: 100, denominator: HUNDRED }",
        "      runtime_key: orchestra.tenant_rate_limit.enabled",
        "    filter_enforced:",
        "      default_value: { numerator: 100, denominator: HUNDRED }",
        "      runtime_key: orchestra.tenant_rate_limit.enforced",
        "    descriptors:",
        "    - entries: [{ key: tenant }]",
        "      token_bucket:",
        f"        max_tokens: {limit.burst}",
        f"        tokens_per_fill: {limit.requests_per_second}",
        "        fill_interval: 1s",
        "    max_dynamic_descriptors: 10000",
        "    rate_limits:",
        f"    - actions: [{{ request_headers: {{ header_name: {TENANT_HEADER}, descriptor_key: tenant }} }}]",
        "    local_rate_limit_per_downstream_connection: false",
    ]
    return "\n".join(indent + line for line in lines)


def render_envoy_config(settings: EdgeSettings) -> str:
    """The Envoy bootstrap YAML for ``settings``."""
    directory = edge_dir(settings.template_dir)
    template = Template((directory / TEMPLATE_NAME).read_text(encoding="utf-8"))
    lua_source = (directory / LUA_NAME).read_text(encoding="utf-8")
    self_host = connect_host(settings.rest_host)
    jwks_uri = f"http://{url_host(self_host)}:{settings.rest_port}/.well-known/jwks.json"
    return template.substitute(
        admin=_admin_block(settings.admin_port),
        rest_host=_q(settings.rest_host),
        rest_port=settings.rest_port,
        self_host=_q(self_host),
        upstream_endpoints=_endpoints(settings.upstreams),
        descriptor_path=_q(str(Path(settings.descriptor_path).resolve())),
        issuer=_q(settings.issuer),
        audience=_q(settings.audience),
        jwks_uri=_q(jwks_uri),
        jwks_cache_duration=_q(f"{settings.jwks_cache_seconds}s"),
        max_request_bytes=settings.max_request_bytes,
        # What the transcoder may hold: the protobuf an admitted body becomes, and the largest
        # answer in either form; both are several times the JSON they carry.
        max_request_message_bytes=protobuf_bound(settings.max_request_bytes),
        max_response_bytes=MAX_REST_RESPONSE_BYTES,
        lua_source=_q(lua_source),
        tenant_rate_limit_filter=_rate_limit_filter(settings.tenant_rate_limit),
    )
