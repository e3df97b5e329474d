"""The stack under test: gRPC workers (the real ``WorkerPool``) behind the real Envoy edge.

It is wired as ``orchestra up`` wires it, with one difference: the edge's
per-tenant token bucket (and the token route's bucket per source address) is
set far above any rate reached here, so the filter
still runs on every request but never refuses one (the default, 200 requests
per second per tenant, would otherwise be what the benchmark measures).
Tenants, definitions and consumers are created with the real CLI.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from orchestra_server import runtime
from orchestra_server.bootstrap import open_storage
from orchestra_server.edge import EdgeSettings, EnvoyProcess, TenantRateLimit, Upstream
from orchestra_server.edge.config import REPO_ROOT, edge_dir
from orchestra_server.identity.consumers import OPERATE_PERMISSION
from orchestra_server.settings import Settings

PG_ADMIN_URL = os.environ.get("ORCHESTRA_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
# High enough never to refuse a request in a benchmark, low enough for Envoy's uint32 fields.
UNLIMITED = TenantRateLimit(requests_per_second=10_000_000, burst=10_000_000)
EXAMPLES = REPO_ROOT / "examples"
OPERATOR_ROLE = "bench_operator"


def operator_key(tenant: str) -> str:
    """The key of a tenant's operator consumer in ``Stack.consumers`` (and for ``Stack.token``)."""
    return f"{tenant}:operator"


@dataclass(frozen=True)
class Consumer:
    client_id: str
    client_secret: str
    tenant: str


