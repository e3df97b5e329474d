"""`orchestra up` as a supervisor: a killed edge comes back, a child that cannot be kept up ends it
with a non-zero status, and SIGTERM lets the requests in flight finish."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from orchestra_server.cli import main

ORCHESTRA = Path(sys.executable).parent / "orchestra"
# How long a killed edge may take to answer again (measured: about 1.5 s on 2 cores).
EDGE_BACK_WITHIN_SECONDS = 10.0


ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Up:
    process: subprocess.Popen[str]
    data_dir: Path
    http_port: int
    output: list[str]

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def children(self) -> dict[int, str]:
        """This process's children: pid -> command name."""
        found = {}
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            for pid in (task / "children").read_text().split():
                try:
                    found[int(pid)] = Path(f"/proc/{pid}/comm").read_text().strip()
                except OSError:
                    continue
        return found

    def edge_pid(self) -> int:
        edges = [pid for pid, name in self.children().items() if name.startswith("envoy")]
        assert len(edges) == 1, self.children()
        return edges[0]

    def cli(self, *args: str) -> str:
        return subprocess.run(
            [str(ORCHESTRA), *args, "--data-dir", str(self.data_dir)],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
            env=_environment(),
        ).stdout


def _environment() -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRA_")},
        "ORCHESTRA_LOG_FORMAT": "text",
    }


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    data_dir = tmp_path / "data"
    http_port = _free_port()
    command = [str(ORCHESTRA), "up", "--data-dir", str(data_dir), "--workers", "1"]
    command += ["--http-port", str(http_port), "--grpc-port", str(_free_port()), "--grace-period", "10"]
    # Fewer call threads than the readers the graceful-stop test keeps in flight: those waiting in
    # line for a thread must be answered too.
    command += ["--call-threads", "2"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_environment()
    )
    running = Up(process, data_dir, http_port, [])
    assert process.stdout is not None
    stream = process.stdout

    def read() -> None:
        for line in stream:
            running.output.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    while not any("Press Ctrl-C" in line for line in running.output):
        assert process.poll() is None, "".join(running.output)
        assert time.monotonic() < deadline, "".join(running.output)
        time.sleep(0.05)
    try:
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(10)
        stream.close()
        for pid in _orphans(data_dir):
            os.kill(pid, signal.SIGKILL)


