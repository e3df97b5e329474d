"""The restart rule of the supervisor: restart with backoff, give up on a child that cannot stay up."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import pytest

from orchestra_server.runtime import RestartRule, Supervised, SupervisionFailed, supervise

QUICK = RestartRule(limit=3, window_seconds=60.0, backoff_seconds=(0.0, 0.01))


@dataclass
class FakeChild:
    """A child that dies whenever told to; `refuse_starts` makes its next starts fail."""

    status: int | None = None
    starts: int = 0
    refuse_starts: int = 0
    on_start: list[threading.Event] = field(default_factory=list)

    def exit_status(self) -> int | None:
        return self.status

    def restart(self) -> None:
        self.starts += 1
        if self.refuse_starts:
            self.refuse_starts -= 1
            raise OSError("address already in use")
        self.status = None

    def supervised(self, name: str) -> Supervised:
        return Supervised(name, self.exit_status, self.restart)


def _run(children: list[Supervised], stop: threading.Event, rule: RestartRule = QUICK) -> list[BaseException]:
    raised: list[BaseException] = []

    def run() -> None:
        try:
            supervise(children, stop, rule)
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return raised


def _wait_for(condition: object, seconds: float = 10.0) -> None:
    waited = threading.Event()
    for _ in range(int(seconds / 0.02)):
        if callable(condition) and condition():
            return
        waited.wait(0.02)
    pytest.fail("condition not met in time")


def test_a_child_that_dies_is_restarted_and_the_restart_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    edge, worker = FakeChild(), FakeChild()
    stop = threading.Event()
    caplog.set_level(logging.WARNING, "orchestra.runtime")
    raised = _run([worker.supervised("worker 0"), edge.supervised("edge")], stop)
    edge.status = -9
    _wait_for(lambda: edge.starts == 1 and edge.status is None)
    stop.set()
    _wait_for(lambda: "edge restarted" in caplog.text)
    assert raised == []
    assert worker.starts == 0
    assert "edge exited with status -9; restarting" in caplog.text


def test_a_child_that_keeps_dying_ends_supervision_with_its_name() -> None:
    edge, worker = FakeChild(), FakeChild()
    stop = threading.Event()
    raised = _run([worker.supervised("worker 0"), edge.supervised("edge")], stop)
    for restart in range(1, QUICK.limit + 1):
        edge.status = -9
        _wait_for(lambda restart=restart: edge.starts == restart and edge.status is None)  # type: ignore[misc]
    edge.status = -9
    _wait_for(lambda: bool(raised))
    stop.set()
    assert isinstance(raised[0], SupervisionFailed)
    assert str(raised[0]).startswith("edge exited with status -9 after 3 restarts within 60 s")
    assert edge.starts == QUICK.limit
    assert worker.starts == 0


def test_a_failed_start_counts_against_the_rule_and_is_retried() -> None:
    edge = FakeChild(refuse_starts=1)
    stop = threading.Event()
    raised = _run([edge.supervised("edge")], stop)
    edge.status = 1
    _wait_for(lambda: edge.starts == 2)
    stop.set()
    _wait_for(lambda: True)
    assert raised == []
    edge.refuse_starts = QUICK.limit + 1
    edge.status = 1
    stop = threading.Event()
    raised = _run([edge.supervised("edge")], stop)
    _wait_for(lambda: bool(raised))
    assert "edge failed to start (address already in use)" in str(raised[0])


def test_restarts_outside_the_window_are_forgotten() -> None:
    child = FakeChild()
    stop = threading.Event()
    rule = RestartRule(limit=1, window_seconds=0.3, backoff_seconds=(0.0,))
    raised = _run([child.supervised("worker 0")], stop, rule)
    child.status = -9
    _wait_for(lambda: child.starts == 1 and child.status is None)
    threading.Event().wait(0.5)  # longer than the window
    child.status = -9
    _wait_for(lambda: child.starts == 2 and child.status is None)
    stop.set()
    assert raised == []


# --- the tenant limits the supervisor hands to the edge -----------------------------------------


def test_stored_limits_reach_the_edge_and_a_failed_read_leaves_it_as_it_is(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from orchestra_server.runtime import follow_tenant_limits
    from orchestra_server.wire.rate_limits import TenantRateLimit

    stored: list[dict[str, TenantRateLimit] | Exception] = [
        {"acme": TenantRateLimit(1, 2)},
        RuntimeError("database unavailable"),
        {"acme": TenantRateLimit(1, 2)},
        {},
    ]
    applied: list[dict[str, TenantRateLimit]] = []
    done = threading.Event()
    current: dict[str, TenantRateLimit] = {}

    def read() -> dict[str, TenantRateLimit]:
        answer = stored.pop(0) if stored else current
        if not stored:
            done.set()
        if isinstance(answer, Exception):
            raise answer
        return answer

    def apply(limits: dict[str, TenantRateLimit]) -> bool:
        nonlocal current
        if limits == current:
            return False
        current = limits
        applied.append(limits)
        return True

    stop = threading.Event()
    with caplog.at_level(logging.WARNING, logger="orchestra.runtime"):
        follower = follow_tenant_limits(read, apply, stop, interval=0.01)
        assert done.wait(10)
        stop.set()
        follower.join(10)
    assert applied == [{"acme": TenantRateLimit(1, 2)}, {}]
    assert "cannot read the tenant rate limits (database unavailable)" in caplog.text
    assert "readable again" in caplog.text
