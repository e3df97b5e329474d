"""The slow secret checks: bounded at once, successes remembered, refusals always paid in full."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from orchestra_server import errors
from orchestra_server.identity import client_secrets
from orchestra_server.identity.access_tokens import AccessTokenIssuer
from orchestra_server.identity.client_secrets import SecretChecks, hash_secret
from orchestra_server.identity.token_endpoint import TokenEndpoint

from .conftest import FAST, NOW, FakeDirectory

FORM = "application/x-www-form-urlencoded"
CLIENT = "c0ffee"
SECRET = "s3cret-Value_0123456789abcdefghijklmnopqrstuv"


class Counted:
    """Counts the real hash runs and how many ran at the same time."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, pause: float = 0.0) -> None:
        self.runs = 0
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()
        self._pause = pause
        real_verify, real_dummy = client_secrets.verify_secret, client_secrets.dummy_verify
        monkeypatch.setattr(client_secrets, "verify_secret", self._wrap(real_verify))
        monkeypatch.setattr(client_secrets, "dummy_verify", self._wrap(real_dummy))

    def _wrap(self, real: Any) -> Any:
        def counted(*args: Any) -> bool:
            with self._lock:
                self.runs += 1
                self.running += 1
                self.most_at_once = max(self.most_at_once, self.running)
            try:
                time.sleep(self._pause)
                result: bool = real(*args)
                return result
            finally:
                with self._lock:
                    self.running -= 1

        return counted


def _grant(secret: str = SECRET) -> bytes:
    return f"grant_type=client_credentials&client_id={CLIENT}&client_secret={secret}".encode()


def _endpoint(directory: FakeDirectory, issuer: AccessTokenIssuer, checks: SecretChecks) -> TokenEndpoint:
    directory.add(CLIENT, SECRET)
    return TokenEndpoint(directory, issuer, hash_params=FAST, checks=checks)


def test_a_consumer_fetching_tokens_again_pays_the_hash_once(
    directory: FakeDirectory, issuer: AccessTokenIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = Counted(monkeypatch)
    endpoint = _endpoint(directory, issuer, SecretChecks())
    statuses = [endpoint.handle(_grant(), FORM, None, NOW).status for _ in range(5)]
    assert statuses == [200] * 5
    assert counted.runs == 1
    assert directory.lookups == 5  # revocation and permissions are still read every time


def test_refusals_always_pay_a_full_hash(
    directory: FakeDirectory, issuer: AccessTokenIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = Counted(monkeypatch)
    endpoint = _endpoint(directory, issuer, SecretChecks())
    assert endpoint.handle(_grant(), FORM, None, NOW).status == 200
    assert counted.runs == 1
    # A wrong secret is never remembered, however often it is tried.
    for _ in range(3):
        assert endpoint.handle(_grant("wrong"), FORM, None, NOW).status == 401
    assert counted.runs == 4
    # A revoked consumer with the right secret is refused after a full hash, not from memory.
    directory.update(CLIENT, revoked=True)
    assert endpoint.handle(_grant(), FORM, None, NOW).status == 401
    assert counted.runs == 5


def test_a_changed_secret_forgets_the_old_one(
    directory: FakeDirectory, issuer: AccessTokenIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = Counted(monkeypatch)
    endpoint = _endpoint(directory, issuer, SecretChecks())
    assert endpoint.handle(_grant(), FORM, None, NOW).status == 200
    directory.update(CLIENT, secret_hash=hash_secret("a-new-secret", FAST))
    assert endpoint.handle(_grant(), FORM, None, NOW).status == 401
    assert endpoint.handle(_grant("a-new-secret"), FORM, None, NOW).status == 200
    assert counted.runs == 3


def test_a_remembered_success_expires() -> None:
    now = [0.0]
    checks = SecretChecks(remember_seconds=10, clock=lambda: now[0])
    stored = hash_secret(SECRET, FAST)
    runs: list[int] = []
    real = client_secrets.verify_secret

    def verify(secret: str, stored_hash: str) -> bool:
        runs.append(1)
        return real(secret, stored_hash)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(client_secrets, "verify_secret", verify)
        assert checks.verify(CLIENT, SECRET, stored, may_remember=True)
        now[0] = 9.9
        assert checks.verify(CLIENT, SECRET, stored, may_remember=True)
        now[0] = 10.0
        assert checks.verify(CLIENT, SECRET, stored, may_remember=True)
    assert len(runs) == 2


def test_only_the_allowed_number_of_hashes_run_at_once(
    directory: FakeDirectory, issuer: AccessTokenIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = Counted(monkeypatch, pause=0.02)
    endpoint = _endpoint(directory, issuer, SecretChecks(concurrent=2))
    statuses: list[int] = []

    def request(secret: str) -> None:
        statuses.append(endpoint.handle(_grant(secret), FORM, None, NOW).status)

    threads = [threading.Thread(target=request, args=(f"wrong-{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [401] * 8
    assert counted.runs == 8
    assert counted.most_at_once == 2


def test_a_request_that_waits_too_long_for_a_hash_is_refused_as_overload(
    directory: FakeDirectory, issuer: AccessTokenIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    Counted(monkeypatch, pause=0.5)
    endpoint = _endpoint(directory, issuer, SecretChecks(concurrent=1, wait_seconds=0.05))
    busy = threading.Thread(target=endpoint.handle, args=(_grant("wrong"), FORM, None, NOW))
    busy.start()
    time.sleep(0.1)
    try:
        with pytest.raises(errors.Overloaded):
            endpoint.handle(_grant(), FORM, None, NOW)
    finally:
        busy.join()
