"""The `orchestra` command on a real data directory: definitions, tenants, roles, consumers, keys, audit."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from orchestra_server.bootstrap import build_application
from orchestra_server.cli import main
from orchestra_server.edge.proxy import admin_status
from orchestra_server.service.processes import Caller
from orchestra_server.settings import Settings
from tests.conftest import EXAMPLES


class Invoker:
    """Runs the CLI in-process on one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.runner = CliRunner()

    def __call__(self, *args: str, ok: bool = True) -> Result:
        result = self.runner.invoke(
            main, [*args, "--data-dir", str(self.data_dir)], env={"ORCHESTRA_DB_URL": ""}
        )
        if ok:
            assert result.exit_code == 0, result.output
        return result


@pytest.fixture
def invoke(tmp_path: Path) -> Invoker:
    return Invoker(tmp_path / "data")


def test_validate_names_every_problem_and_fails(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "id: Bad-Name\nnodes: {s: {type: start}, w: {type: wat}}\nflows: [{from: s, to: nowhere}]\n"
    )
    result = CliRunner().invoke(main, ["definition", "validate", str(EXAMPLES / "three_step.yaml"), str(bad)])
    assert result.exit_code == 1
    assert result.output.count(f"error: {bad}") >= 3, result.output
    good = CliRunner().invoke(main, ["definition", "validate", *map(str, sorted(EXAMPLES.glob("*.yaml")))])
    assert good.exit_code == 0
    assert good.output.count("ok: ") == 4


