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
import time

import httpx
import pytest

from orchestra_server.edge import EnvoyProcess
from tests.contract.conftest import TENANT_A, Cli
from tests.contract.helpers import Consumer

pytestmark = pytest.mark.timeout(120)

FLOOD_SECONDS = float(os.environ.get("ORCHESTRA_FLOOD_SECONDS", "10"))
FLOOD_CONNECTIONS = int(os.environ.get("ORCHESTRA_FLOOD_CONNECTIONS", "100"))
# The targets: another tenant's p99 and a fresh consumer's first token, under the flood.
OTHER_TENANT_P99_SECONDS = 0.050
LEGITIMATE_TOKEN_SECONDS = 1.0
# Ping calls measured; enough that the p99 is not one unlucky call.
MEASURED_CALLS = 400
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
        deadline = time.monotonic() + FLOOD_SECONDS - 2.5
        while len(latencies) < MEASURED_CALLS and time.monotonic() < deadline:
            if len(latencies) == MEASURED_CALLS // 2:
                token_seconds = _timed_first_token(edge.rest_url, fresh["client_id"], fresh["client_secret"])
            began = time.perf_counter()
            ping = http.get("/orchestra-api/ping", headers=globex.headers)
            latencies.append(time.perf_counter() - began)
            ping_statuses[ping.status_code] = ping_statuses.get(ping.status_code, 0) + 1
        still_flooding = flood.poll() is None
    finally:
        out, _ = flood.communicate(timeout=FLOOD_SECONDS + 30)
    statuses = {int(k): v for k, v in json.loads(out).items()}
    p99 = _p99(latencies)
    p50 = sorted(latencies)[len(latencies) // 2] if latencies else float("nan")
    report = (
        f"flood {statuses}, {len(latencies)} pings, p50 {p50 * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, ping answers {ping_statuses}, first token {token_seconds}"
    )
    print(report)
    assert still_flooding, report
    # A real flood: the edge answered it throughout, every answer a refusal.
    assert sum(statuses.values()) >= FLOOD_CONNECTIONS * 5, report
    assert set(statuses) <= {401, 429}, report
    assert len(latencies) >= MEASURED_CALLS, report
    assert ping_statuses == {200: len(latencies)}, report
    assert isinstance(token_seconds, float), report
    assert token_seconds < LEGITIMATE_TOKEN_SECONDS, report
    assert p99 < OTHER_TENANT_P99_SECONDS, report


def _timed_first_token(rest_url: str, client_id: str, client_secret: str) -> float | str:
    """Seconds to a fresh consumer's first token, or what it got instead.

    The consumer calls from another address than the flood (127.0.0.2 is loopback too), as a
    real consumer would: the edge throttles token requests per source address.
    """
    began = time.perf_counter()
    transport = httpx.HTTPTransport(local_address=CONSUMER_ADDRESS)
    with httpx.Client(base_url=rest_url, transport=transport, timeout=15) as client:
        response = client.post(
            "/oauth/token",
            data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": client_secret},
        )
    elapsed = time.perf_counter() - began
    if response.status_code != 200:
        return f"{response.status_code} {response.text} after {elapsed:.2f} s"
    return elapsed
