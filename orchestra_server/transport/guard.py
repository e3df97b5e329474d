"""The server interceptor: authenticates Orchestra calls and maps every error through the one table."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

import grpc

from orchestra_server import errors
from orchestra_server.identity.consumers import ACCESS_PERMISSION, DEPLOY_PERMISSION, OPERATE_PERMISSION
from orchestra_server.service.processes import Caller
from orchestra_server.transport.errors import abort
from orchestra_server.transport.interception import MethodWrapper

# What each method needs: a valid access token whose consumer holds this permission, or,
# for None, nothing (AuthService issues the tokens). A method of an Orchestra service missing
# here is refused, so a new RPC is closed until it is given its row.
PUBLIC = None
METHOD_PERMISSIONS: dict[str, str | None] = {
    "/orchestra.v1.OrchestraService/StartProcess": ACCESS_PERMISSION,
    "/orchestra.v1.OrchestraService/ListInstances": ACCESS_PERMISSION,
    "/orchestra.v1.OrchestraService/GetInstance": ACCESS_PERMISSION,
    "/orchestra.v1.OrchestraService/SignalToken": ACCESS_PERMISSION,
    "/orchestra.v1.OrchestraService/GetVariables": ACCESS_PERMISSION,
    "/orchestra.v1.OrchestraService/SetVariable": ACCESS_PERMISSION,
    "/orchestra.v1.DiagnosticsService/Ping": ACCESS_PERMISSION,
    "/orchestra.v1.AuthService/IssueToken": PUBLIC,
    "/orchestra.v1.AuthService/GetJwks": PUBLIC,
    "/orchestra.v1.OperationsService/DeployDefinition": DEPLOY_PERMISSION,
    "/orchestra.v1.OperationsService/ListDefinitions": OPERATE_PERMISSION,
    "/orchestra.v1.OperationsService/GetDefinition": OPERATE_PERMISSION,
    "/orchestra.v1.OperationsService/SearchInstances": OPERATE_PERMISSION,
    "/orchestra.v1.OperationsService/GetInstanceDetail": OPERATE_PERMISSION,
    "/orchestra.v1.OperationsService/GetInstanceHistory": OPERATE_PERMISSION,
    "/orchestra.v1.OperationsService/CancelInstance": OPERATE_PERMISSION,
    "/orchestra.v1.OperationsService/ListIncidents": OPERATE_PERMISSION,
    "/orchestra.v1.OperationsService/ResolveIncident": OPERATE_PERMISSION,
    "/orchestra.v1.OperationsService/CancelInstances": OPERATE_PERMISSION,
    "/orchestra.v1.OperationsService/RetryIncidents": OPERATE_PERMISSION,
}
# Methods of these packages are Orchestra's own; any other (health, reflection) is open.
ORCHESTRA_PREFIX = "/orchestra.v1."
_UNLISTED = "\x00unlisted"
# Forwarded by the edge from the verified token; a direct caller may send it too, but it
# must then agree with the token: it never chooses the tenant on its own.
TENANT_METADATA = "x-orchestra-tenant"

_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("orchestra_caller")


class Authenticates(Protocol):
    def __call__(self, authorization: str | None, tenant_hint: str | None, now: datetime) -> Caller: ...


def current_caller() -> Caller:
    """The authenticated caller of the call in progress (set by the interceptor)."""
    try:
        return _caller.get()
    except LookupError:
        raise errors.Unauthenticated("missing access token") from None


def metadata_value(context: grpc.ServicerContext, key: str) -> str | None:
    for item_key, item_value in context.invocation_metadata() or ():
        if item_key == key:
            return item_value if isinstance(item_value, str) else item_value.decode("latin-1")
    return None


class GuardInterceptor(MethodWrapper):
    def __init__(self, authenticate: Authenticates, clock: Callable[[], datetime]) -> None:
        super().__init__()
        self._authenticate = authenticate
        self._clock = clock

    def wrap(self, handler: Any, method: str) -> Any:
        if handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        needed = required_permission(method)

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                if needed is None:
                    return inner(request, context)
                caller = self._authenticate(
                    metadata_value(context, "authorization"),
                    metadata_value(context, TENANT_METADATA),
                    self._clock(),
                )
                if needed not in caller.permissions:
                    raise errors.PermissionDenied(_refusal(needed))
                token = _caller.set(caller)
                try:
                    return inner(request, context)
                finally:
                    _caller.reset(token)
            except Exception as exc:  # every error leaves through the one table
                if _is_abort(exc):
                    raise
                abort(context, exc)

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def required_permission(method: str) -> str | None:
    """The permission `method` needs (None: none, not even a token)."""
    if method in METHOD_PERMISSIONS:
        return METHOD_PERMISSIONS[method]
    return _UNLISTED if method.startswith(ORCHESTRA_PREFIX) else PUBLIC


def _refusal(permission: str) -> str:
    if permission == _UNLISTED:
        return "the method is not open to callers"
    return f"the consumer lacks the '{permission}' permission"


def _is_abort(exc: Exception) -> bool:
    # context.abort() raises a plain Exception after recording the status; let it through.
    return type(exc) is Exception and not exc.args
