"""The load generators, each in its own processes, and one result shape for all of them.

- REST: ``wrk`` (HTTP/1.1, keep-alive, one request in flight per connection) with the Lua
  scripts in ``bench/lua`` (auth header, bodies, ids from files, the start-get-signal chain).
- gRPC, fixed request: ``h2load`` (h2c) with the 5-byte length-prefixed message as the data
  file, one h2load per worker port (each worker has its own port, as behind the edge).
- gRPC, a different request each time (signal, chain, variable writes): ``bench.grpcload``,
  a multi-process grpc.aio generator sending pre-serialized bytes.
"""

from __future__ import annotations

import json
import math
import struct
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

LUA_DIR = Path(__file__).parent / "lua"


@dataclass
class Result:
    scenario: str
    transport: str  # "rest" or "grpc"
    tool: str
    concurrency: int
    duration_s: float
    ok: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    # Scenario-specific: instances completed per second, page depth, ...
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, math.ceil(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[rank]


# --- wrk -------------------------------------------------------------------------------------


def wrk_script(name: str, directory: Path) -> Path:
    """common.lua followed by the named script, as one file (wrk loads a single script)."""
    path = directory / f"wrk-{name}.lua"
    if not path.exists():
        text = (LUA_DIR / "common.lua").read_text() + "\n" + (LUA_DIR / f"{name}.lua").read_text()
        path.write_text(text)
    return path


def run_wrk(
    scenario: str,
    base_url: str,
    script: Path,
    args: list[str],
    *,
    duration: float,
    connections: int,
    threads: int = 1,
    timeout_s: int = 10,
) -> Result:
    threads = max(1, min(threads, connections))
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={timeout_s}s",
        "-s",
        str(script),
        base_url,
        "--",
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=duration + 60)
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCHJSON ")), None)
    if line is None:
        raise RuntimeError(
            f"wrk gave no summary ({done.returncode}): {done.stdout[-800:]} {done.stderr[-800:]}"
        )
    data = json.loads(line[len("BENCHJSON ") :])
    seconds = data["duration_us"] / 1e6
    socket_errors = data["connect"] + data["read"] + data["write"] + data["timeout"]
    errors = data["status"] + socket_errors + data["bad"]
    ok = max(0, data["requests"] - data["status"] - data["bad"])
    extra: dict[str, Any] = {"p90_ms": data["p90_us"] / 1000, "max_ms": data["max_us"] / 1000}
    if data["completed"]:
        extra["completed"] = data["completed"]
        extra["completed_per_s"] = round(data["completed"] / seconds, 1)
    return Result(
        scenario=scenario,
        transport="rest",
        tool=f"wrk -t{threads} -c{connections}",
        concurrency=connections,
        duration_s=round(seconds, 2),
        ok=ok,
        errors=errors,
        rps=round(data["requests"] / seconds, 1),
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        extra=extra,
    )


# --- h2load (gRPC) ---------------------------------------------------------------------------


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: uncompressed flag, 4-byte big-endian length, bytes."""
    return struct.pack(">BI", 0, len(message)) + message


def run_h2load_grpc(
    scenario: str,
    targets: list[str],
    method: str,
    message: bytes,
    token: str | None,
    *,
    duration: float,
    concurrency: int,
    workdir: Path,
) -> Result:
    """One h2load per target in parallel; `concurrency` streams in flight in total."""
    data_file = workdir / f"h2-{scenario}.bin"
    data_file.write_bytes(grpc_frame(message))
    per_target = max(1, concurrency // len(targets))
    clients = max(1, min(4, per_target))
    streams = max(1, per_target // clients)
    procs = []
    logs = []
    for i, target in enumerate(targets):
        log = workdir / f"h2-{scenario}-{i}.log"
        log.unlink(missing_ok=True)
        logs.append(log)
        command = [
            "h2load",
            f"http://{target}{method}",
            "-c",
            str(clients),
            "-m",
            str(streams),
            "-t",
            "1",
            "-D",
            str(max(1, round(duration))),
            "-d",
            str(data_file),
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "--log-file",
            str(log),
        ]
        if token:
            command += ["-H", f"authorization: Bearer {token}"]
        procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=duration + 60) for p in procs]
    latencies: list[float] = []
    ok = errors = 0
    first = math.inf
    last = 0.0
    for log in logs:
        for row in log.read_text().splitlines():
            parts = row.split("\t")
            if len(parts) < 3:
                continue
            start_us, status, elapsed_us = float(parts[0]), int(parts[1]), float(parts[2])
            first = min(first, start_us)
            last = max(last, start_us + elapsed_us)
            if status == 200:
                ok += 1
                latencies.append(elapsed_us / 1000)
            else:
                errors += 1
    if not latencies:
        raise RuntimeError(f"h2load made no successful request: {outputs}")
    for out, _err in outputs:
        for line in out.splitlines():
            if line.startswith("requests:"):
                # "requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout"
                fields = line.replace(",", "").split()
                errors += int(fields[fields.index("errored") - 1]) + int(fields[fields.index("timeout") - 1])
    latencies.sort()
    seconds = (last - first) / 1e6
    return Result(
        scenario=scenario,
        transport="grpc",
        tool=f"h2load x{len(targets)} -c{clients} -m{streams}",
        concurrency=clients * streams * len(targets),
        duration_s=round(seconds, 2),
        ok=ok,
        errors=errors,
        rps=round(ok / seconds, 1),
        p50_ms=round(percentile(latencies, 50), 3),
        p99_ms=round(percentile(latencies, 99), 3),
        extra={"p90_ms": round(percentile(latencies, 90), 3), "max_ms": round(latencies[-1], 3)},
    )
