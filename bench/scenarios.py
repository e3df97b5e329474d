"""The scenarios, each through REST (the Envoy edge) and directly over gRPC, against one running stack."""

from __future__ import annotations

import json
import resource
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.api import httpbody_pb2
from google.protobuf import struct_pb2
from orchestra.v1 import auth_service_pb2 as auth_pb
from orchestra.v1 import orchestra_service_pb2 as pb

from bench.grpcload import run_grpc_python
from bench.load import Result, run_h2load_grpc, run_wrk, wrk_script
from bench.seed import keyed_value
from bench.stack import Stack, cpu_seconds, machine_cpu, operator_key, postgres_pids

SVC = "/orchestra.v1.OrchestraService/"
PING_PATH = "/orchestra.v1.DiagnosticsService/Ping"
START_BODY = '{"variables":{"amount":1}}'

# What each scenario measures, for the table and the docs.
DESCRIPTIONS = {
    "ping": "authenticated no-op (DiagnosticsService.Ping): the ceiling",
    "start_process": "start three_step (one variable); the instance parks on `task`",
    "signal": "signal the parked token of a pre-created instance (completes it); each token once",
    "complete": "start -> get (find the token) -> signal: one instance completed per 3 calls",
    "complete_tenants": "complete, from 16 tenants at one connection each (REST only, wrk -t16 -c16)",
    "get_instance": "getInstance of a running instance (1,000 distinct ones, round robin)",
    "set_variable": "setVariable on a running instance (1,000 distinct ones, round robin)",
    "list_first": "listInstances first page (100) on the tenant with the seeded instances",
    "list_deep": "listInstances page (100) half-way down via a page token",
    "token_issue": "client-credentials token (scrypt check of the secret on every call)",
    "search_variable": "SearchInstances (100) by `variable=reference=<JSON>`, one instance's own key"
    " (1,000 distinct ones, round robin), as an operator",
    "search_incident": "SearchInstances (100) with `has_incident=true` (1 instance in 100 has one),"
    " as an operator",
    "list_incidents": "ListIncidents first page (100), oldest first, as an operator",
    "search_incident_25": "as search_incident, a page of 25 (the console's instances page)",
    "list_incidents_50": "as list_incidents, a page of 50 (the console's incidents page)",
}
# The operations API's reads through REST as a consumer with `operate orchestra`: each one's
# path under OPS ({} is a key from the search file) and the list its answer carries. The
# incident reads cost per item (mostly the edge's JSON transcoding), so they run at the
# default page of 100 and at the pages the console asks for.
OPERATION_PATHS = {
    "search_variable": ("instances?page_size=100&variable={}", "instances"),
    "search_incident": ("instances?has_incident=true&page_size=100", "instances"),
    "list_incidents": ("incidents?page_size=100", "incidents"),
    "search_incident_25": ("instances?has_incident=true&page_size=25", "instances"),
    "list_incidents_50": ("incidents?page_size=50", "incidents"),
}
OPERATIONS = tuple(OPERATION_PATHS)
# complete_tenants: the load of this many tenants, each a consumer at one connection.
MANY_TENANTS = ("bench", *(f"tenant-{n:02d}" for n in range(1, 16)))
# The variable every seeded instance of the grown tenant carries with its own id as value.
KEY_VARIABLE = "reference"
OPS = "/orchestra-ops/v1/"
WRITES = ("start_process", "signal", "set_variable")


def _usage_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Pools:
    """Seeded data a stack's scenarios consume: ids in files for wrk, lists for the gRPC generator."""

    workdir: Path
    readable: dict[str, list[str]] = field(default_factory=dict)  # tenant -> instances for get_instance
    writable: list[str] = field(default_factory=list)  # running instances for set_variable
    rest_tokens: list[str] = field(default_factory=list)  # parked tokens, signalled once each
    grpc_tokens: list[str] = field(default_factory=list)
    deep_tokens: dict[str, str] = field(default_factory=dict)  # tenant -> a page token half-way down
    # tenant -> `variable` query values (URL-encoded `reference="<id>"`) for search_variable
    filters: dict[str, list[str]] = field(default_factory=dict)

    def file(self, name: str, ids: list[str]) -> Path:
        path = self.workdir / f"ids-{name}.txt"
        path.write_text("\n".join(ids) + "\n")
        return path


