"""The operator's commands on a real data directory: instance list|show|history|cancel, incident
list|retry|skip|cancel-branch, definition show."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from orchestra_server.bootstrap import build_application
from orchestra_server.cli import main
from orchestra_server.service.processes import Caller
from orchestra_server.settings import Settings
from tests.conftest import EXAMPLES

FRAGILE: dict[str, Any] = {
    "id": "fragile",
    "label": "Needs approval",
    "nodes": {"s": {"type": "start"}, "task": {"type": "wait"}, "e": {"type": "end"}},
    "flows": [{"from": "s", "to": "task"}, {"from": "task", "to": "e", "when": "approved"}],
}
NEVER = "00000000-0000-4000-8000-000000000000"


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

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json").output)

    def refused(self, *args: str) -> str:
        """The command fails cleanly: exit status 1, `error: ...`, no traceback."""
        result = self(*args, ok=False)
        assert result.exit_code == 1, result.output
        assert isinstance(result.exception, SystemExit), result.exception
        assert "Traceback" not in result.output
        assert result.output.startswith("error: "), result.output
        return result.output


@dataclass
class Stage:
    """Tenant acme with fragile instances: one parked, two in incident, one three_step completed."""

    invoke: Invoker
    parked: str
    troubled: list[tuple[str, str]]
    completed: str


@pytest.fixture
def stage(tmp_path: Path) -> Stage:
    invoke = Invoker(tmp_path / "data")
    invoke("tenant", "create", "acme")
    invoke("tenant", "create", "globex")
    source = tmp_path / "fragile.json"
    source.write_text(json.dumps(FRAGILE))
    invoke("definition", "deploy", str(source), "--tenant", "acme")
    invoke("definition", "deploy", str(EXAMPLES / "three_step.yaml"))
    app = build_application(Settings(data_dir=invoke.data_dir))
    acme = Caller("acme", "acme-site")
    try:
        processes = app.processes
        parked = processes.start_process(acme, "fragile", {"owner": "ann"})
        troubled = []
        for n in range(2):
            instance_id = processes.start_process(acme, "fragile", {"owner": "bob", "n": n})
            (token,) = processes.get_instance(acme, instance_id).tokens
            processes.signal_token(acme, token.id)
            # The signal consumed the parked token; the one in incident is new.
            (stuck,) = processes.get_instance(acme, instance_id).tokens
            troubled.append((instance_id, stuck.id))
        completed = processes.start_process(acme, "three_step", {})
        processes.signal_token(acme, processes.get_instance(acme, completed).tokens[0].id)
    finally:
        app.close()
    return Stage(invoke, parked, troubled, completed)


def test_instance_list_filters_pages_and_prints(stage: Stage) -> None:
    invoke = stage.invoke
    everything = invoke.json("instance", "list", "--tenant", "acme")
    (first, _), (second, _) = stage.troubled
    assert [i["id"] for i in everything["instances"]] == [stage.completed, second, first, stage.parked]
    assert everything["next_page_token"] == ""
    assert everything["instances"][0]["status"] == "completed"
    assert everything["instances"][0]["ended_at"] is not None
    assert everything["instances"][1]["open_incidents"] == 1

    def ids(*filters: str) -> list[str]:
        return [i["id"] for i in invoke.json("instance", "list", "--tenant", "acme", *filters)["instances"]]

    assert ids("--definition", "fragile", "--has-incident") == [second, first]
    assert ids("--no-incident") == [stage.completed, stage.parked]
    assert ids("--status", "completed") == [stage.completed]
    assert ids("--variable", 'owner="bob"', "--variable", "n=0") == [first]
    assert ids("--node", "task", "--definition", "fragile", "--version", "1") == [second, first, stage.parked]
    assert ids("--started-after", "2999-01-01T00:00:00Z") == []
    assert ids("--started-before", "2999-01-01T00:00:00Z") == [stage.completed, second, first, stage.parked]
    assert invoke.json("instance", "list", "--tenant", "globex")["instances"] == []

    page = invoke("instance", "list", "--tenant", "acme", "--page-size", "3").output
    lines = page.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith(f"{stage.completed}\tthree_step v1\tcompleted\t")
    assert lines[1].endswith("\t1 incidents")
    assert lines[3].startswith("next page: --page-token ")
    token = lines[3].removeprefix("next page: --page-token ")
    rest = invoke.json("instance", "list", "--tenant", "acme", "--page-size", "3", "--page-token", token)
    assert [i["id"] for i in rest["instances"]] == [stage.parked]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--status", "sleeping"), "status"),
        (("--version", "1"), "version"),
        (("--started-after", "yesterday"), "started_after"),
        (("--variable", "owner"), "variable"),
        (("--variable", "owner=ann"), "variable"),
        (("--variable", "1st=1"), "variable"),
        (("--page-size", "5000"), "page_size"),
        (("--page-token", "forged"), "page_token"),
    ],
)
def test_instance_list_refuses_bad_filters_naming_them(
    stage: Stage, args: tuple[str, ...], named: str
) -> None:
    assert named in stage.invoke.refused("instance", "list", "--tenant", "acme", *args)


def test_instance_show_and_history(stage: Stage) -> None:
    invoke = stage.invoke
    instance_id, token_id = stage.troubled[0]
    detail = invoke.json("instance", "show", instance_id, "--tenant", "acme")
    assert (detail["id"], detail["definition_id"], detail["definition_version"]) == (
        instance_id,
        "fragile",
        1,
    )
    assert (detail["status"], detail["ended_at"], detail["variables"]) == (
        "running",
        None,
        {"owner": "bob", "n": 0},
    )
    (token,) = detail["tokens"]
    assert (token["id"], token["status"], token["incident_kind"]) == (
        token_id,
        "incident",
        "condition_failed",
    )
    assert "approved" in token["incident_reason"]
    text = invoke("instance", "show", instance_id, "--tenant", "acme").output
    assert f"{instance_id}\tfragile v1\trunning" in text
    assert f"  {token_id}\ttask\tincident\tsince " in text
    assert "condition_failed: " in text
    assert '  owner = "bob"' in text

    trail = [
        json.loads(line)
        for line in invoke(
            "instance", "history", instance_id, "--tenant", "acme", "--json"
        ).output.splitlines()
    ]
    assert [(e["action"], e["actor"]) for e in trail] == [
        ("instance.start", "acme-site"),
        ("token.signal", "acme-site"),
    ]
    assert "condition_failed" in trail[1]["incidents"][0]
    text_trail = invoke("instance", "history", instance_id, "--tenant", "acme").output.splitlines()
    assert len(text_trail) == 2
    assert "\tacme-site\ttoken.signal\trunning\t" in text_trail[1]


def test_another_tenants_instance_answers_as_one_that_never_existed(stage: Stage) -> None:
    invoke = stage.invoke
    instance_id, token_id = stage.troubled[0]
    for command in (("instance", "show"), ("instance", "history"), ("instance", "cancel")):
        foreign = invoke.refused(*command, instance_id, "--tenant", "globex")
        assert foreign == invoke.refused(*command, NEVER, "--tenant", "globex")
        assert foreign == "error: instance not found\n"
    for action in ("retry", "skip", "cancel-branch"):
        foreign = invoke.refused("incident", action, token_id, "--tenant", "globex")
        assert foreign == invoke.refused("incident", action, NEVER, "--tenant", "globex")
    foreign = invoke.refused("definition", "show", "fragile", "--tenant", "globex")
    assert foreign == invoke.refused("definition", "show", "never_deployed", "--tenant", "globex")
    assert invoke.json("incident", "list", "--tenant", "globex") == []
    assert invoke.json("instance", "show", instance_id, "--tenant", "acme")["status"] == "running"


def test_instance_cancel_once_as_operator(stage: Stage) -> None:
    invoke = stage.invoke
    assert invoke("instance", "cancel", stage.parked, "--tenant", "acme", "--reason", "duplicate").output == (
        f"cancelled {stage.parked}\n"
    )
    detail = invoke.json("instance", "show", stage.parked, "--tenant", "acme")
    assert (detail["status"], detail["tokens"]) == ("cancelled", [])
    assert detail["ended_at"] is not None
    assert "not running" in invoke.refused("instance", "cancel", stage.parked, "--tenant", "acme")
    last = json.loads(
        invoke("instance", "history", stage.parked, "--tenant", "acme", "--json").output.splitlines()[-1]
    )
    assert (last["action"], last["actor"], last["reason"]) == ("instance.cancel", "operator", "duplicate")
    audit = [json.loads(line) for line in invoke("audit", "--tenant", "acme", "--json").output.splitlines()]
    assert ("instance.cancel", "operator", stage.parked) in [
        (r["action"], r["actor"], r["instance_id"]) for r in audit
    ]


def test_incidents_listed_then_resolved_three_ways(stage: Stage) -> None:
    invoke = stage.invoke
    (first, first_token), (second, second_token) = stage.troubled
    listed = invoke.json("incident", "list", "--tenant", "acme")
    assert [(i["instance_id"], i["token_id"], i["node_id"], i["kind"]) for i in listed] == [
        (first, first_token, "task", "condition_failed"),
        (second, second_token, "task", "condition_failed"),
    ]
    assert invoke.json("incident", "list", "--tenant", "acme", "--definition", "three_step") == []
    assert invoke.json("incident", "list", "--tenant", "acme", "--node", "e") == []
    text = invoke("incident", "list", "--tenant", "acme", "--definition", "fragile", "--node", "task").output
    assert text.splitlines()[0].startswith(f"{first_token}\t{first}\tfragile v1\ttask\t")
    assert "\tcondition_failed: " in text

    # A value that is not JSON, or a name that is not one, changes nothing.
    assert "not JSON" in invoke.refused(
        "incident", "retry", first_token, "--tenant", "acme", "--variable", "approved=tru"
    )
    invoke.refused("incident", "retry", first_token, "--tenant", "acme", "--variable", "bad name=1")
    assert invoke.json("instance", "show", first, "--tenant", "acme")["variables"] == {"owner": "bob", "n": 0}

    retried = invoke(
        "incident",
        "retry",
        first_token,
        "--tenant",
        "acme",
        "--variable",
        "approved=true",
        "--variable",
        'by="op"',
    ).output
    assert retried == f"retry: {first_token}; the instance is completed\n"
    assert invoke.json("instance", "show", first, "--tenant", "acme")["variables"] == {
        "owner": "bob",
        "n": 0,
        "approved": True,
        "by": "op",
    }
    assert "error: " in invoke.refused("incident", "skip", first_token, "--tenant", "acme")

    answer = invoke.json("incident", "cancel-branch", second_token, "--tenant", "acme")
    assert answer == {"action": "cancel_branch", "instance_status": "completed"}
    assert invoke.json("incident", "list", "--tenant", "acme") == []
    last = json.loads(
        invoke("instance", "history", second, "--tenant", "acme", "--json").output.splitlines()[-1]
    )
    assert (last["action"], last["actor"]) == ("incident.cancel_branch", "operator")


def test_incident_skip_moves_the_token_on(stage: Stage) -> None:
    invoke = stage.invoke
    instance_id, token_id = stage.troubled[1]
    answer = invoke.json("incident", "skip", token_id, "--tenant", "acme", "--variable", "approved=true")
    assert answer == {"action": "skip", "instance_status": "completed"}
    last = json.loads(
        invoke("instance", "history", instance_id, "--tenant", "acme", "--json").output.splitlines()[-1]
    )
    assert (last["action"], last["actor"], last["variables"]) == ("incident.skip", "operator", ["approved"])


def test_definition_show_with_live_counts(stage: Stage) -> None:
    invoke = stage.invoke
    graph = invoke.json("definition", "show", "fragile", "--tenant", "acme")
    assert (graph["definition_id"], graph["version"], graph["latest_version"], graph["scope"]) == (
        "fragile",
        1,
        1,
        "tenant",
    )
    counts = {n["id"]: (n["parked"], n["waiting"], n["incident"]) for n in graph["nodes"]}
    assert counts == {"s": (0, 0, 0), "task": (1, 0, 2), "e": (0, 0, 0)}
    assert [(f["from_node"], f["to_node"], f["condition"]) for f in graph["flows"]] == [
        ("s", "task", ""),
        ("task", "e", "approved"),
    ]
    text = invoke("definition", "show", "fragile", "--tenant", "acme", "--version", "1").output
    assert text.startswith("fragile\tversion 1 of 1\ttenant acme\n")
    assert "  task\twait\tjoin immediate\tsplit all\t1/0/2\n" in text
    assert "  task -> e\twhen approved\n" in text
    shared = invoke.json("definition", "show", "three_step", "--tenant", "globex")
    assert shared["scope"] == "shared"
    assert invoke.refused("definition", "show", "fragile", "--tenant", "acme", "--version", "9") == (
        "error: definition not found\n"
    )


def test_the_tenant_is_required() -> None:
    for command in (
        ("instance", "list"),
        ("instance", "show", NEVER),
        ("instance", "cancel", NEVER),
        ("incident", "list"),
        ("incident", "retry", NEVER),
        ("definition", "show", "fragile"),
    ):
        result = CliRunner().invoke(main, list(command))
        assert result.exit_code == 2
        assert "Missing option '--tenant'" in result.output


READ_COMMANDS = (
    ("instance", "list", "--tenant", "acme"),
    ("instance", "show", NEVER, "--tenant", "acme"),
    ("instance", "history", NEVER, "--tenant", "acme"),
    ("incident", "list", "--tenant", "acme"),
    ("definition", "show", "fragile", "--tenant", "acme"),
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
