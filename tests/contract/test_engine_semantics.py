"""Engine semantics through the real edge, on SQLite and PostgreSQL: incidents with a kind and a
reason, versions and times, numbers in conditions, threshold joins, the token limit."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from orchestra.v1 import orchestra_service_pb2 as pb
from orchestra.v1 import orchestra_service_pb2_grpc as pb_grpc

from orchestra_server.edge import EnvoyProcess, TenantRateLimit, Upstream
from orchestra_server.engine import TOKEN_LIMIT
from orchestra_server.storage.database import open_database
from tests.conftest import reset_postgres
from tests.contract.conftest import (
    CLI_TIMEOUT,
    ORCHESTRA,
    Cli,
    Service,
    _service_env,
    administration_of,
    fetch_token,
    start_edge,
)
from tests.contract.helpers import Consumer, assert_ok, get_instance, start

pytestmark = pytest.mark.timeout(180)

TENANT = "engine"
RFC3339_UTC = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?Z")

DEFINITIONS: dict[str, dict[str, Any]] = {
    "priced": {
        "id": "priced",
        "nodes": {
            "s": {"type": "start", "split": "first"},
            "high": {"type": "wait"},
            "low": {"type": "wait"},
            "e": {"type": "end"},
        },
        "flows": [
            {"from": "s", "to": "high", "when": "price * 1.1 > 10.5"},
            {"from": "s", "to": "low"},
            {"from": "high", "to": "e"},
            {"from": "low", "to": "e"},
        ],
    },
    "fragile": {
        "id": "fragile",
        "nodes": {"s": {"type": "start"}, "task": {"type": "wait"}, "e": {"type": "end"}},
        "flows": [{"from": "s", "to": "task"}, {"from": "task", "to": "e", "when": "approved"}],
    },
    "two_of_three": {
        "id": "two_of_three",
        "nodes": {
            "s": {"type": "start"},
            "a": {"type": "wait"},
            "b": {"type": "wait"},
            "c": {"type": "wait"},
            "j": {"type": "passthrough", "join": "threshold", "threshold": 2},
            "e": {"type": "end"},
        },
        "flows": [
            {"from": "s", "to": "a"},
            {"from": "s", "to": "b"},
            {"from": "s", "to": "c"},
            {"from": "a", "to": "j"},
            {"from": "b", "to": "j"},
            {"from": "c", "to": "j"},
            {"from": "j", "to": "e"},
        ],
    },
}


def _fan_out(width: int) -> dict[str, Any]:
    """width^2 parked tokens from one start, with no repeated flow."""
    nodes: dict[str, Any] = {"s": {"type": "start"}, "e": {"type": "end"}}
    flows: list[dict[str, Any]] = []
    for i in range(width):
        nodes[f"p{i}"] = {"type": "passthrough"}
        nodes[f"w{i}"] = {"type": "wait"}
        flows.append({"from": "s", "to": f"p{i}"})
        flows.append({"from": f"w{i}", "to": "e"})
    flows.extend({"from": f"p{i}", "to": f"w{j}"} for i in range(width) for j in range(width))
    return {"id": "exploding", "nodes": nodes, "flows": flows}


DEFINITIONS["exploding"] = _fan_out(40)


def _orchestra(data_dir: Path, db_url: str | None, *args: str) -> str:
    """The `orchestra` command on the stack's data directory and database."""
    extra = ("--db", db_url) if db_url else ()
    result = subprocess.run(
        [str(ORCHESTRA), *args, "--data-dir", str(data_dir), *extra],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
        env=_service_env(),
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _write(directory: Path, *definitions: dict[str, Any]) -> list[Path]:
    paths = []
    for definition in definitions:
        path = directory / f"{definition['id']}.yaml"
        path.write_text(yaml.safe_dump(definition), encoding="utf-8")
        paths.append(path)
    return paths


def _deploy(data_dir: Path, db_url: str | None, directory: Path, *definitions: dict[str, Any]) -> None:
    _orchestra(data_dir, db_url, "definition", "deploy", *map(str, _write(directory, *definitions)))


@dataclass
class Stack:
    data_dir: Path
    db_url: str | None
    http: httpx.Client
    consumer: Consumer
    service: Service

    def orchestra(self, *args: str) -> str:
        return _orchestra(self.data_dir, self.db_url, *args)

    def deploy(self, directory: Path, *definitions: dict[str, Any]) -> None:
        _deploy(self.data_dir, self.db_url, directory, *definitions)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A tenant with the definitions above, one service and an edge, on one database."""
    db_url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    if db_url is not None:
        database = open_database(db_url)
        reset_postgres(database)
        database.dispose()
    data_dir = tmp_path_factory.mktemp(f"engine-{request.param}")
    with administration_of(data_dir, db_url) as admin:
        admin.directory.create_tenant(TENANT)
        admin.definitions.deploy(_write(tmp_path_factory.mktemp("definitions"), *DEFINITIONS.values()))
        created = admin.directory.create_consumer(TENANT)
    service = Service(Cli(data_dir), data_dir / "service.log", *(("--db", db_url) if db_url else ()))
    edge: EnvoyProcess | None = None
    try:
        edge = start_edge(
            tmp_path_factory.mktemp("edge"),
            (Upstream("127.0.0.1", service.port),),
            tenant_rate_limit=TenantRateLimit(),
        )
        with httpx.Client(base_url=edge.rest_url, timeout=30) as http:
            token = fetch_token(http, created.client_id, created.client_secret)
            consumer = Consumer(created.client_id, created.client_secret, TENANT, token)
            yield Stack(data_dir, db_url, http, consumer, service)
    finally:
        if edge is not None:
            edge.stop()
        service.stop()


def _moment(text: Any) -> datetime:
    assert isinstance(text, str)
    assert RFC3339_UTC.fullmatch(text), text
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _signal(stack: Stack, token_id: str) -> None:
    response = stack.http.post(f"/orchestra-api/token/{token_id}/signal", headers=stack.consumer.headers)
    assert assert_ok(response) == {"status": "signalled"}


def _grpc_instance(stack: Stack, instance_id: str) -> pb.Instance:
    with grpc.insecure_channel(stack.service.address) as channel:
        stub = pb_grpc.OrchestraServiceStub(channel)
        answer = stub.GetInstance(
            pb.GetInstanceRequest(instance_id=instance_id),
            metadata=(("authorization", f"Bearer {stack.consumer.token}"),),
            timeout=30,
        )
    return answer.instance


def test_an_incident_shows_its_kind_and_reason(stack: Stack) -> None:
    instance_id = start(stack.http, stack.consumer, "fragile")
    (task,) = get_instance(stack.http, stack.consumer, instance_id)["tokens"]
    # A parked token shows no incident properties at all.
    assert set(task) == {"id", "node_id", "status", "since"}
    _signal(stack, task["id"])
    instance = get_instance(stack.http, stack.consumer, instance_id)
    (incident,) = instance["tokens"]
    assert incident["status"] == "incident"
    assert incident["incident_kind"] == "condition_failed"
    assert "approved" in incident["incident_reason"]
    assert _moment(incident["since"]) >= _moment(task["since"])

    over_grpc = _grpc_instance(stack, instance_id).tokens[0]
    assert over_grpc.incident_kind == "condition_failed"
    assert over_grpc.incident_reason == incident["incident_reason"]
    assert over_grpc.since.ToDatetime(tzinfo=UTC) == _moment(incident["since"])

    trail = [json.loads(line) for line in stack.orchestra("audit", "--tenant", TENANT, "--json").splitlines()]
    signalled = next(r for r in trail if r["action"] == "token.signal" and r["instance_id"] == instance_id)
    detail = json.loads(signalled["detail"])
    (created,) = detail["created"]
    assert created["incident_kind"] == "condition_failed"
    assert "approved" in created["incident_reason"]
    assert detail["incidents"] == {"condition_failed": 1}
    text = stack.orchestra("audit", "--tenant", TENANT)
    assert "condition_failed" in text


def test_version_and_times_are_rfc3339(stack: Stack, tmp_path: Path) -> None:
    first = start(stack.http, stack.consumer, "fragile")
    instance = get_instance(stack.http, stack.consumer, first)
    assert instance["definition_version"] == 1
    started = _moment(instance["started_at"])
    assert _moment(instance["updated_at"]) == started
    _signal(stack, instance["tokens"][0]["id"])
    assert _moment(get_instance(stack.http, stack.consumer, first)["updated_at"]) > started

    changed = dict(DEFINITIONS["fragile"], label="Fragile, relabelled")
    stack.deploy(tmp_path, changed)
    second = start(stack.http, stack.consumer, "fragile")
    assert get_instance(stack.http, stack.consumer, second)["definition_version"] == 2
    # A running instance keeps the version it started with.
    assert get_instance(stack.http, stack.consumer, first)["definition_version"] == 1
    assert _grpc_instance(stack, second).definition_version == 2


@pytest.mark.parametrize("price", [10, 10.0, 10.5])
def test_numbers_route_alike_whole_or_fractional(stack: Stack, price: float) -> None:
    instance_id = start(stack.http, stack.consumer, "priced", {"price": price})
    tokens = get_instance(stack.http, stack.consumer, instance_id)["tokens"]
    assert [(t["node_id"], t["status"]) for t in tokens] == [("high", "parked")]


def test_a_threshold_join_absorbs_the_late_token_and_completes(stack: Stack) -> None:
    instance_id = start(stack.http, stack.consumer, "two_of_three")
    tokens = get_instance(stack.http, stack.consumer, instance_id)["tokens"]
    for token in tokens[:2]:
        _signal(stack, token["id"])
    instance = get_instance(stack.http, stack.consumer, instance_id)
    # The join fired; its marker for the late flow is not a token a reader sees.
    assert [t["node_id"] for t in instance["tokens"]] == [tokens[2]["node_id"]]
    _signal(stack, tokens[2]["id"])
    done = get_instance(stack.http, stack.consumer, instance_id)
    assert (done["status"], done["tokens"]) == ("completed", [])


def test_the_token_limit_stops_a_start_with_one_readable_incident(stack: Stack) -> None:
    instance_id = start(stack.http, stack.consumer, "exploding")
    instance = get_instance(stack.http, stack.consumer, instance_id)
    assert instance["status"] == "running"
    (token,) = instance["tokens"]
    assert (token["node_id"], token["status"], token["incident_kind"]) == ("s", "incident", "token_limit")
    assert str(TOKEN_LIMIT) in token["incident_reason"]
    # The retry is refused the same way: still one incident.
    _signal(stack, token["id"])
    (again,) = get_instance(stack.http, stack.consumer, instance_id)["tokens"]
    assert again["incident_kind"] == "token_limit"
