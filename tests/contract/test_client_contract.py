"""One client contract, three transports: in-process, gRPC and REST through the edge behave identically.

Every test runs once per transport against the same real service and edge; a
behaviour difference between transports fails a test. Each test gets a tenant
of its own so listings see only its instances.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from orchestra_server import errors
from orchestra_server.bootstrap import Application, build_application
from orchestra_server.client import GrpcOrchestraClient, RestOrchestraClient
from orchestra_server.client.contract import OrchestraClient
from orchestra_server.edge import EnvoyProcess
from orchestra_server.local_client import LocalOrchestraClient
from orchestra_server.service.limits import MAX_VARIABLE_BYTES
from orchestra_server.settings import Settings
from orchestra_server.wire.json_text import dump_json
from tests import deep_values
from tests.contract.conftest import Cli, Service

TRANSPORTS = ("local", "grpc", "rest")
REMOTE = ("grpc", "rest")
_tenants = itertools.count(1)


@pytest.fixture(scope="module")
def local_app(cli: Cli, deployed: None) -> Iterator[Application]:
    """The service's use cases in this process, on the very database the service uses."""
    app = build_application(Settings(data_dir=cli.data_dir))
    yield app
    app.close()


class Clients:
    def __init__(self, app: Application, service: Service, edge: EnvoyProcess) -> None:
        self.app, self.service, self.edge = app, service, edge
        self.opened: list[OrchestraClient] = []

    def tenant(self) -> str:
        name = f"contract-{next(_tenants)}-{time.monotonic_ns() % 100000}"
        self.app.directory.create_tenant(name)
        return name

    def credentials(self, tenant: str, roles: list[str] | None = None) -> tuple[str, str]:
        created = self.app.directory.create_consumer(tenant, roles)
        return created.client_id, created.client_secret

    def make(
        self, transport: str, tenant: str, credentials: tuple[str, str] | None = None
    ) -> OrchestraClient:
        client_id, secret = credentials or self.credentials(tenant)
        client: OrchestraClient
        if transport == "local":
            client = LocalOrchestraClient(self.app.processes, tenant)
        elif transport == "grpc":
            client = GrpcOrchestraClient(self.service.address, client_id, secret)
        else:
            client = RestOrchestraClient(self.edge.rest_url, client_id, secret)
        self.opened.append(client)
        return client

    def close(self) -> None:
        for client in self.opened:
            client.close()


@pytest.fixture
def clients(local_app: Application, service: Service, edge: EnvoyProcess) -> Iterator[Clients]:
    made = Clients(local_app, service, edge)
    yield made
    made.close()


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def client(clients: Clients, transport: str) -> OrchestraClient:
    return clients.make(transport, clients.tenant())


def parked(client: OrchestraClient, instance_id: str) -> list[str]:
    return [t.id for t in client.get_instance(instance_id).tokens if t.status == "parked"]


VALUES: dict[str, Any] = {
    "count": 42,
    "ratio": 0.5,
    "negative": -7,
    "text": 'grüße \u2603 "quoted" \\ back',
    "flag": False,
    "nothing": None,
    "list": [1, "two", [3.5], {"four": 4}],
    "nested": {"a": {"b": {"c": [True, None]}}},
}


def test_lifecycle(client: OrchestraClient) -> None:
    instance_id = client.start_process("three_step", VALUES)
    view = client.get_instance(instance_id)
    assert (view.id, view.definition_id, view.status) == (instance_id, "three_step", "running")
    assert [(t.node_id, t.status) for t in view.tokens] == [("task", "parked")]
    assert client.get_variables(instance_id) == VALUES
    client.signal_token(view.tokens[0].id)
    done = client.get_instance(instance_id)
    assert (done.status, done.tokens) == ("completed", ())
    with pytest.raises(errors.Unprocessable):
        client.signal_token(view.tokens[0].id)


def test_parallel_join(client: OrchestraClient) -> None:
    instance_id = client.start_process("parallel_review")
    tokens = client.get_instance(instance_id).tokens
    assert sorted(t.node_id for t in tokens) == ["finance", "legal", "security"]
    for token in tokens[:2]:
        client.signal_token(token.id)
    waiting = client.get_instance(instance_id).tokens
    assert sorted((t.node_id, t.status) for t in waiting) == [
        ("all_signed", "waiting"),
        ("all_signed", "waiting"),
        (tokens[2].node_id, "parked"),
    ]
    with pytest.raises(errors.Unprocessable):
        client.signal_token(next(t.id for t in waiting if t.status == "waiting"))
    client.signal_token(tokens[2].id)
    assert client.get_instance(instance_id).status == "completed"


