"""The real gRPC server in-process on a real database: authentication, tenancy and error mapping per RPC."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import grpc
import pytest
from google.api import httpbody_pb2
from google.protobuf import descriptor_pb2, struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from orchestra.v1 import auth_service_pb2 as auth_pb
from orchestra.v1 import auth_service_pb2_grpc as auth_grpc
from orchestra.v1 import orchestra_service_pb2 as pb
from orchestra.v1 import orchestra_service_pb2_grpc as pb_grpc

from orchestra_server.bootstrap import Application, build_application
from orchestra_server.settings import Settings
from orchestra_server.transport.server import create_server
from orchestra_server.wire import values
from tests import deep_values
from tests.conftest import EXAMPLES, FakeClock


@dataclass
class Stack:
    app: Application
    channel: grpc.Channel
    stub: pb_grpc.OrchestraServiceStub
    auth: auth_grpc.AuthServiceStub
    clock: FakeClock

    def token(self, tenant: str = "default", roles: list[str] | None = None) -> tuple[str, str]:
        consumer = self.app.directory.create_consumer(tenant, roles)
        body = urlencode(
            {
                "grant_type": "client_credentials",
                "client_id": consumer.client_id,
                "client_secret": consumer.client_secret,
            }
        )
        answer = self.auth.IssueToken(
            auth_pb.IssueTokenRequest(
                http_body=httpbody_pb2.HttpBody(
                    content_type="application/x-www-form-urlencoded", data=body.encode()
                )
            )
        )
        return json.loads(answer.http_body.data)["access_token"], consumer.client_id


@pytest.fixture
def stack(tmp_path: Path, clock: FakeClock) -> Iterator[Stack]:
    settings = replace(Settings(data_dir=tmp_path), revocation_recheck_seconds=0.0)
    app = build_application(settings, clock=clock)
    app.definitions.deploy([EXAMPLES / "three_step.yaml", EXAMPLES / "parallel_review.yaml"])
    app.directory.create_tenant("globex")
    built = create_server("127.0.0.1:0", app.server_dependencies())
    server, port = built.server, built.port
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Stack(
            app, channel, pb_grpc.OrchestraServiceStub(channel), auth_grpc.AuthServiceStub(channel), clock
        )
    finally:
        channel.close()
        server.stop(0).wait()
        app.close()


def bearer(token: str, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"), *extra)


def failure(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error = caught.value
    return error.code(), error.details(), dict(error.trailing_metadata() or ())


def every_rpc(stub: pb_grpc.OrchestraServiceStub) -> dict[str, Callable[..., Any]]:
    return {
        "StartProcess": lambda md: stub.StartProcess(
            pb.StartProcessRequest(definition_id="three_step"), metadata=md
        ),
        "ListInstances": lambda md: stub.ListInstances(pb.ListInstancesRequest(), metadata=md),
        "GetInstance": lambda md: stub.GetInstance(pb.GetInstanceRequest(instance_id="x"), metadata=md),
        "SignalToken": lambda md: stub.SignalToken(pb.SignalTokenRequest(token_id="x"), metadata=md),
        "GetVariables": lambda md: stub.GetVariables(pb.GetVariablesRequest(instance_id="x"), metadata=md),
        "SetVariable": lambda md: stub.SetVariable(
            pb.SetVariableRequest(instance_id="x", name="a", value=struct_pb2.Value(number_value=1)),
            metadata=md,
        ),
    }


def test_health_answers(stack: Stack) -> None:
    health = health_pb2_grpc.HealthStub(stack.channel)
    for service in ("", "orchestra.v1.OrchestraService", "orchestra.v1.AuthService"):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def reflect(
    channel: grpc.Channel, version: str, request: reflection_pb2.ServerReflectionRequest
) -> reflection_pb2.ServerReflectionResponse:
    # v1 and v1alpha messages are field for field the same; only the service name differs, so
    # the v1alpha classes encode what a v1 client (grpcurl, Postman) sends.
    call = channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    (answer,) = list(call(iter([request]), timeout=10))
    return answer


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_lists_and_describes_the_services(stack: Stack, version: str) -> None:
    listed = reflect(stack.channel, version, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in listed.list_services_response.service}
    assert {
        "orchestra.v1.OrchestraService",
        "orchestra.v1.AuthService",
        "orchestra.v1.DiagnosticsService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
    for symbol, package in (
        ("orchestra.v1.OrchestraService", "orchestra.v1"),
        ("grpc.reflection.v1.ServerReflection", "grpc.reflection.v1"),
    ):
        found = reflect(
            stack.channel, version, reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
        )
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in found.file_descriptor_response.file_descriptor_proto
        ]
        assert package in {f.package for f in files}, symbol


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer not-a-jwt"),),
        (("authorization", "Basic dXNlcjpwYXNz"),),
        # A made-up tenant header and no valid token: never enough.
        (("x-orchestra-tenant", "default"),),
        (("x-orchestra-tenant", "default"), ("authorization", "Bearer eyJhbGciOiJub25lIn0.e30.")),
    ],
    ids=["nothing", "garbage", "basic", "tenant-header-only", "alg-none"],
)
def test_every_rpc_needs_a_valid_token(stack: Stack, metadata: tuple[tuple[str, str], ...]) -> None:
    for name, call in every_rpc(stack.stub).items():
        code, _message, trailers = failure(lambda call=call: call(metadata))
        assert code is grpc.StatusCode.UNAUTHENTICATED, name
        assert trailers["x-http-status"] == "401", name


def test_forwarded_tenant_must_agree_with_the_token(stack: Stack) -> None:
    token, _ = stack.token("default")
    ok = stack.stub.ListInstances(
        pb.ListInstancesRequest(), metadata=bearer(token, ("x-orchestra-tenant", "default"))
    )
    assert list(ok.instances) == []
    code, _, _ = failure(
        lambda: stack.stub.ListInstances(
            pb.ListInstancesRequest(), metadata=bearer(token, ("x-orchestra-tenant", "globex"))
        )
    )
    assert code is grpc.StatusCode.UNAUTHENTICATED


def test_full_cycle_and_statuses(stack: Stack) -> None:
    token, _ = stack.token()
    md = bearer(token)
    request = pb.StartProcessRequest(definition_id="three_step")
    request.variables["amount"].number_value = 1500
    request.variables["who"].string_value = "ann"
    started, call = stack.stub.StartProcess.with_call(request, metadata=md)
    assert ("x-http-status", "201") in tuple(call.initial_metadata())
    instance = stack.stub.GetInstance(
        pb.GetInstanceRequest(instance_id=started.instance_id), metadata=md
    ).instance
    assert (instance.status, instance.tenant_id, [t.node_id for t in instance.tokens]) == (
        "running",
        "default",
        ["task"],
    )
    variables = stack.stub.GetVariables(pb.GetVariablesRequest(instance_id=started.instance_id), metadata=md)
    assert variables.variables["amount"].number_value == 1500
    assert stack.stub.SignalToken(
        pb.SignalTokenRequest(token_id=instance.tokens[0].id), metadata=md
    ).status == ("signalled")
    code, message, trailers = failure(
        lambda: stack.stub.SignalToken(pb.SignalTokenRequest(token_id=instance.tokens[0].id), metadata=md)
    )
    assert (code, message, trailers["x-http-status"]) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "token is not parked",
        "422",
    )
    code, _, trailers = failure(
        lambda: stack.stub.StartProcess(pb.StartProcessRequest(definition_id="nope"), metadata=md)
    )
    assert (code, trailers["x-http-status"]) == (grpc.StatusCode.FAILED_PRECONDITION, "422")
    code, _, trailers = failure(
        lambda: stack.stub.SetVariable(
            pb.SetVariableRequest(instance_id=started.instance_id, name="a"), metadata=md
        )
    )
    assert (code, trailers["x-http-status"]) == (grpc.StatusCode.INVALID_ARGUMENT, "400")


def test_tenant_isolation_for_every_operation(stack: Stack) -> None:
    acme, _ = stack.token("default")
    globex, _ = stack.token("globex")
    started = stack.stub.StartProcess(
        pb.StartProcessRequest(definition_id="three_step"), metadata=bearer(acme)
    )
    own = stack.stub.GetInstance(
        pb.GetInstanceRequest(instance_id=started.instance_id), metadata=bearer(acme)
    )
    token_id = own.instance.tokens[0].id
    theirs = bearer(globex)
    code, message, _ = failure(
        lambda: stack.stub.GetInstance(
            pb.GetInstanceRequest(instance_id=started.instance_id), metadata=theirs
        )
    )
    missing = failure(
        lambda: stack.stub.GetInstance(pb.GetInstanceRequest(instance_id="no-such-id"), metadata=theirs)
    )
    assert (code, message) == (grpc.StatusCode.NOT_FOUND, "instance not found") == missing[:2]
    assert not stack.stub.GetVariables(
        pb.GetVariablesRequest(instance_id=started.instance_id), metadata=theirs
    ).variables
    for call in (
        lambda: stack.stub.SignalToken(pb.SignalTokenRequest(token_id=token_id), metadata=theirs),
        lambda: stack.stub.SetVariable(
            pb.SetVariableRequest(
                instance_id=started.instance_id, name="x", value=struct_pb2.Value(bool_value=True)
            ),
            metadata=theirs,
        ),
    ):
        assert failure(call)[0] is grpc.StatusCode.FAILED_PRECONDITION
    assert not stack.stub.ListInstances(pb.ListInstancesRequest(), metadata=theirs).instances
    after = stack.stub.GetInstance(
        pb.GetInstanceRequest(instance_id=started.instance_id), metadata=bearer(acme)
    )
    assert after == own
    assert not stack.stub.GetVariables(
        pb.GetVariablesRequest(instance_id=started.instance_id), metadata=bearer(acme)
    ).variables


def test_revocation_and_permission_removal_take_effect(stack: Stack) -> None:
    stack.app.directory.create_role("auditor", ["access orchestra api"])
    token, client_id = stack.token(roles=["auditor"])
    assert not stack.stub.ListInstances(pb.ListInstancesRequest(), metadata=bearer(token)).instances
    stack.app.directory.revoke("auditor", "access orchestra api")
    code, _, trailers = failure(
        lambda: stack.stub.ListInstances(pb.ListInstancesRequest(), metadata=bearer(token))
    )
    assert (code, trailers["x-http-status"]) == (grpc.StatusCode.PERMISSION_DENIED, "403")
    stack.app.directory.grant("auditor", "access orchestra api")
    assert not stack.stub.ListInstances(pb.ListInstancesRequest(), metadata=bearer(token)).instances
    stack.app.directory.revoke_consumer(client_id)
    code, _, _ = failure(lambda: stack.stub.ListInstances(pb.ListInstancesRequest(), metadata=bearer(token)))
    assert code is grpc.StatusCode.UNAUTHENTICATED


def test_expired_tokens_are_refused(stack: Stack) -> None:
    token, _ = stack.token()
    stack.clock.advance(timedelta(minutes=59))
    assert not stack.stub.ListInstances(pb.ListInstancesRequest(), metadata=bearer(token)).instances
    stack.clock.advance(timedelta(minutes=2))
    code, _, _ = failure(lambda: stack.stub.ListInstances(pb.ListInstancesRequest(), metadata=bearer(token)))
    assert code is grpc.StatusCode.UNAUTHENTICATED


def test_key_rotation_keeps_old_tokens_valid_until_they_expire(stack: Stack) -> None:
    old_token, _ = stack.token()
    new_key = stack.app.key_ring.rotate(stack.clock(), timedelta(seconds=60))
    jwks = json.loads(stack.auth.GetJwks(auth_pb.GetJwksRequest()).http_body.data)
    assert new_key.kid in {k["kid"] for k in jwks["keys"]}  # published before it signs
    stack.clock.advance(timedelta(seconds=61))
    new_token, _ = stack.token()
    header = json.loads(_b64(new_token.split(".")[0]))
    assert header["kid"] == new_key.kid
    for token in (old_token, new_token):
        assert not stack.stub.ListInstances(pb.ListInstancesRequest(), metadata=bearer(token)).instances
    # The old token's hour (and the verifier's 30 s leeway) has passed; the new one's has not.
    stack.clock.advance(timedelta(minutes=60))
    code, _, _ = failure(
        lambda: stack.stub.ListInstances(pb.ListInstancesRequest(), metadata=bearer(old_token))
    )
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert not stack.stub.ListInstances(pb.ListInstancesRequest(), metadata=bearer(new_token)).instances


def test_unexpected_failures_leak_nothing(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    token, _ = stack.token()

    def explode(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("SELECT secret FROM internals at /srv/orchestra/app.py line 42")

    monkeypatch.setattr(stack.app.processes, "get_instance", explode)
    code, message, trailers = failure(
        lambda: stack.stub.GetInstance(pb.GetInstanceRequest(instance_id="x"), metadata=bearer(token))
    )
    assert (code, message, trailers["x-http-status"]) == (grpc.StatusCode.INTERNAL, "internal error", "500")


def test_token_endpoint_errors_are_rfc_codes(stack: Stack) -> None:
    def issue(body: bytes, content_type: str = "application/x-www-form-urlencoded") -> Any:
        return stack.auth.IssueToken(
            auth_pb.IssueTokenRequest(http_body=httpbody_pb2.HttpBody(content_type=content_type, data=body))
        )

    code, message, trailers = failure(
        lambda: issue(b"grant_type=client_credentials&client_id=a&client_secret=b")
    )
    assert (code, message, trailers["x-http-status"]) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "invalid_client",
        "401",
    )
    code, message, trailers = failure(lambda: issue(b"grant_type=password&client_id=a&client_secret=b"))
    assert (code, message, trailers["x-http-status"]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "unsupported_grant_type",
        "400",
    )
    code, message, _ = failure(lambda: issue(b'{"grant_type": "client_credentials"}', "application/json"))
    assert (code, message) == (grpc.StatusCode.INVALID_ARGUMENT, "invalid_request")


def _b64(part: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def test_ping_authenticates_like_every_call(stack: Stack) -> None:
    from orchestra.v1 import diagnostics_service_pb2 as diag_pb
    from orchestra.v1 import diagnostics_service_pb2_grpc as diag_grpc

    ping = diag_grpc.DiagnosticsServiceStub(stack.channel)
    code, _, _ = failure(lambda: ping.Ping(diag_pb.PingRequest()))
    assert code is grpc.StatusCode.UNAUTHENTICATED
    token, _ = stack.token("globex")
    answer = ping.Ping(diag_pb.PingRequest(), metadata=bearer(token))
    assert (answer.status, answer.tenant_id) == ("ok", "globex")


# --- requests the decoder refuses, nesting and numbers -------------------------------------

UNDECODABLE = b"\x0a\xff\xff\xff\xff\x0f"  # a field claiming more bytes than follow


def _method_paths() -> list[tuple[str, bool, bool]]:
    """Every method the server registers: (path, request streaming, response streaming)."""
    from grpc_health.v1 import health_pb2 as health_descriptors
    from grpc_reflection.v1alpha import reflection_pb2
    from orchestra.v1 import diagnostics_service_pb2

    files = (
        pb.DESCRIPTOR,
        auth_pb.DESCRIPTOR,
        diagnostics_service_pb2.DESCRIPTOR,
        health_descriptors.DESCRIPTOR,
        reflection_pb2.DESCRIPTOR,
    )
    return [
        (f"/{service.full_name}/{method.name}", method.client_streaming, method.server_streaming)
        for file in files
        for service in file.services_by_name.values()
        for method in service.methods
    ]


def _send(
    channel: grpc.Channel, path: str, request_streaming: bool, response_streaming: bool, md: Any
) -> None:
    if request_streaming and response_streaming:
        list(channel.stream_stream(path)(iter([UNDECODABLE]), metadata=md, timeout=10))
    elif response_streaming:
        list(channel.unary_stream(path)(UNDECODABLE, metadata=md, timeout=10))
    else:
        channel.unary_unary(path)(UNDECODABLE, metadata=md, timeout=10)


def test_every_method_answers_an_undecodable_request_with_invalid_argument(stack: Stack) -> None:
    token, _ = stack.token()
    paths = _method_paths()
    assert len(paths) >= 10
    for path, request_streaming, response_streaming in paths:
        md = bearer(token)
        with pytest.raises(grpc.RpcError) as caught:
            _send(stack.channel, path, request_streaming, response_streaming, md)
        error = caught.value
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (path, error.code(), error.details())
        assert error.details().startswith("request could not be decoded"), path
        assert dict(error.trailing_metadata() or ())["x-http-status"] == "400", path


def _raw_call(stack: Stack, method: str, body: bytes, md: Any) -> Any:
    return stack.channel.unary_unary(f"/orchestra.v1.OrchestraService/{method}")(
        body, metadata=md, timeout=30
    )


@pytest.mark.parametrize("leaf", list(deep_values.LEAVES.values()), ids=list(deep_values.LEAVES))
def test_nesting_is_exact_and_any_depth_beyond_is_invalid_argument(stack: Stack, leaf: Any) -> None:
    token, _ = stack.token()
    md = bearer(token)
    instance_id = stack.stub.StartProcess(
        pb.StartProcessRequest(definition_id="three_step"), metadata=md
    ).instance_id
    set_request = pb.SetVariableRequest(instance_id=instance_id, name="deep").SerializeToString()
    start_request = pb.StartProcessRequest(definition_id="three_step").SerializeToString()

    def set_deep(depth: int) -> Any:
        value = deep_values.nested_value_bytes(depth, leaf)
        return _raw_call(stack, "SetVariable", deep_values.with_value_field(set_request, 3, value), md)

    def start_deep(depth: int) -> Any:
        entry = deep_values.map_entry("deep", deep_values.nested_value_bytes(depth, leaf))
        return _raw_call(stack, "StartProcess", deep_values.with_value_field(start_request, 2, entry), md)

    set_deep(32)
    variables = stack.stub.GetVariables(pb.GetVariablesRequest(instance_id=instance_id), metadata=md)
    assert values.map_to_python(variables.variables) == {"deep": deep_values.nested(32, leaf)}
    started = pb.StartProcessResponse.FromString(start_deep(32))
    variables = stack.stub.GetVariables(pb.GetVariablesRequest(instance_id=started.instance_id), metadata=md)
    assert values.map_to_python(variables.variables) == {"deep": deep_values.nested(32, leaf)}
    before = len(stack.stub.ListInstances(pb.ListInstancesRequest(), metadata=md).instances)
    for depth in (33, 34, 50, 51, 100, 10_000):
        for call in (set_deep, start_deep):
            code, message, trailers = failure(lambda call=call, depth=depth: call(depth))
            assert (code, trailers["x-http-status"]) == (grpc.StatusCode.INVALID_ARGUMENT, "400"), (
                depth,
                message,
            )
            assert "deeper than 32 levels" in message, (depth, message)
    assert len(stack.stub.ListInstances(pb.ListInstancesRequest(), metadata=md).instances) == before
    variables = stack.stub.GetVariables(pb.GetVariablesRequest(instance_id=instance_id), metadata=md)
    assert values.map_to_python(variables.variables) == {"deep": deep_values.nested(32, leaf)}


def test_integers_beyond_2_to_the_53_are_invalid_argument_naming_the_variable(stack: Stack) -> None:
    token, _ = stack.token()
    md = bearer(token)
    exact = 2**53 - 1
    request = pb.StartProcessRequest(definition_id="three_step")
    values.to_proto({"n": [exact, -exact, 0.5]}, request.variables["v"])
    instance_id = stack.stub.StartProcess(request, metadata=md).instance_id
    for number in (2.0**53, -(2.0**53), 2.0**53 + 2, 1e300):
        for value in (number, {"deep": [1, {"x": number}]}):
            bad_set = pb.SetVariableRequest(
                instance_id=instance_id, name="amount", value=values.to_proto(value)
            )
            bad_start = pb.StartProcessRequest(definition_id="three_step")
            values.to_proto(value, bad_start.variables["amount"])
            for call in (
                lambda bad_set=bad_set: stack.stub.SetVariable(bad_set, metadata=md),
                lambda bad_start=bad_start: stack.stub.StartProcess(bad_start, metadata=md),
            ):
                code, message, trailers = failure(call)
                assert (code, trailers["x-http-status"]) == (grpc.StatusCode.INVALID_ARGUMENT, "400")
                assert message.startswith("variable amount holds an integer beyond +/-9007199254740991"), (
                    message
                )
    variables = stack.stub.GetVariables(pb.GetVariablesRequest(instance_id=instance_id), metadata=md)
    assert values.map_to_python(variables.variables) == {"v": {"n": [exact, -exact, 0.5]}}
    assert len(stack.stub.ListInstances(pb.ListInstancesRequest(), metadata=md).instances) == 1
