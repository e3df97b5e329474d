"""Timers and wait timeouts fire themselves, once, never early, and survive restarts."""

from __future__ import annotations

import itertools
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from orchestra_server import errors
from orchestra_server.engine import engine
from orchestra_server.service.operations import OperationsService
from orchestra_server.service.processes import Caller, ProcessService
from orchestra_server.service.scheduler import TimerScheduler
from orchestra_server.storage import repository as repo
from orchestra_server.storage.database import Database
from tests.conftest import PAGE_TOKEN_KEY, FakeClock
from tests.integration.test_processes import World, write
from tests.integration.test_races import run_together

ALICE = Caller("default", "alice-site")
TIMER = {
    "id": "cool_off",
    "nodes": {
        "begin": {"type": "start"},
        "cool": {"type": "timer", "after": "PT1H"},
        "task": {"type": "wait"},
        "done": {"type": "end"},
    },
    "flows": [
        {"from": "begin", "to": "cool"},
        {"from": "cool", "to": "task"},
        {"from": "task", "to": "done"},
    ],
}
TIMEOUT = {
    "id": "approval",
    "nodes": {
        "begin": {"type": "start"},
        "approve": {"type": "wait", "timeout": {"after": "PT48H", "to": "escalate"}},
        "escalate": {"type": "wait"},
        "done": {"type": "end"},
    },
    "flows": [
        {"from": "begin", "to": "approve"},
        {"from": "approve", "to": "done"},
        {"from": "escalate", "to": "done"},
    ],
}


@pytest.fixture
def world(database: Database, clock: FakeClock, tmp_path: Path) -> World:
    w = World(database, clock, tmp_path)
    w.definitions.deploy([write(tmp_path, TIMER), write(tmp_path, TIMEOUT)])
    return w


def scheduler(world: World, database: Database, batch: int = 50) -> TimerScheduler:
    return TimerScheduler(database, world.processes, clock=world.clock, batch_size=batch)


def nodes(world: World, instance_id: str) -> list[str]:
    return [t.node_id for t in world.processes.get_instance(ALICE, instance_id).tokens]


def test_timer_fires_when_due_and_not_before(world: World, database: Database) -> None:
    instance_id = world.processes.start_process(ALICE, "cool_off", {})
    sched = scheduler(world, database)
    world.clock.advance(timedelta(minutes=59, seconds=59))
    assert sched.drain() == 0
    assert nodes(world, instance_id) == ["cool"]
    world.clock.advance(timedelta(seconds=1))
    assert sched.drain() == 1
    assert nodes(world, instance_id) == ["task"]
    assert sched.drain() == 0


def test_hand_signal_before_due_means_it_fires_no_more(world: World, database: Database) -> None:
    instance_id = world.processes.start_process(ALICE, "cool_off", {})
    world.processes.signal_token(ALICE, world.token_at(ALICE, instance_id, "cool"))
    world.clock.advance(timedelta(hours=2))
    assert scheduler(world, database).drain() == 0
    assert nodes(world, instance_id) == ["task"]


def test_timeout_routes_elsewhere_and_a_signal_cancels_it(world: World, database: Database) -> None:
    late = world.processes.start_process(ALICE, "approval", {})
    on_time = world.processes.start_process(ALICE, "approval", {})
    world.processes.signal_token(ALICE, world.token_at(ALICE, on_time, "approve"))
    world.clock.advance(timedelta(hours=48))
    assert scheduler(world, database).drain() == 1
    assert nodes(world, late) == ["escalate"]
    assert world.processes.get_instance(ALICE, on_time).status == "completed"
    # Escalated: the normal route of the escalation still works.
    world.processes.signal_token(ALICE, world.token_at(ALICE, late, "escalate"))
    assert world.processes.get_instance(ALICE, late).status == "completed"


def test_due_during_downtime_fires_on_the_next_start(
    database: Database, clock: FakeClock, tmp_path: Path
) -> None:
    first = World(database, clock, tmp_path)
    first.definitions.deploy([write(tmp_path, TIMER)])
    instance_id = first.processes.start_process(ALICE, "cool_off", {})
    clock.advance(timedelta(days=3))  # the server was down all along
    counter = itertools.count(1)
    restarted = ProcessService(
        database, clock=clock, new_id=lambda: f"after-restart-{next(counter)}", page_token_key=PAGE_TOKEN_KEY
    )
    assert TimerScheduler(database, restarted, clock=clock).drain() == 1
    assert [t.node_id for t in restarted.get_instance(ALICE, instance_id).tokens] == ["task"]


