"""Running Orchestra: one worker process, a supervised pool of them, and the edge in front."""

from __future__ import annotations

import errno
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from orchestra_server.bootstrap import build_application
from orchestra_server.observability.metrics import start_metrics_server
from orchestra_server.settings import Settings
from orchestra_server.transport.server import ServerOptions, serve
from orchestra_server.wire.rate_limits import TenantRateLimit

_log = logging.getLogger("orchestra.runtime")
RESTART_BACKOFF_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0)
# How often the supervisor looks at its children; a dead child waits at most this long to be seen.
SUPERVISION_POLL_SECONDS = 0.2
# A stopped worker gets the grace period to finish its calls, and this much more to exit.
EXIT_MARGIN_SECONDS = 5.0
# How often `orchestra up` reads the tenants' stored rate limits to hand changes to the edge.
TENANT_LIMITS_POLL_SECONDS = 2.0


class StartFailed(RuntimeError):
    """A part could not start: a port taken by another program, a worker that exited at once."""


def check_port_free(host: str, port: int, what: str) -> None:
    """Raises StartFailed, naming the port, when another program listens on `host`:`port`.

    Checked before anything starts, so a taken port is reported at once; every listener binds
    without SO_REUSEPORT as well, so none shares a port with a program that starts later.
    """
    bare = host.strip("[]") or None
    try:
        addresses = socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return  # an address that does not resolve is reported by the bind itself
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            # A connection of an earlier run still in TIME_WAIT does not hold the port.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise StartFailed(
                        f"port {port} ({what}) on {host or '*'} is in use by another program"
                    ) from None


def default_workers() -> int:
    """One process per core (a process runs Python on one core at a time), at most 8."""
    return max(1, min(os.cpu_count() or 1, 8))


def run_worker(
    settings: Settings,
    address: str,
    *,
    scheduler: bool,
    metrics_address: tuple[str, int] | None = None,
    share_port: bool = False,
) -> None:
    """Serves gRPC in this process (and fires timers when asked) until SIGTERM or SIGINT.

    With `metrics_address` (host, port) it also serves Prometheus metrics over HTTP there. With
    `share_port` it shares its port with its sibling workers (`orchestra serve --workers N`).
    """
    app = build_application(settings, scheduler=scheduler)
    metrics_server = None
    try:
        if metrics_address is not None:
            metrics_server, metrics_port = start_metrics_server(app.metrics.registry, *metrics_address)
            _log.info(
                "serving metrics on http://%s:%d/metrics", connect_host(metrics_address[0]), metrics_port
            )
        app.start()
        serve(
            address,
            app.server_dependencies(),
            ServerOptions(
                max_workers=settings.call_threads, grace_seconds=settings.grace_period, share_port=share_port
            ),
        )
    finally:
        app.close()
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()


