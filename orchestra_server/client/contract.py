"""The client contract: the operations every transport offers, and how failures map back to errors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import grpc

from orchestra_server import errors
from orchestra_server.engine.model import Json
from orchestra_server.service.processes import InstancePage, InstanceSummary, InstanceView, TokenView
from orchestra_server.transport.errors import GRPC_CODES, HTTP_STATUSES

__all__ = [
    "InstancePage",
    "InstanceSummary",
    "InstanceView",
    "OrchestraClient",
    "TokenView",
    "error_for_grpc",
    "error_for_http",
]


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

    def signal_token(self, token_id: str) -> None:
        """Signals a parked token. Unprocessable when it is not parked in the tenant."""
        ...

    def get_variables(self, instance_id: str) -> dict[str, Json]:
        """The instance's variables; empty for an inaccessible instance."""
        ...

    def set_variable(self, instance_id: str, name: str, value: Json) -> None:
        """Creates or replaces a variable. InvalidArgument for bad input, Unprocessable otherwise."""
        ...

    def close(self) -> None: ...


# The server's table, read backwards: the most general error of each status.
_ERROR_FOR_CODE: dict[grpc.StatusCode, type[errors.OrchestraError]] = {
    code: cls for cls, code in GRPC_CODES.items()
}
_CODE_FOR_HTTP: dict[int, grpc.StatusCode] = {status: code for code, status in HTTP_STATUSES.items()}


def error_for_grpc(code: grpc.StatusCode, message: str) -> errors.OrchestraError:
    cls = _ERROR_FOR_CODE.get(code, errors.OrchestraError)
    return _make(cls, message)


def error_for_http(status: int, message: str) -> errors.OrchestraError:
    if status == 413:
        return errors.LimitExceeded(message)
    code = _CODE_FOR_HTTP.get(status)
    return (
        error_for_grpc(code, message)
        if code is not None
        else errors.OrchestraError(f"HTTP {status}: {message}")
    )


def _make(cls: type[errors.OrchestraError], message: str) -> errors.OrchestraError:
    error = cls.__new__(cls)
    errors.OrchestraError.__init__(error, message)
    return error