def test_scheduler_fire_racing_a_hand_signal_advances_once(world: World, database: Database) -> None:
    for _ in range(5):
        instance_id = world.processes.start_process(ALICE, "cool_off", {})
        token_id = world.token_at(ALICE, instance_id, "cool")
        world.clock.advance(timedelta(hours=1))
        sched = scheduler(world, database)

        def by_hand(token_id: str = token_id) -> str:
            try:
                world.processes.signal_token(ALICE, token_id)
            except errors.TokenNotParked:
                return "lost"
            return "won"

        def by_scheduler(sched: TimerScheduler = sched) -> str:
            return "won" if sched.run_once() == 1 else "lost"

        outcome = run_together([by_hand, by_scheduler])
        assert sorted(outcome) == ["lost", "won"], outcome  # type: ignore[type-var]
        assert nodes(world, instance_id) == ["task"]


def test_batches_are_bounded_and_ordered_by_due_time(world: World, database: Database) -> None:
    ids = []
    for _ in range(7):
        ids.append(world.processes.start_process(ALICE, "cool_off", {}))
        world.clock.advance(timedelta(minutes=1))
    world.clock.advance(timedelta(hours=1))
    sched = scheduler(world, database, batch=3)
    assert sched.run_once() == 3
    fired = [i for i in ids if nodes(world, i) == ["task"]]
    assert fired == ids[:3]
    assert sched.drain() == 4


def test_a_chunk_passes_over_a_token_signalled_since_its_claim(world: World, database: Database) -> None:
    ids = [world.processes.start_process(ALICE, "cool_off", {}) for _ in range(5)]
    world.clock.advance(timedelta(hours=1))
    claimed = [(world.token_at(ALICE, i, "cool"), "default") for i in ids]
    world.processes.signal_token(ALICE, claimed[2][0])  # after the claim, before the firing
    assert world.processes.fire_due_tokens(claimed) == 4
    assert [nodes(world, i) for i in ids] == [["task"]] * 5
    with database.reading() as conn:
        audit = repo.read_audit(conn, "default", 100)
    fired = [e["instance_id"] for e in audit if e["action"] == "token.fire"]
    assert sorted(fired) == sorted(ids[:2] + ids[3:])