def test_variables(client: OrchestraClient) -> None:
    instance_id = client.start_process("three_step")
    assert client.get_variables(instance_id) == {}
    for name, value in VALUES.items():
        client.set_variable(instance_id, name, value)
    assert client.get_variables(instance_id) == VALUES
    client.set_variable(instance_id, "count", {"replaced": True})
    assert client.get_variables(instance_id)["count"] == {"replaced": True}


def test_errors(client: OrchestraClient) -> None:
    instance_id = client.start_process("three_step")
    with pytest.raises(errors.NotFound):
        client.get_instance("00000000-0000-0000-0000-000000000000")
    with pytest.raises(errors.Unprocessable):
        client.start_process("no_such_definition")
    with pytest.raises(errors.Unprocessable):
        client.signal_token("no-such-token")
    for bad in ("1st", "with space", "x" * 129):
        with pytest.raises(errors.InvalidArgument):
            client.set_variable(instance_id, bad, 1)
    with pytest.raises(errors.InvalidArgument):
        client.set_variable(instance_id, "big", "x" * (1024 * 1024 + 1))
    with pytest.raises(errors.Unprocessable):
        client.set_variable("00000000-0000-0000-0000-000000000000", "a", 1)
    with pytest.raises(errors.InvalidArgument):
        client.list_instances(page_size=5000)
    with pytest.raises(errors.InvalidArgument):
        client.list_instances(page_token="forged")
    assert client.get_variables("00000000-0000-0000-0000-000000000000") == {}
    client.signal_token(parked(client, instance_id)[0])
    with pytest.raises(errors.Unprocessable):
        client.set_variable(instance_id, "late", 1)


def test_integers_beyond_2_to_the_53_are_refused_naming_the_variable(client: OrchestraClient) -> None:
    exact = 2**53 - 1
    held = {"n": [exact, -exact, 0.5, 1e-300], "m": {"x": exact}}
    instance_id = client.start_process("three_step", held)
    for number in (2**53, -(2**53), 2**53 + 1, 10**30, 1e300):
        for value in (number, [1, {"deep": number}]):
            with pytest.raises(
                errors.InvalidArgument, match=r"variable big holds an integer beyond \+/-9007199254740991"
            ):
                client.set_variable(instance_id, "big", value)
            with pytest.raises(errors.InvalidArgument, match="variable big holds an integer beyond"):
                client.start_process("three_step", {"ok": 1, "big": value})
    assert client.get_variables(instance_id) == held
    assert [s.id for s in client.list_instances().instances] == [instance_id]


@pytest.mark.parametrize("leaf", list(deep_values.LEAVES.values()), ids=list(deep_values.LEAVES))
def test_nesting_limit_is_exact(client: OrchestraClient, leaf: Any) -> None:
    deepest = deep_values.nested(32, leaf)
    instance_id = client.start_process("three_step", {"deep": deepest})
    client.set_variable(instance_id, "also", deepest)
    assert client.get_variables(instance_id) == {"deep": deepest, "also": deepest}
    for depth in (33, 34):
        with pytest.raises(errors.InvalidArgument, match="deeper than 32 levels"):
            client.set_variable(instance_id, "too_deep", deep_values.nested(depth, leaf))
        with pytest.raises(errors.InvalidArgument, match="deeper than 32 levels"):
            client.start_process("three_step", {"too_deep": deep_values.nested(depth, leaf)})
    assert client.get_variables(instance_id) == {"deep": deepest, "also": deepest}
    assert [s.id for s in client.list_instances().instances] == [instance_id]


