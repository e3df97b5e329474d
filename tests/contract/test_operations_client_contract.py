"""The operations API, one contract over three transports: in-process, gRPC, and REST through the edge.

Every test runs once per transport against the same real service and edge (on SQLite, and on
PostgreSQL where it is reachable); a behaviour difference between transports fails a test. Each
test gets a tenant of its own, with an operator consumer whose role may access, operate and
deploy, so listings see only that test's instances.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from orchestra_server import errors
from orchestra_server.bootstrap import Application, build_application, new_id
from orchestra_server.client import GrpcOrchestraClient, RestOrchestraClient
from orchestra_server.client.contract import OrchestraClient
from orchestra_server.client.grpc import GrpcOperationsClient
from orchestra_server.client.operations import OperationsClient
from orchestra_server.client.rest import RestOperationsClient
from orchestra_server.edge import EnvoyProcess, TenantRateLimit, Upstream
from orchestra_server.identity.consumers import ACCESS_PERMISSION, DEPLOY_PERMISSION, OPERATE_PERMISSION
from orchestra_server.identity.keys import load_or_create_page_token_key
from orchestra_server.local_client import LocalOperationsClient, LocalOrchestraClient
from orchestra_server.service.operations import OperationsService
from orchestra_server.settings import Settings
from orchestra_server.storage.database import open_database
from tests.conftest import reset_postgres
from tests.contract.conftest import EXAMPLE_FILES, EXAMPLES, Cli, Service, start_edge

pytestmark = pytest.mark.timeout(300)

TRANSPORTS = ("local", "grpc", "rest")
REMOTE = ("grpc", "rest")
NEVER = "00000000-0000-4000-8000-000000000000"
OPERATOR_ROLE = "contract_operator"
_tenants = itertools.count(1)

# Moving on from `task` needs `approved`: a signal without it leaves a condition_failed incident.
FRAGILE: dict[str, Any] = {
    "id": "fragile",
    "label": "Needs approval",
    "nodes": {"s": {"type": "start"}, "task": {"type": "wait"}, "e": {"type": "end"}},
    "flows": [{"from": "s", "to": "task"}, {"from": "task", "to": "e", "when": "approved"}],
}
SOURCE = json.dumps(FRAGILE)


@dataclass
class Backend:
    """One real stack: the service and the edge on one database, and the use cases in this process."""

    app: Application
    operations: OperationsService
    service: Service
    edge: EnvoyProcess


def _local_parts(settings: Settings) -> tuple[Application, OperationsService]:
    app = build_application(settings)
    operations = OperationsService(
        app.database,
        clock=app.clock,
        new_id=new_id,
        page_token_key=load_or_create_page_token_key(settings.signing_keys_path),
        processes=app.processes,
        definitions=app.definitions,
    )
    app.directory.create_role(OPERATOR_ROLE, [ACCESS_PERMISSION, OPERATE_PERMISSION, DEPLOY_PERMISSION])
    return app, operations


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    if request.param == "sqlite":
        cli: Cli = request.getfixturevalue("cli")
        request.getfixturevalue("deployed")
        app, operations = _local_parts(Settings(data_dir=cli.data_dir))
        try:
            yield Backend(
                app, operations, request.getfixturevalue("service"), request.getfixturevalue("edge")
            )
        finally:
            app.close()
        return
    url: str = request.getfixturevalue("postgres_url")
    database = open_database(url)
    reset_postgres(database)
    database.dispose()
    data_dir = tmp_path_factory.mktemp("ops-postgres")
    settings = Settings(data_dir=data_dir, db_url=url)
    app, operations = _local_parts(settings)
    app.definitions.deploy([EXAMPLES / name for name in EXAMPLE_FILES])
    service = Service(Cli(data_dir), data_dir / "service.log", "--db", url)
    edge: EnvoyProcess | None = None
    try:
        edge = start_edge(
            tmp_path_factory.mktemp("ops-edge"),
            (Upstream("127.0.0.1", service.port),),
            tenant_rate_limit=TenantRateLimit(),
        )
        yield Backend(app, operations, service, edge)
    finally:
        if edge is not None:
            edge.stop()
        service.stop()
        app.close()


@dataclass
class Seat:
    """One tenant as seen through one transport: its operator's two APIs."""

    tenant: str
    ops: OperationsClient
    api: OrchestraClient


