"""``python -m bench``: runs the scenarios against the real stack and writes the results.

Phases (full run): the generators' own ceiling; per database a stack with the default worker
count running every scenario over REST and gRPC, the tenant growing 10k -> 100k (with the
operations API's searches over REST as an operator, each after a ping of its own, and their
query plans), the 100,000-instance walk and memory; a REST load sweep (p99 at 80% of peak); 1, 2 and 4
workers; timer drains. ``--quick`` keeps one short pass of every scenario and small drains.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import ceiling, plans, report, tools
from bench.load import Result
from bench.scenarios import (
    DESCRIPTIONS,
    KEY_VARIABLE,
    MANY_TENANTS,
    OPERATIONS,
    Pools,
    Runner,
    check_grpc,
    check_operations,
    variable_filter,
    walk_pages,
)
from bench.seed import count_instances, seed_instances
from bench.stack import PostgresDatabase, Stack, ping_route_present
from bench.timers import drain
from bench.timers import prepare as prepare_timers

ALL_SCENARIOS = (
    "ping",
    "start_process",
    "signal",
    "complete",
    "complete_tenants",
    "get_instance",
    "set_variable",
    "list_first",
    "list_deep",
    "token_issue",
    *OPERATIONS,
)
LIST_SCENARIOS = ("list_first", "list_deep")
# Measured through the edge only (the gRPC generators drive one tenant).
REST_ONLY = ("complete_tenants",)
# In the grown tenant, 1 instance in this many is a start that stops in an incident.
INCIDENT_EVERY = 100
SWEEP_SCENARIOS = ("ping", "get_instance", "start_process", "complete")
SWEEP_CONCURRENCY = (1, 2, 4, 8, 16, 32, 64)
SCALING_SCENARIOS = ("ping", "get_instance", "start_process", "complete")


@dataclass
class Plan:
    quick: bool
    dbs: tuple[str, ...]
    scenarios: tuple[str, ...]
    duration: float
    concurrency: int
    workers: int
    warmup: float
    growth: tuple[int, int]
    ceiling: bool
    sweep: bool
    sweep_duration: float
    scaling: tuple[int, ...]
    scaling_duration: float
    timers: tuple[int, ...]
    timer_cap: float | None
    profile: bool

    @property
    def signal_pool(self) -> int:
        # Enough parked tokens for the fastest signal rate seen on this machine, with room.
        return max(3_000, int(self.duration * 3_000))


def parse(argv: list[str] | None) -> Plan:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: short, small, no sweep/scaling")
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument(
        "--scenarios",
        nargs="+",
        choices=ALL_SCENARIOS,
        default=list(ALL_SCENARIOS),
        help="scenarios to run (ping always runs: it is the ceiling)",
    )
    parser.add_argument("--duration", type=float, default=None, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: one per core)")
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--no-scaling", action="store_true")
    parser.add_argument("--no-timers", action="store_true")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the generators' own ceiling")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy profiles of worker 0 during REST scenarios (SQLite)"
    )
    parser.add_argument(
        "--timer-cap",
        type=float,
        default=None,
        help="stop a drain after this many seconds and extrapolate (full default 90)",
    )
    parser.add_argument(
        "--markdown",
        type=Path,
        default=None,
        metavar="RESULTS_JSON",
        help="print the tables of an earlier results file as Markdown and exit",
    )
    args = parser.parse_args(argv)
    if args.markdown is not None:
        print(report.markdown(json.loads(args.markdown.read_text())))
        raise SystemExit(0)
    quick = args.quick
    scenarios = tuple(s for s in ALL_SCENARIOS if s in args.scenarios or s == "ping")
    workers = args.workers or max(1, min(os.cpu_count() or 1, 8))
    dbs = ("sqlite", "postgres") if args.db == "both" else (args.db,)
    return Plan(
        quick=quick,
        dbs=dbs,
        scenarios=scenarios,
        duration=args.duration or (1.0 if quick else 8.0),
        concurrency=args.concurrency,
        workers=workers,
        warmup=0.0 if quick else 2.0,
        growth=(5_000,) if quick else (10_000, 100_000),
        ceiling=not quick and not args.no_ceiling,
        sweep=not quick and not args.no_sweep,
        sweep_duration=3.0,
        scaling=() if quick or args.no_scaling else (1, 2, 4),
        scaling_duration=6.0,
        timers=() if args.no_timers else ((2_000,) if quick else (10_000, 100_000)),
        timer_cap=args.timer_cap if args.timer_cap is not None else (None if quick else 60.0),
        profile=args.profile,
    )


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def meta(plan: Plan) -> dict[str, Any]:
    def run(command: list[str]) -> str:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
            return (done.stdout or done.stderr).strip()
        except OSError:
            return "?"

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    import grpc
    import sqlalchemy

    from orchestra_server.edge import find_envoy

    envoy_version = run([str(find_envoy()), "--version"]).split("version:")[-1].strip()
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": plan.quick,
        "plan": {k: v for k, v in plan.__dict__.items()},
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": cpu,
            "kernel": platform.release(),
            "memory_mb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20,
        },
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "envoy": envoy_version[:80],
        "postgres": run(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-Atc", "show server_version"]
        ),
        "generators": tools.versions(),
        "commit": run(
            ["git", "-C", str(Path(__file__).resolve().parents[1]), "rev-parse", "--short", "HEAD"]
        ),
        "uncommitted_server_files": run(
            [
                "git",
                "-C",
                str(Path(__file__).resolve().parents[1]),
                "status",
                "--porcelain",
                "--",
                "orchestra_server",
                "envoy",
            ]
        ).splitlines(),
        "rest_ping_route": ping_route_present(),
        "descriptions": DESCRIPTIONS,
    }


def _row(result: Result) -> dict[str, Any]:
    return result.as_dict()


def _seed_pools(stack: Stack, plan: Plan, pools: Pools) -> int:
    url = stack.db_url or stack.settings.database_url
    n = plan.signal_pool if "signal" in plan.scenarios else 0
    pairs = seed_instances(url, "bench", 2_000 + 2 * n)
    instances = [p[0] for p in pairs]
    tokens = [p[1] for p in pairs]
    pools.readable["bench"] = instances[:1_000]
    pools.writable = instances[1_000:2_000]
    pools.rest_tokens = tokens[2_000 : 2_000 + n]
    pools.grpc_tokens = tokens[2_000 + n :]
    return len(pairs)


def _grow(stack: Stack, pools: Pools, to: int, seeded_big: int, *, deep: bool = True) -> int:
    """Seeds the big tenant up to `to` instances; a deep page token half-way down; ids to read.

    Every instance carries its own key (`reference`) and 1 in INCIDENT_EVERY is in an incident,
    for the operations API's searches; 1,000 keys drawn from all of them are searched for.
    """
    url = stack.db_url or stack.settings.database_url
    pairs = seed_instances(url, "big", to - seeded_big, keyed=KEY_VARIABLE, incident_every=INCIDENT_EVERY)
    ids = pools.readable.get("big", []) + [p[0] for p in pairs]
    rng = random.Random(7)
    pools.readable["big"] = rng.sample(ids, min(1_000, len(ids)))
    pools.filters["big"] = [variable_filter(i) for i in pools.readable["big"]]
    if deep:
        _, page = walk_pages(stack, "big", stop_after=to // 2)
        pools.deep_tokens["big"] = page
    return to


def run_database(db: str, plan: Plan, root: Path, out: dict[str, Any]) -> dict[str, Any]:
    pg = PostgresDatabase() if db == "postgres" else None
    workdir = root / db
    workdir.mkdir(parents=True)
    stack = Stack(workdir, db, plan.workers, db_url=pg.url if pg else None)
    run: dict[str, Any] = {"workers": plan.workers, "concurrency": plan.concurrency, "scenarios": []}
    try:
        log(f"{db}: preparing (CLI: deploy, tenants, consumers) and starting {plan.workers} workers + edge")
        many = "complete_tenants" in plan.scenarios
        stack.prepare(tenants=(*MANY_TENANTS, "big") if many else ("bench", "big"), operators=("big",))
        stack.start()
        pools = Pools(workdir)
        seeded = _seed_pools(stack, plan, pools)
        deep = "list_deep" in plan.scenarios
        seeded_big = _grow(stack, pools, plan.growth[0], 0, deep=deep)
        seeded += seeded_big
        check_grpc(stack)
        phases: list[dict[str, Any]] = [_memory_phase(stack, "start-up and seeding")]
        run["memory_by_phase"] = phases
        runner = Runner(stack, pools, workdir, plan.concurrency)
        if plan.warmup:
            runner.rest("complete", plan.warmup)
            runner.grpc("ping", 1)
        d = plan.duration
        rest_ok = ping_route_present()
        for scenario in plan.scenarios:
            if scenario in LIST_SCENARIOS or scenario in OPERATIONS:
                continue
            duration = min(d, 5.0) if scenario == "token_issue" else d
            c = 4 if scenario == "token_issue" else None
            if rest_ok or scenario != "ping":
                log(f"{db}: {scenario} REST")
                run["scenarios"].append(_row(runner.rest(scenario, duration, concurrency=c)))
            if scenario not in REST_ONLY:
                log(f"{db}: {scenario} gRPC")
                run["scenarios"].append(_row(runner.grpc(scenario, duration, concurrency=c)))
            if scenario == "ping":
                run["scenarios"].append(_row(runner.grpc("ping", duration, generator="python")))
            phases.append(_memory_phase(stack, scenario))
        run["memory_after_runs"] = stack.memory()

        # The tenant grows 10x: listInstances (first and a deep page) and getInstance should stay flat.
        growth: list[dict[str, Any]] = []
        for size in plan.growth:
            if size > seeded_big:
                log(f"{db}: growing the big tenant to {size:,} instances")
                seeded += size - seeded_big
                seeded_big = _grow(stack, pools, size, seeded_big, deep=deep)
            gd = d if size == plan.growth[-1] else max(1.0, d / 2)
            operations = [s for s in OPERATIONS if s in plan.scenarios]
            if operations:
                # Each rate against a ping measured right before it: the machine is shared.
                log(f"{db}: operations API on {size:,} instances: {check_operations(stack, pools, 'big')}")
                for scenario in operations:
                    ping = runner.rest("ping", d)
                    growth.append(_row(ping) | {"instances": size, "for": scenario})
                    growth.append(_row(runner.rest(scenario, d, tenant="big")) | {"instances": size})
                if size == plan.growth[-1]:
                    log(f"{db}: query plans of the operations API's searches")
                    run["plans"] = plans.explain(url_of(stack), "big")
            for scenario in ("list_first", "list_deep", "get_instance"):
                if scenario not in plan.scenarios:
                    continue
                for transport in ("rest", "grpc"):
                    if transport == "rest":
                        r = runner.rest(scenario, gd, tenant="big")
                    else:
                        r = runner.grpc(scenario, gd, tenant="big")
                    row = _row(r) | {"instances": size}
                    growth.append(row)
                    if size == plan.growth[-1] and scenario in LIST_SCENARIOS:
                        run["scenarios"].append(row)
            phases.append(_memory_phase(stack, f"reads on {size:,} instances"))
        run["growth"] = growth
        run["operations"] = report.operations_summary(growth)

        if plan.profile and db == "sqlite":
            run["profiles"] = _profiles(runner, stack, workdir, d, plan.scenarios)

        if plan.sweep and db == "sqlite":
            log(f"{db}: REST load sweep")
            out.setdefault("sweep", {})[db] = _sweep(runner, plan)

        # Every instance of the big tenant read through the API, both ways, before reading memory
        # (with the list scenarios: a run of some other scenarios only stays short).
        walk = any(s in plan.scenarios for s in LIST_SCENARIOS)
        walked_rest = walk_pages(stack, "big")[0] if walk else None
        walked_grpc = walk_pages(stack, "big", transport="grpc")[0] if walk else None
        url = url_of(stack)
        total = count_instances(url)
        run["instances"] = {
            "in_database": total,
            "seeded": seeded,
            "started_through_the_api": total - seeded,
            "big_tenant_walked_rest": walked_rest,
            "big_tenant_walked_grpc": walked_grpc,
            "completed": count_instances(url, status="completed"),
        }
        phases.append(_memory_phase(stack, "walk of all instances of the big tenant"))
        run["memory_after_100k"] = stack.memory()
        log(f"{db}: done; {total:,} instances in the database")
    finally:
        stack.stop()
        if pg is not None:
            pg.drop()
    report.add_ratios(run)
    return run


def url_of(stack: Stack) -> str:
    return stack.db_url or stack.settings.database_url


def _memory_phase(stack: Stack, after: str) -> dict[str, Any]:
    memory = stack.memory()
    return {
        "after": after,
        "peak_mb": {k: round(v.get("VmHWM", 0) / 1024) for k, v in memory.items()},
        "rss_mb": {k: round(v.get("VmRSS", 0) / 1024) for k, v in memory.items()},
    }


def _sweep(runner: Runner, plan: Plan) -> dict[str, Any]:
    sweep: dict[str, Any] = {}
    for scenario in SWEEP_SCENARIOS:
        if scenario not in plan.scenarios:
            continue
        points = []
        for c in SWEEP_CONCURRENCY:
            r = runner.rest(scenario, plan.sweep_duration, concurrency=c)
            point = {
                "concurrency": c,
                "rps": r.rps,
                "p50_ms": r.p50_ms,
                "p99_ms": r.p99_ms,
                "errors": r.errors,
            }
            if "completed_per_s" in r.extra:
                point["completed_per_s"] = r.extra["completed_per_s"]
            points.append(point)
        sweep[scenario] = report.sweep_summary(points)
    return sweep


def _profiles(
    runner: Runner, stack: Stack, workdir: Path, d: float, scenarios: Sequence[str]
) -> dict[str, Any]:
    """Profiles of ping and the consumer scenarios in the run, and of the operations API's reads on
    the grown tenant."""
    from bench import profile

    out: dict[str, Any] = {}
    pid = stack.worker_pids[0]
    candidates = ("get_instance", "start_process", "complete", *OPERATIONS)
    profiled = ["ping", *(s for s in candidates if s in scenarios)]
    for scenario in profiled:
        raw = workdir / f"profile-{scenario}.txt"
        log(f"profiling worker 0 during REST {scenario}")
        spy = profile.start(pid, d, raw)
        if spy is None:
            return {"error": "py-spy not installed (pip install py-spy)"}
        result = runner.rest(scenario, d, tenant="big" if scenario in OPERATIONS else "bench")
        spy.wait(timeout=d + 30)
        if raw.exists():
            out[scenario] = profile.fold(raw) | {"rps_while_profiled": result.rps}
    return out


def run_scaling(plan: Plan, root: Path, main_runs: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for db in plan.dbs:
        for workers in plan.scaling:
            main = main_runs.get(db)
            if main is not None and workers == main["workers"]:
                for r in main["scenarios"]:
                    if r["transport"] == "rest" and r["scenario"] in SCALING_SCENARIOS:
                        rows.append(
                            {
                                "db": db,
                                "workers": workers,
                                "scenario": r["scenario"],
                                "rps": r["rps"],
                                "p50_ms": r["p50_ms"],
                                "p99_ms": r["p99_ms"],
                                "errors": r["errors"],
                                "completed_per_s": r["extra"].get("completed_per_s"),
                                "cpu_utilisation": r["extra"].get("cpu_utilisation"),
                                "from": "main run",
                            }
                        )
                continue
            pg = PostgresDatabase() if db == "postgres" else None
            workdir = root / f"scaling-{db}-{workers}"
            workdir.mkdir(parents=True)
            stack = Stack(workdir, db, workers, db_url=pg.url if pg else None)
            try:
                log(f"scaling: {db} with {workers} worker(s)")
                stack.prepare(tenants=("bench",))
                stack.start()
                pools = Pools(workdir)
                url = stack.db_url or stack.settings.database_url
                pools.readable["bench"] = [p[0] for p in seed_instances(url, "bench", 1_000)]
                runner = Runner(stack, pools, workdir, plan.concurrency)
                runner.rest("complete", 1)
                for scenario in SCALING_SCENARIOS:
                    if scenario not in plan.scenarios:
                        continue
                    r = runner.rest(scenario, plan.scaling_duration)
                    rows.append(
                        {
                            "db": db,
                            "workers": workers,
                            "scenario": scenario,
                            "rps": r.rps,
                            "p50_ms": r.p50_ms,
                            "p99_ms": r.p99_ms,
                            "errors": r.errors,
                            "completed_per_s": r.extra.get("completed_per_s"),
                            "cpu_utilisation": r.extra.get("cpu_utilisation"),
                        }
                    )
            finally:
                stack.stop()
                if pg is not None:
                    pg.drop()
    return rows


def run_timers(plan: Plan, root: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for db in plan.dbs:
        pg = PostgresDatabase() if db == "postgres" else None
        try:
            settings = prepare_timers(root / f"timers-{db}", pg.url if pg else None)
            cases = [(n, 1) for n in plan.timers] if db == "sqlite" else []
            if db == "postgres":
                # A capped drain drops the timers it left, so the order only matters for time.
                for n in plan.timers:
                    cases += [(n, 3)] + ([(n, 1)] if n != plan.timers[-1] else [])
                cases.append((plan.timers[-1], 1))
            for count, processes in cases:
                log(f"timers: {db}, {count:,} due, {processes} process(es)")
                cap = plan.timer_cap if count == max(plan.timers) else None
                rows.append({"db": db} | drain(settings, count, processes, cap_seconds=cap))
        finally:
            if pg is not None:
                pg.drop()
    return rows


def main(argv: list[str] | None = None) -> int:
    plan = parse(argv)
    tools.ensure_tools()
    if "postgres" in plan.dbs and not PostgresDatabase.available():
        log("PostgreSQL is not reachable; running SQLite only")
        plan.dbs = tuple(db for db in plan.dbs if db != "postgres")
    started = time.monotonic()
    out: dict[str, Any] = {"meta": meta(plan), "runs": {}}
    if not out["meta"]["rest_ping_route"]:
        log("the edge has no /orchestra-api/ping route: REST ratios cannot be computed")
    root = Path(tempfile.mkdtemp(prefix="orchestra-bench-"))
    try:
        if plan.ceiling:
            log("load generators against a do-nothing Envoy")
            out["generator_ceiling"] = ceiling.measure(root, 4.0, plan.concurrency)
        for db in plan.dbs:
            out["runs"][db] = run_database(db, plan, root, out)
        if plan.scaling:
            out["scaling"] = run_scaling(plan, root, out["runs"])
        if plan.timers:
            out["timers"] = run_timers(plan, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out["meta"]["elapsed_s"] = round(time.monotonic() - started, 1)
    out["targets"] = report.check_targets(out)
    print(report.table(out))
    path = report.write(out)
    print(f"\nresults: {path} (and {path.parent / 'latest.json'}); {out['meta']['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
