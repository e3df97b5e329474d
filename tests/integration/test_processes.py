"""The process use cases on real SQLite and PostgreSQL: lifecycle, tenancy, paging, variables, limits."""

from __future__ import annotations

import itertools
import json
import threading
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from orchestra_server import errors
from orchestra_server.service import limits
from orchestra_server.service.definitions import DefinitionService
from orchestra_server.service.directory import DirectoryService
from orchestra_server.service.processes import (
    AUDIT_DETAIL_LIMIT,
    AUDIT_LISTED_TOKENS,
    Caller,
    ProcessService,
    encode_page_token,
)
from orchestra_server.storage.database import Database
from orchestra_server.storage.repository import read_audit
from orchestra_server.wire.json_text import dump_json
from tests.conftest import PAGE_TOKEN_KEY, FakeClock

ALICE = Caller("default", "alice-site")
BOB = Caller("bob", "bob-site")

THREE_STEP = {
    "id": "three_step",
    "nodes": {"begin": {"type": "start"}, "task": {"type": "wait"}, "done": {"type": "end"}},
    "flows": [{"from": "begin", "to": "task"}, {"from": "task", "to": "done"}],
}
FORK_JOIN = {
    "id": "fork_join",
    "nodes": {
        "begin": {"type": "start"},
        "fork": {"type": "gateway", "gateway": "parallel"},
        "a": {"type": "wait"},
        "b": {"type": "wait"},
        "join": {"type": "gateway", "gateway": "parallel"},
        "after": {"type": "wait"},
        "done": {"type": "end"},
    },
    "flows": [
        {"from": "begin", "to": "fork"},
        {"from": "fork", "to": "a"},
        {"from": "fork", "to": "b"},
        {"from": "a", "to": "join"},
        {"from": "b", "to": "join"},
        {"from": "join", "to": "after"},
        {"from": "after", "to": "done"},
    ],
}
ROUTED = {
    "id": "routed",
    "nodes": {
        "begin": {"type": "start"},
        "route": {"type": "gateway", "gateway": "exclusive"},
        "big": {"type": "wait"},
        "small": {"type": "wait"},
        "done": {"type": "end"},
    },
    "flows": [
        {"from": "begin", "to": "route"},
        {"from": "route", "to": "big", "when": "amount > 1000"},
        {"from": "route", "to": "small"},
        {"from": "big", "to": "done"},
        {"from": "small", "to": "done"},
    ],
}


def write(tmp_path: Path, data: dict[str, object], name: str | None = None) -> Path:
    path = tmp_path / f"{name or data['id']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class World:
    def __init__(self, database: Database, clock: FakeClock, tmp_path: Path) -> None:
        counter = itertools.count(1)
        self.tmp_path = tmp_path
        self.clock = clock
        self.database = database
        self.processes = ProcessService(
            database, clock=clock, new_id=lambda: f"id-{next(counter):06d}", page_token_key=PAGE_TOKEN_KEY
        )
        self.definitions = DefinitionService(database, clock=clock)
        self.directory = DirectoryService(database, clock=clock)
        self.directory.create_tenant("bob")

    def deploy(self, data: dict[str, object], tenant: str | None = None, name: str | None = None) -> int:
        [result] = self.definitions.deploy([write(self.tmp_path, data, name)], tenant=tenant)
        return result.version

    def audit_count(self) -> int:
        with self.database.engine.connect() as conn:
            return int(conn.execute(text("SELECT COUNT(*) FROM audit")).scalar_one())

    def token_at(self, caller: Caller, instance_id: str, node: str) -> str:
        view = self.processes.get_instance(caller, instance_id)
        [token] = [t for t in view.tokens if t.node_id == node]
        return token.id


@pytest.fixture
def world(database: Database, clock: FakeClock, tmp_path: Path) -> World:
    return World(database, clock, tmp_path)


def test_start_signal_complete(world: World) -> None:
    world.deploy(THREE_STEP)
    instance_id = world.processes.start_process(ALICE, "three_step", {"order": 7})
    view = world.processes.get_instance(ALICE, instance_id)
    assert (view.status, view.tenant_id, view.definition_id) == ("running", "default", "three_step")
    assert [(t.node_id, t.status) for t in view.tokens] == [("task", "parked")]
    world.processes.signal_token(ALICE, view.tokens[0].id)
    done = world.processes.get_instance(ALICE, instance_id)
    assert (done.status, done.tokens) == ("completed", ())
    with pytest.raises(errors.TokenNotParked):
        world.processes.signal_token(ALICE, view.tokens[0].id)
    assert world.processes.get_variables(ALICE, instance_id) == {"order": 7}


