"""The signing key ring: file handling, rotation, publication and reloading."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from orchestra_server.identity.keys import (
    DEFAULT_MAX_TOKEN_LIFETIME,
    DEFAULT_PUBLISH_LEAD,
    DEFAULT_RETENTION_MARGIN,
    KeyRing,
    KeyRingError,
    jwk_thumbprint,
    load_or_create_page_token_key,
)

from .conftest import NOW, b64url

RETENTION = DEFAULT_MAX_TOKEN_LIFETIME + DEFAULT_RETENTION_MARGIN


class FakeMonotonic:
    def __init__(self) -> None:
        self.value = 1000.0

    def __call__(self) -> float:
        return self.value


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_fresh_file_is_created_0600_with_one_key_active_now(keys_path: Path) -> None:
    ring = KeyRing.load_or_create(keys_path, NOW)
    assert _mode(keys_path) == 0o600
    assert _mode(keys_path.with_name(keys_path.name + ".lock")) == 0o600
    (key,) = ring.all_keys()
    assert key.active_from == NOW
    assert key.created_at == NOW
    assert key.retired_at is None
    assert ring.signing_key(NOW) == key
    assert not [p for p in keys_path.parent.iterdir() if p.name.endswith(".tmp")]


def test_created_file_stays_0600_under_a_permissive_umask(keys_path: Path) -> None:
    old = os.umask(0)
    try:
        ring = KeyRing.load_or_create(keys_path, NOW)
        ring.rotate(NOW)
    finally:
        os.umask(old)
    assert _mode(keys_path) == 0o600


def test_existing_file_is_loaded_not_replaced(keys_path: Path) -> None:
    first = KeyRing.load_or_create(keys_path, NOW)
    second = KeyRing.load_or_create(keys_path, NOW + timedelta(days=3))
    assert [k.kid for k in second.all_keys()] == [k.kid for k in first.all_keys()]
    (loaded,), (created,) = second.all_keys(), first.all_keys()
    assert loaded.private_key.private_numbers() == created.private_key.private_numbers()


def test_jwks_publishes_only_public_members(key_ring: KeyRing) -> None:
    (jwk,) = key_ring.jwks(NOW)["keys"]
    assert list(jwk) == ["kty", "crv", "x", "y", "kid", "alg", "use"]
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("EC", "P-256", "ES256", "sig")
    published = jwt.PyJWK(jwk).key
    assert isinstance(published, ec.EllipticCurvePublicKey)
    assert published.public_numbers() == key_ring.all_keys()[0].private_key.public_key().public_numbers()


def test_kid_is_the_rfc7638_thumbprint(key_ring: KeyRing) -> None:
    (jwk,) = key_ring.jwks(NOW)["keys"]
    canonical = f'{{"crv":"P-256","kty":"EC","x":"{jwk["x"]}","y":"{jwk["y"]}"}}'
    assert jwk["kid"] == b64url(hashlib.sha256(canonical.encode()).digest())
    assert jwk["kid"] == jwk_thumbprint(key_ring.all_keys()[0].public_key)


def test_a_file_readable_by_others_is_refused(keys_path: Path) -> None:
    KeyRing.load_or_create(keys_path, NOW)
    keys_path.chmod(0o640)
    with pytest.raises(KeyRingError, match="0600"):
        KeyRing(keys_path)


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"[]",
        b'{"format": 2, "keys": []}',
        b'{"format": 1, "keys": []}',
        b'{"format": 1, "keys": [{"kid": "x", "alg": "ES256", "private_key": "nope"}]}',
    ],
)
def test_a_malformed_file_is_refused(keys_path: Path, content: bytes) -> None:
    fd = os.open(keys_path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, content)
    os.close(fd)
    with pytest.raises(KeyRingError):
        KeyRing(keys_path)


def test_a_kid_that_does_not_match_its_key_is_refused(keys_path: Path) -> None:
    KeyRing.load_or_create(keys_path, NOW)
    document = json.loads(keys_path.read_text())
    document["keys"][0]["kid"] = "someone-elses-kid"
    keys_path.write_text(json.dumps(document))
    with pytest.raises(KeyRingError, match="kid"):
        KeyRing(keys_path)


def test_rotation_publishes_first_and_signs_after_the_lead(key_ring: KeyRing) -> None:
    old = key_ring.signing_key(NOW)
    new = key_ring.rotate(NOW)
    activation = NOW + DEFAULT_PUBLISH_LEAD
    assert new.active_from == activation
    # Published at once, so edges that cache the key set know it before it signs.
    assert {j["kid"] for j in key_ring.jwks(NOW)["keys"]} == {old.kid, new.kid}
    assert key_ring.signing_key(NOW).kid == old.kid
    assert key_ring.signing_key(activation - timedelta(microseconds=1)).kid == old.kid
    assert key_ring.signing_key(activation).kid == new.kid
    retired = {k.kid: k.retired_at for k in key_ring.all_keys()}
    assert retired == {old.kid: activation, new.kid: None}
    # The old key stays published while tokens it signed may be live ...
    last_moment = activation + RETENTION - timedelta(microseconds=1)
    assert {j["kid"] for j in key_ring.jwks(last_moment)["keys"]} == {old.kid, new.kid}
    assert key_ring.verification_key(old.kid, last_moment) is not None
    # ... and is dropped from the published set after that.
    assert [j["kid"] for j in key_ring.jwks(activation + RETENTION)["keys"]] == [new.kid]
    assert key_ring.verification_key(old.kid, activation + RETENTION) is None


def test_publish_lead_is_configurable(key_ring: KeyRing) -> None:
    new = key_ring.rotate(NOW, publish_lead=timedelta(0))
    assert key_ring.signing_key(NOW).kid == new.kid
    with pytest.raises(ValueError, match="publish_lead"):
        key_ring.rotate(NOW, publish_lead=timedelta(seconds=-1))


def test_rotating_twice_before_activation_retires_the_pending_key_too(key_ring: KeyRing) -> None:
    first = key_ring.signing_key(NOW)
    second = key_ring.rotate(NOW)
    third = key_ring.rotate(NOW + timedelta(minutes=1))
    retired = {k.kid: k.retired_at for k in key_ring.all_keys()}
    assert retired[first.kid] == second.active_from
    assert retired[second.kid] == third.active_from
    assert retired[third.kid] is None
    assert key_ring.signing_key(third.active_from).kid == third.kid


def test_keys_no_longer_published_are_pruned_from_the_file(key_ring: KeyRing) -> None:
    first = key_ring.signing_key(NOW)
    key_ring.rotate(NOW)
    later = NOW + DEFAULT_PUBLISH_LEAD + RETENTION
    third = key_ring.rotate(later)
    assert first.kid not in {k.kid for k in key_ring.all_keys()}
    assert third.kid in {k.kid for k in key_ring.all_keys()}
    assert len(key_ring.all_keys()) == 2


def test_rotation_needs_aware_times(key_ring: KeyRing) -> None:
    with pytest.raises(ValueError, match="timezone"):
        key_ring.rotate(NOW.replace(tzinfo=None))


def test_a_rotation_on_disk_reaches_a_running_ring_within_the_reload_interval(keys_path: Path) -> None:
    clock = FakeMonotonic()
    server = KeyRing.load_or_create(keys_path, NOW, monotonic=clock)
    generation = server.generation()
    cli = KeyRing(keys_path)
    new = cli.rotate(NOW)
    # Checked at most once per interval: not seen yet ...
    clock.value += 0.5
    assert new.kid not in {j["kid"] for j in server.jwks(NOW)["keys"]}
    # ... and seen once the interval has passed.
    clock.value += 0.5
    assert new.kid in {j["kid"] for j in server.jwks(NOW)["keys"]}
    assert server.generation() == generation + 1
    assert server.signing_key(new.active_from).kid == new.kid


def test_an_unchanged_file_is_not_reparsed(keys_path: Path) -> None:
    clock = FakeMonotonic()
    ring = KeyRing.load_or_create(keys_path, NOW, monotonic=clock)
    clock.value += 10
    assert ring.refresh() is False
    assert ring.generation() == 0


def test_a_rotation_in_another_process_reaches_this_one(keys_path: Path) -> None:
    ring = KeyRing.load_or_create(keys_path, NOW)
    script = (
        "import sys\n"
        "from datetime import datetime\n"
        "from orchestra_server.identity.keys import KeyRing\n"
        "ring = KeyRing(sys.argv[1])\n"
        "print(ring.rotate(datetime.fromisoformat(sys.argv[2])).kid)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(keys_path), NOW.isoformat()],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    kid = done.stdout.strip()
    assert ring.refresh() is True
    assert kid in {j["kid"] for j in ring.jwks(NOW)["keys"]}
    assert _mode(keys_path) == 0o600


def test_a_broken_file_on_disk_keeps_the_loaded_keys(
    keys_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ring = KeyRing.load_or_create(keys_path, NOW)
    kid = ring.signing_key(NOW).kid
    tmp = keys_path.with_name("broken")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"{broken")
    os.close(fd)
    tmp.replace(keys_path)
    with caplog.at_level(logging.ERROR, logger="orchestra_server.identity.keys"):
        assert ring.refresh() is False
    assert ring.signing_key(NOW).kid == kid
    assert "could not be re-read" in caplog.text


def test_concurrent_rotations_lose_no_key(keys_path: Path) -> None:
    KeyRing.load_or_create(keys_path, NOW)
    rings = [KeyRing(keys_path) for _ in range(4)]
    added: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(len(rings))

    def rotate_some(ring: KeyRing) -> None:
        start.wait()
        for _ in range(3):
            kid = ring.rotate(NOW).kid
            with lock:
                added.append(kid)

    threads = [threading.Thread(target=rotate_some, args=(ring,)) for ring in rings]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    final = KeyRing(keys_path)
    kids = {k.kid for k in final.all_keys()}
    assert set(added) <= kids
    assert len(kids) == 13
    assert sum(1 for k in final.all_keys() if k.retired_at is None) == 1


def test_opening_a_missing_file_is_a_key_ring_error(tmp_path: Path) -> None:
    with pytest.raises(KeyRingError, match="cannot open"):
        KeyRing(tmp_path / "absent.json")


def test_the_page_token_key_is_created_once_beside_the_ring(tmp_path: Path) -> None:
    ring = tmp_path / "keys" / "signing-keys.json"
    key = load_or_create_page_token_key(ring)
    path = ring.with_name("page-token.key")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(key) == 32
    # Every process reading the same file signs alike.
    assert load_or_create_page_token_key(ring) == key
    assert load_or_create_page_token_key(tmp_path / "other" / "signing-keys.json") != key


@pytest.mark.parametrize(("mode", "text"), [(0o640, "00" * 32), (0o600, "not hex"), (0o600, "00" * 16)])
def test_a_bad_page_token_key_file_is_refused(tmp_path: Path, mode: int, text: str) -> None:
    ring = tmp_path / "signing-keys.json"
    path = ring.with_name("page-token.key")
    path.write_text(text)
    path.chmod(mode)
    with pytest.raises(KeyRingError, match=r"page-token\.key"):
        load_or_create_page_token_key(ring)