def test_a_chunk_that_fails_as_a_whole_is_fired_one_at_a_time(
    world: World, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [world.processes.start_process(ALICE, "cool_off", {}) for _ in range(6)]
    world.clock.advance(timedelta(hours=1))
    chunks: list[int] = []

    def failing_chunk(due: list[tuple[str, str]]) -> int:
        chunks.append(len(due))
        raise RuntimeError("deadlock detected")

    monkeypatch.setattr(world.processes, "fire_due_tokens", failing_chunk)
    sched = TimerScheduler(database, world.processes, clock=world.clock, batch_size=10, fire_chunk=4)
    assert sched.run_once() == 6
    assert chunks == [4, 2]
    assert [nodes(world, i) for i in ids] == [["task"]] * 6


def test_idempotency_keys_are_kept_a_day_then_forgotten(world: World, database: Database) -> None:
    first = world.processes.start_process(ALICE, "cool_off", {}, idempotency_key="k")
    world.clock.advance(timedelta(hours=23, minutes=59))
    sched = scheduler(world, database)
    assert sched.sweep() == 0
    assert world.processes.start_process(ALICE, "cool_off", {}, idempotency_key="k") == first
    world.clock.advance(timedelta(minutes=2))
    assert sched.sweep() == 1
    assert world.processes.start_process(ALICE, "cool_off", {}, idempotency_key="k") != first


TWO_TIMERS = {
    "id": "two_reminders",
    "nodes": {
        "begin": {"type": "start"},
        "fork": {"type": "gateway", "gateway": "parallel"},
        "early": {"type": "timer", "after": "PT1H"},
        "late": {"type": "timer", "after": "PT2H"},
        "both": {"type": "gateway", "gateway": "parallel"},
        "done": {"type": "end"},
    },
    "flows": [
        {"from": "begin", "to": "fork"},
        {"from": "fork", "to": "early"},
        {"from": "fork", "to": "late"},
        {"from": "early", "to": "both"},
        {"from": "late", "to": "both"},
        {"from": "both", "to": "done"},
    ],
}


def fired_instances(database: Database) -> list[str]:
    with database.reading() as conn:
        audit = repo.read_audit(conn, "default", 1000)
    return sorted(e["instance_id"] for e in audit if e["action"] == "token.fire")


def test_a_firing_that_fails_leaves_the_rest_of_its_chunk_fired(
    world: World, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [world.processes.start_process(ALICE, "cool_off", {}) for _ in range(5)]
    world.clock.advance(timedelta(hours=1))
    claimed = [(world.token_at(ALICE, i, "cool"), "default") for i in ids]
    broken = claimed[1][0]
    fire_due = engine.fire_due

    def failing_on_one(*args: Any, **kwargs: Any) -> engine.Step:
        if args[3] == broken:
            raise RuntimeError("this instance's step fails")
        return fire_due(*args, **kwargs)

    monkeypatch.setattr(engine, "fire_due", failing_on_one)
    before = world.processes.get_instance(ALICE, ids[1])
    assert world.processes.fire_due_tokens(claimed) == 4
    assert [nodes(world, i) for i in ids] == [["task"], ["cool"], ["task"], ["task"], ["task"]]
    assert world.processes.get_instance(ALICE, ids[1]) == before, "the failed instance is untouched"
    assert fired_instances(database) == sorted(ids[:1] + ids[2:])
    monkeypatch.setattr(engine, "fire_due", fire_due)
    assert world.processes.fire_due_tokens(claimed) == 1  # the others are consumed by now
    assert nodes(world, ids[1]) == ["task"]
    assert fired_instances(database) == sorted(ids)


def test_a_chunk_passes_over_an_instance_cancelled_since_the_claim(world: World, database: Database) -> None:
    ids = [world.processes.start_process(ALICE, "cool_off", {}) for _ in range(4)]
    world.clock.advance(timedelta(hours=1))
    claimed = [(world.token_at(ALICE, i, "cool"), "default") for i in ids]
    operations = OperationsService(
        database,
        clock=world.clock,
        new_id=lambda: "unused",
        page_token_key=PAGE_TOKEN_KEY,
        processes=world.processes,
        definitions=world.definitions,
    )
    operations.cancel_instance(ALICE, ids[2], "no longer wanted")
    assert world.processes.fire_due_tokens(claimed) == 3
    assert world.processes.get_instance(ALICE, ids[2]).status == "cancelled"
    assert nodes(world, ids[2]) == []
    assert fired_instances(database) == sorted(ids[:2] + ids[3:])


def test_a_chunk_fires_only_tokens_of_the_tenant_they_were_claimed_for(
    world: World, database: Database
) -> None:
    ids = [world.processes.start_process(ALICE, "cool_off", {}) for _ in range(2)]
    world.clock.advance(timedelta(hours=1))
    mine, theirs = (world.token_at(ALICE, i, "cool") for i in ids)
    assert (
        world.processes.fire_due_tokens([(mine, "default"), (theirs, "bob"), ("no-such-token", "default")])
        == 1
    )
    assert [nodes(world, i) for i in ids] == [["task"], ["cool"]]


def test_two_timers_of_one_instance_fire_in_one_chunk(world: World, database: Database) -> None:
    world.deploy(TWO_TIMERS)
    ids = [world.processes.start_process(ALICE, "two_reminders", {}) for _ in range(3)]
    world.clock.advance(timedelta(hours=2))
    claimed = [(world.token_at(ALICE, i, node), "default") for i in ids for node in ("late", "early")]
    assert world.processes.fire_due_tokens(claimed) == 6
    for instance_id in ids:
        view = world.processes.get_instance(ALICE, instance_id)
        assert (view.status, view.tokens) == ("completed", ())
    assert fired_instances(database) == sorted(ids * 2)
    with database.reading() as conn:
        left = conn.exec_driver_sql("SELECT COUNT(*) FROM tokens").scalar_one()
    assert left == 0, "the join's marker went with its instance"


def test_claims_are_disjoint_and_oldest_due_first(world: World, database: Database) -> None:
    ids = []
    for _ in range(5):
        ids.append(world.processes.start_process(ALICE, "cool_off", {}))
        world.clock.advance(timedelta(minutes=1))
    world.clock.advance(timedelta(hours=1))
    now = world.clock()
    with database.writing() as conn:
        first = repo.claim_due_tokens(conn, now, 3, now + timedelta(seconds=30))
    with database.writing() as conn:
        second = repo.claim_due_tokens(conn, now, 3, now + timedelta(seconds=30))
    with database.writing() as conn:
        after_lease = repo.claim_due_tokens(conn, now + timedelta(seconds=31), 10, now + timedelta(minutes=1))
    tokens = [(world.token_at(ALICE, i, "cool"), "default") for i in ids]
    assert first == tokens[:3]
    assert second == tokens[3:]
    assert after_lease == tokens, "a lease that ran out lets the tokens be claimed again"
