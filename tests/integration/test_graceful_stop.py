"""SIGTERM to a worker: calls in flight, and those still waiting to be taken up, are answered, it
stops once idle, and a hung call cannot hold the process past the grace period."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from orchestra.v1 import orchestra_service_pb2 as pb
from orchestra.v1 import orchestra_service_pb2_grpc as pb_grpc

from orchestra_server.runtime import wait_healthy

# A worker built as `run_worker` builds it and served by the same `serve`, whose calls take as long
# as the test says: authentication (the first thing every call does) first waits HOLD seconds
# ("sleep"), or works that long without letting another thread of the process run ("spin").
WORKER = textwrap.dedent(
    """
    import sys, time
    from dataclasses import replace
    from pathlib import Path

    from orchestra_server.bootstrap import build_application
    from orchestra_server.identity.consumers import API_PERMISSIONS
    from orchestra_server.service.processes import Caller
    from orchestra_server.settings import Settings
    from orchestra_server.transport.server import ServerOptions, serve

    data_dir, port, hold, grace = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    how, threads = sys.argv[5], int(sys.argv[6])
    settings = Settings(data_dir=data_dir, grace_period=grace)
    app = build_application(settings)
    # One summation over a range runs in one piece, holding the interpreter lock throughout.
    spin_steps = 10_000_000
    started = time.perf_counter()
    sum(range(spin_steps))
    steps_per_second = spin_steps / (time.perf_counter() - started)

    def slow_authenticate(authorization, tenant_hint, now):
        if how == "spin":
            sum(range(int(hold * steps_per_second)))
        else:
            time.sleep(hold)
        return Caller("default", "slow-caller", API_PERMISSIONS)

    deps = replace(app.server_dependencies(), authenticate=slow_authenticate)
    try:
        options = ServerOptions(max_workers=threads, grace_seconds=settings.grace_period)
        serve(f"127.0.0.1:{port}", deps, options)
    finally:
        app.close()
    print("worker exited", flush=True)
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_worker(
    tmp_path: Path, hold: float, grace: float, how: str = "sleep", threads: int = 16
) -> tuple[subprocess.Popen[str], str]:
    port = _free_port()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    arguments = [str(tmp_path / "data"), str(port), str(hold), str(grace), how, str(threads)]
    process = subprocess.Popen(
        [sys.executable, str(script), *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    target = f"127.0.0.1:{port}"
    try:
        wait_healthy(target, 60)
    except BaseException:
        process.kill()
        process.communicate()
        raise
    return process, target


def _call_all(target: str, count: int) -> tuple[list[str], threading.Thread]:
    """Sends `count` calls at once from a thread; their outcomes fill the list as they come."""
    outcomes: list[str] = []
    channel = grpc.insecure_channel(target)
    stub = pb_grpc.OrchestraServiceStub(channel)

    def run() -> None:
        futures = [
            stub.ListInstances.future(pb.ListInstancesRequest(), metadata=[("authorization", "Bearer x")])
            for _ in range(count)
        ]
        for future in futures:
            try:
                future.result(timeout=60)
                outcomes.append("OK")
            except grpc.RpcError as exc:
                outcomes.append(exc.code().name)
        channel.close()

    thread = threading.Thread(target=run)
    thread.start()
    return outcomes, thread


@pytest.mark.timeout(90)
def test_calls_in_flight_at_sigterm_are_answered_and_so_are_those_that_come_while_they_finish(
    tmp_path: Path,
) -> None:
    process, target = _start_worker(tmp_path, hold=2.0, grace=10.0)
    try:
        outcomes, callers = _call_all(target, 8)
        time.sleep(0.5)  # every call is now inside the server, waiting in authentication
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        # Health checkers (the edge) are told to route elsewhere; a call that comes anyway while
        # the others finish is served, not cut.
        with grpc.insecure_channel(target) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
        late, late_caller = _call_all(target, 1)
        late_caller.join(30)
        callers.join(30)
        output, _ = process.communicate(timeout=30)
        # Once the worker has stopped, nothing more is taken.
        after, after_caller = _call_all(target, 1)
        after_caller.join(30)
    finally:
        process.kill()
    assert outcomes == ["OK"] * 8, output
    assert late == ["OK"], output
    assert after == ["UNAVAILABLE"], output
    assert process.returncode == 0, output
    assert "worker exited" in output


@pytest.mark.timeout(90)
def test_calls_still_waiting_to_be_taken_up_at_sigterm_are_answered(tmp_path: Path) -> None:
    # Two call threads that keep the interpreter to themselves: the server takes up the other
    # calls one by one, between them, so at SIGTERM most have arrived without being taken up yet.
    process, target = _start_worker(tmp_path, hold=0.25, grace=10.0, how="spin", threads=2)
    try:
        outcomes, callers = _call_all(target, 16)
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        callers.join(60)
        output, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert outcomes == ["OK"] * 16, (outcomes, output)
    assert process.returncode == 0, output


@pytest.mark.timeout(90)
def test_calls_that_never_stop_coming_hold_the_drain_for_half_the_grace_period_at_most(
    tmp_path: Path,
) -> None:
    grace = 4.0
    process, target = _start_worker(tmp_path, hold=0.05, grace=grace)
    answered_at: list[float] = []
    outcomes: list[str] = []
    stop_calling = threading.Event()

    def keep_calling() -> None:
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.OrchestraServiceStub(channel)
            while not stop_calling.is_set():
                try:
                    stub.ListInstances(
                        pb.ListInstancesRequest(), metadata=[("authorization", "Bearer x")], timeout=10
                    )
                except grpc.RpcError as exc:
                    outcomes.append(exc.code().name)
                    time.sleep(0.05)
                else:
                    outcomes.append("OK")
                    answered_at.append(time.monotonic())

    callers = [threading.Thread(target=keep_calling) for _ in range(4)]
    try:
        for caller in callers:
            caller.start()
        time.sleep(1.0)
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        output, _ = process.communicate(timeout=30)
        exited = time.monotonic() - signalled
    finally:
        stop_calling.set()
        for caller in callers:
            caller.join(30)
        process.kill()
    # Never idle, the worker drained for half the grace period, answering all the while, then
    # stopped and let the calls it held finish: it exited well within the grace period.
    served_after = [t - signalled for t in answered_at if t > signalled]
    assert served_after, output
    assert grace / 2 - 0.5 <= max(served_after) <= grace, (max(served_after), output)
    assert exited < grace, (exited, output)
    assert process.returncode == 0, output
    # A call reaching the worker in the very instant it stops can still be cut: the drain narrows
    # that moment to nothing only when calls stop coming (the edge routes elsewhere by then).
    assert set(outcomes) <= {"OK", "UNAVAILABLE", "CANCELLED"}, outcomes


@pytest.mark.timeout(90)
def test_a_hung_call_does_not_hold_the_worker_past_the_grace_period(tmp_path: Path) -> None:
    process, target = _start_worker(tmp_path, hold=3600.0, grace=1.0)
    try:
        outcomes, callers = _call_all(target, 2)
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        try:
            output, _ = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail("the worker was still running 20 s after SIGTERM with a 1 s grace period")
        took = time.monotonic() - signalled
        callers.join(30)
    finally:
        process.kill()
    assert took < 1.0 + 3.0, f"exited {took:.1f} s after SIGTERM"
    assert "worker exited" in output
    assert "exiting without them" in output
    assert process.returncode != 0, "a worker that cut calls says so in its status"
    assert outcomes == ["CANCELLED"] * 2 or set(outcomes) <= {"CANCELLED", "UNAVAILABLE"}, outcomes