class Runner:
    """Runs one scenario on one transport and records the stack's CPU use during it."""

    def __init__(self, stack: Stack, pools: Pools, workdir: Path, concurrency: int) -> None:
        self.stack = stack
        self.pools = pools
        self.workdir = workdir
        self.concurrency = concurrency

    def measured(self, run: Callable[[], Result]) -> Result:
        pids = {f"worker-{i}": p for i, p in enumerate(self.stack.worker_pids)}
        if self.stack.edge_pid:
            pids["envoy"] = self.stack.edge_pid
        if self.stack.db == "postgres":
            for pid in postgres_pids():
                pids[f"postgres-{pid}"] = pid
        before = {n: cpu_seconds(p) for n, p in pids.items()}
        gen_before = _usage_children()
        busy_before, total_before = machine_cpu()
        wall = time.monotonic()
        result = run()
        wall = time.monotonic() - wall
        busy_after, total_after = machine_cpu()
        used = {n: cpu_seconds(p) - before[n] for n, p in pids.items()}
        postgres = sum(v for k, v in used.items() if k.startswith("postgres-"))
        used = {k: v for k, v in used.items() if not k.startswith("postgres-")}
        if self.stack.db == "postgres":
            used["postgres"] = postgres
        calls = max(1, result.ok + result.errors)
        workers = sum(v for k, v in used.items() if k.startswith("worker"))
        result.extra["cpu_ms_per_call"] = {
            "workers": round(workers * 1000 / calls, 3),
            "envoy": round(used.get("envoy", 0.0) * 1000 / calls, 3),
            "generator": round((_usage_children() - gen_before) * 1000 / calls, 3),
            "postgres": round(postgres * 1000 / calls, 3),
        }
        # Share of the machine's cores busy (everything: stack, database, generator, others).
        # Over the measured window (the gRPC generator's processes start a few seconds before it).
        window = max(1e-3, min(wall, result.duration_s or wall))
        cores = (total_after - total_before) / max(1e-9, wall)
        result.extra["machine_busy"] = round(min(1.0, (busy_after - busy_before) / (window * cores)), 2)
        result.extra["cpu_utilisation"] = {n: round(v / window, 2) for n, v in used.items()}
        return result

    # --- REST ------------------------------------------------------------------------------------

    def rest(
        self, scenario: str, duration: float, *, concurrency: int | None = None, tenant: str = "bench"
    ) -> Result:
        c = concurrency or self.concurrency
        token = self.stack.token(operator_key(tenant) if scenario in OPERATIONS else tenant)
        url = self.stack.rest_url
        static = wrk_script("static", self.workdir)
        cycle = wrk_script("cycle", self.workdir)

        def go() -> Result:
            if scenario == "ping":
                return run_wrk(
                    scenario,
                    url,
                    static,
                    ["GET", "/orchestra-api/ping", token],
                    duration=duration,
                    connections=c,
                )
            if scenario == "start_process":
                return run_wrk(
                    scenario,
                    url,
                    static,
                    ["POST", "/orchestra-api/process/three_step/start", token, START_BODY],
                    duration=duration,
                    connections=c,
                )
            if scenario == "get_instance":
                ids = self.pools.file(f"read-{tenant}", self.pools.readable[tenant])
                return run_wrk(
                    scenario,
                    url,
                    cycle,
                    ["GET", "/orchestra-api/instance/{}", token, str(ids), "cycle", "1"],
                    duration=duration,
                    connections=c,
                )
            if scenario == "set_variable":
                ids = self.pools.file("write", self.pools.writable)
                return run_wrk(
                    scenario,
                    url,
                    cycle,
                    [
                        "PUT",
                        "/orchestra-api/instance/{}/variable/counter",
                        token,
                        str(ids),
                        "cycle",
                        "1",
                        '{"value":{n}}',
                    ],
                    duration=duration,
                    connections=c,
                )
            if scenario == "signal":
                ids = self.pools.file("signal-rest", self.pools.rest_tokens)
                return run_wrk(
                    scenario,
                    url,
                    cycle,
                    ["POST", "/orchestra-api/token/{}/signal", token, str(ids), "once", "1", "{}"],
                    duration=duration,
                    connections=c,
                )
            if scenario == "complete":
                return run_wrk(
                    scenario,
                    url,
                    wrk_script("complete", self.workdir),
                    [token, "three_step"],
                    duration=duration,
                    connections=c,
                )
            if scenario == "complete_tenants":
                tokens = self.pools.file("tenant-tokens", [self.stack.token(t) for t in MANY_TENANTS])
                return run_wrk(
                    scenario,
                    url,
                    wrk_script("complete", self.workdir),
                    ["@" + str(tokens), "three_step"],
                    duration=duration,
                    connections=len(MANY_TENANTS),
                    threads=len(MANY_TENANTS),
                )
            if scenario == "list_first":
                return run_wrk(
                    scenario,
                    url,
                    static,
                    ["GET", "/orchestra-api/instances?page_size=100", token],
                    duration=duration,
                    connections=c,
                )
            if scenario == "list_deep":
                page = urllib.parse.quote(self.pools.deep_tokens[tenant])
                return run_wrk(
                    scenario,
                    url,
                    static,
                    ["GET", f"/orchestra-api/instances?page_size=100&page_token={page}", token],
                    duration=duration,
                    connections=c,
                )
            if scenario == "search_variable":
                ids = self.pools.file(f"filters-{tenant}", self.pools.filters[tenant])
                path = OPS + OPERATION_PATHS[scenario][0]
                return run_wrk(
                    scenario,
                    url,
                    cycle,
                    ["GET", path, token, str(ids), "cycle", "1"],
                    duration=duration,
                    connections=c,
                )
            if scenario in OPERATION_PATHS:
                return run_wrk(
                    scenario,
                    url,
                    static,
                    ["GET", OPS + OPERATION_PATHS[scenario][0], token],
                    duration=duration,
                    connections=c,
                )
            if scenario == "token_issue":
                form = self.stack.token_form(tenant).decode()
                return run_wrk(
                    scenario,
                    url,
                    static,
                    ["POST", "/oauth/token", "-", form, "application/x-www-form-urlencoded"],
                    duration=duration,
                    connections=c,
                )
            raise ValueError(scenario)

        return self.measured(go)

    # --- gRPC ------------------------------------------------------------------------------------

    def grpc(
        self,
        scenario: str,
        duration: float,
        *,
        concurrency: int | None = None,
        tenant: str = "bench",
        generator: str = "h2load",
    ) -> Result:
        c = concurrency or self.concurrency
        token = self.stack.token(tenant)
        targets = self.stack.grpc_targets

        def h2(method: str, message: bytes, auth: str | None = token) -> Result:
            return run_h2load_grpc(
                scenario,
                targets,
                method,
                message,
                auth,
                duration=duration,
                concurrency=c,
                workdir=self.workdir,
            )

        def py(kind: str, items: list[str] | None = None) -> Result:
            return run_grpc_python(
                scenario,
                kind,
                targets,
                token,
                duration=duration,
                processes=2,
                tasks=max(1, c // 2),
                items=items,
            )

        def go() -> Result:
            if scenario == "ping":
                return py("ping") if generator == "python" else h2(PING_PATH, b"")
            if scenario == "start_process":
                return h2(
                    SVC + "StartProcess",
                    pb.StartProcessRequest(
                        definition_id="three_step", variables={"amount": struct_pb2.Value(number_value=1)}
                    ).SerializeToString(),
                )
            if scenario == "get_instance":
                instance = self.pools.readable[tenant][0]
                return h2(
                    SVC + "GetInstance", pb.GetInstanceRequest(instance_id=instance).SerializeToString()
                )
            if scenario == "list_first":
                return h2(SVC + "ListInstances", pb.ListInstancesRequest(page_size=100).SerializeToString())
            if scenario == "list_deep":
                return h2(
                    SVC + "ListInstances",
                    pb.ListInstancesRequest(
                        page_size=100, page_token=self.pools.deep_tokens[tenant]
                    ).SerializeToString(),
                )
            if scenario == "token_issue":
                body = httpbody_pb2.HttpBody(
                    content_type="application/x-www-form-urlencoded", data=self.stack.token_form(tenant)
                )
                return h2(
                    "/orchestra.v1.AuthService/IssueToken",
                    auth_pb.IssueTokenRequest(http_body=body).SerializeToString(),
                    auth=None,
                )
            if scenario == "signal":
                return py("signal", self.pools.grpc_tokens)
            if scenario == "set_variable":
                return py("setvar", self.pools.writable)
            if scenario == "complete":
                return py("complete")
            raise ValueError(scenario)

        return self.measured(go)


def check_grpc(stack: Stack) -> None:
    """One call of each fixed-request gRPC scenario with a real client: h2load counts HTTP 200s, and a
    gRPC error is an HTTP 200 too, so the requests it will repeat are checked here first."""
    import grpc

    token = stack.token("bench")
    meta = (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(stack.grpc_targets[0]) as channel:
        for method, message in (
            (PING_PATH, b""),
            (SVC + "ListInstances", pb.ListInstancesRequest(page_size=1).SerializeToString()),
        ):
            channel.unary_unary(method)(message, metadata=meta, timeout=10)


def variable_filter(instance_id: str) -> str:
    """The URL-encoded `variable` query value matching the instance's own key."""
    return urllib.parse.quote(f"{KEY_VARIABLE}={json.dumps(keyed_value(instance_id))}", safe="")


def check_operations(stack: Stack, pools: Pools, tenant: str) -> dict[str, int]:
    """One call of each operations scenario, checking it answers what it should: wrk only counts
    statuses, and an empty answer would be fast for the wrong reason. Returns the item counts."""
    token = stack.token(operator_key(tenant))
    counts: dict[str, int] = {}
    for scenario, (path, key) in OPERATION_PATHS.items():
        path = path.format(pools.filters[tenant][0])
        status, body = stack.http("GET", OPS + path, token)
        if status != 200:
            raise RuntimeError(f"{scenario}: {status} {body[:300]!r}")
        items = json.loads(body).get(key, [])
        if not items or (scenario == "search_variable" and len(items) != 1):
            raise RuntimeError(f"{scenario}: unexpected answer {body[:300]!r}")
        counts[scenario] = len(items)
    return counts


def walk_pages(
    stack: Stack,
    tenant: str,
    *,
    stop_after: int | None = None,
    page_size: int = 1000,
    transport: str = "rest",
) -> tuple[int, str]:
    """Reads the tenant's instances page by page through the API; returns (instances read, the page
    token at `stop_after` instances, or '' when the walk reached the end)."""
    token = stack.token(tenant)
    seen = 0
    page_token = ""
    if transport == "grpc":
        import grpc

        channel = grpc.insecure_channel(stack.grpc_targets[0])
        call = channel.unary_unary(
            SVC + "ListInstances", response_deserializer=pb.ListInstancesResponse.FromString
        )
    try:
        while True:
            if transport == "grpc":
                answer = call(
                    pb.ListInstancesRequest(page_size=page_size, page_token=page_token).SerializeToString(),
                    metadata=(("authorization", f"Bearer {token}"),),
                    timeout=30,
                )
                seen += len(answer.instances)
                page_token = answer.next_page_token
            else:
                query = f"page_size={page_size}" + (
                    f"&page_token={urllib.parse.quote(page_token)}" if page_token else ""
                )
                status, body = stack.http("GET", f"/orchestra-api/instances?{query}", token)
                if status != 200:
                    raise RuntimeError(f"listInstances failed: {status} {body[:200]!r}")
                seen += len(json.loads(body))
                page_token = stack.last_headers.get("x-next-page-token", "")
            if not page_token or (stop_after is not None and seen >= stop_after):
                return seen, page_token
    finally:
        if transport == "grpc":
            channel.close()


def summary_row(result: Result) -> dict[str, Any]:
    return {
        "rps": result.rps,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "errors": result.errors,
    }
