"""A multi-process grpc.aio load generator for gRPC calls whose request changes every time.

Each process opens one channel per worker port and runs `tasks` callers in a closed loop
until a shared deadline; requests are serialized once up front where they can be. The
processes start together (a common start time) and report their latencies to the parent.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from typing import Any

from bench.load import Result, percentile

SERVICE = "/orchestra.v1.OrchestraService/"
PING = "/orchestra.v1.DiagnosticsService/Ping"


def _identity(x: bytes) -> bytes:
    return x


async def _run(job: dict[str, Any]) -> dict[str, Any]:
    import grpc
    from google.protobuf import struct_pb2
    from orchestra.v1 import orchestra_service_pb2 as pb

    kind: str = job["kind"]
    items: list[str] = job["items"]
    metadata = (("authorization", f"Bearer {job['token']}"),)
    channels = [grpc.aio.insecure_channel(t) for t in job["targets"]]

    def method(channel: Any, name: str) -> Any:
        return channel.unary_unary(name, request_serializer=_identity, response_deserializer=_identity)

    calls = [
        {
            name: method(ch, SERVICE + name)
            for name in ("StartProcess", "GetInstance", "SignalToken", "SetVariable")
        }
        | {"Ping": method(ch, job["ping_path"])}
        for ch in channels
    ]
    start_body = pb.StartProcessRequest(
        definition_id="three_step", variables={"amount": struct_pb2.Value(number_value=1)}
    ).SerializeToString()
    ping_body = b""
    latencies: list[float] = []
    state = {"ok": 0, "errors": 0, "completed": 0, "next": 0}

    def next_item() -> str | None:
        if not items:
            return None
        i = state["next"]
        state["next"] += 1
        if i >= len(items):
            if kind == "signal":
                return None
            i %= len(items)
        return items[i]

    async def timed(call: Any, body: bytes) -> bytes | None:
        started = time.perf_counter()
        try:
            answer = await call(body, metadata=metadata, timeout=10)
        except grpc.aio.AioRpcError:
            state["errors"] += 1
            latencies.append(time.perf_counter() - started)
            return None
        latencies.append(time.perf_counter() - started)
        state["ok"] += 1
        return bytes(answer or b"")

    async def caller(n: int) -> None:
        c = calls[n % len(calls)]
        counter = 0
        while time.time() < job["deadline"]:
            if kind == "ping":
                await timed(c["Ping"], ping_body)
            elif kind == "signal":
                item = next_item()
                if item is None:
                    return
                await timed(c["SignalToken"], pb.SignalTokenRequest(token_id=item).SerializeToString())
            elif kind == "setvar":
                item = next_item()
                counter += 1
                body = pb.SetVariableRequest(
                    instance_id=item, name="counter", value=struct_pb2.Value(number_value=counter)
                ).SerializeToString()
                await timed(c["SetVariable"], body)
            elif kind == "complete":
                started = await timed(c["StartProcess"], start_body)
                if started is None:
                    continue
                instance_id = pb.StartProcessResponse.FromString(started).instance_id
                got = await timed(
                    c["GetInstance"], pb.GetInstanceRequest(instance_id=instance_id).SerializeToString()
                )
                if got is None:
                    continue
                tokens = pb.GetInstanceResponse.FromString(got).instance.tokens
                if not tokens:
                    state["errors"] += 1
                    continue
                if (
                    await timed(
                        c["SignalToken"], pb.SignalTokenRequest(token_id=tokens[0].id).SerializeToString()
                    )
                    is not None
                ):
                    state["completed"] += 1
            else:
                raise ValueError(kind)

    # Connect before the clock starts.
    for ch in channels:
        await ch.channel_ready()
    delay = job["start_at"] - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    began = time.time()
    await asyncio.gather(*(caller(n) for n in range(job["tasks"])))
    ended = time.time()
    for ch in channels:
        await ch.close()
    return {
        "ok": state["ok"],
        "errors": state["errors"],
        "completed": state["completed"],
        "latencies": latencies,
        "began": began,
        "ended": ended,
    }


def _process_main(job: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(_run(job))


def run_grpc_python(
    scenario: str,
    kind: str,
    targets: list[str],
    token: str,
    *,
    duration: float,
    processes: int = 2,
    tasks: int = 8,
    items: list[str] | None = None,
    ping_path: str = PING,
) -> Result:
    """`processes` x `tasks` callers in flight. kinds: ping, signal (each item once), setvar, complete."""
    items = items or []
    start_at = time.time() + 3.0
    jobs = []
    for p in range(processes):
        share = items[p::processes] if kind in ("signal", "setvar") else []
        jobs.append(
            {
                "kind": kind,
                "items": share,
                "targets": targets[p % len(targets) :] + targets[: p % len(targets)],
                "token": token,
                "tasks": tasks,
                "start_at": start_at,
                "deadline": start_at + duration,
                "ping_path": ping_path,
            }
        )
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        answers = pool.map(_process_main, jobs)
    latencies = sorted(x * 1000 for a in answers for x in a["latencies"])
    ok = sum(a["ok"] for a in answers)
    errors = sum(a["errors"] for a in answers)
    completed = sum(a["completed"] for a in answers)
    seconds = max(a["ended"] for a in answers) - min(a["began"] for a in answers)
    extra: dict[str, Any] = {
        "p90_ms": round(percentile(latencies, 90), 3),
        "max_ms": round(latencies[-1], 3) if latencies else None,
    }
    if kind == "complete":
        extra["completed"] = completed
        extra["completed_per_s"] = round(completed / seconds, 1)
    return Result(
        scenario=scenario,
        transport="grpc",
        tool=f"grpc.aio x{processes}p x{tasks}",
        concurrency=processes * tasks,
        duration_s=round(seconds, 2),
        ok=ok,
        errors=errors,
        rps=round((ok + errors) / seconds, 1),
        p50_ms=round(percentile(latencies, 50), 3),
        p99_ms=round(percentile(latencies, 99), 3),
        extra=extra,
    )