@dataclass
class Seats:
    backend: Backend
    opened: list[OperationsClient | OrchestraClient] = field(default_factory=list)

    def tenant(self) -> str:
        name = f"ops-{next(_tenants)}-{time.monotonic_ns() % 100000}"
        self.backend.app.directory.create_tenant(name)
        return name

    def credentials(self, tenant: str, roles: list[str] | None = None) -> tuple[str, str]:
        created = self.backend.app.directory.create_consumer(tenant, roles or [OPERATOR_ROLE])
        return created.client_id, created.client_secret

    def seat(self, transport: str, tenant: str | None = None, roles: list[str] | None = None) -> Seat:
        tenant = tenant or self.tenant()
        ops: OperationsClient
        api: OrchestraClient
        if transport == "local":
            ops = LocalOperationsClient(self.backend.operations, tenant)
            api = LocalOrchestraClient(self.backend.app.processes, tenant)
        else:
            client_id, secret = self.credentials(tenant, roles)
            if transport == "grpc":
                address = self.backend.service.address
                ops = GrpcOperationsClient(address, client_id, secret)
                api = GrpcOrchestraClient(address, client_id, secret)
            else:
                url = self.backend.edge.rest_url
                ops = RestOperationsClient(url, client_id, secret)
                api = RestOrchestraClient(url, client_id, secret)
        self.opened += [ops, api]
        return Seat(tenant, ops, api)

    def close(self) -> None:
        for client in self.opened:
            client.close()


@pytest.fixture
def seats(backend: Backend) -> Iterator[Seats]:
    made = Seats(backend)
    yield made
    made.close()


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def seat(seats: Seats, transport: str) -> Seat:
    made = seats.seat(transport)
    made.ops.deploy_definition(SOURCE)
    return made


def _incident(seat: Seat, variables: dict[str, Any] | None = None) -> tuple[str, str]:
    """A fragile instance whose one token is in incident: (instance id, token id)."""
    instance_id = seat.api.start_process("fragile", variables)
    (token,) = seat.api.get_instance(instance_id).tokens
    seat.api.signal_token(token.id)
    # The signal consumed the parked token; the one in incident is new.
    (stuck,) = seat.api.get_instance(instance_id).tokens
    assert stuck.status == "incident"
    return instance_id, stuck.id


def _outcome(call: Any) -> tuple[str, Any]:
    try:
        return ("ok", call())
    except errors.OrchestraError as exc:
        return (type(exc).__name__, str(exc))


# --- definitions ---------------------------------------------------------------------------------


def test_deploy_is_versioned_and_unchanged_source_is_no_new_version(seats: Seats, transport: str) -> None:
    seat = seats.seat(transport)
    first = seat.ops.deploy_definition(SOURCE)
    assert (first.definition_id, first.version, first.changed, first.scope) == ("fragile", 1, True, "tenant")
    # Key order and whitespace are not a change: the canonical form is compared.
    again = seat.ops.deploy_definition(json.dumps(FRAGILE, indent=4, sort_keys=True))
    assert (again.version, again.changed) == (1, False)
    relabelled = seat.ops.deploy_definition(json.dumps({**FRAGILE, "label": "Needs a yes"}))
    assert (relabelled.version, relabelled.changed) == (2, True)

    listed = {d.definition_id: d for d in seat.ops.list_definitions()}
    mine = listed["fragile"]
    assert (mine.latest_version, mine.label, mine.scope) == (2, "Needs a yes", "tenant")
    assert [v.version for v in mine.versions] == [1, 2]
    assert all(v.deployed_at.tzinfo is not None for v in mine.versions)
    assert listed["three_step"].scope == "shared"
    assert [d.definition_id for d in seat.ops.list_definitions()] == sorted(listed)

    newest = seat.ops.get_definition("fragile")
    assert (newest.version, newest.latest_version, newest.label) == (2, 2, "Needs a yes")
    older = seat.ops.get_definition("fragile", 1)
    assert (older.version, older.latest_version, older.label) == (1, 2, "Needs approval")
    # Stored in canonical form, the nodes keep no declared order.
    assert sorted((n.id, n.type) for n in older.nodes) == [("e", "end"), ("s", "start"), ("task", "wait")]
    assert [(f.from_node, f.to_node, f.condition, f.default, f.timeout) for f in older.flows] == [
        ("s", "task", "", False, False),
        ("task", "e", "approved", False, False),
    ]


