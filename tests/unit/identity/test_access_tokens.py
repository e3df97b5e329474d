"""Issuing and verifying RFC 9068 access tokens, including hostile ones."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm

from orchestra_server.errors import Unauthenticated
from orchestra_server.identity.access_tokens import AccessTokenIssuer, AccessTokenVerifier, VerifiedToken
from orchestra_server.identity.keys import DEFAULT_PUBLISH_LEAD, KeyRing

from .conftest import AUDIENCE, ISSUER, NOW, b64url, b64url_json

LIFETIME = 3600
LEEWAY = 30


def _claims(**overrides: Any) -> dict[str, Any]:
    issued_at = int(NOW.timestamp())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "client-1",
        "client_id": "client-1",
        "tenant_id": "tenant-a",
        "iat": issued_at,
        "nbf": issued_at,
        "exp": issued_at + LIFETIME,
        "jti": "jti-1",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _sign(key_ring: KeyRing, claims: dict[str, Any], **header: Any) -> str:
    key = key_ring.signing_key(NOW)
    headers = {"typ": "at+jwt", "kid": key.kid, **header}
    return jwt.encode(claims, key.private_key, algorithm="ES256", headers=headers)


def _forge(header: dict[str, Any], claims: dict[str, Any], private_key: ec.EllipticCurvePrivateKey) -> str:
    """An ES256 token with exactly this header, which PyJWT's encoder would not write."""
    signing_input = f"{b64url_json(header)}.{b64url_json(claims)}"
    signature = ECAlgorithm(ECAlgorithm.SHA256).sign(signing_input.encode(), private_key)
    return f"{signing_input}.{b64url(signature)}"


def _reject(verifier: AccessTokenVerifier, token: str, now: datetime = NOW) -> None:
    with pytest.raises(Unauthenticated) as caught:
        verifier.verify(token, now)
    # One message for every failure, so the caller learns nothing about why.
    assert str(caught.value) == "invalid access token"


def test_issued_token_has_the_rfc9068_shape(issuer: AccessTokenIssuer, key_ring: KeyRing) -> None:
    token, expires_in = issuer.issue("client-1", "tenant-a", NOW)
    assert expires_in == 3600
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "ES256", "typ": "at+jwt", "kid": key_ring.signing_key(NOW).kid}
    claims = jwt.decode(token, options={"verify_signature": False})
    assert set(claims) == {"iss", "aud", "sub", "client_id", "tenant_id", "iat", "nbf", "exp", "jti"}
    assert claims["sub"] == claims["client_id"] == "client-1"
    assert claims["tenant_id"] == "tenant-a"
    assert claims["exp"] - claims["iat"] == 3600
    assert (claims["iss"], claims["aud"]) == (ISSUER, AUDIENCE)
    assert (
        claims["jti"]
        != jwt.decode(issuer.issue("client-1", "tenant-a", NOW)[0], options={"verify_signature": False})[
            "jti"
        ]
    )


def test_issued_token_verifies(issuer: AccessTokenIssuer, verifier: AccessTokenVerifier) -> None:
    token, _ = issuer.issue("client-1", "tenant-a", NOW)
    assert verifier.verify(token, NOW + timedelta(minutes=30)) == VerifiedToken(
        client_id="client-1",
        tenant_id="tenant-a",
        jti=jwt.decode(token, options={"verify_signature": False})["jti"],
        expires_at=datetime.fromtimestamp(int(NOW.timestamp()) + 3600, UTC),
    )


def test_lifetime_cannot_outlive_key_retention(key_ring: KeyRing) -> None:
    with pytest.raises(ValueError, match="max_token_lifetime"):
        AccessTokenIssuer(key_ring, ISSUER, AUDIENCE, lifetime=timedelta(hours=2))
    with pytest.raises(ValueError, match="whole number"):
        AccessTokenIssuer(key_ring, ISSUER, AUDIENCE, lifetime=timedelta(seconds=1.5))


