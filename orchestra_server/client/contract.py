"""The client contract: the operations every transport offers, and how failures map back to errors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import grpc

from orchestra_server import errors
from orchestra_server.wire.json_text import Json

__all__ = [
    "InstancePage",
    "InstanceSummary",
    "InstanceView",
    "OrchestraClient",
    "TokenView",
    "error_for_grpc",
    "error_for_http",
]


# The client's own values: a client process loads none of the server's layers.
@dataclass(frozen=True, slots=True)
class TokenView:
    id: str
    node_id: str
    status: str
    # Set on incident tokens only.
    incident_kind: str | None = None
    incident_reason: str | None = None
    # When the token came to rest; None only for tokens stored before this was recorded.
    since: datetime | None = None


@dataclass(frozen=True, slots=True)
class InstanceView:
    id: str
    definition_id: str
    status: str
    tenant_id: str
    tokens: tuple[TokenView, ...]
    definition_version: int
    started_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class InstanceSummary:
    id: str
    definition_id: str
    status: str


@dataclass(frozen=True, slots=True)
class InstancePage:
    instances: tuple[InstanceSummary, ...]
    next_page_token: str = ""


class OrchestraClient(Protocol):
    """The operations of one consumer, scoped to the tenant its credentials are bound to."""

    def start_process(
        self,
        definition_id: str,
        variables: Mapping[str, Json] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> str:
        """Starts an instance; returns its id. Unprocessable for an unknown definition."""
        ...

    def list_instances(
        self,
        *,
        definition_id: str | None = None,
        status: str | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> InstancePage:
        """One page of the tenant's instance summaries, newest first."""
        ...

    def get_instance(self, instance_id: str) -> InstanceView:
        """The instance with its live tokens. NotFound when missing or another tenant's."""
        ...

    def signal_token(self, token_id: str, variables: Mapping[str, Json] | None = None) -> None:
        """Signals a parked token, first setting `variables` in the same transaction (all or none).

        Unprocessable when it is not parked in the tenant; InvalidArgument for bad variables.
        """
        ...

    def get_variables(self, instance_id: str) -> dict[str, Json]:
        """The instance's variables; empty for an inaccessible instance."""
        ...

    def set_variable(self, instance_id: str, name: str, value: Json) -> None:
        """Creates or replaces a variable. InvalidArgument for bad input, Unprocessable otherwise."""
        ...

    def close(self) -> None: ...


# The server's one table (transport.errors) read backwards: the most general error of each status.
# Kept here so a client does not load the server; a unit test holds the two in agreement.
ERROR_FOR_CODE: dict[grpc.StatusCode, type[errors.OrchestraError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: errors.Unprocessable,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.Overloaded,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
}
# The HTTP status the edge answers for each gRPC status, read backwards.
CODE_FOR_HTTP: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    422: grpc.StatusCode.FAILED_PRECONDITION,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
}


def error_for_grpc(code: grpc.StatusCode, message: str) -> errors.OrchestraError:
    cls = ERROR_FOR_CODE.get(code, errors.OrchestraError)
    return _make(cls, message)


def error_for_http(status: int, message: str) -> errors.OrchestraError:
    if status == 413:
        return errors.LimitExceeded(message)
    code = CODE_FOR_HTTP.get(status)
    return (
        error_for_grpc(code, message)
        if code is not None
        else errors.OrchestraError(f"HTTP {status}: {message}")
    )


def _make(cls: type[errors.OrchestraError], message: str) -> errors.OrchestraError:
    error = cls.__new__(cls)
    errors.OrchestraError.__init__(error, message)
    return error