def test_deploy_refuses_bad_sources_and_scopes_and_changes_nothing(seats: Seats, transport: str) -> None:
    seat = seats.seat(transport)
    bad = json.dumps({"id": "broken", "nodes": {"s": {"type": "start"}}, "flows": [{"from": "s", "to": "x"}]})
    with pytest.raises(errors.InvalidArgument):
        seat.ops.deploy_definition(bad)
    with pytest.raises(errors.InvalidArgument):
        seat.ops.deploy_definition("nodes: [unclosed")
    with pytest.raises(errors.InvalidArgument, match="scope"):
        seat.ops.deploy_definition(SOURCE, scope="galaxy")
    # Sharing with every tenant needs a permission an operator does not hold.
    with pytest.raises(errors.PermissionDenied):
        seat.ops.deploy_definition(SOURCE, scope="shared")
    assert {d.definition_id for d in seat.ops.list_definitions()}.isdisjoint({"broken", "fragile"})


def test_get_definition_unknown_is_not_found(seat: Seat) -> None:
    for definition_id, version in (("no_such_definition", 0), ("fragile", 9)):
        with pytest.raises(errors.NotFound, match="definition not found"):
            seat.ops.get_definition(definition_id, version)


# --- instances -----------------------------------------------------------------------------------


def test_an_incident_is_found_shown_counted_and_retried(seat: Seat) -> None:
    instance_id, token_id = _incident(seat, {"amount": 3})

    (listed,) = seat.ops.list_incidents().items
    assert (listed.instance_id, listed.token_id, listed.node_id) == (instance_id, token_id, "task")
    assert (listed.definition_id, listed.definition_version, listed.kind) == (
        "fragile",
        1,
        "condition_failed",
    )
    assert "approved" in listed.reason
    assert listed.since is not None

    detail = seat.ops.get_instance_detail(instance_id)
    assert (detail.id, detail.definition_id, detail.definition_version) == (instance_id, "fragile", 1)
    assert (detail.status, detail.ended_at, detail.variables) == ("running", None, {"amount": 3})
    (token,) = detail.tokens
    assert (token.id, token.node_id, token.status, token.incident_kind) == (
        token_id,
        "task",
        "incident",
        "condition_failed",
    )
    assert token.incident_reason is not None
    assert "approved" in token.incident_reason

    counts = {n.id: (n.parked, n.waiting, n.incident) for n in seat.ops.get_definition("fragile").nodes}
    assert counts == {"s": (0, 0, 0), "task": (0, 0, 1), "e": (0, 0, 0)}
    (summary,) = [d for d in seat.ops.list_definitions() if d.definition_id == "fragile"]
    assert (summary.running_instances, summary.open_incidents) == (1, 1)
    (found,) = seat.ops.search_instances(has_incident=True).items
    assert (found.id, found.open_incidents) == (instance_id, 1)
    assert seat.ops.search_instances(has_incident=False).items == ()

    assert seat.ops.resolve_incident(token_id, "retry", {"approved": True}) == "completed"
    done = seat.ops.get_instance_detail(instance_id)
    assert (done.status, done.tokens) == ("completed", ())
    assert done.ended_at is not None
    assert done.variables == {"amount": 3, "approved": True}
    assert seat.ops.list_incidents().items == ()
    with pytest.raises(errors.Unprocessable):
        seat.ops.resolve_incident(token_id, "retry")

    history = seat.ops.get_instance_history(instance_id).items
    assert [e.action for e in history] == ["instance.start", "token.signal", "incident.retry"]
    (raised,) = history[1].incidents
    assert "condition_failed" in raised
    assert (history[-1].variables, history[-1].status) == (("approved",), "completed")
    assert all(e.actor for e in history)
    assert [e.at for e in history] == sorted(e.at for e in history)


