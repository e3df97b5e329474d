"""Past its concurrency limit the service refuses at once with RESOURCE_EXHAUSTED instead of queueing."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import grpc
from orchestra.v1 import auth_service_pb2_grpc as auth_grpc
from orchestra.v1 import orchestra_service_pb2 as pb
from orchestra.v1 import orchestra_service_pb2_grpc as pb_grpc

from orchestra_server.bootstrap import build_application
from orchestra_server.settings import Settings
from orchestra_server.transport.server import ServerOptions, create_server
from tests.conftest import EXAMPLES, FakeClock
from tests.integration.test_grpc_service import Stack, bearer
from tests.integration.test_races import run_together


def test_calls_past_the_limit_are_shed_not_queued(tmp_path: Path) -> None:
    app = build_application(Settings(data_dir=tmp_path))
    app.definitions.deploy([EXAMPLES / "three_step.yaml"])
    built = create_server(
        "127.0.0.1:0", app.server_dependencies(), ServerOptions(max_workers=4, max_concurrent_rpcs=3)
    )
    server, port = built.server, built.port
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.OrchestraServiceStub(channel)
    token, _ = Stack(app, channel, stub, auth_grpc.AuthServiceStub(channel), FakeClock()).token()
    # Another process holds the write lock: every start now waits for it.
    blocker = sqlite3.connect(tmp_path / "orchestra.db", isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    released = threading.Event()
    outcomes: list[tuple[str, bool]] = []

    def start() -> None:
        try:
            stub.StartProcess(
                pb.StartProcessRequest(definition_id="three_step"), metadata=bearer(token), timeout=30
            )
            outcomes.append(("started", released.is_set()))
        except grpc.RpcError as exc:
            outcomes.append((exc.code().name, released.is_set()))

    def release_later() -> None:
        # Released only once every refused call has come back: refusals never wait for the lock.
        while sum(1 for o in outcomes if o[0] == "RESOURCE_EXHAUSTED") < 5:
            threading.Event().wait(0.05)
        released.set()
        blocker.execute("COMMIT")

    try:
        run_together([start] * 8 + [release_later])
    finally:
        blocker.close()
        channel.close()
        server.stop(0).wait()
        app.close()
    shed = [o for o in outcomes if o[0] == "RESOURCE_EXHAUSTED"]
    started = [o for o in outcomes if o[0] == "started"]
    assert (len(shed), len(started)) == (5, 3), outcomes
    assert not any(after for _, after in shed), "a refusal waited for the lock"
    assert all(after for _, after in started)
