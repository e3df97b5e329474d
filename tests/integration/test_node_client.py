"""The Node.js client (clients/node) against the real service: `orchestra serve` on a free loopback port.

Both APIs are driven: the consumer's (client.test.js) and the operations API
(operations.test.js, as a consumer whose role may operate and deploy).

The data directory is prepared with the real CLI (deploy `three_step`, create a consumer), the
service is started as a subprocess and awaited through gRPC health, and `node --test` runs the
client's own test suite against it. The npm dependencies are installed on demand with `npm ci`,
so a fresh clone needs nothing beyond Node.js and npm. Without them the test is skipped on a
developer machine and fails in CI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import IN_CI, ROOT

NODE_DIR = ROOT / "clients" / "node"
NODE_TESTS = NODE_DIR / "test"
LOCKFILE = NODE_DIR / "package-lock.json"
NODE_MODULES = NODE_DIR / "node_modules"
# Touched after a successful `npm ci`; older than the lockfile means the install is stale.
INSTALL_STAMP = NODE_MODULES / ".orchestra-npm-ci"
ORCHESTRA = Path(sys.executable).parent / "orchestra"

NPM_TIMEOUT = 300.0
CLI_TIMEOUT = 60.0
START_TIMEOUT = 30.0
NODE_TIMEOUT = 120.0
STOP_TIMEOUT = 20.0
OPERATOR_PERMISSIONS = ("access orchestra api", "operate orchestra", "deploy orchestra definitions")

pytestmark = pytest.mark.timeout(NPM_TIMEOUT + 2 * CLI_TIMEOUT + START_TIMEOUT + NODE_TIMEOUT + 60)


def _tools() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node and npm:
        return node, npm
    missing = " and ".join(name for name, path in (("node", node), ("npm", npm)) if not path)
    if IN_CI:
        pytest.fail(f"{missing} not found on PATH: the Node.js client test is required in CI")
    pytest.skip(f"{missing} not found on PATH: install Node.js 20+ to test clients/node (CI runs it)")


def _installed() -> bool:
    return INSTALL_STAMP.is_file() and INSTALL_STAMP.stat().st_mtime >= LOCKFILE.stat().st_mtime


@pytest.fixture(scope="module")
def node() -> str:
    """The node executable, with clients/node's locked dependencies installed."""
    node, npm = _tools()
    if not _installed():
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(f"npm ci in {NODE_DIR} failed ({result.returncode}):\n{result.stderr[-4000:]}")
        INSTALL_STAMP.touch()
    return node


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRA_")}
    env["ORCHESTRA_LOG_LEVEL"] = "WARNING"
    env.update(extra)
    return env


def _cli(data_dir: Path, *args: str) -> str:
    result = subprocess.run(
        [str(ORCHESTRA), *args, "--data-dir", str(data_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
        env=_env(),
    )
    if result.returncode != 0:
        pytest.fail(f"orchestra {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result.stdout


def _log_tail(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-4000:]
    except OSError:
        return ""


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)


def _wait_serving(process: subprocess.Popen[bytes], address: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                code = process.returncode
                pytest.fail(f"orchestra serve exited during start-up ({code}):\n{_log_tail(log)}")
            try:
                answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    pytest.fail(f"orchestra serve was not SERVING within {START_TIMEOUT:.0f} s:\n{_log_tail(log)}")


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], dict[str, str]]]:
    """A running `orchestra serve` with three_step deployed: its address, a consumer's credentials and
    an operator's (a consumer of the same tenant that may also operate and deploy)."""
    data_dir = tmp_path / "data"
    _cli(data_dir, "definition", "deploy", "examples/three_step.yaml")
    consumer = json.loads(_cli(data_dir, "consumer", "create", "--tenant", "default", "--json"))
    _cli(data_dir, "role", "create", "operator", *(f"--permission={p}" for p in OPERATOR_PERMISSIONS))
    operator = json.loads(
        _cli(data_dir, "consumer", "create", "--tenant", "default", "--role", "operator", "--json")
    )
    port = _free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(ORCHESTRA),
                "serve",
                "--grpc-host",
                "127.0.0.1",
                "--grpc-port",
                str(port),
                "--workers",
                "1",
                "--data-dir",
                str(data_dir),
            ],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_env(),
        )
    try:
        address = f"127.0.0.1:{port}"
        _wait_serving(process, address, log)
        yield address, consumer, operator
    finally:
        _stop(process)


def _tap_count(output: str, name: str) -> int:
    match = re.search(rf"^# {name} (\d+)$", output, re.MULTILINE)
    assert match, f"node --test printed no '# {name}' summary:\n{output[-4000:]}"
    return int(match.group(1))


def test_node_client_drives_the_service(
    node: str, service: tuple[str, dict[str, str], dict[str, str]]
) -> None:
    address, consumer, operator = service
    # The files are named explicitly: how a bare directory argument is read differs between Node versions.
    files = sorted(str(p.relative_to(ROOT)) for p in NODE_TESTS.glob("*.test.js"))
    assert files, f"no *.test.js files in {NODE_TESTS}"
    result = subprocess.run(
        [node, "--test", "--test-reporter=tap", *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT,
        check=False,
        env=_env(
            ORCHESTRA_GRPC_TARGET=address,
            ORCHESTRA_CLIENT_ID=consumer["client_id"],
            ORCHESTRA_CLIENT_SECRET=consumer["client_secret"],
            ORCHESTRA_OPERATOR_CLIENT_ID=operator["client_id"],
            ORCHESTRA_OPERATOR_CLIENT_SECRET=operator["client_secret"],
        ),
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"node --test failed ({result.returncode}):\n{output[-8000:]}"
    assert _tap_count(output, "pass") > 0, output[-4000:]
    for name in ("fail", "cancelled", "skipped", "todo"):
        assert _tap_count(output, name) == 0, f"{name} tests reported:\n{output[-4000:]}"
