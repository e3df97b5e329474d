"""The rendered edge bootstrap passes Envoy's own validation, and the check can fail."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from orchestra_server.edge import (
    EdgeConfigError,
    EdgeSettings,
    EnvoyProcess,
    TenantRateLimit,
    Upstream,
    render_envoy_config,
    render_tenant_limits,
    validate_config,
)
from orchestra_server.edge.config import (
    CONSOLE_CACHE_CONTROL,
    CONSOLE_CONTENT_SECURITY_POLICY,
    CONSOLE_VENDOR_CACHE_CONTROL,
    LUA_NAME,
    MAX_CONSOLE_FILE_BYTES,
    RATE_LIMIT_FILTER,
    TENANT_LIMITS_FILE,
    console_files,
    edge_dir,
)
from orchestra_server.wire.message_sizes import MAX_REST_RESPONSE_BYTES, protobuf_bound

pytestmark = pytest.mark.timeout(60)


def _write(tmp_path: Path, settings: EdgeSettings) -> Path:
    """The bootstrap, beside the tenant limits file it reads (validation checks it exists)."""
    limits_dir = tmp_path / "limits"
    limits_dir.mkdir(exist_ok=True)
    (limits_dir / TENANT_LIMITS_FILE).write_text(render_tenant_limits(settings, {}), encoding="utf-8")
    path = tmp_path / "envoy.yaml"
    path.write_text(render_envoy_config(settings, limits_dir), encoding="utf-8")
    return path


def _limits(tmp_path: Path) -> str:
    return (tmp_path / "limits" / TENANT_LIMITS_FILE).read_text(encoding="utf-8")


def test_one_upstream_validates(tmp_path: Path) -> None:
    settings = EdgeSettings(rest_port=18080, upstreams=(Upstream("127.0.0.1", 50051),))
    path = _write(tmp_path, settings)
    validate_config(path)
    # No admin interface unless asked for: it can stop Envoy and make it log tokens.
    assert "admin:" not in path.read_text(encoding="utf-8")


def test_several_upstreams_validate_and_are_all_listed(tmp_path: Path) -> None:
    upstreams = tuple(Upstream("127.0.0.1", port) for port in (50051, 50052, 50053))
    settings = EdgeSettings(rest_port=18080, upstreams=upstreams, tenant_rate_limit=None)
    path = _write(tmp_path, settings)
    validate_config(path)
    text = path.read_text(encoding="utf-8")
    for port in (50051, 50052, 50053):
        assert f"port_value: {port}" in text
    assert "admin:" not in text
    assert "envoy.filters.http.local_ratelimit" not in text


def test_every_parameter_reaches_the_config(tmp_path: Path) -> None:
    settings = EdgeSettings(
        rest_port=18081,
        rest_host="0.0.0.0",  # noqa: S104 - rendered and validated, never bound
        upstreams=(Upstream("localhost", 50051),),
        issuer="https://issuer.example",
        audience="aud-x",
        jwks_cache_seconds=45,
        max_request_bytes=12345,
        admin_socket=tmp_path / "admin.sock",
        tenant_rate_limit=TenantRateLimit(requests_per_second=7, burst=9),
        token_source_limit=TenantRateLimit(requests_per_second=3, burst=5),
    )
    path = _write(tmp_path, settings)
    validate_config(path)
    text = path.read_text(encoding="utf-8")
    # Every tenant's bucket, in the file the edge watches.
    assert "token_bucket: { max_tokens: 9, tokens_per_fill: 7, fill_interval: 1s }" in _limits(tmp_path)
    for expected in (
        '"https://issuer.example"',
        '"aud-x"',
        '"45s"',
        "max_request_bytes: 12345",
        # The protobuf 12345 bytes of JSON can become, and the largest answer.
        f"max_request_body_size: {protobuf_bound(12345)}",
        f"max_response_body_size: {MAX_REST_RESPONSE_BYTES}",
        f'pipe: {{ path: "{tmp_path / "admin.sock"}", mode: 384 }}',
        f'path: "{tmp_path / "limits" / TENANT_LIMITS_FILE}"',
        # The token and JWKS routes' own buckets.
        "stat_prefix: token_rate_limit",
        "stat_prefix: jwks_rate_limit",
        "tokens_per_fill: 70",
        # The token route's bucket per source address.
        "- actions: [{ remote_address: {} }]",
        "tokens_per_fill: 3",
        "max_tokens: 5",
        '"public, max-age=45"',
        # The edge fetches its JWKS from its internal listener, never
        # through the public one and its budgets.
        "server_listener_name: key_set",
    ):
        assert expected in text


def test_broken_descriptor_path_fails_validation(tmp_path: Path) -> None:
    settings = EdgeSettings(
        rest_port=18080,
        upstreams=(Upstream("127.0.0.1", 50051),),
        descriptor_path=tmp_path / "missing.pb",
    )
    with pytest.raises(EdgeConfigError, match=r"missing\.pb"):
        validate_config(_write(tmp_path, settings))


def test_templates_come_from_the_override_directory(tmp_path: Path) -> None:
    override = tmp_path / "edge"
    shutil.copytree(edge_dir(), override)
    # A Lua syntax error proves both that the override is read and that
    # validation compiles the script.
    (override / LUA_NAME).write_text("function envoy_on_response(handle\n", encoding="utf-8")
    assert edge_dir(override) == override
    settings = EdgeSettings(rest_port=18080, upstreams=(Upstream("127.0.0.1", 50051),), template_dir=override)
    with pytest.raises(EdgeConfigError):
        validate_config(_write(tmp_path, settings))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rest_port": 0},
        {"upstreams": ()},
        {"upstreams": (Upstream("127.0.0.1", 0),)},
        {"jwks_cache_seconds": 0},
        {"max_request_bytes": 0},
        {"admin_socket": Path("/tmp") / ("s" * 120)},
        {"tenant_rate_limit": TenantRateLimit(requests_per_second=0)},
        {"tenant_rate_limit": TenantRateLimit(requests_per_second=5, burst=4)},
        {"token_source_limit": TenantRateLimit(burst=0)},
        {"token_source_limit": TenantRateLimit.OFF},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {"rest_port": 18080, "upstreams": (Upstream("127.0.0.1", 50051),)}
    with pytest.raises(ValueError, match=r"."):
        EdgeSettings(**{**base, **kwargs})  # type: ignore[arg-type]


def _static_bootstrap(tmp_path: Path, limits_text: str) -> Path:
    """A bootstrap carrying the rendered filter configuration inline: Envoy's validate mode
    checks that, where it does not read a watched file's content."""
    typed_config = yaml.safe_load(limits_text)["resources"][0]["typed_config"]
    bootstrap = {
        "static_resources": {
            "listeners": [
                {
                    "name": "check",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 18080}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters.network"
                                        ".http_connection_manager.v3.HttpConnectionManager",
                                        "stat_prefix": "check",
                                        "route_config": {"virtual_hosts": []},
                                        "http_filters": [
                                            {"name": RATE_LIMIT_FILTER, "typed_config": typed_config},
                                            {
                                                "name": "envoy.filters.http.router",
                                                "typed_config": {
                                                    "@type": "type.googleapis.com/envoy.extensions"
                                                    ".filters.http.router.v3.Router"
                                                },
                                            },
                                        ],
                                    },
                                }
                            ]
                        }
                    ],
                }
            ]
        }
    }
    path = tmp_path / "static.yaml"
    path.write_text(yaml.safe_dump(bootstrap), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "default", [TenantRateLimit(), TenantRateLimit.OFF, TenantRateLimit(1, 1)], ids=["default", "off", "one"]
)
def test_tenant_limits_are_a_filter_configuration_envoy_accepts(
    tmp_path: Path, default: TenantRateLimit
) -> None:
    settings = EdgeSettings(
        rest_port=18080, upstreams=(Upstream("127.0.0.1", 50051),), tenant_rate_limit=default
    )
    own = {"acme": TenantRateLimit(3, 5), "globex": TenantRateLimit.OFF}
    text = render_tenant_limits(settings, own)
    validate_config(_static_bootstrap(tmp_path, text))
    descriptors = yaml.safe_load(text)["resources"][0]["typed_config"]["descriptors"]
    # A tenant's own bucket comes before the one every tenant has (the first full match wins).
    assert [d["entries"] for d in descriptors] == [
        [{"key": "tenant", "value": "acme"}],
        [{"key": "tenant", "value": "globex"}],
        [{"key": "tenant"}],
    ]
    assert descriptors[0]["token_bucket"]["max_tokens"] == 5
    assert descriptors[0]["token_bucket"]["tokens_per_fill"] == 3
    # Off: a bucket that never empties.
    assert descriptors[1]["token_bucket"]["tokens_per_fill"] == 2**32 - 1
    expected = 2**32 - 1 if default.off else default.requests_per_second
    assert descriptors[2]["token_bucket"]["tokens_per_fill"] == expected