def test_skip_and_cancel_branch(seat: Seat) -> None:
    skipped, skip_token = _incident(seat)
    assert seat.ops.resolve_incident(skip_token, "skip", {"approved": True}) == "completed"
    assert seat.ops.get_instance_history(skipped).items[-1].action == "incident.skip"

    ended, branch_token = _incident(seat)
    assert seat.ops.resolve_incident(branch_token, "cancel_branch") == "completed"
    assert seat.ops.get_instance_detail(ended).tokens == ()
    assert seat.ops.get_instance_history(ended).items[-1].action == "incident.cancel_branch"


def test_resolve_refuses_bad_input_and_changes_nothing(seat: Seat) -> None:
    instance_id, token_id = _incident(seat)
    with pytest.raises(errors.InvalidArgument, match="action"):
        seat.ops.resolve_incident(token_id, "undo")
    for bad in ({"1st": 1}, {"ok": 1, "with space": 2}, {"big": 2**60}):
        with pytest.raises(errors.InvalidArgument):
            seat.ops.resolve_incident(token_id, "retry", bad)
    with pytest.raises(errors.Unprocessable):
        seat.ops.resolve_incident(NEVER, "retry")
    parked_id = seat.api.start_process("fragile")
    (parked,) = seat.api.get_instance(parked_id).tokens
    with pytest.raises(errors.Unprocessable):
        seat.ops.resolve_incident(parked.id, "skip")
    detail = seat.ops.get_instance_detail(instance_id)
    assert ([t.status for t in detail.tokens], detail.variables) == (["incident"], {})
    assert [e.action for e in seat.ops.get_instance_history(instance_id).items] == [
        "instance.start",
        "token.signal",
    ]


def test_cancel_ends_a_running_instance_once(seat: Seat) -> None:
    instance_id = seat.api.start_process("fragile", {"n": 1})
    seat.ops.cancel_instance(instance_id, "customer withdrew")
    detail = seat.ops.get_instance_detail(instance_id)
    assert (detail.status, detail.tokens, detail.variables) == ("cancelled", (), {"n": 1})
    assert detail.ended_at is not None
    assert detail.ended_at >= detail.started_at
    last = seat.ops.get_instance_history(instance_id).items[-1]
    assert (last.action, last.reason, last.status) == ("instance.cancel", "customer withdrew", "cancelled")
    assert last.tokens_consumed
    with pytest.raises(errors.Unprocessable):
        seat.ops.cancel_instance(instance_id)
    with pytest.raises(errors.NotFound, match="instance not found"):
        seat.ops.cancel_instance(NEVER)
    (overview,) = seat.ops.search_instances(status="cancelled").items
    assert (overview.id, overview.ended_at) == (instance_id, detail.ended_at)


def test_unknown_instances_are_not_found(seat: Seat) -> None:
    with pytest.raises(errors.NotFound, match="instance not found"):
        seat.ops.get_instance_detail(NEVER)
    with pytest.raises(errors.NotFound, match="instance not found"):
        seat.ops.get_instance_history(NEVER)


