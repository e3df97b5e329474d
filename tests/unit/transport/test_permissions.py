"""The guard's permission table: every method has its row, and each call is held to it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from orchestra.v1 import (
    auth_service_pb2,
    diagnostics_service_pb2,
    operations_service_pb2,
    orchestra_service_pb2,
)

from orchestra_server.errors import Unauthenticated
from orchestra_server.identity.consumers import (
    ACCESS_PERMISSION,
    API_PERMISSIONS,
    DEPLOY_PERMISSION,
    OPERATE_PERMISSION,
)
from orchestra_server.service.processes import Caller
from orchestra_server.transport.guard import METHOD_PERMISSIONS, GuardInterceptor, current_caller
from orchestra_server.transport.server import SERVICE_NAMES

NOW = datetime(2026, 1, 1, tzinfo=UTC)
FILES = (auth_service_pb2, diagnostics_service_pb2, operations_service_pb2, orchestra_service_pb2)


def served_methods() -> set[str]:
    methods = set()
    for module in FILES:
        for service in module.DESCRIPTOR.services_by_name.values():
            assert service.full_name in SERVICE_NAMES, f"{service.full_name} is not served"
            methods.update(f"/{service.full_name}/{m.name}" for m in service.methods)
    return methods


def test_every_method_of_every_service_has_exactly_its_row() -> None:
    assert set(METHOD_PERMISSIONS) == served_methods()


def test_the_table_names_only_permissions_that_earn_a_token() -> None:
    assert {p for p in METHOD_PERMISSIONS.values() if p is not None} <= API_PERMISSIONS


@pytest.mark.parametrize(
    ("method", "needed"),
    [
        ("/orchestra.v1.OrchestraService/StartProcess", ACCESS_PERMISSION),
        ("/orchestra.v1.OrchestraService/SignalToken", ACCESS_PERMISSION),
        ("/orchestra.v1.DiagnosticsService/Ping", ACCESS_PERMISSION),
        ("/orchestra.v1.OperationsService/SearchInstances", OPERATE_PERMISSION),
        ("/orchestra.v1.OperationsService/ResolveIncident", OPERATE_PERMISSION),
        ("/orchestra.v1.OperationsService/DeployDefinition", DEPLOY_PERMISSION),
        ("/orchestra.v1.AuthService/IssueToken", None),
    ],
)
def test_the_routes_of_the_issue(method: str, needed: str | None) -> None:
    assert METHOD_PERMISSIONS[method] == needed


class Aborted(Exception):
    pass


class Context:
    """What the guard uses of a servicer context."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.message = ""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", "Bearer t"),)

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass

    def abort(self, code: grpc.StatusCode, message: str) -> None:
        self.code, self.message = code, message
        raise Aborted


def call(method: str, permissions: frozenset[str]) -> tuple[str | None, Context]:
    def authenticate(authorization: str | None, tenant_hint: str | None, now: datetime) -> Caller:
        return Caller("tenant-a", "client-a", permissions)

    def inner(request: Any, context: Any) -> str:
        try:
            return current_caller().actor
        except Unauthenticated:
            return "anonymous"

    handler = grpc.unary_unary_rpc_method_handler(inner)
    guarded = GuardInterceptor(authenticate, lambda: NOW).wrap(handler, method)
    context = Context()
    try:
        return guarded.unary_unary(None, context), context
    except Aborted:
        return None, context


@pytest.mark.parametrize("method", sorted(m for m, p in METHOD_PERMISSIONS.items() if p is not None))
def test_a_method_runs_with_its_permission_and_is_refused_without(method: str) -> None:
    needed = METHOD_PERMISSIONS[method]
    assert needed is not None
    assert call(method, frozenset({needed}))[0] == "client-a"
    others = API_PERMISSIONS - {needed}
    answer, context = call(method, frozenset(others))
    assert answer is None
    assert context.code is grpc.StatusCode.PERMISSION_DENIED
    assert context.message == f"the consumer lacks the '{needed}' permission"


def test_a_consumer_without_access_is_refused_the_consumer_api_as_before() -> None:
    _, context = call("/orchestra.v1.OrchestraService/GetInstance", frozenset({OPERATE_PERMISSION}))
    assert (context.code, context.message) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "the consumer lacks the 'access orchestra api' permission",
    )


def test_an_orchestra_method_without_a_row_is_refused_whatever_the_caller_holds() -> None:
    answer, context = call("/orchestra.v1.OperationsService/Unlisted", API_PERMISSIONS)
    assert answer is None
    assert context.code is grpc.StatusCode.PERMISSION_DENIED


def test_methods_outside_orchestra_need_no_token() -> None:
    answer, context = call("/grpc.health.v1.Health/Check", frozenset())
    assert (answer, context.code) == ("anonymous", None)