def wait_healthy(target: str, timeout: float, failure: Callable[[], str | None] = lambda: None) -> None:
    """Waits until the gRPC server at `target` reports SERVING; raises StartFailed as soon as
    `failure` tells why it never will (a worker that exited)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            reason = failure()
            if reason is not None:
                raise StartFailed(reason)
            try:
                answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as exc:
                last = exc
            time.sleep(0.1)
    raise TimeoutError(f"{target} did not become healthy within {timeout:.0f} s ({last})")


class SupervisionFailed(RuntimeError):
    """A child could not be kept up: it died more often than the restart rule allows."""


@dataclass(frozen=True)
class RestartRule:
    """When a child that died is started again, and when the supervisor gives up on it.

    A child is restarted after a backoff that grows with its restarts in the last `window_seconds`;
    if it dies (or fails to start) again after `limit` restarts within that window, the
    supervisor gives up: a child that cannot stay up is a fault to report, not to hide.
    """

    limit: int = 5
    window_seconds: float = 60.0
    backoff_seconds: Sequence[float] = RESTART_BACKOFF_SECONDS


@dataclass
class Supervised:
    """One child under supervision: how to see that it died, and how to start it again."""

    name: str
    # The child's exit status, None while it runs.
    exit_status: Callable[[], int | None]
    # Starts the child again; raises when it cannot start.
    restart: Callable[[], None]
    # When it was restarted (monotonic seconds), for the restart rule.
    restarted_at: list[float] = field(default_factory=list, init=False, repr=False)
    # Why the last restart failed; the child is down until a restart succeeds.
    start_failure: str | None = field(default=None, init=False, repr=False)

    def failure(self) -> str | None:
        """Why this child is down, or None while it runs."""
        if self.start_failure is not None:
            return self.start_failure
        status = self.exit_status()
        return None if status is None else f"exited with status {status}"


def supervise(
    children: Sequence[Supervised],
    stop: threading.Event,
    rule: RestartRule = RestartRule(),
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Restarts children that die, with backoff, until `stop` is set.

    Raises SupervisionFailed when a child dies again after `rule.limit` restarts within
    `rule.window_seconds`.
    """
    while not stop.wait(SUPERVISION_POLL_SECONDS):
        for child in children:
            failure = child.failure()
            if failure is None:
                continue
            now = clock()
            child.restarted_at = [t for t in child.restarted_at if now - t < rule.window_seconds]
            recent = len(child.restarted_at)
            if recent >= rule.limit:
                _log.error(
                    "%s %s after %d restarts within %.0f s; giving up",
                    child.name,
                    failure,
                    recent,
                    rule.window_seconds,
                )
                raise SupervisionFailed(
                    f"{child.name} {failure} after {recent} restarts within "
                    f"{rule.window_seconds:.0f} s; stopping everything"
                )
            delay = rule.backoff_seconds[min(recent, len(rule.backoff_seconds) - 1)]
            _log.warning("%s %s; restarting in %.1f s", child.name, failure, delay)
            if stop.wait(delay):
                return
            child.restarted_at.append(clock())
            try:
                child.restart()
            except Exception as exc:  # any failure to start counts against the rule
                # The first line is the summary; the rest (e.g. Envoy's log tail) goes to the log.
                reason = str(exc).splitlines()[0].rstrip(":") if str(exc) else type(exc).__name__
                child.start_failure = f"failed to start ({reason})"
                _log.error("%s failed to start: %s", child.name, exc)
                continue
            child.start_failure = None
            _log.warning("%s restarted", child.name)


@dataclass
class WorkerSpec:
    host: str
    port: int
    scheduler: bool
    # None: no metrics endpoint in this worker.
    metrics_port: int | None = None
    # The port is shared with sibling workers (SO_REUSEPORT); otherwise it is this worker's alone.
    share_port: bool = False


def worker_specs(
    settings: Settings,
    host: str,
    ports: Sequence[int],
    metrics_ports: Sequence[int | None],
    *,
    scheduler: bool = True,
) -> list[WorkerSpec]:
    """One worker per port (a port listed more than once is shared by those workers). On SQLite
    only the first fires timers: one writer at a time would make more schedulers wait on each
    other; on PostgreSQL they claim disjoint batches."""
    shared = {port for port in ports if list(ports).count(port) > 1}
    return [
        WorkerSpec(
            host,
            port,
            scheduler=scheduler and (i == 0 or not settings.uses_sqlite),
            metrics_port=m,
            share_port=port in shared,
        )
        for i, (port, m) in enumerate(zip(ports, metrics_ports, strict=True))
    ]


