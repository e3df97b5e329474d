"""The REST contract suite: the real service (`orchestra serve`) behind a real Envoy edge.

Session fixtures create a data directory with two tenants and the example
definitions, start the service and the edge on free loopback ports, and tear
both down. `consumer_for(tenant)` creates a consumer (with the use case the
`orchestra consumer create` command runs) and fetches its token through the edge.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from orchestra_server.bootstrap import Administration, administration
from orchestra_server.edge import EdgeSettings, EnvoyProcess, TenantRateLimit, Upstream
from orchestra_server.settings import Settings
from tests.contract.helpers import Consumer

REPO_ROOT = Path(__file__).resolve().parents[2]
# Overridable so the suite can run against other definitions with the same shapes.
EXAMPLES = Path(os.environ.get("ORCHESTRA_CONTRACT_EXAMPLES", str(REPO_ROOT / "examples")))
EXAMPLE_FILES = ("three_step.yaml", "parallel_review.yaml", "expense_approval.yaml")
ORCHESTRA = Path(sys.executable).parent / "orchestra"
TENANT_A = "acme"
TENANT_B = "globex"
# A definition only TENANT_B may start.
B_ONLY_DEFINITION = "globex_private"
# Short, so that a key rotation test need not wait long; the service's key
# publish lead must exceed it (it does by default).
JWKS_CACHE_SECONDS = 2
START_TIMEOUT = 30.0
CLI_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Cli:
    """The `orchestra` command on one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    def __call__(self, *args: str) -> str:
        result = subprocess.run(
            [str(ORCHESTRA), *args, "--data-dir", str(self.data_dir)],
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            check=False,
            env=_service_env(),
        )
        if result.returncode != 0:
            pytest.fail(f"orchestra {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result.stdout

    def help_of(self, *args: str) -> str:
        return _help_of(*args)


@functools.cache
def _help_of(*args: str) -> str:
    # The same for every data directory; asked before each service start, answered once.
    result = subprocess.run(
        [str(ORCHESTRA), *args, "--help"],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    return result.stdout


def _service_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRA_")}
    env["ORCHESTRA_LOG_LEVEL"] = "WARNING"
    env.update(extra)
    return env


class Service:
    """One `orchestra serve` process (a single worker, to keep the suite light)."""

    def __init__(self, cli: Cli, log_path: Path, *extra_args: str) -> None:
        if "--workers" in cli.help_of("serve"):
            extra_args = ("--workers", "1", *extra_args)
        self.port = free_port()
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(ORCHESTRA),
                    "serve",
                    "--grpc-host",
                    "127.0.0.1",
                    "--grpc-port",
                    str(self.port),
                    "--data-dir",
                    str(cli.data_dir),
                    *extra_args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_service_env(),
            )
        try:
            self._wait_serving()
        except BaseException:
            self.stop()
            raise

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _wait_serving(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    pytest.fail(f"orchestra serve exited during start-up:\n{self.log_tail()}")
                try:
                    answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        pytest.fail(f"orchestra serve was not SERVING within {START_TIMEOUT:.0f} s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@contextmanager
def administration_of(data_dir: Path, db_url: str | None) -> Iterator[Administration]:
    """What an `orchestra` command runs on the stack's data and database, in this process.

    A stack's set-up makes a dozen changes before its service starts; as commands, each would
    be a process start-up of its own. The commands themselves are tested in
    tests/integration/test_cli.py and test_cli_operations.py; the suite still calls them
    where a test is about what an operator does with them.
    """
    with administration(Settings(data_dir=data_dir, db_url=db_url), writes=True) as admin:
        yield admin


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("orchestra-data")


@pytest.fixture(scope="session")
def cli(data_dir: Path) -> Cli:
    return Cli(data_dir)


@pytest.fixture(scope="session")
def deployed(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> None:
    missing = [name for name in EXAMPLE_FILES if not (EXAMPLES / name).is_file()]
    if missing:
        pytest.fail(f"the contract suite deploys examples/{', examples/'.join(missing)}, which do not exist")
    private = yaml.safe_load((EXAMPLES / "three_step.yaml").read_text(encoding="utf-8"))
    private["id"] = B_ONLY_DEFINITION
    path = tmp_path_factory.mktemp("definitions") / f"{B_ONLY_DEFINITION}.yaml"
    path.write_text(yaml.safe_dump(private), encoding="utf-8")
    with administration_of(cli.data_dir, None) as admin:
        admin.directory.create_tenant(TENANT_A)
        admin.directory.create_tenant(TENANT_B)
        admin.definitions.deploy([EXAMPLES / name for name in EXAMPLE_FILES])
        admin.definitions.deploy([path], tenant=TENANT_B)


@pytest.fixture(scope="session")
def service(cli: Cli, deployed: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    running = Service(cli, tmp_path_factory.mktemp("service") / "service.log")
    yield running
    running.stop()


def start_edge(
    run_dir: Path,
    upstreams: tuple[Upstream, ...],
    tenant_limits: dict[str, TenantRateLimit] | None = None,
    **settings: Any,
) -> EnvoyProcess:
    edge = EnvoyProcess(
        EdgeSettings(
            rest_port=free_port(), upstreams=upstreams, jwks_cache_seconds=JWKS_CACHE_SECONDS, **settings
        ),
        run_dir,
        concurrency=2,
        tenant_limits=tenant_limits,
    )
    edge.start(timeout=START_TIMEOUT)
    return edge


@pytest.fixture(scope="session")
def edge(service: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnvoyProcess]:
    # The default per-tenant budget is far above what the suite sends.
    running = start_edge(
        tmp_path_factory.mktemp("edge"),
        (Upstream("127.0.0.1", service.port),),
        tenant_rate_limit=TenantRateLimit(),
    )
    yield running
    running.stop()


@pytest.fixture(scope="session")
def http(edge: EnvoyProcess) -> Iterator[httpx.Client]:
    # Past the edge's own route timeout (30 s), so that the edge decides when a call is too slow:
    # a megabyte of small numbers takes seconds to transcode, more when both workers are busy.
    with httpx.Client(base_url=edge.rest_url, timeout=60) as client:
        yield client


def fetch_token(http: httpx.Client, client_id: str, client_secret: str) -> str:
    response = http.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": client_secret},
    )
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    assert isinstance(token, str)
    return token


@pytest.fixture(scope="session")
def consumer_for(cli: Cli, http: httpx.Client) -> Callable[[str], Consumer]:
    def create(tenant: str) -> Consumer:
        with administration_of(cli.data_dir, None) as admin:
            created = admin.directory.create_consumer(tenant)
        assert created.tenant == tenant
        token = fetch_token(http, created.client_id, created.client_secret)
        return Consumer(created.client_id, created.client_secret, tenant, token)

    return create


@pytest.fixture(scope="session")
def acme(consumer_for: Callable[[str], Consumer]) -> Consumer:
    return consumer_for(TENANT_A)


@pytest.fixture(scope="session")
def globex(consumer_for: Callable[[str], Consumer]) -> Consumer:
    return consumer_for(TENANT_B)


# The operator role of the operations API: reads, interventions and deploys, not the consumer API.
OPERATOR_ROLE = "operator"
OPERATOR_PERMISSIONS = ("operate orchestra", "deploy orchestra definitions")


@pytest.fixture(scope="session")
def operator_for(cli: Cli, http: httpx.Client, deployed: None) -> Callable[[str], Consumer]:
    """Creates a consumer whose only role is `operator` and fetches its token."""
    with administration_of(cli.data_dir, None) as admin:
        admin.directory.create_role(OPERATOR_ROLE, list(OPERATOR_PERMISSIONS))

    def create(tenant: str) -> Consumer:
        with administration_of(cli.data_dir, None) as admin:
            created = admin.directory.create_consumer(tenant, [OPERATOR_ROLE])
        token = fetch_token(http, created.client_id, created.client_secret)
        return Consumer(created.client_id, created.client_secret, tenant, token)

    return create


@pytest.fixture(scope="session")
def acme_operator(operator_for: Callable[[str], Consumer]) -> Consumer:
    return operator_for(TENANT_A)


@pytest.fixture(scope="session")
def globex_operator(operator_for: Callable[[str], Consumer]) -> Consumer:
    return operator_for(TENANT_B)
