"""Consumer client ids and secrets, and the slow salted hash the secrets are stored as."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from orchestra_server.errors import Overloaded

_SCHEME = "scrypt"
_SALT_BYTES = 16
_HASH_BYTES = 32
# Bounds for parameters read back from storage: a tampered row must not make
# one verification allocate gigabytes or spin for minutes.
_MAX_N = 2**20
_MAX_R = 32
_MAX_P = 16


@dataclass(frozen=True)
class ScryptParams:
    """The cost parameters of one scrypt hash (RFC 7914)."""

    n: int
    r: int
    p: int

    def __post_init__(self) -> None:
        if not (2 <= self.n <= _MAX_N and self.n & (self.n - 1) == 0):
            raise ValueError("scrypt n must be a power of two between 2 and 2**20")
        if not (1 <= self.r <= _MAX_R and 1 <= self.p <= _MAX_P):
            raise ValueError("scrypt r or p out of range")

    @property
    def maxmem(self) -> int:
        # OpenSSL refuses anything above its 32 MiB default unless told; scrypt
        # needs 128 * r * (n + p) bytes, plus headroom.
        return 128 * self.r * (self.n + self.p + 2) + 1024 * 1024


# About 0.1 s on a current server core: slow enough to make offline guessing
# expensive, fast enough that the token endpoint is not a denial-of-service lever.
DEFAULT_PARAMS = ScryptParams(n=2**15, r=8, p=1)


# Failed secrets one client id may present within a window before it is refused for the
# rest of it: a consumer with a wrong secret learns so at once; a guesser gets 5 a minute.
FAILURES_ALLOWED = 5
FAILURE_WINDOW_SECONDS = 60.0


@dataclass(frozen=True)
class StoredHash:
    """A parsed `scrypt$n$r$p$salt$hash` string."""

    params: ScryptParams
    salt: bytes
    digest: bytes


def new_client_id() -> str:
    """A random, public client identifier (128 bits, hex so it is safe in any context)."""
    return secrets.token_hex(16)


def new_client_secret() -> str:
    """A random client secret: 256 bits, URL-safe base64 without padding."""
    return secrets.token_urlsafe(32)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not text or not text.isascii():
        raise ValueError("bad base64")
    padded = text + "=" * (-len(text) % 4)
    try:
        data = base64.b64decode(padded, altchars=b"-_", validate=True)
    except binascii.Error as exc:
        raise ValueError("bad base64") from exc
    # Only the canonical spelling is accepted, so one hash has one string.
    if _b64(data) != text:
        raise ValueError("non-canonical base64")
    return data


def _derive(secret: str, salt: bytes, params: ScryptParams, length: int) -> bytes:
    return hashlib.scrypt(
        secret.encode("utf-8"),
        salt=salt,
        n=params.n,
        r=params.r,
        p=params.p,
        maxmem=params.maxmem,
        dklen=length,
    )


def hash_secret(secret: str, params: ScryptParams = DEFAULT_PARAMS) -> str:
    """The storable form `scrypt$n$r$p$salt$hash` of a secret, with a fresh random salt."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = _derive(secret, salt, params, _HASH_BYTES)
    return f"{_SCHEME}${params.n}${params.r}${params.p}${_b64(salt)}${_b64(digest)}"


def _parse_int(text: str) -> int:
    if not text.isdigit() or not text.isascii() or (len(text) > 1 and text[0] == "0"):
        raise ValueError("bad integer")
    return int(text)


