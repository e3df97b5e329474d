"""The single error-mapping table: domain error -> gRPC status, and the HTTP status the edge answers with."""

from __future__ import annotations

import logging
from typing import NoReturn

import grpc

from orchestra_server import errors

# Carries the REST status to the edge: trailing metadata on an error, initial metadata on a success.
HTTP_STATUS_METADATA = "x-http-status"

# Found by walking the exception's class hierarchy, so a new subclass inherits its branch's row.
GRPC_CODES: dict[type[errors.OrchestraError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.Unprocessable: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}

# One HTTP status per gRPC code, so REST and gRPC callers see the same distinctions.
HTTP_STATUSES: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 422,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
}

INTERNAL_MESSAGE = "internal error"
_log = logging.getLogger("orchestra.transport")


def grpc_code_for(error: errors.OrchestraError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        code = GRPC_CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def abort(context: grpc.ServicerContext, error: BaseException) -> NoReturn:
    """Ends the call with the mapped status; anything unexpected is logged and answered opaquely."""
    if isinstance(error, errors.OrchestraError):
        code, message = grpc_code_for(error), str(error)
    else:
        _log.error("unhandled error", exc_info=error)
        code, message = grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
    abort_with(context, code, message)


def abort_with(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.set_trailing_metadata(((HTTP_STATUS_METADATA, str(HTTP_STATUSES[code])),))
    context.abort(code, message)