class PostgresDatabase:
    """A throw-away database on the local server, dropped by ``drop()``."""

    def __init__(self, admin_url: str = PG_ADMIN_URL) -> None:
        import psycopg

        self._psycopg = psycopg
        self.admin_url = admin_url
        self.name = f"orchestra_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        parsed = urllib.parse.urlsplit(admin_url)
        self.url = urllib.parse.urlunsplit(parsed._replace(path=f"/{self.name}"))

    def drop(self) -> None:
        with self._psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    @staticmethod
    def available(admin_url: str = PG_ADMIN_URL) -> bool:
        try:
            import psycopg

            with psycopg.connect(admin_url, connect_timeout=3):
                return True
        except Exception:
            return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_range(count: int) -> int:
    """A first port such that it and the next count-1 are free (worker N listens on first + N)."""
    for _ in range(200):
        base = free_port()
        if base + count >= 65535:
            continue
        try:
            sockets = []
            for i in range(count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no free port range")


def orchestra_cli(settings: Settings, *args: str) -> str:
    """Runs the real `orchestra` command against the stack's storage; returns its output."""
    command = [sys.executable, "-m", "orchestra_server.cli", *args, "--data-dir", str(settings.data_dir)]
    if settings.db_url:
        command += ["--db", settings.db_url]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"orchestra {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def read_status(pid: int) -> dict[str, int]:
    """VmHWM (peak RSS) and VmRSS of a process, in KiB."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields) - idle) / ticks, sum(fields) / ticks


def postgres_pids() -> list[int]:
    """The local PostgreSQL server's processes (its CPU is part of every PostgreSQL request)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() in ("postgres", "postmaster"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@dataclass
class Stack:
    """One running stack: ``workers`` gRPC processes on ``db`` ('sqlite' or 'postgres'), one edge."""

    run_dir: Path
    db: str
    workers: int
    db_url: str | None = None
    consumers: dict[str, Consumer] = field(default_factory=dict)
    rest_port: int = 0
    grpc_base: int = 0
    _pool: runtime.WorkerPool | None = None
    _edge: EnvoyProcess | None = None
    _tokens: dict[str, str] = field(default_factory=dict)
    # Response headers of the last `http()` call (lower-case names).
    last_headers: dict[str, str] = field(default_factory=dict)

    @property
    def settings(self) -> Settings:
        return Settings.load(data_dir=self.run_dir / "data", db_url=self.db_url)

    def prepare(self, tenants: tuple[str, ...] = ("bench", "big"), operators: tuple[str, ...] = ()) -> None:
        """Migrates, deploys the examples (shared) and creates one consumer per tenant, with the CLI.

        Each tenant in `operators` also gets a consumer with the operator role (`operate
        orchestra`), under the key ``operator_key(tenant)``.
        """
        settings = self.settings
        open_storage(settings).dispose()
        orchestra_cli(
            settings,
            "definition",
            "deploy",
            str(EXAMPLES / "three_step.yaml"),
            str(EXAMPLES / "reminder.yaml"),
            str(EXAMPLES / "expense_approval.yaml"),
        )
        if operators:
            orchestra_cli(settings, "role", "create", OPERATOR_ROLE, "--permission", OPERATE_PERMISSION)
        for tenant in tenants:
            orchestra_cli(settings, "tenant", "create", tenant)
            created = json.loads(orchestra_cli(settings, "consumer", "create", "--tenant", tenant, "--json"))
            self.consumers[tenant] = Consumer(created["client_id"], created["client_secret"], tenant)
            if tenant in operators:
                created = json.loads(
                    orchestra_cli(
                        settings, "consumer", "create", "--tenant", tenant, "--role", OPERATOR_ROLE, "--json"
                    )
                )
                self.consumers[operator_key(tenant)] = Consumer(
                    created["client_id"], created["client_secret"], tenant
                )

    def start(self) -> None:
        settings = self.settings
        self.rest_port = free_port()
        self.grpc_base = free_port_range(self.workers)
        ports = [self.grpc_base + i for i in range(self.workers)]
        specs = runtime.worker_specs(settings, "127.0.0.1", ports, [None] * self.workers)
        self._pool = runtime.WorkerPool(settings, specs, log_dir=settings.data_dir / "logs")
        self._pool.start(timeout=60)
        self._edge = EnvoyProcess(
            EdgeSettings(
                rest_port=self.rest_port,
                upstreams=tuple(Upstream("127.0.0.1", s.port) for s in specs),
                issuer=settings.issuer,
                audience=settings.audience,
                tenant_rate_limit=UNLIMITED,
                # token_issue sends every request from one address.
                token_source_limit=UNLIMITED,
            ),
            settings.data_dir / "edge",
        )
        self._edge.start(timeout=30)
        self._wait_edge_ready()

    def _wait_edge_ready(self, timeout: float = 30.0) -> None:
        """Until a token works end to end: the edge has fetched the JWKS and sees healthy workers."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                token = self.token("bench", fresh=True)
                status, _ = self.http("GET", "/orchestra-api/instances?page_size=1", token)
                if status == 200:
                    return
                last = status
            except Exception as exc:  # not ready yet
                last = exc
            time.sleep(0.3)
        raise RuntimeError(f"edge not ready: {last}")

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_targets(self) -> list[str]:
        return [f"127.0.0.1:{self.grpc_base + i}" for i in range(self.workers)]

    def http(
        self,
        method: str,
        path: str,
        token: str | None = None,
        body: bytes | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, bytes]:
        # Always http://127.0.0.1:<port> (rest_url), never a caller-chosen scheme.
        request = urllib.request.Request(self.rest_url + path, data=body, method=method)  # noqa: S310
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        if body is not None:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (local URL)
                self.last_headers = {k.lower(): v for k, v in response.headers.items()}
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            self.last_headers = {k.lower(): v for k, v in exc.headers.items()}
            return exc.code, exc.read()

    def token_form(self, tenant: str) -> bytes:
        """The client-credentials form of a consumer (a tenant, or ``operator_key(tenant)``)."""
        consumer = self.consumers[tenant]
        return urllib.parse.urlencode(
            {
                "grant_type": "client_credentials",
                "client_id": consumer.client_id,
                "client_secret": consumer.client_secret,
            }
        ).encode()

    def token(self, tenant: str, *, fresh: bool = False) -> str:
        """An access token for the tenant's consumer, issued through the edge (cached)."""
        if fresh or tenant not in self._tokens:
            status, body = self.http(
                "POST",
                "/oauth/token",
                body=self.token_form(tenant),
                content_type="application/x-www-form-urlencoded",
            )
            if status != 200:
                raise RuntimeError(f"token request failed: {status} {body[:200]!r}")
            self._tokens[tenant] = json.loads(body)["access_token"]
        return self._tokens[tenant]

    @property
    def worker_pids(self) -> list[int]:
        return self._pool.pids if self._pool else []

    @property
    def edge_pid(self) -> int | None:
        return self._edge.pid if self._edge else None

    def memory(self) -> dict[str, dict[str, int]]:
        """Peak and current RSS (KiB) of every worker and of Envoy."""
        out = {f"worker-{i}": read_status(pid) for i, pid in enumerate(self.worker_pids)}
        if self.edge_pid:
            out["envoy"] = read_status(self.edge_pid)
        return out

    def cpu(self) -> dict[str, float]:
        out = {f"worker-{i}": cpu_seconds(pid) for i, pid in enumerate(self.worker_pids)}
        if self.edge_pid:
            out["envoy"] = cpu_seconds(self.edge_pid)
        return out

    def stop(self) -> None:
        if self._edge is not None:
            self._edge.stop()
            self._edge = None
        if self._pool is not None:
            self._pool.stop()
            self._pool = None


def ping_route_present() -> bool:
    """Whether the edge configuration routes the authenticated no-op (the REST ceiling)."""
    template = (edge_dir() / "edge.yaml.tmpl").read_text(encoding="utf-8")
    return "/orchestra-api/ping" in template and "DiagnosticsService" in template