def test_parallel_join_waits_for_both_branches(world: World) -> None:
    world.deploy(FORK_JOIN)
    instance_id = world.processes.start_process(ALICE, "fork_join", {})
    world.processes.signal_token(ALICE, world.token_at(ALICE, instance_id, "a"))
    view = world.processes.get_instance(ALICE, instance_id)
    assert sorted((t.node_id, t.status) for t in view.tokens) == [("b", "parked"), ("join", "waiting")]
    waiting = [t.id for t in view.tokens if t.status == "waiting"]
    with pytest.raises(errors.TokenNotParked):
        world.processes.signal_token(ALICE, waiting[0])
    world.processes.signal_token(ALICE, world.token_at(ALICE, instance_id, "b"))
    view = world.processes.get_instance(ALICE, instance_id)
    assert [(t.node_id, t.status) for t in view.tokens] == [("after", "parked")]


def test_exclusive_routing_on_numbers_of_either_kind(world: World) -> None:
    world.deploy(ROUTED)
    for amount, node in [(1500, "big"), (1000.5, "big"), (1000, "small"), (999.0, "small")]:
        instance_id = world.processes.start_process(ALICE, "routed", {"amount": amount})
        view = world.processes.get_instance(ALICE, instance_id)
        assert [t.node_id for t in view.tokens] == [node], amount


def test_incident_then_retry_after_fixing_variables(world: World) -> None:
    world.deploy(ROUTED)
    instance_id = world.processes.start_process(ALICE, "routed", {})  # `amount` missing: condition fails
    [token] = world.processes.get_instance(ALICE, instance_id).tokens
    assert (token.node_id, token.status) == ("route", "incident")
    world.processes.set_variable(ALICE, instance_id, "amount", 5000)
    world.processes.signal_token(ALICE, token.id)
    assert [t.node_id for t in world.processes.get_instance(ALICE, instance_id).tokens] == ["big"]


def test_unknown_and_foreign_definitions(world: World) -> None:
    world.deploy(THREE_STEP, tenant="bob", name="bob_three_step")
    with pytest.raises(errors.UnknownDefinition):
        world.processes.start_process(ALICE, "three_step", {})
    with pytest.raises(errors.UnknownDefinition):
        world.processes.start_process(ALICE, "no_such_thing", {})
    with pytest.raises(errors.UnknownDefinition):
        world.processes.start_process(ALICE, "../etc/passwd", {})
    assert world.processes.start_process(BOB, "three_step", {})


def test_new_versions_for_new_instances_running_ones_keep_theirs(world: World) -> None:
    assert world.deploy(THREE_STEP) == 1
    assert world.deploy(THREE_STEP) == 1  # identical content: no new version
    old = world.processes.start_process(ALICE, "three_step", {})
    changed = {**THREE_STEP, "nodes": {**THREE_STEP["nodes"], "task": {"type": "wait", "label": "Check"}}}  # type: ignore[dict-item]
    changed["nodes"]["review"] = {"type": "wait"}  # type: ignore[index]
    changed["flows"] = [
        {"from": "begin", "to": "review"},
        {"from": "review", "to": "task"},
        {"from": "task", "to": "done"},
    ]
    assert world.deploy(changed) == 2
    new = world.processes.start_process(ALICE, "three_step", {})
    assert [t.node_id for t in world.processes.get_instance(ALICE, old).tokens] == ["task"]
    assert [t.node_id for t in world.processes.get_instance(ALICE, new).tokens] == ["review"]
    world.processes.signal_token(ALICE, world.token_at(ALICE, old, "task"))
    assert world.processes.get_instance(ALICE, old).status == "completed"


def test_tenant_isolation_answers(world: World) -> None:
    world.deploy(THREE_STEP)
    instance_id = world.processes.start_process(ALICE, "three_step", {"secret": "alice"})
    token_id = world.token_at(ALICE, instance_id, "task")
    with pytest.raises(errors.InstanceNotFound):
        world.processes.get_instance(BOB, instance_id)
    assert world.processes.get_variables(BOB, instance_id) == {}
    with pytest.raises(errors.InstanceNotWritable):
        world.processes.set_variable(BOB, instance_id, "secret", "bob")
    with pytest.raises(errors.TokenNotParked):
        world.processes.signal_token(BOB, token_id)
    assert world.processes.list_instances(BOB).instances == ()
    # Nothing of Alice's changed.
    assert world.processes.get_variables(ALICE, instance_id) == {"secret": "alice"}
    assert [t.id for t in world.processes.get_instance(ALICE, instance_id).tokens] == [token_id]


