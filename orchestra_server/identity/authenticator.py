"""Turns the `Authorization` header of an API call into the calling consumer and its tenant."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum

from orchestra_server.errors import Unauthenticated
from orchestra_server.identity.access_tokens import AccessTokenVerifier
from orchestra_server.identity.consumers import ConsumerDirectory

# Only real consumers can get here (the client id comes from a token we
# signed), so this bound is about memory hygiene, not attack surface.
_MAX_STANDINGS = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller: which consumer, the one tenant it acts in, what its roles grant."""

    client_id: str
    tenant_id: str
    # Each route checks its own permission among these (transport.guard).
    permissions: frozenset[str] = frozenset()


class _Standing(Enum):
    ACTIVE = "active"
    GONE = "gone"


@dataclass(frozen=True, slots=True)
class _Checked:
    standing: _Standing
    # Built once per check rather than per call: this is the per-request path.
    principal: Principal | None
    at: float


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Authenticator:
    """Checks bearer tokens and, every few seconds per client, that the consumer may still call.

    Revocation and permission changes are not instant: a consumer's standing and
    permissions are read from the directory at most once every `recheck_seconds`
    (2 s by default) per client, so revoking a consumer or changing its
    permissions takes effect within that many seconds, even for tokens that have
    not expired. Which permission a call needs is the transport's decision
    (transport.guard.METHOD_PERMISSIONS): the principal carries them all.
    """

    def __init__(
        self,
        verifier: AccessTokenVerifier,
        directory: ConsumerDirectory,
        recheck_seconds: float = 2.0,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        if recheck_seconds < 0:
            raise ValueError("recheck_seconds must not be negative")
        self._verifier = verifier
        self._directory = directory
        self._recheck = recheck_seconds
        self._clock = clock
        # Plain dict, no lock: a race only means two threads look the same
        # consumer up at once, and each stores a correct answer.
        self._standings: dict[str, _Checked] = {}

    def authenticate(self, authorization: str | None, now: datetime | None = None) -> Principal:
        """The caller behind `Bearer <token>`.

        Unauthenticated for a missing or invalid token or a revoked or deleted
        consumer.
        """
        if not authorization:
            raise Unauthenticated("missing access token")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token or " " in token:
            raise Unauthenticated("invalid access token")
        moment = self._clock() if now is None else now
        verified = self._verifier.verify(token, moment)
        checked = self._standing(verified.client_id, moment.timestamp())
        principal = checked.principal
        # The binding is immutable, so a token naming another tenant than the
        # consumer's was not issued for this consumer as it is now.
        if principal is None or principal.tenant_id != verified.tenant_id:
            raise Unauthenticated("invalid access token")
        return principal

    def _standing(self, client_id: str, at: float) -> _Checked:
        checked = self._standings.get(client_id)
        # A clock that went backwards also forces a fresh look.
        if checked is not None and checked.at <= at < checked.at + self._recheck:
            return checked
        consumer = self._directory.find_consumer(client_id)
        if consumer is None or consumer.revoked or consumer.client_id != client_id:
            checked = _Checked(_Standing.GONE, None, at)
        else:
            principal = Principal(
                client_id=client_id, tenant_id=consumer.tenant_id, permissions=frozenset(consumer.permissions)
            )
            checked = _Checked(_Standing.ACTIVE, principal, at)
        if client_id not in self._standings and len(self._standings) >= _MAX_STANDINGS:
            self._standings.clear()
        self._standings[client_id] = checked
        return checked


def check_forwarded_tenant(principal: Principal, forwarded_tenant: str | None) -> None:
    """If the edge forwarded a tenant, it must be the token's; a mismatch is Unauthenticated."""
    if forwarded_tenant is not None and forwarded_tenant != principal.tenant_id:
        raise Unauthenticated("tenant does not match the access token")
