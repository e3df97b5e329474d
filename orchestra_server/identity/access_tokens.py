"""JWT access tokens in the RFC 9068 profile: issuing, and verifying with a cache for the hot path."""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeGuard

import jwt

from orchestra_server.errors import Unauthenticated
from orchestra_server.identity.keys import KeyRing

ALGORITHM = "ES256"
JWT_TYP = "at+jwt"
# RFC 9068 section 4: the short form is what we write; the media type is what
# the RFC also allows a verifier to meet.
_ACCEPTED_TYPES = frozenset({"at+jwt", "application/at+jwt"})
DEFAULT_LIFETIME = timedelta(hours=1)
DEFAULT_LEEWAY = timedelta(seconds=30)
DEFAULT_CACHE_SIZE = 10_000
# Ours are well under 1 KiB; refusing huge strings early keeps parsing bounded.
MAX_TOKEN_LENGTH = 4096
_REQUIRED_CLAIMS = ["iss", "aud", "sub", "client_id", "iat", "exp", "jti", "tenant_id"]


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """What a valid access token says about its bearer."""

    client_id: str
    tenant_id: str
    jti: str
    expires_at: datetime


class AccessTokenIssuer:
    """Signs access tokens with the key ring's current key."""

    def __init__(
        self, key_ring: KeyRing, issuer: str, audience: str, lifetime: timedelta = DEFAULT_LIFETIME
    ) -> None:
        seconds = lifetime.total_seconds()
        if seconds < 1 or seconds != int(seconds):
            raise ValueError("token lifetime must be a positive whole number of seconds")
        # The ring keeps a retired key published only that long; a longer-lived
        # token would outlive the key that verifies it.
        if lifetime > key_ring.max_token_lifetime:
            raise ValueError("token lifetime exceeds the key ring's max_token_lifetime")
        self._ring = key_ring
        self._issuer = issuer
        self._audience = audience
        self._lifetime = int(seconds)

    @property
    def lifetime_seconds(self) -> int:
        return self._lifetime

    def issue(self, client_id: str, tenant_id: str, now: datetime) -> tuple[str, int]:
        """A signed token for the consumer and its lifetime in seconds (the `expires_in`)."""
        key = self._ring.signing_key(now)
        issued_at = int(now.timestamp())
        claims = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": client_id,
            "client_id": client_id,
            "tenant_id": tenant_id,
            "iat": issued_at,
            "nbf": issued_at,
            "exp": issued_at + self._lifetime,
            "jti": secrets.token_urlsafe(16),
        }
        token = jwt.encode(
            claims, key.private_key, algorithm=ALGORITHM, headers={"typ": JWT_TYP, "kid": key.kid}
        )
        return token, self._lifetime


@dataclass(frozen=True, slots=True)
class _Entry:
    verified: VerifiedToken
    valid_from: float
    valid_until: float


def _invalid() -> Unauthenticated:
    # One message for every failure: the caller learns nothing about which check failed.
    return Unauthenticated("invalid access token")


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


class AccessTokenVerifier:
    """Checks access tokens; a token verified once is answered from memory until it expires.

    The cache holds only tokens that passed every check, is bounded (least
    recently used entries go first), and is emptied whenever the key ring is
    re-read, so a key removed from the file stops verifying at once.
    Revocation of the consumer is not checked here: see `Authenticator`.
    """

    def __init__(
        self,
        key_ring: KeyRing,
        issuer: str,
        audience: str,
        leeway: timedelta = DEFAULT_LEEWAY,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        if leeway < timedelta(0) or cache_size < 0:
            raise ValueError("leeway and cache_size must not be negative")
        self._ring = key_ring
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway.total_seconds()
        self._cache_size = cache_size
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._generation = key_ring.generation()

    def verify(self, token: str, now: datetime) -> VerifiedToken:
        """The token's claims, or `Unauthenticated("invalid access token")`."""
        at = now.timestamp()
        generation = self._ring.generation()
        with self._lock:
            if generation != self._generation:
                self._cache.clear()
                self._generation = generation
            entry = self._cache.get(token)
            if entry is not None:
                if entry.valid_from <= at < entry.valid_until:
                    self._cache.move_to_end(token)
                    return entry.verified
                del self._cache[token]
        entry = self._verify_uncached(token, now, at)
        if self._cache_size:
            with self._lock:
                if generation == self._generation:
                    self._cache[token] = entry
                    if len(self._cache) > self._cache_size:
                        self._cache.popitem(last=False)
        return entry.verified

    def cache_len(self) -> int:
        with self._lock:
            return len(self._cache)

    def _verify_uncached(self, token: str, now: datetime, at: float) -> _Entry:
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            raise _invalid()
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError):
            raise _invalid() from None
        typ = header.get("typ")
        kid = header.get("kid")
        if (
            header.get("alg") != ALGORITHM
            or not isinstance(typ, str)
            or typ.lower() not in _ACCEPTED_TYPES
            or not isinstance(kid, str)
            # Nothing here understands a critical extension, so none may be present.
            or "crit" in header
        ):
            raise _invalid()
        key = self._ring.verification_key(kid, now)
        if key is None:
            raise _invalid()
        try:
            # PyJWT reads its own clock, so the time checks are done below
            # against `now`; everything else it checks here.
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                issuer=self._issuer,
                audience=self._audience,
                options={
                    "verify_signature": True,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_iss": True,
                    "verify_aud": True,
                    "require": _REQUIRED_CLAIMS,
                },
            )
        except (jwt.PyJWTError, ValueError, TypeError):
            raise _invalid() from None
        return self._check_claims(claims, at)

    def _check_claims(self, claims: dict[str, Any], at: float) -> _Entry:
        sub, client_id, tenant_id, jti = (
            claims.get("sub"),
            claims.get("client_id"),
            claims.get("tenant_id"),
            claims.get("jti"),
        )
        exp, iat = claims.get("exp"), claims.get("iat")
        nbf = claims.get("nbf", iat)
        if not (
            isinstance(sub, str)
            and sub
            and client_id == sub
            and isinstance(tenant_id, str)
            and tenant_id
            and isinstance(jti, str)
            and jti
            and _is_number(exp)
            and _is_number(iat)
            and _is_number(nbf)
        ):
            raise _invalid()
        valid_from = float(max(iat, nbf)) - self._leeway
        valid_until = float(exp) + self._leeway
        if not valid_from <= at < valid_until:
            raise _invalid()
        try:
            expires_at = datetime.fromtimestamp(exp, UTC)
        except (OverflowError, OSError, ValueError):
            raise _invalid() from None
        verified = VerifiedToken(client_id=sub, tenant_id=tenant_id, jti=jti, expires_at=expires_at)
        return _Entry(verified=verified, valid_from=valid_from, valid_until=valid_until)