def test_search_filters_each_hold_and_pages_follow(seat: Seat) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    plain = [seat.api.start_process("fragile", {"owner": "ann", "amount": n}) for n in range(3)]
    other = seat.api.start_process("three_step", {"owner": "bob"})
    troubled, _ = _incident(seat, {"owner": "ann", "amount": 99})
    seat.api.signal_token(seat.api.get_instance(other).tokens[0].id)

    def ids(**filters: Any) -> list[str]:
        return [i.id for i in seat.ops.search_instances(**filters).items]

    assert ids() == [troubled, other, *reversed(plain)]
    assert ids(definition_id="fragile") == [troubled, *reversed(plain)]
    assert ids(definition_id="fragile", version=1) == [troubled, *reversed(plain)]
    assert ids(definition_id="fragile", version=2) == []
    assert ids(status="completed") == [other]
    assert ids(has_incident=True) == [troubled]
    assert ids(node_id="task") == [troubled, *reversed(plain)]
    assert ids(variables={"owner": "ann", "amount": 1}) == [plain[1]]
    assert ids(variables={"owner": "bob"}) == [other]
    assert ids(variables={"owner": "nobody"}) == []
    assert ids(started_after=before) == ids()
    assert ids(started_before=before) == []
    assert ids(started_after=datetime.now(UTC) + timedelta(minutes=1)) == []

    seen: list[str] = []
    token = ""
    while True:
        page = seat.ops.search_instances(variables={"owner": "ann"}, page_size=2, page_token=token)
        assert len(page.items) <= 2
        seen += [i.id for i in page.items]
        token = page.next_page_token
        if not token:
            break
    assert seen == [troubled, *reversed(plain)]
    issued = seat.ops.search_instances(variables={"owner": "ann"}, page_size=1).next_page_token
    with pytest.raises(errors.InvalidArgument, match="page_token"):
        seat.ops.search_instances(variables={"owner": "bob"}, page_size=1, page_token=issued)

    overview = seat.ops.search_instances(definition_id="three_step").items[0]
    assert (overview.definition_version, overview.status, overview.open_incidents) == (1, "completed", 0)
    assert overview.ended_at is not None
    assert overview.started_at <= overview.updated_at


@pytest.mark.parametrize(
    ("filters", "named"),
    [
        ({"status": "sleeping"}, "status"),
        ({"version": 1}, "version"),
        ({"definition_id": "fragile", "version": -1}, "version"),
        ({"started_after": "yesterday"}, "started_after"),
        ({"started_before": "2026-13-01T00:00:00Z"}, "started_before"),
        ({"variables": {"1st": 1}}, "variable"),
        ({"node_id": "no spaces"}, "node_id"),
        ({"page_size": 1001}, "page_size"),
        ({"page_size": -1}, "page_size"),
        ({"page_token": "forged"}, "page_token"),
    ],
)
def test_bad_search_input_is_invalid_argument_naming_the_parameter(
    seat: Seat, filters: dict[str, Any], named: str
) -> None:
    with pytest.raises(errors.InvalidArgument, match=named):
        seat.ops.search_instances(**filters)


def test_incident_listing_filters_and_pages(seat: Seat) -> None:
    made = [_incident(seat) for _ in range(3)]
    assert [i.token_id for i in seat.ops.list_incidents().items] == [t for _, t in made]
    assert [i.token_id for i in seat.ops.list_incidents(definition_id="fragile", node_id="task").items] == [
        t for _, t in made
    ]
    assert seat.ops.list_incidents(definition_id="three_step").items == ()
    assert seat.ops.list_incidents(node_id="e").items == ()
    first = seat.ops.list_incidents(page_size=2)
    assert [i.token_id for i in first.items] == [t for _, t in made[:2]]
    rest = seat.ops.list_incidents(page_size=2, page_token=first.next_page_token)
    assert ([i.token_id for i in rest.items], rest.next_page_token) == ([made[2][1]], "")
    with pytest.raises(errors.InvalidArgument, match="page_token"):
        seat.ops.list_incidents(node_id="task", page_size=2, page_token=first.next_page_token)
    with pytest.raises(errors.InvalidArgument, match="page_size"):
        seat.ops.list_incidents(page_size=5000)