def _orphans(data_dir: Path) -> list[int]:
    """Processes still running on this data directory (none should be)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(data_dir) in command:
            found.append(int(entry.name))
    return found


def _answers(url: str) -> bool:
    try:
        httpx.get(url + "/.well-known/jwks.json", timeout=1.0)
    except httpx.TransportError:
        return False
    return True


@pytest.mark.timeout(120)
def test_a_killed_edge_is_restarted_and_the_restart_is_logged(up: Up) -> None:
    assert _answers(up.rest_url)
    for kills in (1, 2):
        killed = up.edge_pid()
        os.kill(killed, signal.SIGKILL)
        started = time.monotonic()
        while not _answers(up.rest_url):
            assert time.monotonic() - started < EDGE_BACK_WITHIN_SECONDS, "".join(up.output)
            time.sleep(0.05)
        print(f"edge answered again {time.monotonic() - started:.2f} s after kill -9")
        assert up.edge_pid() != killed
        # The edge answers a moment before its supervisor has seen it ready; a kill in between
        # would count as a failed start, not as a death of a running edge.
        while sum("edge restarted" in line for line in up.output) < kills:
            assert time.monotonic() - started < EDGE_BACK_WITHIN_SECONDS, "".join(up.output)
            time.sleep(0.05)
    assert up.process.poll() is None
    restarts = [line for line in up.output if "edge exited" in line and "restart" in line]
    assert len(restarts) == 2, "".join(up.output)


@pytest.mark.timeout(120)
def test_up_exits_non_zero_when_the_edge_cannot_be_kept_up(up: Up) -> None:
    # After the first start another listener takes the REST port: every restart fails.
    squatter = socket.socket()
    try:
        os.kill(up.edge_pid(), signal.SIGKILL)
        deadline = time.monotonic() + 5
        while True:
            try:
                squatter.bind(("127.0.0.1", up.http_port))
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.01)
        squatter.listen()
        started = time.monotonic()
        status = up.process.wait(90)
        took = time.monotonic() - started
    finally:
        squatter.close()
    output = "".join(up.output)
    print(f"orchestra up exited with {status} {took:.1f} s after the edge was killed:", *up.output[-4:])
    assert status != 0, output
    assert "error: edge" in output, output
    assert took < 60, f"gave up after {took:.1f} s"
    assert not _orphans(up.data_dir), "a child outlived `orchestra up`"


@pytest.mark.timeout(120)
def test_sigterm_lets_the_requests_in_flight_through_the_edge_finish(up: Up) -> None:
    up.cli("definition", "deploy", str(ROOT / "examples" / "three_step.yaml"))
    created = json.loads(up.cli("consumer", "create", "--tenant", "default", "--json"))
    with httpx.Client(base_url=up.rest_url, timeout=30) as http:
        form = {"grant_type": "client_credentials", **{k: created[k] for k in ("client_id", "client_secret")}}
        token = http.post("/oauth/token", data=form).json()["access_token"]
        headers = {"authorization": f"Bearer {token}"}
        # A long list of small numbers is the costliest value to answer (each is a protobuf
        # Value, then JSON at the edge): reading it back keeps the one worker busy for a while,
        # so the readers are still in flight when SIGTERM arrives.
        numbers = [0] * 120_000
        body = {"variables": {"numbers": numbers}}
        started = http.post("/orchestra-api/process/three_step/start", json=body, headers=headers)
        assert started.status_code == 201, started.text
        path = f"/orchestra-api/instance/{started.json()['instance_id']}/variables"
    answers: list[int | str] = []
    answered_at: list[float] = []
    first_answer = threading.Event()
    readers = 8
    sent = threading.Barrier(readers + 1)

    def read() -> None:
        with httpx.Client(base_url=up.rest_url, timeout=30) as http:
            sent.wait()
            try:
                answer = http.get(path, headers=headers)
                answers.append(answer.status_code if answer.json() == {"numbers": numbers} else answer.text)
            except httpx.TransportError as exc:
                answers.append(f"{type(exc).__name__}: {exc}")
            answered_at.append(time.monotonic())
            first_answer.set()

    callers = [threading.Thread(target=read) for _ in range(readers)]
    for caller in callers:
        caller.start()
    sent.wait()
    # The two call threads answer two readers at a time: when the first answer is in, the others
    # are with the worker, most of them waiting to be taken up.
    assert first_answer.wait(30), "no answer in 30 s"
    signalled = time.monotonic()
    up.process.send_signal(signal.SIGTERM)
    for caller in callers:
        caller.join(60)
    assert up.process.wait(30) == 0, "".join(up.output)
    # Every one is answered in full by the service: never cut (a transport error) nor left to
    # the edge (503).
    assert answers == [200] * readers, (answers, "".join(up.output))
    assert sum(t > signalled for t in answered_at) >= 2, "too few requests were still in flight at SIGTERM"


@pytest.mark.parametrize("command", ["serve", "up"])
@pytest.mark.parametrize(
    ("flag", "bad_values"),
    [("--grace-period", ("-1", "3601", "soon")), ("--call-threads", ("0", "65", "many"))],
)
def test_a_serving_setting_out_of_range_is_refused_before_anything_starts(
    tmp_path: Path, command: str, flag: str, bad_values: tuple[str, ...]
) -> None:
    for bad in bad_values:
        result = CliRunner().invoke(
            main, [command, "--data-dir", str(tmp_path / "d"), flag, bad], env=_environment()
        )
        assert result.exit_code == 2, result.output
        assert flag in result.output
    assert not (tmp_path / "d").exists(), "a refused command touched the data directory"
