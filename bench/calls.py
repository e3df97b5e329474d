"""``python -m bench.calls``: a worker's own cost per call, in-process, without sockets or grpc threads.

The real application (SQLite in a temporary directory) and the server's own interceptor and
servicers, as `create_server` registers them, are called directly: decode the request bytes,
run the handler through the interceptor, encode the answer, for ping, getInstance, start,
signal (each parked token once) and setVariable, and, as an operator on a tenant of
`--instances` seeded instances (1 in 100 in an incident), the operations API's reads of a
page of 100: SearchInstances with `has_incident` and ListIncidents. Each scenario runs `--runs`
times `--calls` calls; the minimum of the runs is what a call costs when nothing else gets in
the way (the machine is shared), the median shows the noise. CPU is the calling thread's (user and system).
The access log is written as a worker writes it, as JSON, here to /dev/null. Pages per call
are the database pages a call's commit writes (appends to the write-ahead log), counted over
further calls after the scenario's runs.

What this leaves out is grpc's own share (the Python server loop, the hand-off to a pool
thread) and contention between threads; `python -m bench` measures those with the real stack.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import grpc
from google.protobuf import struct_pb2
from orchestra.v1 import diagnostics_service_pb2 as diag_pb
from orchestra.v1 import operations_service_pb2 as ops
from orchestra.v1 import orchestra_service_pb2 as pb

from bench.seed import INCIDENT_DEFINITION, seed_instances
from orchestra_server.bootstrap import build_application
from orchestra_server.identity.consumers import OPERATE_PERMISSION
from orchestra_server.observability.logs import configure_logging
from orchestra_server.settings import Settings
from orchestra_server.storage.database import Database
from orchestra_server.transport.server import add_servicers, call_interceptor

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
INCIDENT_DEFINITION_FILE = f"{INCIDENT_DEFINITION}.yaml"
ORCHESTRA = "/orchestra.v1.OrchestraService/"
OPERATIONS = "/orchestra.v1.OperationsService/"
OPERATOR_ROLE = "calls_operator"
PING = "/orchestra.v1.DiagnosticsService/Ping"
# Calls over which the pages a call writes are counted.
PAGE_SAMPLE = 50


class _Registry:
    """Stands in for a grpc.Server: keeps the method handlers the generated code registers."""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Sequence[Any]) -> None:
        pass  # the same methods arrive through add_registered_method_handlers

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        for name, handler in handlers.items():
            self.handlers[f"/{service}/{name}"] = handler


class _Details(grpc.HandlerCallDetails):
    def __init__(self, method: str, metadata: tuple[tuple[str, str], ...]) -> None:
        self.method = method
        self.invocation_metadata = metadata


class CallContext:
    """The parts of grpc's ServicerContext the interceptor and the servicers use (also the
    stand-in of the interceptor's unit tests)."""

    def __init__(self, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self._metadata = metadata
        self._code: grpc.StatusCode | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self._code = code
        raise Exception()  # what grpc raises after recording the status

    def set_trailing_metadata(self, metadata: object) -> None:
        pass

    def send_initial_metadata(self, metadata: object) -> None:
        pass


def _measure(call: Callable[[], object], runs: int, calls: int) -> dict[str, float]:
    cpu: list[float] = []
    wall: list[float] = []
    for _ in range(runs):
        started, started_cpu = time.perf_counter(), time.thread_time()
        for _ in range(calls):
            call()
        cpu.append((time.thread_time() - started_cpu) / calls * 1e6)
        wall.append((time.perf_counter() - started) / calls * 1e6)
    return {"cpu_us_min": min(cpu), "cpu_us_median": statistics.median(cpu), "wall_us_min": min(wall)}


def run(runs: int, calls: int, instances: int) -> dict[str, dict[str, float]]:
    configure_logging("INFO", json=True, stream=open("/dev/null", "w"))  # noqa: SIM115
    with tempfile.TemporaryDirectory(prefix="orchestra-calls-") as data_dir:
        app = build_application(Settings(data_dir=Path(data_dir)))
        try:
            return _run(app, runs, calls, instances)
        finally:
            app.close()


def _metadata(app: Any, roles: list[str] | None) -> tuple[tuple[str, str], ...]:
    """The metadata the edge forwards for a new consumer of the default tenant with `roles`."""
    consumer = app.directory.create_consumer("default", roles)
    form = {"grant_type": "client_credentials", "client_id": consumer.client_id}
    form["client_secret"] = consumer.client_secret
    answer = app.token_endpoint.handle(
        urlencode(form).encode(), "application/x-www-form-urlencoded", None, app.clock()
    )
    return (
        ("authorization", "Bearer " + json.loads(answer.body)["access_token"]),
        ("x-request-id", "0f0e0d0c-0b0a-0908-0706-050403020100"),
        ("x-orchestra-tenant", "default"),
    )


def _run(app: Any, runs: int, calls: int, instances: int) -> dict[str, dict[str, float]]:
    app.definitions.deploy([EXAMPLES / "three_step.yaml", EXAMPLES / INCIDENT_DEFINITION_FILE])
    app.directory.create_role(OPERATOR_ROLE, [OPERATE_PERMISSION])
    consumer_metadata = _metadata(app, None)
    operator_metadata = _metadata(app, [OPERATOR_ROLE])
    seed_instances("", "default", instances, incident_every=100, database=app.database)
    deps = app.server_dependencies()
    registry = _Registry()
    add_servicers(registry, deps)  # type: ignore[arg-type]
    interceptor = call_interceptor(deps)

    def call(method: str, data: bytes) -> bytes:
        metadata = operator_metadata if method.startswith(OPERATIONS) else consumer_metadata
        handler = interceptor.intercept_service(
            lambda details: registry.handlers.get(details.method), _Details(method, metadata)
        )
        context = CallContext(metadata)
        answer = handler.unary_unary(handler.request_deserializer(data), context)
        if context.code() is not None:
            raise RuntimeError(f"{method} answered {context.code()}")
        return handler.response_serializer(answer)  # type: ignore[no-any-return]

    start = pb.StartProcessRequest(definition_id="three_step")
    start.variables["amount"].number_value = 5
    start_bytes = start.SerializeToString()

    def started() -> pb.Instance:
        instance_id = pb.StartProcessResponse.FromString(call(ORCHESTRA + "StartProcess", start_bytes))
        request = pb.GetInstanceRequest(instance_id=instance_id.instance_id).SerializeToString()
        return pb.GetInstanceResponse.FromString(call(ORCHESTRA + "GetInstance", request)).instance

    instance = started()
    parked = iter(
        [
            pb.SignalTokenRequest(token_id=started().tokens[0].id).SerializeToString()
            for _ in range(runs * calls + PAGE_SAMPLE)
        ]
    )
    get_bytes = pb.GetInstanceRequest(instance_id=instance.id).SerializeToString()
    set_bytes = pb.SetVariableRequest(
        instance_id=instance.id, name="counter", value=struct_pb2.Value(number_value=1)
    ).SerializeToString()
    ping_bytes = diag_pb.PingRequest().SerializeToString()
    has_incident_bytes = ops.SearchInstancesRequest(has_incident=True, page_size=100).SerializeToString()
    incidents_bytes = ops.ListIncidentsRequest(page_size=100).SerializeToString()
    for method, data, field in (
        ("SearchInstances", has_incident_bytes, ops.SearchInstancesResponse),
        ("ListIncidents", incidents_bytes, ops.ListIncidentsResponse),
    ):
        answer = field.FromString(call(OPERATIONS + method, data))
        items = answer.instances if method == "SearchInstances" else answer.incidents  # type: ignore[attr-defined]
        if len(items) != min(100, instances // 100):
            raise RuntimeError(f"{method} answered {len(items)} items for {instances // 100} incidents")
    scenarios: dict[str, Callable[[], object]] = {
        "ping": lambda: call(PING, ping_bytes),
        "get_instance": lambda: call(ORCHESTRA + "GetInstance", get_bytes),
        "start_process": lambda: call(ORCHESTRA + "StartProcess", start_bytes),
        "signal": lambda: call(ORCHESTRA + "SignalToken", next(parked)),
        "set_variable": lambda: call(ORCHESTRA + "SetVariable", set_bytes),
        "search_incident": lambda: call(OPERATIONS + "SearchInstances", has_incident_bytes),
        "list_incidents": lambda: call(OPERATIONS + "ListIncidents", incidents_bytes),
    }
    results = {}
    for name, scenario in scenarios.items():
        if name != "signal":  # warm caches; the parked tokens are counted out
            for _ in range(calls):
                scenario()
        results[name] = _measure(scenario, runs, calls)
        results[name]["pages_per_call"] = _pages_written(app.database, scenario)
    return results


def _pages_written(database: Database, scenario: Callable[[], object]) -> float:
    """Database pages a call writes: what its commits append to SQLite's write-ahead log,
    emptied first, over PAGE_SAMPLE calls. Deterministic where the times are not, so it shows
    a change of the write path's volume (an index fewer, a statement fewer) the noise hides."""
    log = sqlite3.connect(str(database.engine.url.database))
    try:
        busy, _, _ = log.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            raise RuntimeError("the write-ahead log could not be emptied")
        for _ in range(PAGE_SAMPLE):
            scenario()
        _, pages, _ = log.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    finally:
        log.close()
    return round(int(pages) / PAGE_SAMPLE, 1)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.calls", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="runs per scenario (the minimum is reported)")
    parser.add_argument("--calls", type=int, default=100, help="calls per run")
    parser.add_argument(
        "--instances", type=int, default=10_000, help="instances seeded for the operations API's reads"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    results = run(args.runs, args.calls, args.instances)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"{'scenario':14s} {'CPU us/call (min)':>18s} {'(median)':>9s} {'wall us/call (min)':>19s}"
        f" {'pages/call':>11s}"
    )
    for name, figures in results.items():
        print(
            f"{name:14s} {figures['cpu_us_min']:18.1f} {figures['cpu_us_median']:9.1f}"
            f" {figures['wall_us_min']:19.1f} {figures['pages_per_call']:11.1f}"
        )


if __name__ == "__main__":
    main()
