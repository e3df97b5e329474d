"""The slow secret checks: bounded at once, successes remembered, refusals always paid in full."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from orchestra_server import errors
from orchestra_server.identity import client_secrets
from orchestra_server.identity.access_tokens import AccessTokenIssuer
from orchestra_server.identity.client_secrets import FailedAttempts, SecretChecks, hash_secret
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


def _grant(secret: str = SECRET, client: str = CLIENT) -> bytes:
    return f"grant_type=client_credentials&client_id={client}&client_secret={secret}".encode()


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
    # A queue long enough for all eight, each naming another (unknown) client.
    endpoint = _endpoint(directory, issuer, SecretChecks(concurrent=2, queue=6))
    statuses: list[int] = []

    def request(client: str) -> None:
        statuses.append(endpoint.handle(_grant("wrong", client), FORM, None, NOW).status)

    threads = [threading.Thread(target=request, args=(f"client-{i}",)) for i in range(8)]
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
    busy = threading.Thread(target=endpoint.handle, args=(_grant("wrong", "someone-else"), FORM, None, NOW))
    busy.start()
    time.sleep(0.1)
    try:
        with pytest.raises(errors.Overloaded):
            endpoint.handle(_grant(), FORM, None, NOW)
    finally:
        busy.join()


def _busy(endpoint: TokenEndpoint, *clients: str) -> list[threading.Thread]:
    threads = [
        threading.Thread(target=endpoint.handle, args=(_grant("wrong", client), FORM, None, NOW))
        for client in clients
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    return threads


def test_a_full_queue_is_refused_at_once_not_after_the_wait(
    directory: FakeDirectory, issuer: AccessTokenIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One running, one waiting: a third caller must not hold its thread for the wait.
    Counted(monkeypatch, pause=0.5)
    endpoint = _endpoint(directory, issuer, SecretChecks(concurrent=1, queue=1, wait_seconds=5.0))
    threads = _busy(endpoint, "first", "second")
    try:
        began = time.monotonic()
        with pytest.raises(errors.Overloaded):
            endpoint.handle(_grant(), FORM, None, NOW)
        assert time.monotonic() - began < 0.1
    finally:
        for thread in threads:
            thread.join()


def test_one_client_id_has_one_check_at_a_time(
    directory: FakeDirectory, issuer: AccessTokenIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = Counted(monkeypatch, pause=0.3)
    endpoint = _endpoint(directory, issuer, SecretChecks(concurrent=1, queue=8, wait_seconds=5.0))
    threads = _busy(endpoint, CLIENT)
    try:
        with pytest.raises(errors.Overloaded):
            endpoint.handle(_grant(), FORM, None, NOW)
        # Another client still gets its turn behind the running check.
        assert endpoint.handle(_grant("wrong", "another"), FORM, None, NOW).status == 401
    finally:
        for thread in threads:
            thread.join()
    assert counted.runs == 2


@pytest.mark.parametrize("client", [CLIENT, "no-such-client"])
def test_a_guessing_client_id_is_refused_without_a_hash(
    client: str, directory: FakeDirectory, issuer: AccessTokenIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = Counted(monkeypatch)
    now = [0.0]
    failures = FailedAttempts(allowed=3, window_seconds=60, clock=lambda: now[0])
    endpoint = _endpoint(directory, issuer, SecretChecks(failures=failures, clock=lambda: now[0]))
    assert [endpoint.handle(_grant("wrong", client), FORM, None, NOW).status for _ in range(3)] == [401] * 3
    # Known and unknown ids alike: the refusal tells nothing about which exist.
    with pytest.raises(errors.Overloaded, match="too many failed attempts"):
        endpoint.handle(_grant("wrong", client), FORM, None, NOW)
    assert counted.runs == 3
    # Other clients are not affected.
    assert endpoint.handle(_grant("wrong", "another"), FORM, None, NOW).status == 401
    now[0] = 60.0
    assert endpoint.handle(_grant("wrong", client), FORM, None, NOW).status == 401
    assert counted.runs == 5


def test_a_remembered_secret_passes_while_its_client_id_is_throttled(
    directory: FakeDirectory, issuer: AccessTokenIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = Counted(monkeypatch)
    failures = FailedAttempts(allowed=2)
    endpoint = _endpoint(directory, issuer, SecretChecks(failures=failures))
    assert endpoint.handle(_grant(), FORM, None, NOW).status == 200
    for _ in range(2):
        assert endpoint.handle(_grant("wrong"), FORM, None, NOW).status == 401
    with pytest.raises(errors.Overloaded):
        endpoint.handle(_grant("wrong"), FORM, None, NOW)
    # The consumer that holds the right secret costs no hash, so guessing cannot lock it out.
    assert endpoint.handle(_grant(), FORM, None, NOW).status == 200
    assert counted.runs == 3


def test_failed_attempts_remember_a_bounded_number_of_client_ids() -> None:
    failures = FailedAttempts(allowed=1, tracked=3)
    for client in ("a", "b", "c", "d"):
        failures.record_failure(client)
    # The least recently failed is forgotten first.
    assert [failures.refused(client) for client in ("a", "b", "c", "d")] == [False, True, True, True]
    failures.forget("b")
    assert not failures.refused("b")


@pytest.mark.parametrize("call_threads", [1, 2, 3, 4, 5, 6, 16, 64])
def test_a_flood_of_checks_holds_at_most_half_of_the_call_threads(call_threads: int) -> None:
    held = SecretChecks.for_call_threads(call_threads).held_at_most
    assert 1 <= held <= max(1, call_threads // 2)


def test_the_checks_of_four_call_threads_refuse_a_third_caller_at_once(
    directory: FakeDirectory, issuer: AccessTokenIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Four threads: one check running and one waiting hold two; the others stay for other calls.
    counted = Counted(monkeypatch, pause=0.5)
    endpoint = _endpoint(directory, issuer, SecretChecks.for_call_threads(4))
    threads = _busy(endpoint, "first", "second")
    try:
        began = time.monotonic()
        with pytest.raises(errors.Overloaded):
            endpoint.handle(_grant("wrong", "third"), FORM, None, NOW)
        assert time.monotonic() - began < 0.1
        assert counted.most_at_once == 1
    finally:
        for thread in threads:
            thread.join()
