"""The ES256 signing key ring, kept in a 0600 file in the data directory and shared by processes.

Beside it, in a 0600 file of its own, the secret that signs listing page tokens.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from orchestra_server.wire.key_set import KEY_SET_REFRESH_SECONDS

log = logging.getLogger(__name__)

PAGE_TOKEN_KEY_NAME = "page-token.key"  # noqa: S105 - a file name
_PAGE_TOKEN_KEY_BYTES = 32
# The edge does not refetch the key set on an unknown kid, so a new key is published for twice
# its refresh period before it signs.
DEFAULT_PUBLISH_LEAD = timedelta(seconds=2 * KEY_SET_REFRESH_SECONDS)
# The shortest lead that covers the edge: one refresh period, plus the processes' reload of the
# key file and the fetch itself.
MIN_PUBLISH_LEAD = timedelta(seconds=KEY_SET_REFRESH_SECONDS + 5)
DEFAULT_MAX_TOKEN_LIFETIME = timedelta(hours=1)
# Covers verifier leeway and clock skew between the processes sharing the file.
DEFAULT_RETENTION_MARGIN = timedelta(minutes=5)
DEFAULT_RELOAD_INTERVAL_SECONDS = 1.0
_FORMAT = 1


class KeyRingError(Exception):
    """The key file is missing, unreadable, too widely readable, or malformed."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    return moment.astimezone(UTC)


def _public_jwk_members(public_key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    numbers = public_key.public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": _b64(numbers.x.to_bytes(32, "big")),
        "y": _b64(numbers.y.to_bytes(32, "big")),
    }


def jwk_thumbprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """The RFC 7638 SHA-256 thumbprint of a P-256 public key."""
    members = _public_jwk_members(public_key)
    canonical = json.dumps(
        {name: members[name] for name in ("crv", "kty", "x", "y")}, separators=(",", ":")
    ).encode("ascii")
    return _b64(hashlib.sha256(canonical).digest())


