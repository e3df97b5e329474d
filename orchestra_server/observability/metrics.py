"""Prometheus metrics: RPC counters and latencies, and the engine's state asked for on scrape."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, start_wsgi_server
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from orchestra_server.engine.model import InstanceStatus
from orchestra_server.service.status import EngineState

_log = logging.getLogger("orchestra.metrics")

# From a cached read (0.5 ms) to a call that waited on a lock or a slow database (seconds).
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Scrapes from several Prometheus servers (or a person with curl) share one round of queries.
STATE_CACHE_SECONDS = 5.0


class SchedulerStatus(Protocol):
    """What the collector reports of this process's timer scheduler."""

    @property
    def healthy(self) -> bool: ...

    @property
    def fired_total(self) -> int: ...


class Metrics:
    """One process's metrics in a registry of its own, so several applications can live side by side."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "orchestra_rpc_requests",
            "RPCs answered, by method and final gRPC status code.",
            ("rpc", "code"),
            registry=self.registry,
        )
        self.duration = Histogram(
            "orchestra_rpc_duration_seconds",
            "Time from the call reaching the server's handlers to its answer, by method.",
            ("rpc",),
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)
        # labels() takes a lock and builds a key on every call; the label sets are few, so keep the children.
        self._request_children: dict[tuple[str, str], Counter] = {}
        self._duration_children: dict[str, Histogram] = {}

    def observe_rpc(self, rpc: str, code: str, seconds: float) -> None:
        child = self._request_children.get((rpc, code))
        if child is None:
            child = self._request_children.setdefault((rpc, code), self.requests.labels(rpc, code))
        child.inc()
        timer = self._duration_children.get(rpc)
        if timer is None:
            timer = self._duration_children.setdefault(rpc, self.duration.labels(rpc))
        timer.observe(seconds)

    def watch(
        self,
        read_state: Callable[[], EngineState],
        scheduler: SchedulerStatus | None = None,
        *,
        cache_seconds: float = STATE_CACHE_SECONDS,
    ) -> StateCollector:
        """Adds the gauges from `read_state` and the scheduler's, read on scrape."""
        collector = StateCollector(read_state, scheduler, cache_seconds=cache_seconds)
        self.registry.register(collector)
        return collector


class StateCollector(Collector):
    """The engine's state, queried at most once per `cache_seconds` and never from the RPC path."""

    def __init__(
        self,
        read_state: Callable[[], EngineState],
        scheduler: SchedulerStatus | None = None,
        *,
        cache_seconds: float = STATE_CACHE_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read_state = read_state
        self._scheduler = scheduler
        # Counted here rather than in a registered Counter so that the failing scrape already shows it.
        self._errors = 0
        self._cache_seconds = cache_seconds
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._cached: list[Metric] | None = None
        self._cached_at = 0.0

    def describe(self) -> Iterable[Metric]:
        # Describing must not query: registration would then touch the database.
        return ()

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            now = self._monotonic()
            if self._cached is None or now - self._cached_at >= self._cache_seconds:
                self._cached = list(self._read())
                self._cached_at = now
            return list(self._cached)

    def _read(self) -> Iterator[Metric]:
        scheduler = self._scheduler
        state: EngineState | None
        try:
            state = self._read_state()
        except Exception:  # a scrape must report the outage, not fail
            self._errors += 1
            _log.warning("metrics: reading the engine state failed", exc_info=True)
            state = None
        yield _gauge(
            "orchestra_database_up", "1 when the database answered the last state query.", state is not None
        )
        if state is not None:
            by_status = dict(state.instances_by_status)
            instances = GaugeMetricFamily(
                "orchestra_instances", "Process instances by status.", labels=["status"]
            )
            # Every known status, zero included, so a series does not vanish when its last instance moves on.
            for known in InstanceStatus:
                instances.add_metric([known.value], by_status.pop(known.value, 0))
            for other, count in sorted(by_status.items()):
                instances.add_metric([other], count)
            yield instances
            yield _gauge(
                "orchestra_parked_tokens", "Tokens parked on a wait or timer node.", state.parked_tokens
            )
            yield _gauge(
                "orchestra_due_timer_backlog",
                "Parked tokens already due and not yet fired.",
                state.due_backlog,
            )
        if scheduler is not None:
            # Only a process that runs a scheduler reports these (with SQLite, only the first worker).
            yield _gauge(
                "orchestra_scheduler_up", "1 while this process's timer scheduler runs.", scheduler.healthy
            )
            fired = CounterMetricFamily(
                "orchestra_timers_fired", "Timers and wait timeouts fired by this process's scheduler."
            )
            fired.add_metric([], scheduler.fired_total)
            yield fired
        errors = CounterMetricFamily(
            "orchestra_metrics_collect_errors",
            "Scrapes whose state queries failed (the state gauges are then left out).",
        )
        errors.add_metric([], self._errors)
        yield errors


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


def start_metrics_server(registry: CollectorRegistry, host: str, port: int) -> tuple[WSGIServer, int]:
    """Serves `registry` over HTTP from a daemon thread (port 0 picks a free port); returns the bound port.

    Stop it with `server.shutdown()` then `server.server_close()`.
    """
    server, _thread = start_wsgi_server(port, addr=host, registry=registry)
    return server, int(server.server_port)
