"""Metric names and labels, per-application registries, and the state collector's cache and failures."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from orchestra_server.observability.metrics import DURATION_BUCKETS, Metrics, StateCollector
from orchestra_server.service.status import EngineState, read_engine_state
from orchestra_server.storage.database import Database, default_url, open_database
from orchestra_server.storage.migrate import upgrade


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_rpc_metrics_are_named_and_labelled_by_rpc_and_code() -> None:
    metrics = Metrics()
    metrics.observe_rpc("StartProcess", "OK", 0.002)
    metrics.observe_rpc("StartProcess", "OK", 0.004)
    metrics.observe_rpc("StartProcess", "UNAUTHENTICATED", 0.0001)
    found = samples(metrics)
    assert found[("orchestra_rpc_requests_total", (("code", "OK"), ("rpc", "StartProcess")))] == 2
    assert (
        found[("orchestra_rpc_requests_total", (("code", "UNAUTHENTICATED"), ("rpc", "StartProcess")))] == 1
    )
    assert found[("orchestra_rpc_duration_seconds_count", (("rpc", "StartProcess"),))] == 3
    assert found[("orchestra_rpc_duration_seconds_bucket", (("le", "0.0005"), ("rpc", "StartProcess")))] == 1
    assert found[("orchestra_rpc_duration_seconds_bucket", (("le", "0.0025"), ("rpc", "StartProcess")))] == 2
    les = {dict(labels)["le"] for name, labels in found if name == "orchestra_rpc_duration_seconds_bucket"}
    assert les == {*(repr(float(b)) for b in DURATION_BUCKETS), "+Inf"}


def test_each_application_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.observe_rpc("GetInstance", "OK", 0.001)
    assert ("orchestra_rpc_requests_total", (("code", "OK"), ("rpc", "GetInstance"))) not in samples(second)


def engine_state(database: Any) -> Callable[[], EngineState]:
    """The state reader the application gives the collector, on a database that counts its reads."""
    return lambda: read_engine_state(database, datetime(2026, 1, 1, tzinfo=UTC))


class CountingDatabase:
    """Counts the state reads; fails them on request."""

    def __init__(self, real: Database) -> None:
        self.real = real
        self.reads = 0
        self.failing = False

    @contextmanager
    def reading(self) -> Iterator[Any]:
        self.reads += 1
        if self.failing:
            raise RuntimeError("database unreachable")
        with self.real.reading() as conn:
            yield conn


@pytest.fixture
def database(tmp_path: Path) -> Iterator[CountingDatabase]:
    real = open_database(default_url(tmp_path))
    upgrade(real)
    try:
        yield CountingDatabase(real)
    finally:
        real.dispose()


class Ticks:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def values(collector: StateCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in collector.collect()
        for s in family.samples
    }


def test_state_gauges_cover_every_instance_status(database: CountingDatabase) -> None:
    found = values(StateCollector(engine_state(database)))
    for status in ("running", "completed", "cancelled", "failed"):
        assert found[("orchestra_instances", (("status", status),))] == 0
    assert found[("orchestra_parked_tokens", ())] == 0
    assert found[("orchestra_due_timer_backlog", ())] == 0
    assert found[("orchestra_database_up", ())] == 1
    assert found[("orchestra_metrics_collect_errors_total", ())] == 0
    # No scheduler in this process: nothing claims one is down.
    assert ("orchestra_scheduler_up", ()) not in found


def test_state_is_read_at_most_once_per_cache_period(database: CountingDatabase) -> None:
    ticks = Ticks()
    collector = StateCollector(engine_state(database), cache_seconds=5.0, monotonic=ticks)
    values(collector)
    ticks.now += 4.9
    values(collector)
    assert database.reads == 1
    ticks.now += 0.2
    values(collector)
    assert database.reads == 2


def test_a_failing_read_is_reported_and_counted_never_raised(database: CountingDatabase) -> None:
    database.failing = True
    ticks = Ticks()
    collector = StateCollector(engine_state(database), monotonic=ticks)
    found = values(collector)
    assert found[("orchestra_database_up", ())] == 0
    assert found[("orchestra_metrics_collect_errors_total", ())] == 1
    assert ("orchestra_parked_tokens", ()) not in found
    database.failing = False
    ticks.now += 10
    found = values(collector)
    assert found[("orchestra_database_up", ())] == 1
    assert found[("orchestra_metrics_collect_errors_total", ())] == 1


def test_registering_the_state_collector_does_not_query(database: CountingDatabase) -> None:
    metrics = Metrics()
    metrics.watch(engine_state(database))
    assert database.reads == 0
    assert samples(metrics)[("orchestra_database_up", ())] == 1