def test_expiry_and_leeway(issuer: AccessTokenIssuer, key_ring: KeyRing) -> None:
    token, _ = issuer.issue("client-1", "tenant-a", NOW)
    exp = NOW + timedelta(seconds=LIFETIME)
    assert AccessTokenVerifier(key_ring, ISSUER, AUDIENCE).verify(token, exp + timedelta(seconds=LEEWAY - 1))
    _reject(AccessTokenVerifier(key_ring, ISSUER, AUDIENCE), token, exp + timedelta(seconds=LEEWAY))
    _reject(AccessTokenVerifier(key_ring, ISSUER, AUDIENCE, leeway=timedelta(0)), token, exp)


def test_a_cached_token_still_expires(issuer: AccessTokenIssuer, verifier: AccessTokenVerifier) -> None:
    token, _ = issuer.issue("client-1", "tenant-a", NOW)
    verifier.verify(token, NOW)
    _reject(verifier, token, NOW + timedelta(seconds=LIFETIME + LEEWAY))
    assert verifier.cache_len() == 0


def test_a_cached_token_is_not_valid_before_its_time(
    issuer: AccessTokenIssuer, verifier: AccessTokenVerifier
) -> None:
    token, _ = issuer.issue("client-1", "tenant-a", NOW)
    verifier.verify(token, NOW)
    _reject(verifier, token, NOW - timedelta(seconds=LEEWAY + 1))


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param(_claims(iat=int(NOW.timestamp()) + LEEWAY + 1, nbf=None), id="iat-in-future"),
        pytest.param(_claims(nbf=int(NOW.timestamp()) + LEEWAY + 1), id="nbf-in-future"),
        pytest.param(_claims(exp=int(NOW.timestamp()) - LEEWAY), id="expired"),
        pytest.param(_claims(aud="someone-else"), id="wrong-aud"),
        pytest.param(_claims(aud=["someone-else"]), id="wrong-aud-list"),
        pytest.param(_claims(iss="https://evil.example"), id="wrong-iss"),
        pytest.param(_claims(tenant_id=None), id="no-tenant"),
        pytest.param(_claims(tenant_id=7), id="tenant-not-string"),
        pytest.param(_claims(tenant_id=""), id="tenant-empty"),
        pytest.param(_claims(tenant_id=["tenant-a"]), id="tenant-list"),
        pytest.param(_claims(client_id="client-2"), id="client-id-not-sub"),
        pytest.param(_claims(exp="later"), id="exp-not-number"),
        pytest.param(_claims(iat=True), id="iat-bool"),
        pytest.param(_claims(sub=""), id="sub-empty"),
        pytest.param(_claims(exp=10**20), id="exp-out-of-range"),
    ]
    + [
        pytest.param(_claims(**{name: None}), id=f"no-{name}")
        for name in ("iss", "aud", "sub", "client_id", "iat", "exp", "jti")
    ],
)
def test_bad_claims_are_refused(
    key_ring: KeyRing, verifier: AccessTokenVerifier, claims: dict[str, Any]
) -> None:
    _reject(verifier, _sign(key_ring, claims))


def test_times_inside_the_leeway_are_accepted(key_ring: KeyRing, verifier: AccessTokenVerifier) -> None:
    future = int(NOW.timestamp()) + LEEWAY - 1
    assert verifier.verify(_sign(key_ring, _claims(iat=future, nbf=future)), NOW)


def test_audience_may_be_a_list_holding_ours(key_ring: KeyRing, verifier: AccessTokenVerifier) -> None:
    assert verifier.verify(_sign(key_ring, _claims(aud=["other", AUDIENCE])), NOW).tenant_id == "tenant-a"


@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt"])
def test_accepted_types(key_ring: KeyRing, verifier: AccessTokenVerifier, typ: str) -> None:
    assert verifier.verify(_sign(key_ring, _claims(), typ=typ), NOW).client_id == "client-1"


@pytest.mark.parametrize("typ", ["JWT", "jwt", "application/jwt", "at+jwt2", 5])
def test_wrong_type_is_refused(key_ring: KeyRing, verifier: AccessTokenVerifier, typ: object) -> None:
    _reject(verifier, _sign(key_ring, _claims(), typ=typ))