def parse_hash(stored: str) -> StoredHash:
    """Parse a stored hash string; ValueError if it is not one this module wrote."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != _SCHEME:
        raise ValueError("not an scrypt hash")
    params = ScryptParams(n=_parse_int(parts[1]), r=_parse_int(parts[2]), p=_parse_int(parts[3]))
    salt, digest = _unb64(parts[4]), _unb64(parts[5])
    if len(salt) < _SALT_BYTES or not (_HASH_BYTES <= len(digest) <= 64):
        raise ValueError("salt or hash has the wrong length")
    return StoredHash(params=params, salt=salt, digest=digest)


def verify_secret(secret: str, stored: str) -> bool:
    """Whether `secret` matches the stored hash; False (never an exception) for a damaged hash."""
    try:
        parsed = parse_hash(stored)
    except ValueError:
        return False
    candidate = _derive(secret, parsed.salt, parsed.params, len(parsed.digest))
    return hmac.compare_digest(candidate, parsed.digest)


def dummy_verify(secret: str, params: ScryptParams = DEFAULT_PARAMS) -> bool:
    """Spend what a real verification with `params` spends, and return False.

    Called when the client id is unknown so that its answer takes as long as
    a wrong secret's: response time must not tell whether a client exists.
    """
    # A random salt and digest: deriving costs the same as for a real hash,
    # and a 256-bit random digest is never matched.
    candidate = _derive(secret, secrets.token_bytes(_SALT_BYTES), params, _HASH_BYTES)
    hmac.compare_digest(candidate, secrets.token_bytes(_HASH_BYTES))
    return False


class FailedAttempts:
    """Recent failed secret checks per client id, so a guessing client is refused without a hash.

    After `allowed` failures within `window_seconds` of the first one, a client id is refused
    until that window ends. Unknown and known ids are counted alike, so the refusal tells
    nothing about which exist. At most `tracked` ids are remembered (the least recently failed
    are forgotten first), so a flood of made-up ids costs bounded memory; such a flood is held
    back by the bounded queue of SecretChecks instead.
    """

    def __init__(
        self,
        *,
        allowed: int = FAILURES_ALLOWED,
        window_seconds: float = FAILURE_WINDOW_SECONDS,
        tracked: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._allowed = allowed
        self._window = window_seconds
        self._capacity = tracked
        self._clock = clock
        # client id -> (end of its window, failures in it)
        self._failures: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._lock = threading.Lock()

    def refused(self, client_id: str) -> bool:
        with self._lock:
            entry = self._failures.get(client_id)
            if entry is None:
                return False
            ends, count = entry
            if ends <= self._clock():
                del self._failures[client_id]
                return False
            return count >= self._allowed

    def record_failure(self, client_id: str) -> None:
        with self._lock:
            now = self._clock()
            ends, count = self._failures.get(client_id, (0.0, 0))
            if ends <= now:
                ends, count = now + self._window, 0
            self._failures[client_id] = (ends, count + 1)
            self._failures.move_to_end(client_id)
            while len(self._failures) > self._capacity:
                self._failures.popitem(last=False)

    def forget(self, client_id: str) -> None:
        with self._lock:
            self._failures.pop(client_id, None)


class SecretChecks:
    """The slow secret checks of one process: a few at once, a short queue, guessing throttled.

    Each check holds `maxmem` of memory (32 MiB by default) and a CPU for its whole run, and
    the caller's RPC thread while it waits: `concurrent` checks run at once, at most `queue`
    more wait (each at most `wait_seconds`), and any further one is refused as overload at
    once, so a flood of token requests never holds more than `concurrent + queue` of the
    threads every other call needs. One client id has at most one check admitted at a time,
    so a flood naming one client leaves the queue to the others. A client id with too many
    recent failures (see FailedAttempts) is refused as overload before any hash.
    A secret that matched is remembered for `remember_seconds` under a keyed hash of the
    client, the stored hash and the presented secret, so a consumer fetching tokens again
    skips the slow hash (and the guessing throttle: a known-good secret costs nothing);
    changing the secret changes the stored hash and forgets it. Only a check the caller marks
    `may_remember` (one that would grant a token) is answered from memory: every other
    refusal costs one full hash.
    """

    def __init__(
        self,
        *,
        concurrent: int = 1,
        queue: int = 2,
        wait_seconds: float = 1.0,
        remember: int = 4096,
        remember_seconds: float = 300.0,
        failures: FailedAttempts | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._slots = threading.BoundedSemaphore(concurrent)
        self._admitted = 0
        self._checking: set[str] = set()
        self._admit_limit = concurrent + queue
        self._wait = wait_seconds
        self._capacity = remember
        self._ttl = remember_seconds
        self._clock = clock
        self._failures = failures or FailedAttempts(clock=clock)
        self._key = secrets.token_bytes(32)
        self._matched: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def for_call_threads(cls, call_threads: int) -> SecretChecks:
        """The checks of a worker running `call_threads` calls at once: one check at a time and a
        queue short enough that a flood of token requests holds at most half of the threads
        (one, when there are fewer than four), so every other call still finds one."""
        return cls(concurrent=1, queue=min(2, max(0, call_threads // 2 - 1)))

    @property
    def held_at_most(self) -> int:
        """The most call threads a flood of checks can hold at once (running or waiting)."""
        return self._admit_limit

    def verify(self, client_id: str, secret: str, stored: str, *, may_remember: bool) -> bool:
        key = self._fingerprint(client_id, secret, stored) if may_remember else None
        if key is not None and self._recall(key):
            return True
        self._refuse_if_guessing(client_id)
        with self._slot(client_id):
            matched = verify_secret(secret, stored)
        if matched:
            self._failures.forget(client_id)
            if key is not None:
                self._store(key)
        else:
            self._failures.record_failure(client_id)
        return matched

    def dummy(self, client_id: str, secret: str, params: ScryptParams) -> bool:
        """A refusal that costs what a real check costs: an unknown client id looks like a known one."""
        self._refuse_if_guessing(client_id)
        with self._slot(client_id):
            dummy_verify(secret, params)
        self._failures.record_failure(client_id)
        return False

    def _refuse_if_guessing(self, client_id: str) -> None:
        if self._failures.refused(client_id):
            raise Overloaded("too many failed attempts for this client; retry later")

    @contextmanager
    def _slot(self, client_id: str) -> Iterator[None]:
        with self._lock:
            # One check per client id at a time: a flood naming one client cannot take the
            # whole queue from the others.
            if self._admitted >= self._admit_limit or client_id in self._checking:
                raise Overloaded("too many token requests at once; retry later")
            self._admitted += 1
            self._checking.add(client_id)
        try:
            if not self._slots.acquire(timeout=self._wait):
                raise Overloaded("too many token requests at once; retry later")
            try:
                yield
            finally:
                self._slots.release()
        finally:
            with self._lock:
                self._admitted -= 1
                self._checking.discard(client_id)

    def _fingerprint(self, client_id: str, secret: str, stored: str) -> bytes:
        message = "\x00".join((client_id, stored, secret)).encode("utf-8", "surrogatepass")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def _recall(self, key: bytes) -> bool:
        with self._lock:
            expires = self._matched.get(key)
            if expires is None:
                return False
            if expires <= self._clock():
                del self._matched[key]
                return False
            return True

    def _store(self, key: bytes) -> None:
        with self._lock:
            self._matched[key] = self._clock() + self._ttl
            self._matched.move_to_end(key)
            while len(self._matched) > self._capacity:
                self._matched.popitem(last=False)
