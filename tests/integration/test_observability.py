"""Metrics and access logs of a real server on a real database, scraped and read as an operator would."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.api import httpbody_pb2
from orchestra.v1 import auth_service_pb2 as auth_pb
from orchestra.v1 import auth_service_pb2_grpc as auth_grpc
from orchestra.v1 import orchestra_service_pb2 as pb
from orchestra.v1 import orchestra_service_pb2_grpc as pb_grpc
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine

from orchestra_server.bootstrap import Application, build_application
from orchestra_server.observability import JsonFormatter, start_metrics_server
from orchestra_server.settings import Settings
from tests.conftest import EXAMPLES, FakeClock

REQUEST_ID = "3f1c2a9e-0d7b-4c55-9a1e-6b2f8d4e7c10"


@dataclass
class Stack:
    app: Application
    channel: grpc.Channel
    stub: pb_grpc.OrchestraServiceStub
    auth: auth_grpc.AuthServiceStub
    metrics_url: str
    lines: io.StringIO

    def issue_token(self) -> tuple[str, str]:
        consumer = self.app.directory.create_consumer("default")
        body = (
            f"grant_type=client_credentials&client_id={consumer.client_id}"
            f"&client_secret={consumer.client_secret}"
        )
        answer = self.auth.IssueToken(
            auth_pb.IssueTokenRequest(
                http_body=httpbody_pb2.HttpBody(
                    content_type="application/x-www-form-urlencoded", data=body.encode()
                )
            )
        )
        return json.loads(answer.http_body.data)["access_token"], consumer.client_id

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines.getvalue().splitlines()]

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        response = httpx.get(self.metrics_url, timeout=5.0)
        assert response.status_code == 200
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }


@pytest.fixture
def stack(tmp_path: Path, clock: FakeClock) -> Iterator[Stack]:
    from orchestra_server.transport.server import create_server

    # The scheduler is not started: the gauge must then say it is down.
    app = build_application(Settings(data_dir=tmp_path), clock=clock, scheduler=True)
    app.definitions.deploy([EXAMPLES / "three_step.yaml"])
    # Formatting happens in the thread that logs, so the call's context is live when the line is built.
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    built = create_server("127.0.0.1:0", app.server_dependencies())
    server, port = built.server, built.port
    server.start()
    metrics_server, metrics_port = start_metrics_server(app.metrics.registry, "127.0.0.1", 0)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Stack(
            app,
            channel,
            pb_grpc.OrchestraServiceStub(channel),
            auth_grpc.AuthServiceStub(channel),
            f"http://127.0.0.1:{metrics_port}/metrics",
            lines,
        )
    finally:
        channel.close()
        server.stop(0).wait()
        metrics_server.shutdown()
        metrics_server.server_close()
        root.removeHandler(handler)
        root.setLevel(previous_level)
        app.close()


def test_calls_are_counted_by_rpc_and_code_and_logged_once_each(stack: Stack) -> None:
    token, client_id = stack.issue_token()
    auth = (("authorization", f"Bearer {token}"),)
    started = [
        stack.stub.StartProcess(
            pb.StartProcessRequest(definition_id="three_step"),
            metadata=(*auth, ("x-request-id", REQUEST_ID)),
        ).instance_id,
        stack.stub.StartProcess(
            pb.StartProcessRequest(definition_id="three_step"), metadata=auth
        ).instance_id,
    ]
    instance = stack.stub.GetInstance(pb.GetInstanceRequest(instance_id=started[0]), metadata=auth).instance
    stack.stub.SignalToken(pb.SignalTokenRequest(token_id=instance.tokens[0].id), metadata=auth)
    with pytest.raises(grpc.RpcError) as refused:
        stack.stub.StartProcess(pb.StartProcessRequest(definition_id="three_step"))
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as missing:
        stack.stub.GetInstance(pb.GetInstanceRequest(instance_id="no-such-instance"), metadata=auth)
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND

    samples = stack.scrape()
    requests = {
        labels: value for (name, labels), value in samples.items() if name == "orchestra_rpc_requests_total"
    }
    assert requests == {
        (("code", "OK"), ("rpc", "IssueToken")): 1.0,
        (("code", "OK"), ("rpc", "StartProcess")): 2.0,
        (("code", "UNAUTHENTICATED"), ("rpc", "StartProcess")): 1.0,
        (("code", "OK"), ("rpc", "GetInstance")): 1.0,
        (("code", "NOT_FOUND"), ("rpc", "GetInstance")): 1.0,
        (("code", "OK"), ("rpc", "SignalToken")): 1.0,
    }
    assert samples[("orchestra_rpc_duration_seconds_count", (("rpc", "StartProcess"),))] == 3.0
    assert samples[("orchestra_rpc_duration_seconds_bucket", (("le", "+Inf"), ("rpc", "GetInstance")))] == 2.0
    assert samples[("orchestra_instances", (("status", "running"),))] == 1.0
    assert samples[("orchestra_instances", (("status", "completed"),))] == 1.0
    assert samples[("orchestra_instances", (("status", "failed"),))] == 0.0
    assert samples[("orchestra_database_up", ())] == 1.0
    # The running instance's token, parked on its wait node.
    assert samples[("orchestra_parked_tokens", ())] == 1.0
    assert samples[("orchestra_due_timer_backlog", ())] == 0.0
    assert samples[("orchestra_scheduler_up", ())] == 0.0
    assert samples[("orchestra_timers_fired_total", ())] == 0.0
    assert samples[("orchestra_metrics_collect_errors_total", ())] == 0.0

    access = [line for line in stack.log_lines() if line["logger"] == "orchestra.access"]
    assert [(line["rpc"], line["status"]) for line in access] == [
        ("IssueToken", "OK"),
        ("StartProcess", "OK"),
        ("StartProcess", "OK"),
        ("GetInstance", "OK"),
        ("SignalToken", "OK"),
        ("StartProcess", "UNAUTHENTICATED"),
        ("GetInstance", "NOT_FOUND"),
    ]
    assert all(line["level"] == "INFO" and line["duration_ms"] >= 0 for line in access)
    assert access[1]["request_id"] == REQUEST_ID
    ids = [line["request_id"] for line in access]
    assert len(set(ids)) == len(ids), "each call without an id from the edge gets its own"
    for line in access[1:5] + access[6:]:
        assert (line["tenant"], line["consumer"]) == ("default", client_id)
    # Refused before anyone was authenticated: no tenant to name.
    assert "tenant" not in access[5]
    assert "consumer" not in access[5]
    # Neither the token nor the client secret nor the variables reach the log, at any level.
    assert token not in stack.lines.getvalue()
    assert token.split(".")[2] not in stack.lines.getvalue()


def test_a_database_outage_shows_in_the_gauges_without_failing_the_scrape(stack: Stack) -> None:
    engine = stack.app.database.engine
    engine.dispose()
    stack.app.database.engine = create_engine(engine.url.set(database="/nonexistent/dir/orchestra.db"))
    samples = stack.scrape()
    assert samples[("orchestra_database_up", ())] == 0.0
    assert samples[("orchestra_metrics_collect_errors_total", ())] == 1.0
    # Left out rather than reported stale.
    assert not any(name in {"orchestra_instances", "orchestra_parked_tokens"} for name, _ in samples)
    # What this process knows without the database is still there.
    assert samples[("orchestra_scheduler_up", ())] == 0.0