def test_list_newest_first_filtered_and_paged(world: World) -> None:
    world.deploy(THREE_STEP)
    world.deploy(ROUTED)
    started = [world.processes.start_process(ALICE, "three_step", {}) for _ in range(7)]
    routed = world.processes.start_process(ALICE, "routed", {"amount": 1})
    world.processes.signal_token(ALICE, world.token_at(ALICE, started[0], "task"))
    everything = world.processes.list_instances(ALICE)
    assert [s.id for s in everything.instances] == [routed, *reversed(started)]
    assert everything.next_page_token == ""
    seen: list[str] = []
    token = ""
    while True:
        page = world.processes.list_instances(
            ALICE, definition_id="three_step", page_size=3, page_token=token
        )
        seen.extend(s.id for s in page.instances)
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(started))
    completed = world.processes.list_instances(ALICE, status="completed")
    assert [(s.id, s.status) for s in completed.instances] == [(started[0], "completed")]
    assert world.processes.list_instances(ALICE, status="bogus").instances == ()
    first = world.processes.list_instances(ALICE, page_size=2)
    with pytest.raises(errors.InvalidArgument):
        world.processes.list_instances(ALICE, status="running", page_token=first.next_page_token)
    with pytest.raises(errors.InvalidArgument):
        world.processes.list_instances(ALICE, page_token="not-a-token")
    # Even a token signed with the right key cannot name a position the
    # database cannot hold.
    beyond = encode_page_token(2**64 - 1, ["", ""], PAGE_TOKEN_KEY)
    with pytest.raises(errors.InvalidArgument):
        world.processes.list_instances(ALICE, page_token=beyond)
    # Nor one signed with another key.
    with pytest.raises(errors.InvalidArgument):
        world.processes.list_instances(ALICE, page_token=encode_page_token(1, ["", ""], bytes(32)))
    with pytest.raises(errors.InvalidArgument):
        world.processes.list_instances(ALICE, page_size=1001)


def test_variables_round_trip_and_limits(world: World) -> None:
    world.deploy(THREE_STEP)
    instance_id = world.processes.start_process(ALICE, "three_step", {})
    samples = {
        "nothing": None,
        "flag": True,
        "count": 3,
        "ratio": 0.25,
        "text": 'snow \u2603 and \U0001f600, quotes " and \\',
        "nested": {"a": [1, {"b": None}], "z": "last"},
    }
    for name, value in samples.items():
        world.processes.set_variable(ALICE, instance_id, name, value)
    assert world.processes.get_variables(ALICE, instance_id) == samples
    world.processes.set_variable(ALICE, instance_id, "count", 4)
    assert world.processes.get_variables(ALICE, instance_id)["count"] == 4
    for bad_name in ["", "1abc", "a-b", "x" * 129, "drop table", "a;--"]:
        with pytest.raises(errors.InvalidArgument):
            world.processes.set_variable(ALICE, instance_id, bad_name, 1)
    with pytest.raises(errors.LimitExceeded):
        world.processes.set_variable(ALICE, instance_id, "big", "x" * (1024 * 1024))
    deep: object = 1
    for _ in range(40):
        deep = [deep]
    with pytest.raises(errors.LimitExceeded):
        world.processes.set_variable(ALICE, instance_id, "deep", deep)
    assert "big" not in world.processes.get_variables(ALICE, instance_id)
    world.processes.signal_token(ALICE, world.token_at(ALICE, instance_id, "task"))
    with pytest.raises(errors.InstanceNotWritable):
        world.processes.set_variable(ALICE, instance_id, "late", 1)
    with pytest.raises(errors.InstanceNotWritable):
        world.processes.set_variable(ALICE, "no-such-instance", "x", 1)