def test_deploy_is_all_or_nothing_and_versioned(invoke: Invoker, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: broken\nnodes: {}\nflows: []\n")
    failed = invoke("definition", "deploy", str(EXAMPLES / "three_step.yaml"), str(bad), ok=False)
    assert failed.exit_code == 1
    assert json.loads(invoke("definition", "list", "--json").output) == []
    assert (
        "deployed: three_step version 1"
        in invoke("definition", "deploy", str(EXAMPLES / "three_step.yaml")).output
    )
    assert (
        "unchanged: three_step version 1"
        in invoke("definition", "deploy", str(EXAMPLES / "three_step.yaml")).output
    )
    invoke("tenant", "create", "acme")
    invoke("definition", "deploy", str(EXAMPLES / "reminder.yaml"), "--tenant", "acme")
    listed = json.loads(invoke("definition", "list", "--json").output)
    assert [(d["id"], d["tenant"], d["version"]) for d in listed] == [
        ("three_step", None, 1),
        ("reminder", "acme", 1),
    ]
    assert (
        invoke(
            "definition", "deploy", str(EXAMPLES / "reminder.yaml"), "--tenant", "nobody", ok=False
        ).exit_code
        == 1
    )


def test_tenants_roles_consumers_keys_and_audit(invoke: Invoker) -> None:
    invoke("tenant", "create", "acme", "--label", "Acme Corp")
    assert invoke("tenant", "create", "acme", ok=False).exit_code == 1
    assert "acme\tAcme Corp" in invoke("tenant", "list").output
    invoke("role", "create", "operator", "--permission", "access orchestra api")
    invoke("role", "grant", "operator", "read reports")
    invoke("role", "revoke", "operator", "read reports")
    assert "operator\taccess orchestra api" in invoke("role", "list").output
    created = json.loads(
        invoke("consumer", "create", "--tenant", "acme", "--role", "operator", "--json").output
    )
    assert set(created) == {"client_id", "client_secret", "tenant"}
    assert created["tenant"] == "acme"
    listed = json.loads(invoke("consumer", "list", "--json").output)
    assert [c["client_id"] for c in listed] == [created["client_id"]]
    assert created["client_secret"] not in json.dumps(listed)
    data_dir = invoke.data_dir
    database = (data_dir / "orchestra.db").read_bytes()
    assert created["client_secret"].encode() not in database, "the secret is stored only as a hash"
    keys = data_dir / "signing-keys.json"
    assert not keys.exists(), "administering the directory needs no signing keys"
    assert "new key" in invoke("keys", "rotate").output
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    invoke("definition", "deploy", str(EXAMPLES / "three_step.yaml"))
    app = build_application(Settings(data_dir=data_dir))
    try:
        app.processes.start_process(Caller("acme", created["client_id"]), "three_step", {})
    finally:
        app.close()
    invoke("consumer", "revoke", created["client_id"])
    assert json.loads(invoke("consumer", "list", "--json").output)[0]["revoked"] is True
    trail = [json.loads(line) for line in invoke("audit", "--tenant", "acme", "--json").output.splitlines()]
    actions = [(r["action"], r["actor"]) for r in trail]
    assert ("instance.start", created["client_id"]) in actions
    assert ("consumer.revoke", "operator") in actions
    assert ("tenant.create", "operator") in actions
    assert all(r["tenant_id"] == "acme" for r in trail)


READ_COMMANDS = (
    ("tenant", "list"),
    ("role", "list"),
    ("consumer", "list"),
    ("definition", "list"),
    ("audit",),
)


@pytest.mark.parametrize("command", READ_COMMANDS, ids=" ".join)
def test_reading_an_empty_data_directory_creates_nothing(tmp_path: Path, command: tuple[str, ...]) -> None:
    data_dir = tmp_path / "data"
    exe = Path(sys.executable).parent / "orchestra"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRA_")}
    result = subprocess.run(
        [str(exe), *command, "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: no database at "), result.stderr
    assert "Traceback" not in result.stderr
    assert not data_dir.exists(), "a read must not create the data directory, a database or keys"


@pytest.mark.parametrize("command", READ_COMMANDS, ids=" ".join)
def test_reading_an_unmigrated_database_neither_migrates_nor_creates_keys(
    invoke: Invoker, command: tuple[str, ...]
) -> None:
    invoke.data_dir.mkdir()
    database = invoke.data_dir / "orchestra.db"
    sqlite3.connect(database).close()
    result = invoke(*command, ok=False)
    assert result.exit_code == 1
    assert "error: the database has no schema yet; run `orchestra db upgrade`" in result.output
    assert isinstance(result.exception, SystemExit)
    with sqlite3.connect(database) as conn:
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == []
    assert not (invoke.data_dir / "signing-keys.json").exists()
    invoke("db", "upgrade")
    assert invoke(*command).exit_code == 0


def test_definition_validate_takes_no_data_directory(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["definition", "validate", str(EXAMPLES / "three_step.yaml"), "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "No such option '--data-dir'" in result.output


def test_an_unusable_environment_variable_is_a_clean_error() -> None:
    result = CliRunner().invoke(main, ["tenant", "list"], env={"ORCHESTRA_SQLITE_SYNCHRONOUS": "OFF"})
    assert result.exit_code == 1
    assert result.output.startswith("error: ORCHESTRA_SQLITE_SYNCHRONOUS must be one of NORMAL, FULL, EXTRA")


def test_rotation_refuses_a_lead_the_edge_would_not_see(invoke: Invoker) -> None:
    keys = invoke.data_dir / "signing-keys.json"
    invoke("keys", "rotate")
    before = keys.read_bytes()
    for lead in ("0", "34"):
        refused = invoke("keys", "rotate", "--publish-lead", lead, ok=False)
        assert refused.exit_code == 2, refused.output
        assert "--publish-lead" in refused.output
        assert "every 30 s" in refused.output
        assert keys.read_bytes() == before, "a refused rotation changed the key ring"
    assert "new key" in invoke("keys", "rotate", "--publish-lead", "35").output
    assert keys.read_bytes() != before


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_up(*options: str) -> tuple[subprocess.Popen[str], str]:
    """`orchestra up` with `options` on free ports, and what it printed until it was ready (or
    ended); the caller stops it."""
    exe = Path(sys.executable).parent / "orchestra"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRA_")}
    command = [str(exe), "up", *options, "--http-port", str(_free_port()), "--grpc-port", str(_free_port())]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "Press Ctrl-C" in line:
            break
    return process, "".join(lines)


@pytest.mark.timeout(120)
def test_up_opens_the_edge_admin_socket_only_when_asked(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    process, text = _start_up("--data-dir", str(data_dir), "--workers", "1", "--edge-admin")
    try:
        assert "Press Ctrl-C" in text, text
        admin = data_dir / "edge" / "admin.sock"
        assert stat.S_ISSOCK(admin.stat().st_mode)
        assert stat.S_IMODE(admin.stat().st_mode) == 0o600
        assert admin_status(admin, "/ready") == 200
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)


@pytest.mark.timeout(120)
def test_up_demo_prints_the_console_and_an_operator_who_can_use_it(tmp_path: Path) -> None:
    process, text = _start_up("--demo", "--data-dir", str(tmp_path / "d"), "--workers", "1")
    try:
        console = re.search(r"^console: (http://\S+/console/)$", text, re.MULTILINE)
        operator = re.search(r"Console operator.*\n\s+client_id:\s+(\S+)\n\s+client_secret:\s+(\S+)", text)
        assert console is not None, text
        assert operator is not None, text
        page = httpx.get(console.group(1), timeout=10)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        base = console.group(1).removesuffix("/console/")
        form = {"grant_type": "client_credentials", "client_id": operator[1], "client_secret": operator[2]}
        token = httpx.post(f"{base}/oauth/token", data=form, timeout=10).json()["access_token"]
        listed = httpx.get(
            f"{base}/orchestra-ops/v1/definitions", headers={"authorization": f"Bearer {token}"}, timeout=10
        )
        assert listed.status_code == 200
        assert "expense_approval" in {d["definition_id"] for d in listed.json()["definitions"]}
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).parent / "orchestra"
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60, env=os.environ)
    assert result.returncode == 0
    for command in ("serve", "up", "definition", "tenant", "role", "consumer", "keys", "audit", "db"):
        assert command in result.stdout