@dataclass
class WorkerPool:
    """Runs `orchestra serve` children, restarts any that die, and stops them all on request."""

    settings: Settings
    workers: Sequence[WorkerSpec]
    log_dir: Path | None = None
    _children: list[subprocess.Popen[bytes] | None] = field(default_factory=list)
    _stopping: threading.Event = field(default_factory=threading.Event)

    def _command(self, spec: WorkerSpec) -> list[str]:
        command = [
            sys.executable,
            "-m",
            "orchestra_server.cli",
            "serve",
            "--grpc-host",
            spec.host,
            "--grpc-port",
            str(spec.port),
            "--workers",
            "1",
            "--data-dir",
            str(self.settings.data_dir),
            "--issuer",
            self.settings.issuer,
            "--audience",
            self.settings.audience,
            "--grace-period",
            str(self.settings.grace_period),
            "--scheduler" if spec.scheduler else "--no-scheduler",
        ]
        if self.settings.db_url:
            command += ["--db", self.settings.db_url]
        if spec.metrics_port is not None:
            command += [
                "--metrics-host",
                self.settings.metrics_host,
                "--metrics-port",
                str(spec.metrics_port),
            ]
        if self.settings.log_format is not None:
            command += ["--log-format", self.settings.log_format]
        if spec.share_port:
            command.append("--share-port")
        return command

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        spec = self.workers[index]
        output = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            output = (self.log_dir / f"worker-{index}.log").open("ab")
        try:
            return subprocess.Popen(
                self._command(spec),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT if output else None,
            )
        finally:
            if output is not None:
                output.close()

    def start(self, timeout: float = 30.0) -> None:
        """Starts every worker and waits until each serves; StartFailed as soon as one exits."""
        self._children = [self._spawn(i) for i in range(len(self.workers))]
        try:
            for spec in self.workers:
                wait_healthy(f"{connect_host(spec.host)}:{spec.port}", timeout, self._start_failure)
        except BaseException:
            self.stop()
            raise

    def _start_failure(self) -> str | None:
        for index, child in enumerate(self._children):
            status = None if child is None else child.poll()
            if status is not None:
                spec = self.workers[index]
                where = f"; its log: {self.log_dir / f'worker-{index}.log'}" if self.log_dir else ""
                return (
                    f"worker {index} (gRPC port {spec.port}) exited during start-up with status "
                    f"{status}{where}"
                )
        return None

    def supervised(self) -> list[Supervised]:
        """The workers as children of a supervisor."""
        return [
            Supervised(
                f"worker {index}",
                functools.partial(self._exit_status, index),
                functools.partial(self._restart, index),
            )
            for index in range(len(self.workers))
        ]

    def _exit_status(self, index: int) -> int | None:
        child = self._children[index]
        return None if child is None or self._stopping.is_set() else child.poll()

    def _restart(self, index: int) -> None:
        self._children[index] = self._spawn(index)

    def supervise(
        self, stop: threading.Event, also: Sequence[Supervised] = (), rule: RestartRule = RestartRule()
    ) -> None:
        """Restarts workers (and the children in `also`) that die until `stop` is set.

        Raises SupervisionFailed when one cannot be kept up (see RestartRule).
        """
        supervise([*self.supervised(), *also], stop, rule)

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM to every worker; each gets the grace period to finish its calls, then SIGKILL."""
        if timeout is None:
            timeout = self.settings.grace_period + EXIT_MARGIN_SECONDS
        self._stopping.set()
        for child in self._children:
            if child is not None and child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self._children:
            if child is None:
                continue
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    @property
    def pids(self) -> list[int]:
        return [c.pid for c in self._children if c is not None]


@contextmanager
def running_pool(
    settings: Settings, workers: Sequence[WorkerSpec], log_dir: Path | None = None
) -> Iterator[tuple[WorkerPool, threading.Event]]:
    """Starts the workers and waits for them to be healthy; stops them all when the block ends.

    Yields the pool and the event SIGTERM or SIGINT sets.
    """
    pool = WorkerPool(settings, workers, log_dir=log_dir)
    stop = wait_for_signal()
    pool.start()
    try:
        yield pool, stop
    finally:
        pool.stop()


def follow_tenant_limits(
    read: Callable[[], dict[str, TenantRateLimit]],
    apply: Callable[[dict[str, TenantRateLimit]], bool],
    stop: threading.Event,
    interval: float = TENANT_LIMITS_POLL_SECONDS,
) -> threading.Thread:
    """Reads the stored tenant limits every `interval` seconds and hands them to `apply` (the
    edge's `set_tenant_limits`) until `stop` is set. While the database cannot be read, the edge
    keeps the limits it has."""

    def run() -> None:
        unreadable = False
        while not stop.wait(interval):
            try:
                limits = read()
            except Exception as exc:  # any failure to read leaves the edge as it is
                if not unreadable:
                    _log.warning("cannot read the tenant rate limits (%s); the edge keeps its own", exc)
                unreadable = True
                continue
            if unreadable:
                _log.warning("the tenant rate limits are readable again")
            unreadable = False
            if apply(limits):
                described = ", ".join(
                    f"{tenant} {limit.describe()}" for tenant, limit in sorted(limits.items())
                )
                _log.info("tenant rate limits applied: %s", described or "the default for every tenant")

    thread = threading.Thread(target=run, name="tenant-limits", daemon=True)
    thread.start()
    return thread


def connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host  # noqa: S104


def wait_for_signal() -> threading.Event:
    """An event set by SIGTERM or SIGINT (installed in the main thread)."""
    stop = threading.Event()

    def handler(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop
