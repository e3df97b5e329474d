"""The rendered edge bootstrap passes Envoy's own validation, and the check can fail."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from orchestra_server.edge import (
    EdgeConfigError,
    EdgeSettings,
    TenantRateLimit,
    Upstream,
    render_envoy_config,
    validate_config,
)
from orchestra_server.edge.config import (
    CONSOLE_CACHE_CONTROL,
    CONSOLE_CONTENT_SECURITY_POLICY,
    CONSOLE_VENDOR_CACHE_CONTROL,
    LUA_NAME,
    MAX_CONSOLE_FILE_BYTES,
    console_files,
    edge_dir,
)
from orchestra_server.wire.message_sizes import MAX_REST_RESPONSE_BYTES, protobuf_bound

pytestmark = pytest.mark.timeout(60)


def _write(tmp_path: Path, settings: EdgeSettings) -> Path:
    path = tmp_path / "envoy.yaml"
    path.write_text(render_envoy_config(settings), encoding="utf-8")
    return path


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
    for expected in (
        '"https://issuer.example"',
        '"aud-x"',
        '"45s"',
        "max_request_bytes: 12345",
        # The protobuf 12345 bytes of JSON can become, and the largest answer.
        f"max_request_body_size: {protobuf_bound(12345)}",
        f"max_response_body_size: {MAX_REST_RESPONSE_BYTES}",
        f'pipe: {{ path: "{tmp_path / "admin.sock"}", mode: 384 }}',
        "tokens_per_fill: 7",
        "max_tokens: 9",
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
        {"token_source_limit": TenantRateLimit(burst=0)},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {"rest_port": 18080, "upstreams": (Upstream("127.0.0.1", 50051),)}
    with pytest.raises(ValueError, match=r"."):
        EdgeSettings(**{**base, **kwargs})  # type: ignore[arg-type]


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