def test_a_broken_filter_configuration_fails_the_static_check(tmp_path: Path) -> None:
    settings = EdgeSettings(rest_port=18080, upstreams=(Upstream("127.0.0.1", 50051),))
    text = render_tenant_limits(settings, {}).replace("max_dynamic_descriptors", "max_dynamic_descriptorz")
    with pytest.raises(EdgeConfigError):
        validate_config(_static_bootstrap(tmp_path, text))


def test_tenant_ids_are_written_as_strings(tmp_path: Path) -> None:
    settings = EdgeSettings(rest_port=18080, upstreams=(Upstream("127.0.0.1", 50051),))
    hostile = 'x" }], token_bucket: { max_tokens: 1'
    text = render_tenant_limits(settings, {hostile: TenantRateLimit(1, 1)})
    descriptors = yaml.safe_load(text)["resources"][0]["typed_config"]["descriptors"]
    assert descriptors[0]["entries"] == [{"key": "tenant", "value": hostile}]


def test_the_rest_listener_never_shares_its_port(tmp_path: Path) -> None:
    settings = EdgeSettings(rest_port=18080, upstreams=(Upstream("127.0.0.1", 50051),))
    listeners = yaml.safe_load(_write(tmp_path, settings).read_text(encoding="utf-8"))["static_resources"]
    rest = next(item for item in listeners["listeners"] if item["name"] == "rest")
    assert rest["enable_reuse_port"] is False


