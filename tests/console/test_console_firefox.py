"""The web console in Firefox ESR against the real stack, at 1280 px and at 390 px.

Playwright cannot drive a stock Firefox, and its own Firefox build cannot be downloaded here;
Firefox speaks WebDriver BiDi itself, so a Node script (firefox/console_in_firefox.mjs, with
puppeteer-core pinned by firefox/package-lock.json and installed by `make install`) drives
Debian's firefox-esr. The script reports what the pages showed; this test holds the
expectations and checks the stack's side of each action. Screenshots of the pages are left in
the test's temporary folder for people to look at.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI
from tests.console.conftest import EXPECT_TIMEOUT_MS, TENANT, ConsoleStack, run_console_stack

pytestmark = pytest.mark.timeout(180)

FIREFOX = Path(os.environ.get("ORCHESTRA_FIREFOX", "/usr/bin/firefox-esr"))
CHECKS = Path(__file__).resolve().parent / "firefox"
SCRIPT = CHECKS / "console_in_firefox.mjs"
# puppeteer-core 24 needs Node.js 18 or newer.
NODE_MAJOR = 18
# Launching Firefox takes a few seconds on a busy machine; the whole run well under a minute.
RUN_TIMEOUT_S = 150
MARKUP = "<img src=x onerror=alert(1)>"


def firefox_executable() -> Path | None:
    if FIREFOX.is_file() and os.access(FIREFOX, os.X_OK):
        return FIREFOX
    found = shutil.which("firefox-esr")
    return Path(found) if found else None


def firefox_problem() -> str | None:
    """Why the Firefox test cannot run here, or None."""
    if firefox_executable() is None:
        return f"no Firefox ESR at {FIREFOX} (make install puts Debian's firefox-esr there when run as root)"
    node = shutil.which("node")
    if node is None:
        return "no node on PATH: Node.js drives Firefox for this test"
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=False).stdout
    major = re.match(r"v(\d+)\.", version)
    if major is None or int(major.group(1)) < NODE_MAJOR:
        return f"Node.js {NODE_MAJOR} or newer is needed to drive Firefox (found {version.strip() or '?'})"
    pinned = json.loads((CHECKS / "package.json").read_text(encoding="utf-8"))
    wanted = pinned["dependencies"]["puppeteer-core"]
    installed = CHECKS / "node_modules" / "puppeteer-core" / "package.json"
    if not installed.is_file():
        return "puppeteer-core is not installed in tests/console/firefox (make install)"
    if json.loads(installed.read_text(encoding="utf-8"))["version"] != wanted:
        return f"tests/console/firefox has another puppeteer-core than the pinned {wanted} (make install)"
    return None


def require_firefox() -> None:
    problem = firefox_problem()
    if problem is None:
        return
    if IN_CI:
        pytest.fail(f"the console's Firefox test needs Firefox ESR and Node.js in CI: {problem}")
    pytest.skip(problem)


@pytest.fixture(scope="module")
def firefox_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleStack]:
    require_firefox()
    yield from run_console_stack(tmp_path_factory)


def drive_firefox(plan: dict[str, Any], scratch: Path) -> dict[str, Any]:
    """Runs the script with `plan` and returns its report; its log goes to the test's output."""
    node = shutil.which("node")
    assert node is not None
    # Firefox's profile goes to the script's temporary folder, inside the test's own.
    env = {**os.environ, "TMPDIR": str(scratch)}
    process = subprocess.Popen(
        [node, str(SCRIPT)],
        cwd=CHECKS,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # so a run that hangs is stopped with its Firefox
    )
    try:
        out, log = process.communicate(json.dumps(plan), timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, log = process.communicate()
        pytest.fail(f"Firefox did not finish within {RUN_TIMEOUT_S} s:\n{log}")
    print(log)
    assert process.returncode == 0, f"the script failed ({process.returncode}):\n{log}"
    report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    assert report["failure"] is None, f"{report['failure']}\nproblems: {report['problems']}\n{log}"
    return report


def test_the_console_in_firefox_at_1280_and_390_px(firefox_stack: ConsoleStack, tmp_path: Path) -> None:
    stack = firefox_stack
    counted = [stack.start("counted"), stack.start("counted"), stack.incident("counted")]
    marked = stack.incident(variables={"note": MARKUP, "nested": {"html": MARKUP}})
    narrow = stack.incident()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    plan = {
        "url": stack.url,
        "firefox": str(firefox_executable()),
        "client_id": stack.operator.client_id,
        "client_secret": stack.operator.client_secret,
        "definition": "counted",
        "listed": [*counted, marked, narrow],
        "incident": marked,
        "narrow": narrow,
        # Its label is long enough to wrap the heading's row at 390 px.
        "narrow_definition": "expense_approval",
        "timeout_ms": EXPECT_TIMEOUT_MS,
        "screenshots": str(tmp_path / "screenshots"),
    }
    report = drive_firefox(plan, scratch)
    steps = {step["name"]: step for step in report["steps"]}
    assert report["browser"].startswith("firefox/"), report["browser"]

    # Nothing logged, nothing refused, no script from a value ran.
    assert report["problems"] == []
    assert report["dialogs"] == []

    signed_in = steps["sign in"]
    assert stack.operator.client_id in signed_in["header"]
    assert f"tenant {TENANT}" in signed_in["header"]
    assert signed_in["stored"] == [0, 0, ""]

    # The definitions page and the diagram, with live counts on the right node.
    definitions = steps["definitions"]
    (row,) = [r for r in definitions["rows"] if r[0] == "counted"]
    assert row[4:] == ["3", "1"], row
    assert definitions["title"] == "Counted"
    diagram = definitions["diagram"]
    assert diagram["width"] > 200, diagram
    assert diagram["height"] > 50, diagram
    nodes = diagram["nodes"]
    shapes = {name: node["shape"] for name, node in nodes.items()}
    assert shapes == {"s": "circle", "task": "rect", "e": "circle"}
    assert all(node["width"] > 10 and node["height"] > 10 for node in nodes.values()), nodes
    assert nodes["task"]["label"] == "Check"
    assert nodes["task"]["badges"] == {"parked": 2, "incident": 1}
    assert nodes["s"]["badges"] == {}
    assert nodes["e"]["badges"] == {}
    assert diagram["flows"] == 2
    assert definitions["widths"]["scroll"] <= definitions["widths"]["viewport"]

    instances = steps["instances"]
    assert set(plan["listed"]) <= set(instances["all"])
    assert sorted(instances["filtered"]) == sorted(counted)
    assert "definition_id=counted" in instances["hash"]

    # One instance: its token in incident on the diagram, its variables as text.
    instance = steps["instance"]
    (token,) = instance["tokens"]
    assert token[:2] == ["task", "incident"], token
    assert "approved" in token[3]
    assert instance["variables"] == [
        ["nested", json.dumps({"html": MARKUP}, separators=(",", ":")), "Edit"],
        ["note", json.dumps(MARKUP), "Edit"],
    ]
    assert instance["made"] == {"images": 0, "markup": 0}
    task = instance["diagram"]["nodes"]["task"]
    assert task["badges"] == {"incident": 1}
    assert "has-incident" in task["classes"].split()
    assert instance["diagram"]["takenFlows"] == ["s>task"]
    # Reached by the keyboard: the focused node is outlined in the focus colour (#ffb000) over
    # its incident's red, and Enter shows the reason.
    assert instance["tabbed"][-1] == "task", instance["tabbed"]
    assert instance["focusStroke"] == "rgb(255, 176, 0)"
    assert "approved" in instance["note"]
    assert instance["widths"]["scroll"] <= instance["widths"]["viewport"]

    # Retried from the page with the variable the condition reads: the instance completed.
    assert "Retry done on task; the instance is completed." in steps["retry"]["status"]
    assert "completed" in steps["retry"]["facts"]
    completed = stack.detail(marked)
    assert completed["status"] == "completed"
    assert completed["variables"]["approved"] is True

    # At 390 px: nothing but the scrolling tables and diagram is wider than the screen.
    small = steps["instance at 390 px"]
    assert small["widths"]["viewport"] <= 390
    assert small["widths"]["scroll"] <= small["widths"]["viewport"], small["widths"]
    assert small["overflowing"] == []
    assert small["navNames"] == ["Definitions", "Instances", "Incidents"]
    assert small["nav"] == [True, True, True]
    assert small["retryInView"] is True
    # Retried without the variable: the token stops at the same condition again.
    assert "Retry done on task; the instance is running." in small["status"]
    (again,) = stack.detail(narrow)["tokens"]
    assert again["status"] == "incident"
    history = stack.ops("GET", f"/instances/{narrow}/history")["entries"]
    assert any("retry" in entry["action"] for entry in history), history
    definition = steps["definition at 390 px"]
    assert definition["widths"]["scroll"] <= definition["widths"]["viewport"], definition["widths"]
    assert definition["versionLabelOffset"] < 4