def test_history_pages_oldest_first(seat: Seat) -> None:
    instance_id = seat.api.start_process("fragile")
    for n in range(4):
        seat.api.set_variable(instance_id, f"v{n}", n)
    entries = []
    token = ""
    while True:
        page = seat.ops.get_instance_history(instance_id, page_size=2, page_token=token)
        entries += page.items
        token = page.next_page_token
        if not token:
            break
    assert [e.action for e in entries] == ["instance.start", *["variable.set"] * 4]
    assert [e.variables for e in entries[1:]] == [("v0",), ("v1",), ("v2",), ("v3",)]
    with pytest.raises(errors.InvalidArgument, match="page_size"):
        seat.ops.get_instance_history(instance_id, page_size=1001)


def test_batches_count_then_act(seat: Seat) -> None:
    running = [seat.api.start_process("fragile", {"batch": True}) for _ in range(3)]
    troubled = [_incident(seat, {"batch": True}) for _ in range(2)]
    keep = seat.api.start_process("fragile", {"batch": False})

    dry = seat.ops.retry_incidents(definition_id="fragile", dry_run=True)
    assert (dry.matched, dry.done, dry.failed) == (2, 0, 0)
    retried = seat.ops.retry_incidents(node_id="task", max=1)
    # A retry without the variable fails the same way again: still an incident, counted as done.
    assert (retried.matched, retried.done + retried.skipped + retried.failed) == (1, 1)

    counted = seat.ops.cancel_instances(variables={"batch": True}, dry_run=True)
    assert (counted.matched, counted.done) == (5, 0)
    assert seat.ops.search_instances(status="cancelled").items == ()
    limited = seat.ops.cancel_instances(variables={"batch": True}, has_incident=False, reason="batch", max=2)
    assert (limited.matched, limited.done, limited.failed, limited.errors) == (2, 2, 0, ())
    rest = seat.ops.cancel_instances(variables={"batch": True}, reason="batch")
    # The two already cancelled are passed over, whether counted as matched and skipped or not.
    assert (rest.matched - rest.skipped, rest.done, rest.failed) == (3, 3, 0)
    statuses = {i.id: i.status for i in seat.ops.search_instances().items}
    assert statuses == {**dict.fromkeys(running + [i for i, _ in troubled], "cancelled"), keep: "running"}
    for bad in (-1, 10_001):
        with pytest.raises(errors.InvalidArgument, match="max"):
            seat.ops.cancel_instances(max=bad)
        with pytest.raises(errors.InvalidArgument, match="max"):
            seat.ops.retry_incidents(max=bad)
    with pytest.raises(errors.InvalidArgument, match="variable"):
        seat.ops.cancel_instances(variables={"not a name": 1})
    assert seat.ops.get_instance_detail(keep).status == "running"


def test_a_signal_sets_variables_in_the_same_step(seat: Seat) -> None:
    instance_id = seat.api.start_process("fragile")
    (token,) = seat.api.get_instance(instance_id).tokens
    with pytest.raises(errors.InvalidArgument):
        seat.api.signal_token(token.id, {"approved": True, "bad name": 1})
    assert seat.api.get_variables(instance_id) == {}
    assert [t.status for t in seat.api.get_instance(instance_id).tokens] == ["parked"]
    seat.api.signal_token(token.id, {"approved": True, "by": "ann"})
    assert seat.api.get_instance(instance_id).status == "completed"
    assert seat.api.get_variables(instance_id) == {"approved": True, "by": "ann"}
    last = seat.ops.get_instance_history(instance_id).items[-1]
    assert (last.action, sorted(last.variables)) == ("token.signal", ["approved", "by"])


# --- tenancy and permissions ---------------------------------------------------------------------