def test_the_edge_process_keeps_the_tenant_limits_it_was_given_across_a_restart(tmp_path: Path) -> None:
    settings = EdgeSettings(rest_port=18080, upstreams=(Upstream("127.0.0.1", 50051),))
    edge = EnvoyProcess(settings, tmp_path, tenant_limits={"acme": TenantRateLimit(3, 5)})
    written = edge.limits_dir / TENANT_LIMITS_FILE
    edge.write_config()
    assert '"acme"' in written.read_text(encoding="utf-8")
    assert edge.set_tenant_limits({"globex": TenantRateLimit.OFF})
    assert not edge.set_tenant_limits({"globex": TenantRateLimit.OFF})
    text = written.read_text(encoding="utf-8")
    assert '"globex"' in text
    assert '"acme"' not in text
    # What a restart writes (start() writes the configuration again) are the limits last set.
    edge.write_config()
    assert written.read_text(encoding="utf-8") == text
    assert edge.tenant_limits == {"globex": TenantRateLimit.OFF}
    # Only the file: no scratch copy is left beside it.
    assert sorted(p.name for p in edge.limits_dir.iterdir()) == [TENANT_LIMITS_FILE]


def test_an_edge_without_rate_limits_writes_no_limits_file(tmp_path: Path) -> None:
    settings = EdgeSettings(
        rest_port=18080, upstreams=(Upstream("127.0.0.1", 50051),), tenant_rate_limit=None
    )
    edge = EnvoyProcess(settings, tmp_path, tenant_limits={"acme": TenantRateLimit(3, 5)})
    validate_config(edge.write_config())
    assert not (edge.limits_dir / TENANT_LIMITS_FILE).exists()


# -- the web console's static files ---------------------------------------------------------------


def _console(tmp_path: Path) -> Path:
    console = tmp_path / "console"
    (console / "vendor").mkdir(parents=True)
    (console / "index.html").write_text("<!doctype html><title>t</title>\n", encoding="utf-8")
    (console / "app.js").write_text("export {};\n", encoding="utf-8")
    (console / "site.css").write_text("body {}\n", encoding="utf-8")
    (console / "vendor" / "layout.js").write_text("export default {};\n", encoding="utf-8")
    (console / "package.json").write_text("{}\n", encoding="utf-8")
    (console / "notes.md").write_text("not served\n", encoding="utf-8")
    return console


def test_console_files_are_the_served_kinds_only(tmp_path: Path) -> None:
    files = {item.url_path: item for item in console_files(_console(tmp_path))}
    assert set(files) == {"/console/", "/console/app.js", "/console/site.css", "/console/vendor/layout.js"}
    assert files["/console/"].content_type == "text/html; charset=utf-8"
    assert files["/console/app.js"].content_type == "text/javascript; charset=utf-8"
    assert files["/console/site.css"].content_type == "text/css; charset=utf-8"
    assert files["/console/app.js"].cache_control == CONSOLE_CACHE_CONTROL
    assert files["/console/vendor/layout.js"].cache_control == CONSOLE_VENDOR_CACHE_CONTROL


def test_a_console_without_an_index_or_with_an_oversized_file_is_refused(tmp_path: Path) -> None:
    console = _console(tmp_path)
    (console / "big.js").write_bytes(b" " * (MAX_CONSOLE_FILE_BYTES + 1))
    with pytest.raises(ValueError, match=r"big\.js"):
        console_files(console)
    (console / "big.js").unlink()
    (console / "index.html").unlink()
    with pytest.raises(ValueError, match=r"no index\.html"):
        console_files(console)


def test_the_console_routes_validate_and_carry_the_security_headers(tmp_path: Path) -> None:
    settings = EdgeSettings(
        rest_port=18080, upstreams=(Upstream("127.0.0.1", 50051),), console_dir=_console(tmp_path)
    )
    path = _write(tmp_path, settings)
    validate_config(path)
    text = path.read_text(encoding="utf-8")
    assert text.count("direct_response:") == 4
    assert text.count(json.dumps(CONSOLE_CONTENT_SECURITY_POLICY)) == 4
    assert "path_redirect" in text
    assert "'unsafe-inline'" not in text


def test_without_a_console_directory_there_are_no_console_routes(tmp_path: Path) -> None:
    path = _write(tmp_path, EdgeSettings(rest_port=18080, upstreams=(Upstream("127.0.0.1", 50051),)))
    validate_config(path)
    assert "/console" not in path.read_text(encoding="utf-8")
