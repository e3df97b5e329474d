"""After SIGTERM a worker serves on until its call threads have been idle a while, within a bound."""

from __future__ import annotations

import threading

from orchestra_server.transport import server
from orchestra_server.transport.server import DRAIN_QUIET_SECONDS, CallThreads


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_call_threads_are_quiet_only_when_nothing_runs_or_waits_and_nothing_was_taken_lately() -> None:
    clock = FakeClock()
    calls = CallThreads(max_workers=1, clock=clock)
    release = threading.Event()
    try:
        clock.now += 5
        assert calls.quiet_for() == 5
        running = calls.submit(release.wait, 10)
        waiting = calls.submit(lambda: "done")  # in line behind the running one
        clock.now += 5
        assert calls.quiet_for() == 0
        release.set()
        running.result(5)
        assert waiting.result(5) == "done"
        # Quiet from the moment the last one was taken up, once none is left.
        assert calls.quiet_for() == 5
    finally:
        release.set()
        calls.shutdown()


def test_a_call_that_fails_leaves_the_threads_quiet_again() -> None:
    clock = FakeClock()
    calls = CallThreads(max_workers=1, clock=clock)
    try:
        failed = calls.submit(lambda: 1 / 0)
        assert isinstance(failed.exception(5), ZeroDivisionError)
        clock.now += 1
        assert calls.quiet_for() == 1
    finally:
        calls.shutdown()


def test_drain_waits_until_quiet() -> None:
    quiet = iter([0.0, 0.0, 0.05, DRAIN_QUIET_SECONDS])
    naps: list[float] = []

    class Calls:
        def quiet_for(self) -> float:
            return next(quiet)

    server._drain(Calls(), 60.0, sleep=naps.append)  # type: ignore[arg-type]
    assert len(naps) == 3
    assert all(0 < nap <= server.DRAIN_POLL_SECONDS for nap in naps)


def test_drain_gives_up_at_its_bound_while_calls_keep_coming() -> None:
    clock = FakeClock()
    naps: list[float] = []

    class Busy:
        def quiet_for(self) -> float:
            return 0.0

    def nap(seconds: float) -> None:
        naps.append(seconds)
        clock.now += seconds

    server._drain(Busy(), 1.5, sleep=nap, clock=clock)  # type: ignore[arg-type]
    assert abs(sum(naps) - 1.5) < 1e-9
    assert max(naps) <= server.DRAIN_POLL_SECONDS
