"""Per-tenant rate limits at a real edge: a tenant's own limit, changed while the edge runs."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestra_server.edge import EnvoyProcess, TenantRateLimit, Upstream
from tests.contract.conftest import Service, start_edge
from tests.contract.helpers import Consumer, assert_error

pytestmark = pytest.mark.timeout(120)

# A burst small enough that a few calls in a row use it up, refilled by one call a second.
LOW = TenantRateLimit(requests_per_second=1, burst=2)
# A running edge applies a new limits file within this long (observed: well under a second).
APPLY_SECONDS = 10.0


def _pings(url: str, consumer: Consumer, count: int) -> list[httpx.Response]:
    with httpx.Client(base_url=url, timeout=10) as http:
        return [http.get("/orchestra-api/ping", headers=consumer.headers) for _ in range(count)]


def _statuses(url: str, consumer: Consumer, count: int) -> Counter[int]:
    return Counter(response.status_code for response in _pings(url, consumer, count))


def _until(condition: Callable[[], bool], seconds: float = APPLY_SECONDS) -> float:
    """Seconds until `condition` held; fails the test if it does not within `seconds`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > seconds:
            pytest.fail(f"not seen within {seconds:.0f} s")
        time.sleep(0.2)
    return time.monotonic() - started


@contextlib.contextmanager
def _edge(service: Service, tmp_path: Path, **settings: Any) -> Iterator[EnvoyProcess]:
    """An edge before the service with the given rate limit settings, stopped afterwards."""
    running = start_edge(tmp_path, (Upstream("127.0.0.1", service.port),), **settings)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def default_edge(service: Service, tmp_path: Path) -> Iterator[EnvoyProcess]:
    """An edge with the default limit for every tenant, and none of their own yet."""
    running = start_edge(
        tmp_path, (Upstream("127.0.0.1", service.port),), tenant_rate_limit=TenantRateLimit()
    )
    yield running
    running.stop()


def test_a_tenant_over_its_own_limit_gets_429_while_another_is_unaffected(
    service: Service, tmp_path: Path, acme: Consumer, globex: Consumer
) -> None:
    with _edge(
        service,
        tmp_path,
        tenant_limits={acme.tenant: LOW},
        tenant_rate_limit=TenantRateLimit(),
    ) as edge:
        responses = _pings(edge.rest_url, acme, 8)
        statuses = [r.status_code for r in responses]
        assert statuses.count(200) >= LOW.burst
        refused = [r for r in responses if r.status_code == 429]
        assert refused, statuses
        for response in refused:
            assert_error(response, 429, "rate limit exceeded")
        # The other tenant has the default bucket, and it is its own.
        assert _statuses(edge.rest_url, globex, 20) == Counter({200: 20})


def test_a_running_edge_takes_a_new_limit_without_a_restart_or_a_dropped_request(
    default_edge: EnvoyProcess, acme: Consumer, globex: Consumer
) -> None:
    edge = default_edge
    pid = edge.pid
    assert _statuses(edge.rest_url, acme, 10) == Counter({200: 10})
    # Another tenant calls all along, on connections kept open across every change.
    stop = threading.Event()
    seen: Counter[str] = Counter()

    def call_all_along() -> None:
        with httpx.Client(base_url=edge.rest_url, timeout=10) as http:
            while not stop.is_set():
                try:
                    seen[str(http.get("/orchestra-api/ping", headers=globex.headers).status_code)] += 1
                except httpx.HTTPError as exc:
                    seen[type(exc).__name__] += 1
                time.sleep(0.01)

    callers = [threading.Thread(target=call_all_along) for _ in range(2)]
    for caller in callers:
        caller.start()
    try:
        assert edge.set_tenant_limits({acme.tenant: LOW})
        # Applying the same limits again changes nothing.
        assert not edge.set_tenant_limits({acme.tenant: LOW})
        _until(lambda: _statuses(edge.rest_url, acme, 6)[429] > 0)
        refused = [r for r in _pings(edge.rest_url, acme, 6) if r.status_code == 429]
        assert refused
        assert_error(refused[0], 429, "rate limit exceeded")
        # Taken away: the default applies again.
        assert edge.set_tenant_limits({})
        _until(lambda: _statuses(edge.rest_url, acme, 10) == Counter({200: 10}))
        # The other tenant's calls went on across the changes, however quickly they applied.
        _until(lambda: sum(seen.values()) > 20)
    finally:
        stop.set()
        for caller in callers:
            caller.join(20)
    assert edge.pid == pid
    assert edge.running
    assert set(seen) == {"200"}, seen


def test_a_tenant_s_own_0_lifts_its_limit_while_the_others_keep_the_default(
    service: Service, tmp_path: Path, acme: Consumer, globex: Consumer
) -> None:
    with _edge(
        service,
        tmp_path,
        tenant_limits={acme.tenant: TenantRateLimit.OFF},
        tenant_rate_limit=LOW,
    ) as edge:
        assert _statuses(edge.rest_url, acme, 30) == Counter({200: 30})
        assert _statuses(edge.rest_url, globex, 6)[429] > 0


def test_with_the_default_off_only_tenants_with_their_own_limit_are_limited(
    service: Service, tmp_path: Path, acme: Consumer, globex: Consumer
) -> None:
    with _edge(
        service,
        tmp_path,
        tenant_limits={acme.tenant: LOW},
        tenant_rate_limit=TenantRateLimit.OFF,
    ) as edge:
        assert _statuses(edge.rest_url, acme, 6)[429] > 0
        assert _statuses(edge.rest_url, globex, 30) == Counter({200: 30})
