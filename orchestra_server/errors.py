"""The one tree of domain errors; the transport maps each branch to a status."""

from __future__ import annotations


class OrchestraError(Exception):
    """Base of every error Orchestra reports to a caller.

    The message is shown to the caller as it is, so it never carries
    internals (SQL, stack traces, paths) and echoes no unvalidated input.
    """


class InvalidArgument(OrchestraError):
    """The request itself is malformed: a missing or wrong-typed field."""


class LimitExceeded(InvalidArgument):
    """A value is larger, deeper or longer than the published limits allow."""


class DefinitionInvalid(InvalidArgument):
    """A process definition failed deploy-time validation."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class NotFound(OrchestraError):
    """The addressed resource does not exist in the caller's tenant."""


class InstanceNotFound(NotFound):
    """No such instance in the caller's tenant."""

    def __init__(self) -> None:
        super().__init__("instance not found")


class Unprocessable(OrchestraError):
    """The request is well-formed but cannot be carried out."""


class UnknownDefinition(Unprocessable):
    """No definition with that id is available to the caller's tenant."""

    def __init__(self) -> None:
        super().__init__("unknown process definition")


class TokenNotParked(Unprocessable):
    """The token is not parked in a running instance of the caller's tenant."""

    def __init__(self) -> None:
        super().__init__("token is not parked")


class TokenNotInIncident(Unprocessable):
    """The token is not in incident in a running instance of the caller's tenant."""

    def __init__(self) -> None:
        super().__init__("token is not in incident")


class InstanceNotWritable(Unprocessable):
    """The instance is missing, not running, or another tenant's."""

    def __init__(self) -> None:
        super().__init__("instance is not running")


class IdempotencyConflict(Unprocessable):
    """An idempotency key was reused with a different request."""

    def __init__(self) -> None:
        super().__init__("idempotency key was used with a different request")


class Unauthenticated(OrchestraError):
    """No valid access token (or client credentials) came with the call."""


class PermissionDenied(OrchestraError):
    """The caller is known but may not do this."""


class Overloaded(OrchestraError):
    """The server sheds load rather than queue without bound; retry later."""


class Unavailable(OrchestraError):
    """A dependency (the database) cannot be reached; retry later."""
