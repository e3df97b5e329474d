"""Every domain error has one gRPC status and one HTTP status, and clients can tell them apart."""

from __future__ import annotations

import inspect

import grpc
import pytest

from orchestra_server import errors
from orchestra_server.client.contract import CODE_FOR_HTTP, ERROR_FOR_CODE, error_for_grpc, error_for_http
from orchestra_server.transport.errors import GRPC_CODES, HTTP_STATUSES, grpc_code_for


def all_domain_errors() -> list[type[errors.OrchestraError]]:
    return [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.OrchestraError) and cls is not errors.OrchestraError
    ]


def make(cls: type[errors.OrchestraError]) -> errors.OrchestraError:
    if cls is errors.DefinitionInvalid:
        return cls(["x.yaml: bad"])  # type: ignore[call-arg]
    try:
        return cls("message")  # type: ignore[call-arg]
    except TypeError:
        return cls()


@pytest.mark.parametrize("cls", all_domain_errors(), ids=lambda c: c.__name__)
def test_every_domain_error_is_mapped(cls: type[errors.OrchestraError]) -> None:
    code = grpc_code_for(make(cls))
    assert code is not grpc.StatusCode.INTERNAL, f"{cls.__name__} has no row in the error table"
    assert code in HTTP_STATUSES


def test_contract_statuses() -> None:
    expected = {
        errors.InstanceNotFound: 404,
        errors.UnknownDefinition: 422,
        errors.TokenNotParked: 422,
        errors.InstanceNotWritable: 422,
        errors.IdempotencyConflict: 422,
        errors.InvalidArgument: 400,
        errors.LimitExceeded: 400,
        errors.Unauthenticated: 401,
        errors.PermissionDenied: 403,
        errors.Overloaded: 429,
        errors.Unavailable: 503,
    }
    for cls, status in expected.items():
        assert HTTP_STATUSES[grpc_code_for(make(cls))] == status, cls.__name__


def test_http_statuses_are_one_to_one() -> None:
    assert len(set(HTTP_STATUSES.values())) == len(HTTP_STATUSES)
    assert set(GRPC_CODES.values()) <= set(HTTP_STATUSES)


def test_unknown_exception_is_internal() -> None:
    class Strange(errors.OrchestraError):
        pass

    # A direct subclass of the root has no branch row: it must not pass as a client error.
    assert grpc_code_for(Strange("x")) is grpc.StatusCode.INTERNAL


def test_the_clients_table_is_the_servers_read_backwards() -> None:
    # The client keeps its own copy so that it loads none of the server; the copies must agree.
    assert {code: cls for cls, code in GRPC_CODES.items()} == ERROR_FOR_CODE
    assert {status: code for code, status in HTTP_STATUSES.items()} == CODE_FOR_HTTP


@pytest.mark.parametrize("cls", all_domain_errors(), ids=lambda c: c.__name__)
def test_a_client_gets_back_the_branch_of_every_domain_error(cls: type[errors.OrchestraError]) -> None:
    code = grpc_code_for(make(cls))
    over_grpc = error_for_grpc(code, "message")
    over_http = error_for_http(HTTP_STATUSES[code], "message")
    assert type(over_grpc) is type(over_http)
    assert isinstance(make(cls), type(over_grpc))
    assert type(over_grpc) is not errors.OrchestraError