def test_missing_type_is_refused(key_ring: KeyRing, verifier: AccessTokenVerifier) -> None:
    key = key_ring.signing_key(NOW)
    _reject(verifier, _forge({"alg": "ES256", "kid": key.kid}, _claims(), key.private_key))
    # The forging helper itself makes tokens that pass when nothing is wrong.
    good = _forge({"alg": "ES256", "typ": "at+jwt", "kid": key.kid}, _claims(), key.private_key)
    assert verifier.verify(good, NOW).client_id == "client-1"


def test_alg_none_is_refused(verifier: AccessTokenVerifier, key_ring: KeyRing) -> None:
    header = {"alg": "none", "typ": "at+jwt", "kid": key_ring.signing_key(NOW).kid}
    _reject(verifier, f"{b64url_json(header)}.{b64url_json(_claims())}.")
    _reject(verifier, f"{b64url_json({**header, 'alg': 'None'})}.{b64url_json(_claims())}.")


def test_hs256_signed_with_the_public_key_is_refused(
    verifier: AccessTokenVerifier, key_ring: KeyRing
) -> None:
    key = key_ring.signing_key(NOW)
    for encoding, fmt in (
        (serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        (serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint),
    ):
        public = key.public_key.public_bytes(encoding, fmt)
        header = {"alg": "HS256", "typ": "at+jwt", "kid": key.kid}
        signing_input = f"{b64url_json(header)}.{b64url_json(_claims())}"
        signature = hmac.new(public, signing_input.encode(), hashlib.sha256).digest()
        _reject(verifier, f"{signing_input}.{b64url(signature)}")
    jwk_secret = json.dumps(dict(key.jwk)).encode()
    signing_input = (
        f"{b64url_json({'alg': 'HS256', 'typ': 'at+jwt', 'kid': key.kid})}.{b64url_json(_claims())}"
    )
    _reject(
        verifier,
        f"{signing_input}.{b64url(hmac.new(jwk_secret, signing_input.encode(), hashlib.sha256).digest())}",
    )


def test_other_algorithms_are_refused(verifier: AccessTokenVerifier, key_ring: KeyRing) -> None:
    kid = key_ring.signing_key(NOW).kid
    p384 = ec.generate_private_key(ec.SECP384R1())
    _reject(verifier, jwt.encode(_claims(), p384, algorithm="ES384", headers={"typ": "at+jwt", "kid": kid}))
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _reject(
        verifier, jwt.encode(_claims(), rsa_key, algorithm="RS256", headers={"typ": "at+jwt", "kid": kid})
    )
    _reject(
        verifier, jwt.encode(_claims(), "s" * 32, algorithm="HS256", headers={"typ": "at+jwt", "kid": kid})
    )


def test_a_token_signed_by_another_key_under_our_kid_is_refused(
    verifier: AccessTokenVerifier, key_ring: KeyRing
) -> None:
    intruder = ec.generate_private_key(ec.SECP256R1())
    kid = key_ring.signing_key(NOW).kid
    _reject(
        verifier, jwt.encode(_claims(), intruder, algorithm="ES256", headers={"typ": "at+jwt", "kid": kid})
    )


def test_a_key_from_another_ring_is_unknown(verifier: AccessTokenVerifier, tmp_path: Path) -> None:
    stranger = KeyRing.load_or_create(tmp_path / "other" / "keys.json", NOW)
    token, _ = AccessTokenIssuer(stranger, ISSUER, AUDIENCE).issue("client-1", "tenant-a", NOW)
    _reject(verifier, token)


@pytest.mark.parametrize("kid", [None, "unknown-kid", 17, ""])
def test_unknown_or_missing_kid_is_refused(
    verifier: AccessTokenVerifier, key_ring: KeyRing, kid: object
) -> None:
    header: dict[str, Any] = {"alg": "ES256", "typ": "at+jwt"}
    if kid is not None:
        header["kid"] = kid
    _reject(verifier, _forge(header, _claims(), key_ring.signing_key(NOW).private_key))


def test_a_tampered_payload_with_the_original_signature_is_refused(
    issuer: AccessTokenIssuer, verifier: AccessTokenVerifier
) -> None:
    token, _ = issuer.issue("client-1", "tenant-a", NOW)
    header, _, signature = token.split(".")
    claims = jwt.decode(token, options={"verify_signature": False})
    forged = f"{header}.{b64url_json({**claims, 'tenant_id': 'tenant-b'})}.{signature}"
    _reject(verifier, forged)
    # The genuine token still verifies, and the forgery still fails once it is cached.
    assert verifier.verify(token, NOW).tenant_id == "tenant-a"
    _reject(verifier, forged)


def test_a_critical_header_is_refused(key_ring: KeyRing, verifier: AccessTokenVerifier) -> None:
    _reject(verifier, _sign(key_ring, _claims(), crit=["exp"]))


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c",
        "...",
        "e30.e30.",
        "x" * 5000,
        "eyJhbGciOiJFUzI1NiJ9.%%%.abc",
        "\u00e9.\u00e9.\u00e9",
    ],
)
def test_malformed_tokens_are_refused(verifier: AccessTokenVerifier, token: str) -> None:
    _reject(verifier, token)