def test_a_value_at_its_limit_reads_back(client: OrchestraClient) -> None:
    # The densest protobuf there is: 2 bytes of JSON per 11 on the wire.
    at_limit = [0] * (MAX_VARIABLE_BYTES // 2 - 2) + [10]
    assert len(dump_json(at_limit)) == MAX_VARIABLE_BYTES
    instance_id = client.start_process("three_step", {"v": at_limit})
    client.set_variable(instance_id, "w", at_limit[-1000:])
    assert client.get_variables(instance_id) == {"v": at_limit, "w": at_limit[-1000:]}
    with pytest.raises(errors.InvalidArgument, match="variable x is larger than 1048576 bytes"):
        client.set_variable(instance_id, "x", [*at_limit[:-1], 100])
    assert client.get_variables(instance_id) == {"v": at_limit, "w": at_limit[-1000:]}


def test_listing_and_paging(client: OrchestraClient) -> None:
    started = [client.start_process("three_step") for _ in range(5)]
    other = client.start_process("parallel_review")
    client.signal_token(parked(client, started[0])[0])
    assert [s.id for s in client.list_instances().instances] == [other, *reversed(started)]
    pages: list[str] = []
    token = ""
    while True:
        page = client.list_instances(definition_id="three_step", page_size=2, page_token=token)
        assert len(page.instances) <= 2
        pages.extend(s.id for s in page.instances)
        token = page.next_page_token
        if not token:
            break
    assert pages == list(reversed(started))
    completed = client.list_instances(status="completed").instances
    assert [(s.id, s.definition_id, s.status) for s in completed] == [(started[0], "three_step", "completed")]


def _unsigned_token(position: int) -> str:
    """A page token in the unsigned form once issued: JSON naming a position and the filters."""
    fingerprint = hashlib.sha256(b"\x00").hexdigest()[:16]
    raw = json.dumps({"s": position, "f": fingerprint}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_page_tokens_are_opaque_and_checked(client: OrchestraClient) -> None:
    for _ in range(3):
        client.start_process("three_step")
    issued = client.list_instances(page_size=1).next_page_token
    assert issued
    forged = [
        # Positions the database cannot hold (once a 500 on SQLite).
        _unsigned_token(2**63),
        _unsigned_token(2**64),
        _unsigned_token(1),
        # Any change to an issued token.
        issued[:-1] + ("B" if issued[-1] == "A" else "A"),
        ("B" if issued[0] == "A" else "A") + issued[1:],
        issued + "A",
        issued[:-1],
        issued + "!",
    ]
    for token in forged:
        with pytest.raises(errors.InvalidArgument):
            client.list_instances(page_size=1, page_token=token)
    assert len(client.list_instances(page_size=1, page_token=issued).instances) == 1


def test_a_page_token_is_good_in_every_process(clients: Clients) -> None:
    # The in-process client and the service are two processes on one data
    # directory, as two workers are.
    tenant = clients.tenant()
    local, remote = clients.make("local", tenant), clients.make("grpc", tenant)
    started = [local.start_process("three_step") for _ in range(2)]
    issued = local.list_instances(page_size=1).next_page_token
    assert [s.id for s in remote.list_instances(page_size=1, page_token=issued).instances] == [started[0]]


def test_idempotent_start(client: OrchestraClient) -> None:
    first = client.start_process("three_step", {"a": 1}, idempotency_key="order-1")
    assert client.start_process("three_step", {"a": 1}, idempotency_key="order-1") == first
    with pytest.raises(errors.Unprocessable):
        client.start_process("three_step", {"a": 2}, idempotency_key="order-1")
    assert [s.id for s in client.list_instances().instances] == [first]


def test_tenant_isolation(clients: Clients, transport: str) -> None:
    owner = clients.make(transport, clients.tenant())
    stranger = clients.make(transport, clients.tenant())
    instance_id = owner.start_process("three_step", {"secret": "owner's"})
    token_id = parked(owner, instance_id)[0]
    with pytest.raises(errors.NotFound):
        stranger.get_instance(instance_id)
    assert stranger.get_variables(instance_id) == {}
    with pytest.raises(errors.Unprocessable):
        stranger.set_variable(instance_id, "secret", "stranger's")
    with pytest.raises(errors.Unprocessable):
        stranger.signal_token(token_id)
    assert stranger.list_instances().instances == ()
    assert owner.get_variables(instance_id) == {"secret": "owner's"}
    assert parked(owner, instance_id) == [token_id]


@pytest.mark.parametrize("transport", REMOTE)
def test_bad_credentials_are_unauthenticated(clients: Clients, transport: str) -> None:
    tenant = clients.tenant()
    client_id, _secret = clients.credentials(tenant)
    client = clients.make(transport, tenant, (client_id, "wrong-secret"))
    with pytest.raises(errors.Unauthenticated):
        client.list_instances()


@pytest.mark.parametrize("transport", REMOTE)
def test_revocation_reaches_every_transport(clients: Clients, transport: str) -> None:
    tenant = clients.tenant()
    client_id, secret = clients.credentials(tenant)
    client = clients.make(transport, tenant, (client_id, secret))
    assert client.list_instances().instances == ()
    clients.app.directory.revoke_consumer(client_id)
    eventually(lambda: client.list_instances(), errors.Unauthenticated)


@pytest.mark.parametrize("transport", REMOTE)
def test_permission_removal_is_permission_denied(clients: Clients, transport: str) -> None:
    tenant = clients.tenant()
    role = f"role_{tenant.replace('-', '_')}"
    clients.app.directory.create_role(role, ["access orchestra api"])
    client = clients.make(transport, tenant, clients.credentials(tenant, [role]))
    assert client.list_instances().instances == ()
    clients.app.directory.revoke(role, "access orchestra api")
    eventually(lambda: client.list_instances(), errors.PermissionDenied)


def eventually(call: Callable[[], object], expected: type[Exception], seconds: float = 5.0) -> None:
    """The service re-reads a consumer's standing every 2 s; wait a little longer than that."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            call()
        except expected:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"still no {expected.__name__} after {seconds} s")
        time.sleep(0.2)
