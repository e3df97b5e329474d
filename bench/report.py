"""The results: targets checked, a text table, and the JSON files under bench/results/."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).parent / "results"
RSS_LIMIT_MB = 150
P99_LIMIT_MS = 25
E2E_TARGET = 1000
GET_RATIO = 0.60
WRITE_RATIO = 0.40
# The operations API's searches: against the ping measured right before each, at every size.
OPS_RATIO = 0.40
# The rate on the largest tenant over the rate on the smallest: what counts as flat.
FLAT_RATIO = 0.80


def _ratio(value: float, ceiling: float | None) -> float | None:
    if not ceiling or not value or math.isnan(value):
        return None
    return round(value / ceiling, 3)


def add_ratios(run: dict[str, Any]) -> None:
    """Each scenario's throughput over the ping of the same transport and generator."""
    ceilings: dict[tuple[str, str], float] = {}
    for r in run["scenarios"]:
        if r["scenario"] == "ping":
            ceilings[(r["transport"], r["tool"].split()[0])] = r["rps"]
    for r in run["scenarios"]:
        ceiling = ceilings.get((r["transport"], r["tool"].split()[0]))
        r["ratio_to_ceiling"] = _ratio(r["rps"], ceiling)


def operations_summary(growth: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The operations scenarios of a tenant-growth series: per scenario and tenant size its rate,
    the ping measured right before it (the row whose `for` names the scenario) and their ratio;
    and how flat it stays: the rate (and the ratio) on the largest tenant over the smallest."""
    pings = {(g["for"], g["instances"]): g for g in growth if g["scenario"] == "ping" and g.get("for")}
    out: dict[str, dict[str, Any]] = {}
    for g in growth:
        ping = pings.get((g["scenario"], g["instances"]))
        if ping is None:
            continue
        entry = out.setdefault(g["scenario"], {"scenario": g["scenario"], "sizes": []})
        entry["sizes"].append(
            {
                "instances": g["instances"],
                "rps": g["rps"],
                "ping_rps": ping["rps"],
                "ratio_to_ceiling": _ratio(g["rps"], ping["rps"]),
                "p50_ms": g["p50_ms"],
                "p99_ms": g["p99_ms"],
                "errors": g["errors"],
            }
        )
    for entry in out.values():
        sizes = sorted(entry["sizes"], key=lambda x: x["instances"])
        entry["sizes"] = sizes
        first, last = sizes[0], sizes[-1]
        many = len(sizes) > 1
        entry["flat"] = _ratio(last["rps"], first["rps"]) if many else None
        entry["flat_ratio_to_ceiling"] = (
            _ratio(last["ratio_to_ceiling"] or 0.0, first["ratio_to_ceiling"]) if many else None
        )
    return list(out.values())


def _find(run: dict[str, Any], scenario: str, transport: str) -> dict[str, Any] | None:
    return next(
        (r for r in run.get("scenarios", []) if r["scenario"] == scenario and r["transport"] == transport),
        None,
    )


def check_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def target(name: str, measured: Any, limit: Any, met: bool | None, detail: str = "") -> None:
        if measured is None:
            met = None
        by = None
        if isinstance(measured, (int, float)) and isinstance(limit, (int, float)) and limit:
            by = round(100 * (measured - limit) / limit, 1)
        out.append(
            {
                "target": name,
                "measured": measured,
                "limit": limit,
                "met": met,
                "difference_pct": by,
                "detail": detail,
            }
        )

    runs = report.get("runs", {})
    sqlite = runs.get("sqlite")
    if sqlite:
        # (scenario, label, reported as missed when it did not run)
        for scenario, label, required in (
            ("complete", "REST on SQLite: instances completed/s (start+get+signal)", True),
            (
                "complete_tenants",
                "REST on SQLite, 16 tenants at one connection each: instances completed/s",
                False,
            ),
        ):
            r = _find(sqlite, scenario, "rest")
            if r is None and not required:
                continue
            value = r["extra"].get("completed_per_s") if r else None
            target(label, value, E2E_TARGET, value is not None and value >= E2E_TARGET)
    ratio_targets = (
        ("get_instance", "getInstance", GET_RATIO),
        ("start_process", "start_process", WRITE_RATIO),
        ("signal", "signal", WRITE_RATIO),
    )
    for db, run in runs.items():
        for transport in ("rest", "grpc"):
            for scenario, label, limit in ratio_targets:
                r = _find(run, scenario, transport)
                ratio = r.get("ratio_to_ceiling") if r else None
                target(
                    f"{db} {transport}: {label} / ping",
                    ratio,
                    limit,
                    ratio is not None and ratio >= limit,
                )
    for db, run in runs.items():
        for entry in run.get("operations") or []:
            for size in entry["sizes"]:
                ratio = size["ratio_to_ceiling"]
                target(
                    f"{db} rest: {entry['scenario']} / ping on {size['instances']:,} instances",
                    ratio,
                    OPS_RATIO,
                    ratio is not None and ratio >= OPS_RATIO and not size["errors"],
                )
            if entry["flat"] is not None:
                target(
                    f"{db} rest: {entry['scenario']}, rate on {entry['sizes'][-1]['instances']:,} "
                    f"over {entry['sizes'][0]['instances']:,} instances",
                    entry["flat"],
                    FLAT_RATIO,
                    entry["flat"] >= FLAT_RATIO,
                )
    for db, sweep in report.get("sweep", {}).items():
        for scenario, points in sweep.items():
            at = points.get("at_80pct")
            if at:
                target(
                    f"{db} rest {scenario}: p99 at 80% of peak (c={at['concurrency']}, "
                    f"{at['rps']:.0f}/s of peak {points['peak_rps']:.0f}/s)",
                    at["p99_ms"],
                    P99_LIMIT_MS,
                    at["p99_ms"] < P99_LIMIT_MS,
                )
    for db, run in runs.items():
        memory = run.get("memory_after_100k") or {}
        for name, values in memory.items():
            if name.startswith("worker") and values.get("VmHWM"):
                mb = round(values["VmHWM"] / 1024, 1)
                target(
                    f"{db} {name}: peak RSS after the 100k-instance run (MB)",
                    mb,
                    RSS_LIMIT_MB,
                    mb < RSS_LIMIT_MB,
                )
    return out


def sweep_summary(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Peak throughput, and the lowest concurrency reaching 80% of it (the load the p99 target is at)."""
    peak = max((p["rps"] for p in points), default=0)
    candidates = sorted((p for p in points if p["rps"] >= 0.8 * peak), key=lambda p: p["concurrency"])
    return {"points": points, "peak_rps": peak, "at_80pct": candidates[0] if candidates else None}


def _fmt(v: Any, digits: int = 0) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def table(report: dict[str, Any]) -> str:
    lines: list[str] = []
    for db, run in report.get("runs", {}).items():
        lines.append(f"\n== {db} ({run.get('workers')} workers, concurrency {run.get('concurrency')}) ==")
        lines.append(
            f"{'scenario':<16} {'transport':<9} {'generator':<20} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>8} "
            f"{'x ping':>6} {'errors':>6} {'cpu ms/call: workers+envoy+pg':>30} {'busy':>5} {'note':<}"
        )
        for r in run["scenarios"]:
            cpu = r["extra"].get("cpu_ms_per_call", {})
            note = ""
            if "completed_per_s" in r["extra"]:
                note = f"{r['extra']['completed_per_s']:,.0f} completed/s"
            lines.append(
                f"{r['scenario']:<16} {r['transport']:<9} {r['tool'][:20]:<20} {_fmt(r['rps']):>8} "
                f"{_fmt(r['p50_ms'], 1):>7} {_fmt(r['p99_ms'], 1):>8} "
                f"{_fmt(r.get('ratio_to_ceiling'), 2):>6} {r['errors']:>6} "
                f"{cpu.get('workers', 0):>14.2f}+{cpu.get('envoy', 0):.2f}+{cpu.get('postgres', 0):<5.2f} "
                f"{r['extra'].get('machine_busy', 0):>5.0%} {note}"
            )
        for label in ("memory_after_runs", "memory_after_100k"):
            memory = run.get(label)
            if memory:
                text = ", ".join(f"{k} {v.get('VmHWM', 0) / 1024:.0f} MB" for k, v in memory.items())
                lines.append(f"peak RSS {label.replace('memory_', '').replace('_', ' ')}: {text}")
        growth = run.get("growth")
        if growth:
            lines.append("tenant growth (big tenant):")
            for g in growth:
                lines.append(
                    f"  {g['instances']:>7,} instances {g['scenario']:<13} {g['transport']:<5} "
                    f"{_fmt(g['rps']):>7}/s p50 {_fmt(g['p50_ms'], 1)} ms p99 {_fmt(g['p99_ms'], 1)} ms"
                )
        for entry in run.get("operations") or []:
            sizes = ", ".join(
                f"{x['instances']:,}: {_fmt(x['rps'])}/s = {_fmt(x['ratio_to_ceiling'], 2)} x ping"
                for x in entry["sizes"]
            )
            lines.append(f"operations {entry['scenario']:<16} {sizes}; flat {_fmt(entry['flat'], 2)}")
    for db, sweep in report.get("sweep", {}).items():
        lines.append(f"\n== load sweep, REST, {db} (wrk connections) ==")
        for scenario, s in sweep.items():
            pts = "  ".join(
                f"c{p['concurrency']}:{p['rps']:.0f}/s p99 {p['p99_ms']:.1f}" for p in s["points"]
            )
            lines.append(f"{scenario:<14} {pts}")
    if report.get("scaling"):
        lines.append("\n== worker processes (REST) ==")
        for row in sorted(report["scaling"], key=lambda r: (r["db"], r["scenario"], r["workers"])):
            lines.append(
                f"{row['db']:<8} workers {row['workers']}  {row['scenario']:<14} {_fmt(row['rps']):>7}/s  "
                f"p99 {_fmt(row['p99_ms'], 1)} ms"
                + (f"  {row['completed_per_s']:,.0f} completed/s" if row.get("completed_per_s") else "")
            )
    if report.get("timers"):
        lines.append("\n== timer drain ==")
        for t in report["timers"]:
            capped = " (capped; total extrapolated)" if t.get("capped") else ""
            lines.append(
                f"{t['db']:<8} {t['timers']:>7,} timers, {t['processes']} process(es): {t['seconds']:.1f} s "
                f"({_fmt(t['per_second'])}/s){capped}"
            )
    if report.get("generator_ceiling"):
        lines.append("\n== load generators against a do-nothing Envoy (their own ceiling) ==")
        for r in report["generator_ceiling"]["results"]:
            lines.append(f"{r['tool']:<22} {_fmt(r['rps'])}/s p99 {r['p99_ms']:.1f} ms")
    if report.get("targets"):
        lines.append("\n== targets ==")
        for t in report["targets"]:
            state = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
            diff = f" ({t['difference_pct']:+.0f}%)" if t["difference_pct"] is not None else ""
            lines.append(f"{state:<7} {t['target']}: {_fmt(t['measured'], 2)} vs {t['limit']}{diff}")
    return "\n".join(lines)


def write(report: dict[str, Any], directory: Path = RESULTS_DIR) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    suffix = "-quick" if report.get("meta", {}).get("quick") else ""
    path = directory / f"{stamp}{suffix}.json"
    text = json.dumps(report, indent=2, default=str)
    path.write_text(text)
    (directory / "latest.json").write_text(text)
    return path


def _operations_markdown(db: str, run: dict[str, Any]) -> list[str]:
    out: list[str] = []
    operations = run.get("operations") or []
    if operations:
        out.append(
            f"\nOperations API over REST as an operator ({db}), each against a ping run right before it:\n"
        )
        out.append(
            "| scenario | instances in tenant | req/s | ping req/s | x ping | p50 ms | p99 ms | errors "
            "| largest / smallest tenant |"
        )
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for entry in operations:
            for n, x in enumerate(entry["sizes"]):
                flat = _fmt(entry["flat"], 2) if n == len(entry["sizes"]) - 1 else ""
                out.append(
                    f"| {entry['scenario']} | {x['instances']:,} | {_fmt(x['rps'])} | {_fmt(x['ping_rps'])} "
                    f"| {_fmt(x['ratio_to_ceiling'], 2)} | {_fmt(x['p50_ms'], 1)} | {_fmt(x['p99_ms'], 1)} "
                    f"| {x['errors']} | {flat} |"
                )
    if run.get("plans"):
        from bench import plans

        out.append(f"\nQuery plans ({db}, on the grown tenant at the end of the run):\n")
        out.append(plans.markdown(run["plans"]))
    return out


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def markdown(report: dict[str, Any]) -> str:
    """The results as Markdown tables (for docs/benchmarks.md)."""
    out: list[str] = []
    for db, run in report.get("runs", {}).items():
        out.append(f"\n#### {db}: {run['workers']} workers, {run['concurrency']} requests in flight\n")
        out.append(
            "| scenario | transport | generator | req/s | p50 ms | p99 ms | x ping | errors "
            "| worker CPU ms/call | Envoy CPU ms/call | PostgreSQL CPU ms/call | machine busy |"
        )
        out.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in run["scenarios"]:
            cpu = r["extra"].get("cpu_ms_per_call", {})
            rps = _fmt(r["rps"])
            if "completed_per_s" in r["extra"] and r["scenario"] in ("complete", "complete_tenants"):
                rps += f" ({_fmt(r['extra']['completed_per_s'])} completed/s)"
            out.append(
                f"| {r['scenario']} | {r['transport']} | {r['tool']} | {rps} | {_fmt(r['p50_ms'], 1)} "
                f"| {_fmt(r['p99_ms'], 1)} | {_fmt(r.get('ratio_to_ceiling'), 2)} | {r['errors']} "
                f"| {cpu.get('workers', 0):.2f} | {cpu.get('envoy', 0):.2f} | {cpu.get('postgres', 0):.2f} "
                f"| {_pct(r['extra'].get('machine_busy'))} |"
            )
        phases = run.get("memory_by_phase") or []
        if phases:
            names = [k for k in phases[0]["peak_mb"]]
            out.append(f"\nMemory ({db}), peak RSS (VmHWM) / current RSS in MB after each phase:\n")
            out.append("| after | " + " | ".join(names) + " |")
            out.append("|---|" + "---:|" * len(names))
            for p in phases:
                cells = " | ".join(f"{p['peak_mb'].get(n, 0)} / {p['rss_mb'].get(n, 0)}" for n in names)
                out.append(f"| {p['after']} | {cells} |")
        if run.get("instances"):
            i = run["instances"]
            walked = (
                f"; the big tenant's {i['big_tenant_walked_rest']:,} instances were read page by page"
                " over REST and over gRPC"
                if i.get("big_tenant_walked_rest") is not None
                else ""
            )
            out.append(
                f"\nInstances in the database at the end: {i['in_database']:,} ({i['seeded']:,} seeded, "
                f"{i['started_through_the_api']:,} started through the API){walked}."
            )
        out += _operations_markdown(db, run)
        growth = run.get("growth") or []
        if growth:
            out.append(f"\nTenant growth ({db}):\n")
            out.append("| instances in tenant | scenario | transport | req/s | p50 ms | p99 ms |")
            out.append("|---:|---|---|---:|---:|---:|")
            for g in growth:
                out.append(
                    f"| {g['instances']:,} | {g['scenario']} | {g['transport']} | {_fmt(g['rps'])} "
                    f"| {_fmt(g['p50_ms'], 1)} | {_fmt(g['p99_ms'], 1)} |"
                )
        for scenario, prof in (run.get("profiles") or {}).items():
            if not isinstance(prof, dict) or not prof.get("samples"):
                continue
            out.append(
                f"\nProfile of worker 0 during REST {scenario} ({db}; py-spy --gil, {prof['samples']:,} "
                f"samples at {_fmt(prof.get('rps_while_profiled'))} req/s). Share of the worker's "
                "Python time by the layer it is spent in (innermost non-helper frame):\n"
            )
            layers = prof.get("layers_exclusive_pct") or prof["layers_inclusive_pct"]
            out.append("| " + " | ".join(layers) + " |")
            out.append("|" + "---:|" * len(layers))
            out.append("| " + " | ".join(f"{v:.0f}%" for v in layers.values()) + " |")
            out.append(
                "\nHottest functions of Orchestra (inclusive): "
                + "; ".join(
                    f"`{name.split(' (')[0]}` {pct:.0f}%"
                    for name, pct in prof["orchestra_inclusive_top"][:10]
                )
            )
            out.append(
                "\nHottest functions overall (self): "
                + "; ".join(
                    f"`{name.split(' (')[0]}` ({name.split(' (')[1].rstrip(')')}) {pct:.0f}%"
                    for name, pct in prof["self_top"][:10]
                )
            )
    for db, sweep in report.get("sweep", {}).items():
        out.append(f"\n#### Load sweep, REST, {db} (wrk connections; req/s and p99 ms)\n")
        conc = [p["concurrency"] for p in next(iter(sweep.values()))["points"]]
        out.append("| scenario | " + " | ".join(f"c={c}" for c in conc) + " | peak | p99 at 80% of peak |")
        out.append("|---|" + "---:|" * (len(conc) + 2))
        for scenario, s in sweep.items():
            cells = " | ".join(f"{p['rps']:,.0f} / {p['p99_ms']:.1f}" for p in s["points"])
            at = s.get("at_80pct") or {}
            out.append(
                f"| {scenario} | {cells} | {s['peak_rps']:,.0f} | "
                f"{at.get('p99_ms', float('nan')):.1f} ms at c={at.get('concurrency')} |"
            )
    if report.get("scaling"):
        out.append("\n#### Worker processes (REST, req/s; p99 ms)\n")
        rows = report["scaling"]
        workers = sorted({r["workers"] for r in rows})
        out.append("| database | scenario | " + " | ".join(f"{w} worker(s)" for w in workers) + " |")
        out.append("|---|---|" + "---:|" * len(workers))
        keys = sorted({(r["db"], r["scenario"]) for r in rows})
        for db, scenario in keys:
            cells = []
            for w in workers:
                r = next(
                    (x for x in rows if x["db"] == db and x["scenario"] == scenario and x["workers"] == w),
                    None,
                )
                if r is None:
                    cells.append("-")
                    continue
                value = f"{r['rps']:,.0f}"
                if r.get("completed_per_s"):
                    value += f" ({r['completed_per_s']:,.0f} done/s)"
                cells.append(f"{value}; {r['p99_ms']:,.0f}")
            out.append(f"| {db} | {scenario} | " + " | ".join(cells) + " |")
    if report.get("timers"):
        out.append("\n#### Timer drain\n")
        out.append("| database | due timers | processes | time to drain | timers/s | note |")
        out.append("|---|---:|---:|---:|---:|---|")
        for t in report["timers"]:
            note = (
                f"stopped after {t['measured_seconds']:.0f} s with {t['fired']:,} fired; total extrapolated"
                if t.get("capped")
                else ""
            )
            out.append(
                f"| {t['db']} | {t['timers']:,} | {t['processes']} | {t['seconds']:,.1f} s "
                f"| {_fmt(t['per_second'])} | {note} |"
            )
    if report.get("generator_ceiling"):
        out.append("\n#### Load generators against a do-nothing Envoy\n")
        out.append("| generator | req/s | p50 ms | p99 ms |")
        out.append("|---|---:|---:|---:|")
        for r in report["generator_ceiling"]["results"]:
            out.append(f"| {r['tool']} | {_fmt(r['rps'])} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |")
    if report.get("targets"):
        out.append("\n#### Targets\n")
        out.append("| target | measured | target | result |")
        out.append("|---|---:|---:|---|")
        for t in report["targets"]:
            state = {True: "met", False: "**missed**", None: "n/a"}[t["met"]]
            diff = f" ({t['difference_pct']:+.0f}%)" if t["difference_pct"] is not None else ""
            out.append(f"| {t['target']} | {_fmt(t['measured'], 2)} | {t['limit']} | {state}{diff} |")
    return "\n".join(out) + "\n"