def _string_of_json_size(size: int) -> str:
    """A string of two-byte characters whose compact JSON takes exactly `size` bytes."""
    text = "é" * ((size - 2) // 2) + "x" * (size % 2)
    assert len(dump_json(text).encode()) == size
    return text


def test_the_instance_total_is_enforced_on_every_write(world: World) -> None:
    world.deploy(THREE_STEP)
    total = limits.MAX_INSTANCE_VARIABLES_BYTES
    full = _string_of_json_size(limits.MAX_VARIABLE_BYTES)
    instance_id = world.processes.start_process(ALICE, "three_step", {"a": full})
    # {"a":<full>,"b":<rest>} is exactly the total: 2 + 4 + 1 + 4 bytes around the values.
    rest = _string_of_json_size(total - limits.MAX_VARIABLE_BYTES - 11)
    world.processes.set_variable(ALICE, instance_id, "b", "")
    with pytest.raises(errors.LimitExceeded, match="2097152 bytes together"):
        world.processes.set_variable(ALICE, instance_id, "b", rest + "x")
    world.processes.set_variable(ALICE, instance_id, "b", rest)  # replacing counts the new value only
    world.processes.set_variable(ALICE, instance_id, "b", rest)
    stored = world.processes.get_variables(ALICE, instance_id)
    assert stored == {"a": full, "b": rest}
    assert len(dump_json(stored).encode()) == total
    audit_rows = world.audit_count()
    for name, value in (("c", 0), ("c", ""), ("b", rest + "x"), ("a", full + "x")):
        with pytest.raises(errors.LimitExceeded):
            world.processes.set_variable(ALICE, instance_id, name, value)
    assert world.processes.get_variables(ALICE, instance_id) == stored
    assert world.audit_count() == audit_rows
    # Making room lets a new variable in.
    world.processes.set_variable(ALICE, instance_id, "a", 1)
    world.processes.set_variable(ALICE, instance_id, "c", 0)
    assert world.processes.get_variables(ALICE, instance_id) == {"a": 1, "b": rest, "c": 0}


def test_a_start_at_its_limits_is_stored_one_byte_more_is_not(world: World) -> None:
    world.deploy(THREE_STEP)
    half = _string_of_json_size(limits.MAX_START_VARIABLES_BYTES // 2)
    instance_id = world.processes.start_process(ALICE, "three_step", {"a": half, "b": half})
    assert world.processes.get_variables(ALICE, instance_id) == {"a": half, "b": half}
    before = len(world.processes.list_instances(ALICE, page_size=1000).instances)
    with pytest.raises(errors.LimitExceeded, match="together"):
        world.processes.start_process(ALICE, "three_step", {"a": half, "b": half + "x"})
    with pytest.raises(errors.LimitExceeded, match="variable big is larger than 1048576 bytes"):
        world.processes.start_process(ALICE, "three_step", {"big": _string_of_json_size(2**20) + "x"})
    assert len(world.processes.list_instances(ALICE, page_size=1000).instances) == before


def test_integers_beyond_2_to_the_53_are_refused_and_nothing_is_stored(world: World) -> None:
    world.deploy(THREE_STEP)
    exact = 2**53 - 1
    instance_id = world.processes.start_process(ALICE, "three_step", {"n": exact, "m": [-exact, 0.5]})
    for value in (exact + 1, -(exact + 1), float(2**53), {"deep": [1, [2**60]]}):
        with pytest.raises(errors.LimitExceeded, match="variable n holds an integer beyond"):
            world.processes.set_variable(ALICE, instance_id, "n", value)
        with pytest.raises(errors.LimitExceeded, match="variable n holds an integer beyond"):
            world.processes.start_process(ALICE, "three_step", {"ok": 1, "n": value})
    assert world.processes.get_variables(ALICE, instance_id) == {"m": [-exact, 0.5], "n": exact}
    assert len(world.processes.list_instances(ALICE).instances) == 1


def test_idempotent_start(world: World) -> None:
    world.deploy(THREE_STEP)
    first = world.processes.start_process(ALICE, "three_step", {"a": 1}, idempotency_key="order-17")
    again = world.processes.start_process(ALICE, "three_step", {"a": 1}, idempotency_key="order-17")
    assert again == first
    with pytest.raises(errors.IdempotencyConflict):
        world.processes.start_process(ALICE, "three_step", {"a": 2}, idempotency_key="order-17")
    world.deploy(THREE_STEP, tenant="bob", name="bob3")
    assert world.processes.start_process(BOB, "three_step", {"a": 1}, idempotency_key="order-17") != first
    assert len(world.processes.list_instances(ALICE).instances) == 1


def test_an_expired_idempotency_key_starts_a_new_instance_and_is_kept_anew(world: World) -> None:
    world.deploy(THREE_STEP)
    first = world.processes.start_process(ALICE, "three_step", {"a": 1}, idempotency_key="order-9")
    world.clock.now += limits.IDEMPOTENCY_RETENTION + timedelta(seconds=1)
    # Past its retention the key is free again, even for another request...
    second = world.processes.start_process(ALICE, "three_step", {"a": 2}, idempotency_key="order-9")
    assert second != first
    # ...and from then on it names the new instance.
    assert world.processes.start_process(ALICE, "three_step", {"a": 2}, idempotency_key="order-9") == second
    with pytest.raises(errors.IdempotencyConflict):
        world.processes.start_process(ALICE, "three_step", {"a": 1}, idempotency_key="order-9")


def test_racing_starts_with_one_new_idempotency_key_make_one_instance(world: World) -> None:
    world.deploy(THREE_STEP)
    racers = 6
    gate = threading.Barrier(racers)
    started: list[str] = []

    def start() -> None:
        gate.wait()
        started.append(world.processes.start_process(ALICE, "three_step", {"a": 1}, idempotency_key="race-1"))

    threads = [threading.Thread(target=start) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    # On PostgreSQL the losers' key inserts fail once the winner commits, and each answers the
    # winner's instance; on SQLite the writers' turn lets each later start find the key.
    assert len(started) == racers
    assert len(set(started)) == 1
    assert [i.id for i in world.processes.list_instances(ALICE).instances] == started[:1]


def test_a_start_whose_write_fails_stores_nothing(world: World) -> None:
    world.deploy(THREE_STEP)
    first = world.processes.start_process(ALICE, "three_step", {"a": 1})
    taken = world.processes.get_instance(ALICE, first).tokens[0].id
    # Every id it gives is a live token's: the instance's is new among instances, the token's not.
    clashing = ProcessService(
        world.database, clock=world.clock, new_id=lambda: taken, page_token_key=PAGE_TOKEN_KEY
    )
    audits = world.audit_count()
    # The instance row goes in before the token insert fails: all of the start is rolled back.
    with pytest.raises(IntegrityError):
        clashing.start_process(ALICE, "three_step", {"b": 2})
    with pytest.raises(errors.InstanceNotFound):
        world.processes.get_instance(ALICE, taken)
    assert world.audit_count() == audits
    assert [i.id for i in world.processes.list_instances(ALICE).instances] == [first]
    # The connection the failed start used serves the next one.
    second = world.processes.start_process(ALICE, "three_step", {"c": 3})
    assert world.processes.get_variables(ALICE, second) == {"c": 3}


def test_a_bad_file_deploys_nothing(world: World, tmp_path: Path) -> None:
    good = write(tmp_path, THREE_STEP)
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: broken\nnodes: {s: {type: start}, x: {type: teleport}}\nflows: [{from: s, to: x}]\n")
    with pytest.raises(errors.DefinitionInvalid) as caught:
        world.definitions.deploy([good, bad])
    assert str(bad) in str(caught.value)
    assert world.definitions.list() == []


def _fan_out(width: int) -> dict[str, object]:
    nodes: dict[str, object] = {"begin": {"type": "start"}, "done": {"type": "end"}}
    flows: list[dict[str, str]] = []
    for i in range(width):
        nodes[f"p{i}"] = {"type": "passthrough"}
        nodes[f"w{i}"] = {"type": "wait"}
        flows.append({"from": "begin", "to": f"p{i}"})
        flows.append({"from": f"w{i}", "to": "done"})
    flows.extend({"from": f"p{i}", "to": f"w{j}"} for i in range(width) for j in range(width))
    return {"id": "fan_out", "nodes": nodes, "flows": flows}


def test_an_audit_row_stays_small_however_large_the_step(world: World, database: Database) -> None:
    world.deploy(_fan_out(31))
    instance_id = world.processes.start_process(ALICE, "fan_out", {})
    assert len(world.processes.get_instance(ALICE, instance_id).tokens) == 31 * 31
    with database.reading() as conn:
        [row] = [r for r in read_audit(conn, "default", 10) if r["action"] == "instance.start"]
    assert len(row["detail"].encode()) <= AUDIT_DETAIL_LIMIT
    detail = json.loads(row["detail"])
    assert detail["created_count"] == 31 * 31
    assert len(detail["created"]) == AUDIT_LISTED_TOKENS


def test_incidents_times_and_version_read_back(world: World) -> None:
    world.deploy(THREE_STEP)
    started = world.clock.now
    instance_id = world.processes.start_process(ALICE, "three_step", {})
    view = world.processes.get_instance(ALICE, instance_id)
    assert (view.definition_version, view.started_at, view.updated_at) == (1, started, started)
    assert view.tokens[0].since == started
    assert (view.tokens[0].incident_kind, view.tokens[0].incident_reason) == (None, None)

    world.clock.now += timedelta(minutes=5)
    world.processes.set_variable(ALICE, instance_id, "x", 1)
    assert world.processes.get_instance(ALICE, instance_id).updated_at == world.clock.now

    world.deploy(ROUTED, name="three_step_routed")
    routed = world.processes.start_process(ALICE, "routed", {})
    (incident,) = world.processes.get_instance(ALICE, routed).tokens
    assert (incident.status, incident.incident_kind) == ("incident", "condition_failed")
    assert "amount" in (incident.incident_reason or "")
    assert incident.since == world.clock.now
