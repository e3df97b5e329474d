"""A wrong-secret flood on `/oauth/token` must not starve other tenants or legitimate consumers.

Secret checks are slow on purpose (scrypt); a flood of refusals used to hold every RPC thread
of the worker while waiting for its turn, so a tenant's ordinary calls and a consumer's first
token request queued behind it for seconds. The flood runs in a process of its own (so it does
not compete with the measuring client for this interpreter), on loopback only, for a bounded
time; `make soak` runs a longer and wider one (ORCHESTRA_FLOOD_SECONDS, ORCHESTRA_FLOOD_CONNECTIONS).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import httpx
import pytest

from orchestra_server.edge import EnvoyProcess
from orchestra_server.edge.config import TOKEN_BURST_PER_SOURCE
from orchestra_server.identity.client_secrets import FAILURES_ALLOWED
from tests.contract.conftest import TENANT_A, Cli
from tests.contract.helpers import Consumer, assert_error

FLOOD_SECONDS = float(os.environ.get("ORCHESTRA_FLOOD_SECONDS", "10"))
FLOOD_CONNECTIONS = int(os.environ.get("ORCHESTRA_FLOOD_CONNECTIONS", "100"))
pytestmark = pytest.mark.timeout(FLOOD_SECONDS + 120)
# The targets under the flood: another tenant's p99 and a fresh consumer's first token.
# They hold on a quiet 2-core machine (README, Security); the suite runs on machines shared
# with other work, so the assertion allows ten times the p99 and twice the token time, or
# three times what the same machine measured a moment before without the flood if that is
# more: still far below the seconds (and refused calls) the flood caused when checks held
# RPC threads.
TARGET_P99_SECONDS = 0.050
TARGET_TOKEN_SECONDS = 1.0
ASSERTED_P99_SECONDS = 10 * TARGET_P99_SECONDS
ASSERTED_TOKEN_SECONDS = 2 * TARGET_TOKEN_SECONDS
# Ping calls measured at least; enough that the p99 is not one unlucky call.
MEASURED_CALLS = 200
PING_INTERVAL = 0.01
CONSUMER_ADDRESS = "127.0.0.2"


def _p99(latencies: list[float]) -> float:
    if not latencies:
        return float("inf")
    ordered = sorted(latencies)
    return ordered[max(0, int(len(ordered) * 0.99) - 1)]


def test_a_wrong_secret_flood_does_not_starve_other_tenants(
    edge: EnvoyProcess, http: httpx.Client, cli: Cli, globex: Consumer
) -> None:
    fresh = json.loads(cli("consumer", "create", "--tenant", TENANT_A, "--json"))
    # The same measures without the flood, on the same machine a moment before: what the
    # machine's other work costs, so that the bounds below hold what the flood adds.
    unflooded = json.loads(cli("consumer", "create", "--tenant", TENANT_A, "--json"))
    quiet_token = _timed_first_token(edge.rest_url, unflooded["client_id"], unflooded["client_secret"])
    assert isinstance(quiet_token, float), quiet_token
    quiet: list[float] = []
    for _ in range(100):
        sent = time.perf_counter()
        assert http.get("/orchestra-api/ping", headers=globex.headers).status_code == 200
        quiet.append(time.perf_counter() - sent)
        time.sleep(PING_INTERVAL)
    quiet_p99 = _p99(quiet)
    port = httpx.URL(edge.rest_url).port
    assert port is not None
    flood = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.contract.token_flood",
            str(port),
            str(FLOOD_CONNECTIONS),
            str(FLOOD_SECONDS),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.5)  # the flood has filled whatever queue it can fill
        latencies: list[float] = []
        token_seconds: float | str | None = None
        ping_statuses: dict[int, int] = {}
        # Measured until shortly before the flood ends, the first token half way through.
        began = time.monotonic()
        deadline = began + FLOOD_SECONDS - 2.5
        token_at = began + (FLOOD_SECONDS - 2.5) / 2
        sent = time.perf_counter()
        while time.monotonic() < deadline:
            if token_seconds is None and time.monotonic() >= token_at:
                token_seconds = _timed_first_token(edge.rest_url, fresh["client_id"], fresh["client_secret"])
            # Paced well under the tenant's own budget (200/s), so every refusal would be the flood's doing.
            time.sleep(max(0.0, PING_INTERVAL - (time.perf_counter() - sent)) if latencies else 0.0)
            sent = time.perf_counter()
            ping = http.get("/orchestra-api/ping", headers=globex.headers)
            latencies.append(time.perf_counter() - sent)
            ping_statuses[ping.status_code] = ping_statuses.get(ping.status_code, 0) + 1
        still_flooding = flood.poll() is None
    finally:
        out, _ = flood.communicate(timeout=FLOOD_SECONDS + 30)
    statuses = {int(k): v for k, v in json.loads(out).items()}
    p99 = _p99(latencies)
    p50 = sorted(latencies)[len(latencies) // 2] if latencies else float("nan")
    report = (
        f"flood {statuses}, {len(latencies)} pings, p50 {p50 * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms (target {TARGET_P99_SECONDS * 1000:.0f} ms), ping answers {ping_statuses}, "
        f"first token {token_seconds} (target {TARGET_TOKEN_SECONDS:.0f} s); without the flood "
        f"p99 {quiet_p99 * 1000:.1f} ms, first token {quiet_token:.2f} s"
    )
    print(report)
    assert still_flooding, report
    # A real flood: the edge answered it throughout, every answer a refusal.
    assert sum(statuses.values()) >= FLOOD_CONNECTIONS * 5, report
    assert set(statuses) <= {401, 429}, report
    assert len(latencies) >= MEASURED_CALLS, report
    assert ping_statuses == {200: len(latencies)}, report
    assert isinstance(token_seconds, float), report
    assert token_seconds < max(ASSERTED_TOKEN_SECONDS, 3 * quiet_token), report
    assert p99 < max(ASSERTED_P99_SECONDS, 3 * quiet_p99), report


def test_the_edge_limits_token_requests_per_source_address(edge: EnvoyProcess) -> None:
    # Refused before client authentication (no hash), and sent on several connections at
    # once, so they come faster than the bucket refills even on a busy machine.
    body = {"grant_type": "password", "client_id": "someone", "client_secret": "nope"}
    refused: list[httpx.Response] = []
    statuses: list[int] = []

    def send(client: httpx.Client) -> None:
        for _ in range(TOKEN_BURST_PER_SOURCE):
            response = client.post("/oauth/token", data=body)
            statuses.append(response.status_code)
            if response.status_code == 429:
                refused.append(response)

    clients = [_client_from(edge.rest_url, "127.0.0.3") for _ in range(8)]
    try:
        senders = [threading.Thread(target=send, args=(client,)) for client in clients]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
    finally:
        for client in clients:
            client.close()
    assert set(statuses) == {400, 429}, statuses
    assert statuses.count(400) >= TOKEN_BURST_PER_SOURCE, statuses
    assert_error(refused[0], 429, "rate limit exceeded")
    # Another address has a bucket of its own.
    with _client_from(edge.rest_url, "127.0.0.4") as other:
        assert other.post("/oauth/token", data=body).status_code == 400


def test_a_guessing_client_id_gets_429_in_the_contract_shape(edge: EnvoyProcess) -> None:
    body = {"grant_type": "client_credentials", "client_id": "guessed-client", "client_secret": "nope"}
    with _client_from(edge.rest_url, "127.0.0.5") as guessing:
        statuses = [guessing.post("/oauth/token", data=body).status_code for _ in range(FAILURES_ALLOWED)]
        assert statuses == [401] * FAILURES_ALLOWED
        refused = guessing.post("/oauth/token", data=body)
    assert_error(refused, 429, "too many failed attempts for this client; retry later")


def _client_from(rest_url: str, address: str) -> httpx.Client:
    return httpx.Client(base_url=rest_url, transport=httpx.HTTPTransport(local_address=address), timeout=15)


def _timed_first_token(rest_url: str, client_id: str, client_secret: str) -> float | str:
    """Seconds to a fresh consumer's first token, or what it got instead.

    The consumer calls from another address than the flood (127.0.0.2 is loopback too), as a
    real consumer would: the edge throttles token requests per source address.
    """
    began = time.perf_counter()
    with _client_from(rest_url, CONSUMER_ADDRESS) as client:
        response = client.post(
            "/oauth/token",
            data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": client_secret},
        )
    elapsed = time.perf_counter() - began
    if response.status_code != 200:
        return f"{response.status_code} {response.text} after {elapsed:.2f} s"
    return elapsed
