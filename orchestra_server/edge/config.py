"""Renders the Envoy bootstrap of the REST edge.

API:

- ``EdgeSettings``: every parameter of the edge (listen address, upstream
  gRPC endpoints, descriptor set, issuer, audience, JWKS cache period, body
  limit, admin socket, per-tenant rate limit).
- ``Upstream``: one gRPC worker process, ``host:port``.
- ``TenantRateLimit``: a token bucket (``wire.rate_limits``).
- ``render_envoy_config(settings, limits_dir) -> str``: the bootstrap YAML.
- ``render_tenant_limits(settings, limits) -> str``: the per-tenant rate limit filter, with
  each tenant's own limit in ``limits``, as the file Envoy watches in ``limits_dir``
  (``TENANT_LIMITS_FILE``; replace it by a rename, and a running edge applies it).
- ``edge_dir(override)``: where ``edge.yaml.tmpl`` and ``edge.lua`` are read
  from: ``override`` when given (``ORCHESTRA_EDGE_DIR``, read by the
  settings), else ``envoy/`` at the repository root.
- ``console_files(directory)``: the static files of the web console the edge
  serves under ``/console/`` (URL path, file, content type, cache policy).

Every value is written as a JSON scalar (valid YAML), so no setting can
inject configuration.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

from orchestra_server.wire import limits
from orchestra_server.wire.key_set import KEY_SET_REFRESH_SECONDS
from orchestra_server.wire.message_sizes import MAX_REST_RESPONSE_BYTES, protobuf_bound

# Re-exported: the edge's settings are written with it.
from orchestra_server.wire.rate_limits import TenantRateLimit as TenantRateLimit

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_NAME = "edge.yaml.tmpl"
LUA_NAME = "edge.lua"
DEFAULT_DESCRIPTOR = REPO_ROOT / "gen" / "orchestra.pb"
# The published request body limit. The service itself allows 1 MiB per
# variable, so a body carrying one maximal variable still fits.
DEFAULT_MAX_REQUEST_BYTES = limits.MAX_REQUEST_BYTES
# The edge refetches the JWKS at this period and not on an unknown key id, so the key ring
# publishes a new key longer than this before signing with it (identity.keys.MIN_PUBLISH_LEAD;
# by default twice as long, identity.keys.DEFAULT_PUBLISH_LEAD).
DEFAULT_JWKS_CACHE_SECONDS = KEY_SET_REFRESH_SECONDS
TENANT_HEADER = "x-orchestra-tenant"
# The edge fetches the key set from its own internal listener; the host only
# names it (the cluster decides where the request goes).
JWKS_URI = "http://edge-key-set/.well-known/jwks.json"
# The token and JWKS endpoints carry no tenant; each has a budget of its own
# of this many times one tenant's, so flooding one cannot lock clients out of
# the other.
UNAUTHENTICATED_RATE_FACTOR = 10
# Token requests one source address may send (a bucket of this burst, refilled by this rate
# every second). A consumer fetches a token per lifetime, not per call; a flood of guesses
# from one address is refused at the edge instead of costing the service a call each.
TOKEN_REQUESTS_PER_SOURCE = 20
TOKEN_BURST_PER_SOURCE = 40
# A client has this long to send its request headers, and this long to send
# its whole request, headers and body (408 otherwise).
REQUEST_HEADERS_TIMEOUT_SECONDS = 10
REQUEST_TIMEOUT_SECONDS = 15
# The per-tenant rate limit filter's configuration is this file in the limits directory,
# which Envoy watches (extension config discovery): a new file, moved in by a rename, takes
# effect on the next request without a restart, on open connections too.
TENANT_LIMITS_FILE = "tenant-limits.yaml"
RATE_LIMIT_FILTER = "envoy.filters.http.local_ratelimit"
# A bucket that never empties (Envoy counts tokens in 32 bits): a tenant whose limit is off.
_UNLIMITED_TOKENS = 2**32 - 1
# The web console: static files the edge answers itself (route `direct_response`), read once
# when Envoy loads its configuration. Only these kinds are served, from the console directory
# and its vendor/ folder.
CONSOLE_PREFIX = "/console/"
CONSOLE_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
CONSOLE_FOLDERS = ("", "vendor/")
# Envoy refuses a direct response body over the route configuration's limit; this is it.
MAX_CONSOLE_FILE_BYTES = 1024 * 1024
# Scripts only from the console's own files (no inline script, no eval), data only from this
# origin, never framed: a value an attacker stored cannot run even if it reached the page.
CONSOLE_CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
CONSOLE_SECURITY_HEADERS = (
    ("content-security-policy", CONSOLE_CONTENT_SECURITY_POLICY),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
)
# The console's own files change with each release and carry no version in their names: the
# browser asks again every time (no-cache revalidates; the files are small). The vendored
# layout library changes only with the lockfile.
CONSOLE_CACHE_CONTROL = "no-cache"
CONSOLE_VENDOR_CACHE_CONTROL = "public, max-age=3600"
# Owner-only: the admin interface can stop Envoy and raise its log level
# until it writes bearer tokens.
ADMIN_SOCKET_MODE = 0o600


@dataclass(frozen=True)
class Upstream:
    """One gRPC worker of the service."""

    host: str
    port: int


@dataclass(frozen=True)
class EdgeSettings:
    """Parameters of one edge process.

    ``rest_port`` must be a real port (not 0): ``EnvoyProcess`` waits for
    it to answer. ``admin_socket`` opts in to Envoy's admin
    interface on that unix socket, readable by the owner only; by default
    there is none.
    """

    rest_port: int
    upstreams: tuple[Upstream, ...]
    rest_host: str = "127.0.0.1"
    descriptor_path: Path = DEFAULT_DESCRIPTOR
    issuer: str = "orchestra"
    audience: str = "orchestra-api"
    jwks_cache_seconds: int = DEFAULT_JWKS_CACHE_SECONDS
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    admin_socket: Path | None = None
    # Every tenant's limit unless it has its own (``TenantRateLimit.OFF``: none); None: the
    # edge limits no rate at all, neither tenants nor the token and key set endpoints.
    tenant_rate_limit: TenantRateLimit | None = field(default_factory=TenantRateLimit)
    # Token requests per source address (only with ``tenant_rate_limit``, whose filter counts them).
    token_source_limit: TenantRateLimit | None = field(
        default_factory=lambda: TenantRateLimit(TOKEN_REQUESTS_PER_SOURCE, TOKEN_BURST_PER_SOURCE)
    )
    # Where the template and the Lua source are read from (None: ``envoy/``).
    template_dir: Path | None = None
    # The web console's directory, served under /console/ (None: no console).
    console_dir: Path | None = None

    def __post_init__(self) -> None:
        if not 0 < self.rest_port < 65536:
            raise ValueError("rest_port must be a port number between 1 and 65535")
        if not self.upstreams:
            raise ValueError("at least one upstream is needed")
        for upstream in self.upstreams:
            if not 0 < upstream.port < 65536:
                raise ValueError(f"bad upstream port {upstream.port}")
        # sockaddr_un holds 107 bytes of path.
        if self.admin_socket is not None and len(os.fsencode(Path(self.admin_socket).resolve())) > 107:
            raise ValueError("admin_socket path is too long for a unix socket")
        if self.jwks_cache_seconds < 1:
            raise ValueError("jwks_cache_seconds must be at least 1")
        if self.max_request_bytes < 1:
            raise ValueError("max_request_bytes must be positive")
        if self.tenant_rate_limit is not None and self.tenant_rate_limit.problem() is not None:
            raise ValueError(f"tenant_rate_limit: {self.tenant_rate_limit.problem()}")
        source = self.token_source_limit
        if source is not None and (source.off or source.problem() is not None):
            raise ValueError("token_source_limit: rate limit values must be positive")

    @property
    def anonymous_base(self) -> TenantRateLimit:
        """The limit the token and key set budgets are a multiple of: the tenants' own, or the
        default one while tenants are not limited."""
        limit = self.tenant_rate_limit
        return TenantRateLimit() if limit is None or limit.off else limit


@dataclass(frozen=True)
class ConsoleFile:
    """One static file of the console: where it is served, what it is and how long it keeps."""

    url_path: str
    path: Path
    content_type: str
    cache_control: str


def console_files(directory: Path) -> tuple[ConsoleFile, ...]:
    """The console's files under ``directory``: index.html at ``/console/``, every other
    served kind at its own name. ValueError when there is no index.html or a file is over
    ``MAX_CONSOLE_FILE_BYTES``."""
    root = Path(directory).resolve()
    index = root / "index.html"
    if not index.is_file():
        raise ValueError(f"the console directory {root} has no index.html")
    found = [ConsoleFile(CONSOLE_PREFIX, index, CONSOLE_CONTENT_TYPES[".html"], CONSOLE_CACHE_CONTROL)]
    for folder in CONSOLE_FOLDERS:
        base = root / folder
        if not base.is_dir():
            continue
        for path in sorted(base.iterdir()):
            kind = CONSOLE_CONTENT_TYPES.get(path.suffix)
            if kind is None or not path.is_file() or path == index:
                continue
            cache = CONSOLE_VENDOR_CACHE_CONTROL if folder == "vendor/" else CONSOLE_CACHE_CONTROL
            found.append(ConsoleFile(f"{CONSOLE_PREFIX}{folder}{path.name}", path, kind, cache))
    for item in found:
        if item.path.stat().st_size > MAX_CONSOLE_FILE_BYTES:
            raise ValueError(f"{item.path} is over {MAX_CONSOLE_FILE_BYTES} bytes")
    return tuple(found)


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


def _admin_block(admin_socket: Path | None) -> str:
    if admin_socket is None:
        return ""
    path = _q(str(Path(admin_socket).resolve()))
    return f"admin:\n  address:\n    pipe: {{ path: {path}, mode: {ADMIN_SOCKET_MODE} }}\n"


def _endpoints(upstreams: tuple[Upstream, ...]) -> str:
    indent = " " * 8
    return "\n".join(
        f"{indent}- endpoint: {{ address: {{ socket_address: "
        f"{{ address: {_q(u.host)}, port_value: {u.port} }} }} }}"
        for u in upstreams
    )


def _rate_limit_filter(settings: EdgeSettings, limits_dir: Path) -> str:
    """The per-tenant rate limit filter, configured by the watched file (``render_tenant_limits``)."""
    if settings.tenant_rate_limit is None:
        return ""
    directory = Path(limits_dir).resolve()
    indent = " " * 10
    lines = [
        "# One token bucket per tenant, keyed on the verified tenant header, configured by a",
        "# file the edge watches (tenant limits change without a restart). The token and JWKS",
        "# routes carry no tenant: each has a bucket of its own (typed_per_filter_config).",
        f"- name: {RATE_LIMIT_FILTER}",
        "  config_discovery:",
        "    config_source:",
        "      path_config_source:",
        f"        path: {_q(str(directory / TENANT_LIMITS_FILE))}",
        f"        watched_directory: {{ path: {_q(str(directory))} }}",
        f"    type_urls: [{_LOCAL_RATE_LIMIT_TYPE}]",
    ]
    return "\n".join(indent + line for line in lines)


_LOCAL_RATE_LIMIT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"


def _bucket(limit: TenantRateLimit) -> str:
    burst, rate = (
        (_UNLIMITED_TOKENS, _UNLIMITED_TOKENS) if limit.off else (limit.burst, limit.requests_per_second)
    )
    return f"{{ max_tokens: {burst}, tokens_per_fill: {rate}, fill_interval: 1s }}"


def render_tenant_limits(settings: EdgeSettings, limits: Mapping[str, TenantRateLimit]) -> str:
    """The rate limit filter's configuration: ``limits`` for the tenants named there, the
    settings' ``tenant_rate_limit`` for every other tenant.

    Tenant ids go out as JSON strings, so none can inject configuration. A change starts every
    bucket full again.
    """
    default = settings.tenant_rate_limit or TenantRateLimit.OFF
    anonymous = settings.anonymous_base
    lines = [
        "# The edge's per-tenant rate limits, rewritten by the supervising process when the",
        "# stored limits change. Envoy re-reads it when a file is renamed into this directory.",
        "resources:",
        '- "@type": type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig',
        f"  name: {RATE_LIMIT_FILTER}",
        "  typed_config:",
        f'    "@type": {_LOCAL_RATE_LIMIT_TYPE}',
        "    stat_prefix: tenant_rate_limit",
        "    # Requests that carry no tenant (and reach no route with a budget of its own).",
        "    token_bucket: "
        + _bucket(
            TenantRateLimit(
                anonymous.requests_per_second * UNAUTHENTICATED_RATE_FACTOR,
                anonymous.burst * UNAUTHENTICATED_RATE_FACTOR,
            )
        ),
        "    # A tenant's requests count against its own bucket only.",
        "    always_consume_default_token_bucket: false",
        "    filter_enabled:",
        "      default_value: { numerator: 100, denominator: HUNDRED }",
        "      runtime_key: orchestra.tenant_rate_limit.enabled",
        "    filter_enforced:",
        "      default_value: { numerator: 100, denominator: HUNDRED }",
        "      runtime_key: orchestra.tenant_rate_limit.enforced",
        "    # The first full match wins: a tenant's own limit, then the one every tenant has.",
        "    descriptors:",
    ]
    for tenant_id, limit in sorted(limits.items()):
        lines += [
            f"    - entries: [{{ key: tenant, value: {_q(tenant_id)} }}]",
            f"      token_bucket: {_bucket(limit)}",
        ]
    lines += [
        "    - entries: [{ key: tenant }]",
        f"      token_bucket: {_bucket(default)}",
        "    max_dynamic_descriptors: 10000",
        "    rate_limits:",
        f"    - actions: [{{ request_headers: {{ header_name: {TENANT_HEADER}, descriptor_key: tenant }} }}]",
        "    local_rate_limit_per_downstream_connection: false",
    ]
    return "\n".join(lines) + "\n"


def _route_rate_limit(settings: EdgeSettings, name: str, per_source: TenantRateLimit | None = None) -> str:
    """A bucket of the route's own, replacing the filter-wide one on that route; with
    ``per_source``, also one bucket per downstream address (the peer, not a forwarded header)."""
    if settings.tenant_rate_limit is None:
        return ""
    limit = settings.anonymous_base
    indent = " " * 16
    lines = [
        "typed_per_filter_config:",
        "  envoy.filters.http.local_ratelimit:",
        '    "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit',
        f"    stat_prefix: {name}_rate_limit",
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
    ]
    if per_source is not None:
        lines += [
            "    descriptors:",
            "    - entries: [{ key: remote_address }]",
            "      token_bucket:",
            f"        max_tokens: {per_source.burst}",
            f"        tokens_per_fill: {per_source.requests_per_second}",
            "        fill_interval: 1s",
            "    max_dynamic_descriptors: 10000",
            "    rate_limits:",
            "    - actions: [{ remote_address: {} }]",
        ]
    return "\n".join(indent + line for line in lines)


# Filters a static file has no use for: no token to check, nothing to transcode or rewrite.
_CONSOLE_DISABLED_FILTERS = (
    "envoy.filters.http.buffer",
    "envoy.filters.http.lua",
    "envoy.filters.http.grpc_json_transcoder",
)


def _console_routes(files: tuple[ConsoleFile, ...]) -> str:
    if not files:
        return ""
    disabled = ["  typed_per_filter_config:"]
    for name in _CONSOLE_DISABLED_FILTERS:
        disabled += [
            f"    {name}:",
            '      "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig',
            "      disabled: true",
        ]
    lines = [
        "# The web console: each file answered by the edge itself, read when Envoy starts.",
        "- match: { path: /console }",
        f"  redirect: {{ path_redirect: {_q(CONSOLE_PREFIX)} }}",
        *disabled,
    ]
    for item in files:
        headers = [("content-type", item.content_type), ("cache-control", item.cache_control)]
        lines += [
            f"- match: {{ path: {_q(item.url_path)}, headers: "
            '[{ name: ":method", string_match: { safe_regex: { regex: "GET|HEAD" } } }] }',
            f"  direct_response: {{ status: 200, body: {{ filename: {_q(str(item.path))} }} }}",
            "  response_headers_to_add:",
            *(
                f"  - {{ header: {{ key: {_q(key)}, value: {_q(value)} }}, "
                "append_action: OVERWRITE_IF_EXISTS_OR_ADD }"
                for key, value in (*headers, *CONSOLE_SECURITY_HEADERS)
            ),
            *disabled,
        ]
    indent = " " * 14
    return "\n".join(indent + line for line in lines)


def _console_reply_mappers(files: tuple[ConsoleFile, ...]) -> str:
    """A direct response is a local reply: without these the JSON error format below would
    wrap each file. A mapper per file passes its bytes through with its content type."""
    lines = []
    for item in files:
        lines += [
            "- filter:",
            "    and_filter:",
            "      filters:",
            "      - status_code_filter:",
            "          comparison: { op: EQ, value: { default_value: 200, runtime_key: orchestra.unused } }",
            '      - header_filter: { header: { name: ":path", string_match: '
            f"{{ exact: {_q(item.url_path)} }} }} }}",
            "  body_format_override:",
            '    text_format_source: { inline_string: "%LOCAL_REPLY_BODY%" }',
            f"    content_type: {_q(item.content_type)}",
        ]
    indent = " " * 12
    return "\n".join(indent + line for line in lines)


def render_envoy_config(settings: EdgeSettings, limits_dir: Path) -> str:
    """The Envoy bootstrap YAML for ``settings``; the tenant limits are read from ``limits_dir``."""
    directory = edge_dir(settings.template_dir)
    template = Template((directory / TEMPLATE_NAME).read_text(encoding="utf-8"))
    lua_source = (directory / LUA_NAME).read_text(encoding="utf-8")
    console = () if settings.console_dir is None else console_files(settings.console_dir)
    return template.substitute(
        console_routes=_console_routes(console),
        console_reply_mappers=_console_reply_mappers(console),
        max_direct_response_bytes=MAX_CONSOLE_FILE_BYTES,
        admin=_admin_block(settings.admin_socket),
        rest_host=_q(settings.rest_host),
        rest_port=settings.rest_port,
        upstream_endpoints=_endpoints(settings.upstreams),
        descriptor_path=_q(str(Path(settings.descriptor_path).resolve())),
        issuer=_q(settings.issuer),
        audience=_q(settings.audience),
        jwks_uri=_q(JWKS_URI),
        jwks_cache_duration=_q(f"{settings.jwks_cache_seconds}s"),
        max_request_bytes=settings.max_request_bytes,
        # What the transcoder may hold: the protobuf an admitted body becomes, and the largest
        # answer in either form; both are several times the JSON they carry.
        max_request_message_bytes=protobuf_bound(settings.max_request_bytes),
        max_response_bytes=MAX_REST_RESPONSE_BYTES,
        lua_source=_q(lua_source),
        tenant_rate_limit_filter=_rate_limit_filter(settings, limits_dir),
        token_rate_limit=_route_rate_limit(settings, "token", settings.token_source_limit),
        jwks_rate_limit=_route_rate_limit(settings, "jwks"),
        # No client caches the key set longer than the edge does, so the
        # publish lead that covers the edge covers them too.
        jwks_cache_control=_q(f"public, max-age={settings.jwks_cache_seconds}"),
        request_headers_timeout=_q(f"{REQUEST_HEADERS_TIMEOUT_SECONDS}s"),
        request_timeout=_q(f"{REQUEST_TIMEOUT_SECONDS}s"),
    )
