"""Client ids, secrets and the scrypt hash they are stored as."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest

from orchestra_server.identity.client_secrets import (
    DEFAULT_PARAMS,
    ScryptParams,
    dummy_verify,
    hash_secret,
    new_client_id,
    new_client_secret,
    parse_hash,
    verify_secret,
)

from .conftest import FAST


def test_client_secret_has_256_bits_and_is_url_safe() -> None:
    secret = new_client_secret()
    assert set(secret) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert len(base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))) == 32
    assert len({new_client_secret() for _ in range(50)}) == 50


def test_client_ids_are_random_hex() -> None:
    ids = {new_client_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(len(i) == 32 and set(i) <= set("0123456789abcdef") for i in ids)


def test_hash_roundtrip_with_default_parameters() -> None:
    stored = hash_secret("correct horse")
    assert verify_secret("correct horse", stored)
    assert not verify_secret("correct horsf", stored)
    assert parse_hash(stored).params == DEFAULT_PARAMS


@pytest.mark.parametrize("secret", ["s", "pässwörd ✓", "a:b+c/d%e&f=g", "x" * 1000])
def test_hash_roundtrip(secret: str) -> None:
    stored = hash_secret(secret, FAST)
    assert verify_secret(secret, stored)
    assert not verify_secret(secret + "x", stored)
    assert not verify_secret("", stored)


def test_same_secret_hashes_differently_each_time() -> None:
    assert hash_secret("same", FAST) != hash_secret("same", FAST)


def test_stored_string_carries_its_parameters() -> None:
    stored = hash_secret("s", ScryptParams(n=32, r=2, p=3))
    scheme, n, r, p, _, _ = stored.split("$")
    assert (scheme, n, r, p) == ("scrypt", "32", "2", "3")
    parsed = parse_hash(stored)
    assert parsed.params == ScryptParams(n=32, r=2, p=3)
    assert len(parsed.salt) == 16
    assert len(parsed.digest) == 32
    assert verify_secret("s", stored)


def _tamper(stored: str, index: int, value: str) -> str:
    parts = stored.split("$")
    parts[index] = value
    return "$".join(parts)


def test_tampered_stored_string_never_verifies() -> None:
    stored = hash_secret("secret", FAST)
    digest = stored.split("$")[5]
    salt = stored.split("$")[4]
    flipped_digest = ("B" if digest[0] == "A" else "A") + digest[1:]
    flipped_salt = ("B" if salt[0] == "A" else "A") + salt[1:]
    for tampered in (
        _tamper(stored, 5, flipped_digest),
        _tamper(stored, 4, flipped_salt),
        _tamper(stored, 1, "32"),
        _tamper(stored, 2, "2"),
    ):
        assert not verify_secret("secret", tampered)


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "scrypt",
        "bcrypt$16$1$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "scrypt$15$1$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "scrypt$1073741824$1$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "scrypt$016$1$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "scrypt$16$-1$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "scrypt$16$1$99$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "scrypt$16$1$1$AAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "scrypt$16$1$1$AAAAAAAAAAAAAAAAAAAAAA$AAAA",
        "scrypt$16$1$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "scrypt$16$1$1$!!!!AAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "scrypt$16$1$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA$extra",
        "scrypt$١٦$1$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ],
)
def test_malformed_stored_string_is_a_mismatch_not_an_error(stored: str) -> None:
    assert not verify_secret("anything", stored)
    with pytest.raises(ValueError, match=r"."):
        parse_hash(stored)


@pytest.mark.parametrize(("n", "r", "p"), [(1, 1, 1), (24, 1, 1), (2**21, 1, 1), (16, 0, 1), (16, 1, 0)])
def test_scrypt_parameters_are_bounded(n: int, r: int, p: int) -> None:
    with pytest.raises(ValueError, match="scrypt"):
        ScryptParams(n=n, r=r, p=p)


def test_dummy_verification_costs_a_real_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    real = hashlib.scrypt

    def spy(password: bytes, **kwargs: Any) -> bytes:
        calls.append(kwargs)
        return real(password, **kwargs)

    monkeypatch.setattr(hashlib, "scrypt", spy)
    params = ScryptParams(n=64, r=2, p=1)
    assert dummy_verify("whatever", params) is False
    assert len(calls) == 1
    assert (calls[0]["n"], calls[0]["r"], calls[0]["p"], calls[0]["dklen"]) == (64, 2, 1, 32)

    calls.clear()
    verify_secret("whatever", hash_secret("other", params))
    assert len(calls) == 2  # one to hash, one to verify: the same work as the dummy
    assert calls[1]["n"] == 64