@dataclass(frozen=True)
class SigningKey:
    """One key of the ring; `jwk` is its public half as published."""

    kid: str
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)
    created_at: datetime
    active_from: datetime
    retired_at: datetime | None
    public_key: ec.EllipticCurvePublicKey = field(init=False, repr=False, compare=False)
    jwk: Mapping[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        public_key = self.private_key.public_key()
        object.__setattr__(self, "public_key", public_key)
        object.__setattr__(
            self, "jwk", {**_public_jwk_members(public_key), "kid": self.kid, "alg": "ES256", "use": "sig"}
        )

    @classmethod
    def generate(cls, now: datetime, active_from: datetime) -> SigningKey:
        private_key = ec.generate_private_key(ec.SECP256R1())
        return cls(
            kid=jwk_thumbprint(private_key.public_key()),
            private_key=private_key,
            created_at=_utc(now),
            active_from=_utc(active_from),
            retired_at=None,
        )


def _encode_key(key: SigningKey) -> dict[str, Any]:
    pem = key.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return {
        "kid": key.kid,
        "alg": "ES256",
        "created_at": key.created_at.isoformat(),
        "active_from": key.active_from.isoformat(),
        "retired_at": None if key.retired_at is None else key.retired_at.isoformat(),
        "private_key": pem.decode("ascii"),
    }


def _parse_time(value: object) -> datetime:
    if not isinstance(value, str):
        raise KeyRingError("key file has a malformed time")
    try:
        return _utc(datetime.fromisoformat(value))
    except ValueError as exc:
        raise KeyRingError("key file has a malformed time") from exc


def _decode_key(raw: object) -> SigningKey:
    if not isinstance(raw, dict):
        raise KeyRingError("key file entry is not an object")
    pem, kid = raw.get("private_key"), raw.get("kid")
    if not isinstance(pem, str) or not isinstance(kid, str) or raw.get("alg") != "ES256":
        raise KeyRingError("key file entry is malformed")
    try:
        private_key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise KeyRingError("key file holds an unreadable private key") from exc
    if not isinstance(private_key, ec.EllipticCurvePrivateKey) or not isinstance(
        private_key.curve, ec.SECP256R1
    ):
        raise KeyRingError("key file holds a key that is not EC P-256")
    # A kid that does not match its key would make verification pick the wrong key.
    if jwk_thumbprint(private_key.public_key()) != kid:
        raise KeyRingError("key file entry's kid does not match its key")
    retired = raw.get("retired_at")
    return SigningKey(
        kid=kid,
        private_key=private_key,
        created_at=_parse_time(raw.get("created_at")),
        active_from=_parse_time(raw.get("active_from")),
        retired_at=None if retired is None else _parse_time(retired),
    )


_FileIdentity = tuple[int, int, int, int]


@dataclass(frozen=True)
class _Snapshot:
    keys: tuple[SigningKey, ...]
    by_kid: Mapping[str, SigningKey]
    # Ordered newest first, so the signing key is the first already active.
    by_activation: tuple[SigningKey, ...]
    identity: _FileIdentity
    generation: int


def _identity(st: os.stat_result) -> _FileIdentity:
    # The inode changes on every atomic replace, so this catches rewrites even
    # where mtime is coarse and the size happens to stay the same.
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def _read_file(path: Path) -> tuple[tuple[SigningKey, ...], _FileIdentity]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise KeyRingError(f"cannot open {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(handle.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise KeyRingError(f"{path} is not a regular file")
        if st.st_mode & 0o077:
            raise KeyRingError(f"{path} is readable by group or others; it must be mode 0600")
        data = handle.read()
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise KeyRingError(f"{path} is not valid JSON") from exc
    if not isinstance(document, dict) or document.get("format") != _FORMAT:
        raise KeyRingError(f"{path} is not a key ring file of a known format")
    raw_keys = document.get("keys")
    if not isinstance(raw_keys, list) or not raw_keys:
        raise KeyRingError(f"{path} holds no keys")
    keys = tuple(_decode_key(raw) for raw in raw_keys)
    if len({key.kid for key in keys}) != len(keys):
        raise KeyRingError(f"{path} holds the same key twice")
    return keys, _identity(st)


def _write_file(path: Path, keys: tuple[SigningKey, ...]) -> None:
    data = json.dumps({"format": _FORMAT, "keys": [_encode_key(k) for k in keys]}, indent=2).encode("ascii")
    _replace_file(path, data + b"\n")


def _replace_file(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            # The umask can only narrow 0600; this pins it even if the umask is odd.
            os.fchmod(handle.fileno(), 0o600)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    # A separate lock file, because the key file itself is replaced by rename
    # and a lock on a replaced inode would exclude nobody.
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def load_or_create_page_token_key(signing_keys: Path) -> bytes:
    """The secret that signs listing page tokens, created on first use.

    It lives beside the key ring file (`page-token.key`, mode 0600), so every
    worker and every host that shares the ring shares it too, and a page token
    issued by one is accepted by all. Unlike the signing keys it never
    rotates: a rotation would void the page tokens of every listing under way.
    """
    path = Path(signing_keys).with_name(PAGE_TOKEN_KEY_NAME)
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with _exclusive(path):
            if not path.exists():
                _replace_file(path, secrets.token_hex(_PAGE_TOKEN_KEY_BYTES).encode("ascii") + b"\n")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise KeyRingError(f"cannot open {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(handle.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise KeyRingError(f"{path} is not a regular file")
        if st.st_mode & 0o077:
            raise KeyRingError(f"{path} is readable by group or others; it must be mode 0600")
        text = handle.read().strip()
    try:
        key = bytes.fromhex(text.decode("ascii"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise KeyRingError(f"{path} does not hold a hexadecimal key") from exc
    if len(key) != _PAGE_TOKEN_KEY_BYTES:
        raise KeyRingError(f"{path} must hold {_PAGE_TOKEN_KEY_BYTES} bytes")
    return key


class KeyRing:
    """The signing keys, re-read from disk when another process rotates them.

    Reads are lock-free: every reload swaps in a new immutable snapshot.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_token_lifetime: timedelta = DEFAULT_MAX_TOKEN_LIFETIME,
        retention_margin: timedelta = DEFAULT_RETENTION_MARGIN,
        reload_interval: float = DEFAULT_RELOAD_INTERVAL_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Open an existing key file; use `load_or_create` to make one on first start."""
        if max_token_lifetime <= timedelta(0) or retention_margin < timedelta(0):
            raise ValueError("max_token_lifetime must be positive and retention_margin not negative")
        self._path = Path(path)
        self._max_token_lifetime = max_token_lifetime
        self._retention = max_token_lifetime + retention_margin
        self._reload_interval = reload_interval
        self._monotonic = monotonic
        self._reload_lock = threading.Lock()
        keys, identity = _read_file(self._path)
        self._snapshot = self._make_snapshot(keys, identity, generation=0)
        self._next_check = monotonic() + reload_interval

    @classmethod
    def load_or_create(
        cls,
        path: Path,
        now: datetime,
        *,
        max_token_lifetime: timedelta = DEFAULT_MAX_TOKEN_LIFETIME,
        retention_margin: timedelta = DEFAULT_RETENTION_MARGIN,
        reload_interval: float = DEFAULT_RELOAD_INTERVAL_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> KeyRing:
        """Open the key file, first creating it with one key active from `now` if it does not exist."""
        path = Path(path)
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with _exclusive(path):
                # Another process may have created it while this one waited.
                if not path.exists():
                    _write_file(path, (SigningKey.generate(now, active_from=now),))
        return cls(
            path,
            max_token_lifetime=max_token_lifetime,
            retention_margin=retention_margin,
            reload_interval=reload_interval,
            monotonic=monotonic,
        )

    @property
    def path(self) -> Path:
        return self._path

    @property
    def max_token_lifetime(self) -> timedelta:
        return self._max_token_lifetime

    def _make_snapshot(
        self, keys: tuple[SigningKey, ...], identity: _FileIdentity, generation: int
    ) -> _Snapshot:
        # Later in the file means added later: the tie-break for equal times.
        ranked = sorted(enumerate(keys), key=lambda item: (item[1].active_from, item[1].created_at, item[0]))
        ordered = tuple(key for _, key in reversed(ranked))
        return _Snapshot(
            keys=keys,
            by_kid={k.kid: k for k in keys},
            by_activation=ordered,
            identity=identity,
            generation=generation,
        )

    def generation(self) -> int:
        """A number that changes whenever the keys were re-read; checks the file at most once a second.

        Callers that cache anything derived from the keys compare it to drop
        their cache after a rotation or a removal.
        """
        if self._monotonic() >= self._next_check:
            self._check_file(only_if_due=True)
        return self._snapshot.generation

    def refresh(self) -> bool:
        """Re-read the file now if it changed on disk; whether it did."""
        return self._check_file()

    def _check_file(self, only_if_due: bool = False) -> bool:
        with self._reload_lock:
            # Threads that queued here behind the one that just checked need not check again.
            if only_if_due and self._monotonic() < self._next_check:
                return False
            self._next_check = self._monotonic() + self._reload_interval
            current = self._snapshot
            try:
                if _identity(os.stat(self._path)) == current.identity:
                    return False
                keys, identity = _read_file(self._path)
            except (OSError, KeyRingError) as exc:
                # Serving with the keys already loaded beats failing every
                # request because of a bad edit; the error is loud in the log.
                log.error(
                    "signing key file %s could not be re-read, keeping loaded keys: %s", self._path, exc
                )
                return False
            self._snapshot = self._make_snapshot(keys, identity, current.generation + 1)
            return True

    def all_keys(self) -> tuple[SigningKey, ...]:
        """Every key in the file, as loaded."""
        self.generation()
        return self._snapshot.keys

    def _is_published(self, key: SigningKey, now: datetime) -> bool:
        return key.retired_at is None or now < key.retired_at + self._retention

    def signing_key(self, now: datetime) -> SigningKey:
        """The newest key already active at `now`."""
        self.generation()
        for key in self._snapshot.by_activation:
            if key.active_from <= now:
                return key
        raise KeyRingError("no signing key is active yet")

    def verification_key(self, kid: str, now: datetime) -> ec.EllipticCurvePublicKey | None:
        """The public key for `kid` if it is in the published set at `now`."""
        self.generation()
        key = self._snapshot.by_kid.get(kid)
        if key is None or not self._is_published(key, now):
            return None
        return key.public_key

    def published_keys(self, now: datetime) -> tuple[SigningKey, ...]:
        """Keys about to sign, signing, or whose tokens may still be live, newest first."""
        self.generation()
        return tuple(k for k in self._snapshot.by_activation if self._is_published(k, now))

    def jwks(self, now: datetime) -> dict[str, list[dict[str, str]]]:
        """The published set as an RFC 7517 JSON Web Key Set."""
        return {"keys": [dict(k.jwk) for k in self.published_keys(now)]}

    def rotate(self, now: datetime, publish_lead: timedelta = DEFAULT_PUBLISH_LEAD) -> SigningKey:
        """Add a key published now and signing from `now + publish_lead`; retire the current ones then.

        Keys that no published set needs any more are dropped from the file.
        Safe against a concurrent rotation in another process.
        """
        if publish_lead < timedelta(0):
            raise ValueError("publish_lead must not be negative")
        now = _utc(now)
        new_key = SigningKey.generate(now, active_from=now + publish_lead)
        with self._reload_lock, _exclusive(self._path):
            # Rotate what is on disk, not what this process last saw.
            on_disk, _ = _read_file(self._path)
            kept = tuple(
                replace(k, retired_at=new_key.active_from) if k.retired_at is None else k
                for k in on_disk
                if self._is_published(k, now)
            )
            _write_file(self._path, (*kept, new_key))
            keys, identity = _read_file(self._path)
            self._snapshot = self._make_snapshot(keys, identity, self._snapshot.generation + 1)
            self._next_check = self._monotonic() + self._reload_interval
        return new_key
