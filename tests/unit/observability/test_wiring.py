"""How the serving commands hand each worker of a pool its own metrics port and the log format."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from orchestra_server.cli import metrics_ports
from orchestra_server.runtime import WorkerPool, WorkerSpec
from orchestra_server.settings import Settings


def option(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


def test_each_worker_is_started_with_its_own_metrics_port() -> None:
    ports = metrics_ports(9100, 3, {50051, 50052, 50053})
    specs = [
        WorkerSpec("127.0.0.1", 50051 + i, scheduler=i == 0, metrics_port=p) for i, p in enumerate(ports)
    ]
    settings = Settings(data_dir=Path("data"), metrics_host="0.0.0.0", log_format="json")  # noqa: S104
    pool = WorkerPool(settings, specs)
    commands = [pool._command(spec) for spec in specs]
    assert [option(c, "--metrics-port") for c in commands] == ["9100", "9101", "9102"]
    assert {option(c, "--metrics-host") for c in commands} == {"0.0.0.0"}  # noqa: S104
    assert {option(c, "--log-format") for c in commands} == {"json"}


def test_without_a_metrics_port_no_worker_serves_metrics() -> None:
    specs = [
        WorkerSpec("127.0.0.1", 50051, scheduler=True, metrics_port=p) for p in metrics_ports(None, 2, set())
    ]
    pool = WorkerPool(Settings(data_dir=Path("data")), specs)
    assert all("--metrics-port" not in pool._command(spec) for spec in specs)
    assert all("--log-format" not in pool._command(spec) for spec in specs)


def test_port_zero_lets_every_worker_pick_a_free_port() -> None:
    assert metrics_ports(0, 3, {50051}) == [0, 0, 0]


@pytest.mark.parametrize(("base", "count", "taken"), [(65535, 2, set()), (50050, 3, {50051})])
def test_metrics_ports_must_fit_and_not_overlap_the_grpc_ports(
    base: int, count: int, taken: set[int]
) -> None:
    with pytest.raises(click.UsageError):
        metrics_ports(base, count, taken)