def test_a_truncated_signature_is_refused(issuer: AccessTokenIssuer, verifier: AccessTokenVerifier) -> None:
    token, _ = issuer.issue("client-1", "tenant-a", NOW)
    _reject(verifier, token[:-4])


def test_cache_hit_skips_signature_checks(
    issuer: AccessTokenIssuer, verifier: AccessTokenVerifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    token, _ = issuer.issue("client-1", "tenant-a", NOW)
    calls: list[str] = []
    real: Callable[..., Any] = jwt.decode

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append("decode")
        return real(*args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    first = verifier.verify(token, NOW)
    for seconds in range(1, 100):
        assert verifier.verify(token, NOW + timedelta(seconds=seconds)) is first
    assert calls == ["decode"]


def test_cache_is_bounded_lru(issuer: AccessTokenIssuer, key_ring: KeyRing) -> None:
    verifier = AccessTokenVerifier(key_ring, ISSUER, AUDIENCE, cache_size=2)
    a, b, c = (issuer.issue(f"client-{n}", "tenant-a", NOW)[0] for n in range(3))
    verifier.verify(a, NOW)
    verifier.verify(b, NOW)
    verifier.verify(a, NOW)  # a is now the most recently used
    verifier.verify(c, NOW)  # evicts b
    assert verifier.cache_len() == 2
    assert set(verifier._cache) == {a, c}


def test_old_key_verifies_its_tokens_until_they_expire_after_rotation(
    keys_path: Path, key_ring: KeyRing, issuer: AccessTokenIssuer, verifier: AccessTokenVerifier
) -> None:
    old_kid = key_ring.signing_key(NOW).kid
    new = key_ring.rotate(NOW)
    activation = NOW + DEFAULT_PUBLISH_LEAD
    # The last token the old key signs, just before the new key takes over.
    last_old = activation - timedelta(seconds=1)
    old_token, _ = issuer.issue("client-1", "tenant-a", last_old)
    assert jwt.get_unverified_header(old_token)["kid"] == old_kid
    new_token, _ = issuer.issue("client-1", "tenant-a", activation)
    assert jwt.get_unverified_header(new_token)["kid"] == new.kid
    fresh = AccessTokenVerifier(key_ring, ISSUER, AUDIENCE)
    near_expiry = last_old + timedelta(seconds=LIFETIME - 1)
    assert fresh.verify(old_token, near_expiry).client_id == "client-1"
    assert fresh.verify(new_token, near_expiry).client_id == "client-1"


def test_a_key_removed_from_disk_stops_verifying_even_cached_tokens(
    keys_path: Path, issuer: AccessTokenIssuer, key_ring: KeyRing
) -> None:
    clock_value = [0.0]
    ring = KeyRing(keys_path, monotonic=lambda: clock_value[0])
    verifier = AccessTokenVerifier(ring, ISSUER, AUDIENCE)
    token, _ = issuer.issue("client-1", "tenant-a", NOW)
    verifier.verify(token, NOW)
    # Replace the whole file with a fresh key, as after a suspected compromise.
    keys_path.unlink()
    KeyRing.load_or_create(keys_path, NOW)
    clock_value[0] += 5
    _reject(verifier, token)