def test_another_tenants_ids_answer_as_ids_that_never_existed(seats: Seats, transport: str) -> None:
    owner = seats.seat(transport)
    owner.ops.deploy_definition(SOURCE)
    stranger = seats.seat(transport)
    instance_id, token_id = _incident(owner, {"secret": "owner's"})
    pairs = [
        (
            lambda: stranger.ops.get_instance_detail(instance_id),
            lambda: stranger.ops.get_instance_detail(NEVER),
        ),
        (
            lambda: stranger.ops.get_instance_history(instance_id),
            lambda: stranger.ops.get_instance_history(NEVER),
        ),
        (lambda: stranger.ops.cancel_instance(instance_id), lambda: stranger.ops.cancel_instance(NEVER)),
        (
            lambda: stranger.ops.resolve_incident(token_id, "retry", {"approved": True}),
            lambda: stranger.ops.resolve_incident(NEVER, "retry", {"approved": True}),
        ),
        (
            lambda: stranger.ops.get_definition("fragile"),
            lambda: stranger.ops.get_definition("never_deployed"),
        ),
    ]
    for foreign, missing in pairs:
        answer = _outcome(foreign)
        assert answer[0] != "ok"
        assert answer == _outcome(missing)
    assert stranger.ops.search_instances().items == ()
    assert stranger.ops.list_incidents().items == ()
    assert stranger.ops.cancel_instances(dry_run=True).matched == 0
    assert stranger.ops.retry_incidents(dry_run=True).matched == 0
    assert "fragile" not in {d.definition_id for d in stranger.ops.list_definitions()}
    detail = owner.ops.get_instance_detail(instance_id)
    assert (detail.status, [t.status for t in detail.tokens]) == ("running", ["incident"])
    assert detail.variables == {"secret": "owner's"}


@pytest.mark.parametrize("transport", REMOTE)
def test_a_consumer_without_operate_orchestra_is_refused(seats: Seats, transport: str) -> None:
    tenant = seats.tenant()
    operator = seats.seat(transport, tenant)
    operator.ops.deploy_definition(SOURCE)
    instance_id, token_id = _incident(operator)
    consumer = seats.seat(transport, tenant, roles=["api_consumer"])
    # The consumer API stays open to it.
    assert consumer.api.get_instance(instance_id).status == "running"
    calls = [
        lambda: consumer.ops.deploy_definition(SOURCE),
        lambda: consumer.ops.list_definitions(),
        lambda: consumer.ops.get_definition("fragile"),
        lambda: consumer.ops.search_instances(),
        lambda: consumer.ops.get_instance_detail(instance_id),
        lambda: consumer.ops.get_instance_history(instance_id),
        lambda: consumer.ops.cancel_instance(instance_id),
        lambda: consumer.ops.list_incidents(),
        lambda: consumer.ops.resolve_incident(token_id, "cancel_branch"),
        lambda: consumer.ops.cancel_instances(),
        lambda: consumer.ops.retry_incidents(),
    ]
    for call in calls:
        with pytest.raises(errors.PermissionDenied):
            call()
    assert [t.status for t in operator.ops.get_instance_detail(instance_id).tokens] == ["incident"]


@pytest.mark.parametrize("transport", REMOTE)
def test_deploying_needs_its_own_permission(seats: Seats, transport: str) -> None:
    role = f"operate_only_{transport}_{time.monotonic_ns()}"
    seats.backend.app.directory.create_role(role, [OPERATE_PERMISSION])
    seat = seats.seat(transport, roles=[role])
    with pytest.raises(errors.PermissionDenied):
        seat.ops.deploy_definition(SOURCE)
    assert seat.ops.search_instances().items == ()


def test_a_page_token_is_good_on_every_transport(seats: Seats) -> None:
    tenant = seats.tenant()
    local, grpc_seat, rest = (seats.seat(t, tenant) for t in TRANSPORTS)
    local.ops.deploy_definition(SOURCE)
    started = [local.api.start_process("fragile") for _ in range(3)]
    issued = local.ops.search_instances(page_size=1).next_page_token
    assert [i.id for i in grpc_seat.ops.search_instances(page_size=1, page_token=issued).items] == [
        started[1]
    ]
    assert [i.id for i in rest.ops.search_instances(page_size=1, page_token=issued).items] == [started[1]]
