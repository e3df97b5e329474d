"""Default flows end to end: deployed by the command, routed by the service, seen through the edge,
on SQLite (the suite's stack) and on PostgreSQL (a stack of its own)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from orchestra_server.edge import EnvoyProcess, Upstream
from orchestra_server.storage.database import open_database
from tests.conftest import reset_postgres
from tests.contract.conftest import TENANT_A, Cli, Service, fetch_token, start_edge
from tests.contract.helpers import Consumer, assert_ok, get_instance, parked_tokens, start

pytestmark = pytest.mark.timeout(180)

# The default is listed first: it is still taken only when the express condition does not hold.
DEFINITION = """\
id: claim_routing
nodes:
  submit: {type: start}
  route: {type: gateway, gateway: exclusive}
  manual: {type: wait, label: Manual check}
  express: {type: wait, label: Express payment}
  done: {type: end}
flows:
  - {from: submit, to: route}
  - {from: route, to: manual, default: true}
  - {from: route, to: express, when: "amount < 100"}
  - {from: manual, to: done}
  - {from: express, to: done}
"""


@dataclass(frozen=True)
class Stack:
    http: httpx.Client
    consumer: Consumer


def deploy(cli: Cli, folder: Path, *db: str) -> None:
    path = folder / "claim_routing.yaml"
    path.write_text(DEFINITION, encoding="utf-8")
    assert "claim_routing version 1" in cli("definition", "deploy", str(path), *db)


@pytest.fixture(scope="module")
def sqlite_stack(
    cli: Cli, http: httpx.Client, acme: Consumer, tmp_path_factory: pytest.TempPathFactory
) -> Stack:
    deploy(cli, tmp_path_factory.mktemp("default-flows"))
    return Stack(http, acme)


@pytest.fixture(scope="module")
def postgres_stack(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    database = open_database(postgres_url)
    reset_postgres(database)
    database.dispose()
    db = ("--db", postgres_url)
    cli = Cli(tmp_path_factory.mktemp("pg-data"))
    cli("tenant", "create", TENANT_A, *db)
    deploy(cli, tmp_path_factory.mktemp("pg-definitions"), *db)
    service = Service(cli, tmp_path_factory.mktemp("pg-service") / "service.log", *db)
    edge: EnvoyProcess | None = None
    try:
        edge = start_edge(tmp_path_factory.mktemp("pg-edge"), (Upstream("127.0.0.1", service.port),))
        with httpx.Client(base_url=edge.rest_url, timeout=15) as http:
            created = json.loads(cli("consumer", "create", "--tenant", TENANT_A, "--json", *db))
            token = fetch_token(http, created["client_id"], created["client_secret"])
            yield Stack(http, Consumer(created["client_id"], created["client_secret"], TENANT_A, token))
    finally:
        if edge is not None:
            edge.stop()
        service.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def stack(request: pytest.FixtureRequest) -> Stack:
    return request.getfixturevalue(f"{request.param}_stack")  # type: ignore[no-any-return]


@pytest.mark.parametrize(("amount", "node"), [(50, "express"), (500, "manual"), (100, "manual")])
def test_the_default_flow_is_taken_only_when_no_condition_holds(stack: Stack, amount: int, node: str) -> None:
    instance_id = start(stack.http, stack.consumer, "claim_routing", {"amount": amount})
    instance = get_instance(stack.http, stack.consumer, instance_id)
    assert [token["node_id"] for token in parked_tokens(instance)] == [node]
    [token] = parked_tokens(instance)
    assert_ok(stack.http.post(f"/orchestra-api/token/{token['id']}/signal", headers=stack.consumer.headers))
    assert get_instance(stack.http, stack.consumer, instance_id)["status"] == "completed"
