"""The console's browser tests: one real stack (service on SQLite behind the real edge, which
serves the console) per module, and one Chromium per module driven by Playwright.

Debian's Chromium is used (`make install` puts it at /usr/bin/chromium); Playwright's own
browser builds cannot be downloaded here. Without it the tests skip with a reason, and under
CI=true they fail instead. The Firefox ESR test (test_console_firefox.py) shares the stack
through run_console_stack and checks for its own browser.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from orchestra_server.bootstrap import CONSOLE_DIR
from orchestra_server.edge import EnvoyProcess, TenantRateLimit, Upstream
from tests.conftest import IN_CI
from tests.contract.conftest import EXAMPLES, Cli, Service, fetch_token, start_edge
from tests.contract.helpers import Consumer, assert_ok

CHROMIUM = Path(os.environ.get("ORCHESTRA_CHROMIUM", "/usr/bin/chromium"))
TENANT = "console"
OPERATOR_ROLE = "console_operator"
# The console's operator: the operations API, and the consumer API for the instance page's
# variable edits and signals.
OPERATOR_PERMISSIONS = ("operate orchestra", "deploy orchestra definitions", "access orchestra api")
OPS = "/orchestra-ops/v1"

# `task` moves on only when `approved` holds: signalled without it, the token is in incident.
FRAGILE: dict[str, Any] = {
    "id": "fragile",
    "label": "Fragile",
    "nodes": {"s": {"type": "start"}, "task": {"type": "wait", "label": "Check"}, "e": {"type": "end"}},
    "flows": [{"from": "s", "to": "task"}, {"from": "task", "to": "e", "when": "approved"}],
}
# A gateway whose default flow is marked, and labels written as markup.
ROUTED: dict[str, Any] = {
    "id": "routed",
    "label": "<b>Routed</b><img src=x onerror=alert(2)>",
    "nodes": {
        "begin": {"type": "start"},
        "route": {"type": "gateway", "gateway": "exclusive", "label": "<i>Route</i>"},
        "fast": {"type": "wait", "label": "Fast lane"},
        "slow": {"type": "wait", "label": "Slow lane"},
        "done": {"type": "end"},
    },
    "flows": [
        {"from": "begin", "to": "route"},
        {"from": "route", "to": "fast", "when": "amount < 100"},
        {"from": "route", "to": "slow", "default": True},
        {"from": "fast", "to": "done"},
        {"from": "slow", "to": "done"},
    ],
}
# Counted by the badge test alone, so other tests' instances do not change its numbers.
COUNTED: dict[str, Any] = {**FRAGILE, "id": "counted", "label": "Counted"}
# Retried in batch by the batch retry test alone.
RETRIED: dict[str, Any] = {**FRAGILE, "id": "retried", "label": "Retried"}


def browser_problem() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (make install)"
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)) and shutil.which("chromium") is None:
        return f"no Chromium at {CHROMIUM} (make install puts Debian's chromium there when run as root)"
    return None


def require_browser() -> None:
    problem = browser_problem()
    if problem is None:
        return
    if IN_CI:
        pytest.fail(f"the console's browser tests need Chromium in CI: {problem}")
    pytest.skip(problem)


def new_consumer(cli: Cli, http: httpx.Client, role: str | None) -> Consumer:
    """A consumer of the console's tenant with `role` (None: the default role) and its token."""
    args = ("consumer", "create", "--tenant", TENANT, *(("--role", role) if role else ()), "--json")
    created = json.loads(cli(*args))
    token = fetch_token(http, created["client_id"], created["client_secret"])
    return Consumer(created["client_id"], created["client_secret"], TENANT, token)


@dataclass
class ConsoleStack:
    cli: Cli
    http: httpx.Client
    url: str
    operator: Consumer
    consumer: Consumer  # the default role: the consumer API only

    def new_consumer(self, role: str | None = OPERATOR_ROLE) -> Consumer:
        return new_consumer(self.cli, self.http, role)

    def ops(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        response = self.http.request(
            method, OPS + path, headers=self.operator.headers, **({} if body is None else {"json": body})
        )
        return assert_ok(response, status)

    def start(self, definition: str, variables: dict[str, Any] | None = None) -> str:
        response = self.http.post(
            f"/orchestra-api/process/{definition}/start",
            json={"variables": variables or {}},
            headers=self.operator.headers,
        )
        instance_id = assert_ok(response, 201)["instance_id"]
        assert isinstance(instance_id, str)
        return instance_id

    def detail(self, instance_id: str) -> Any:
        return self.ops("GET", f"/instances/{instance_id}")["instance"]

    def incident(self, definition: str = "fragile", variables: dict[str, Any] | None = None) -> str:
        """A running instance whose one token is in incident."""
        instance_id = self.start(definition, variables)
        (token,) = self.detail(instance_id)["tokens"]
        signalled = self.http.post(
            f"/orchestra-api/token/{token['id']}/signal", headers=self.operator.headers
        )
        assert_ok(signalled)
        (token,) = self.detail(instance_id)["tokens"]
        assert token["status"] == "incident"
        return instance_id


@pytest.fixture(scope="module")
def console_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleStack]:
    require_browser()
    yield from run_console_stack(tmp_path_factory)


def run_console_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleStack]:
    """The tenant, definitions, operator role and consumers, the service and the edge that
    serves the console; a module's fixture checks first that its browser is here."""
    if not (CONSOLE_DIR / "vendor" / "dagre.js").is_file():
        pytest.fail("the console's layout library is missing: run make install")
    data_dir = tmp_path_factory.mktemp("console-data")
    cli = Cli(data_dir)
    cli("tenant", "create", TENANT)
    definitions = tmp_path_factory.mktemp("console-definitions")
    paths = [str(EXAMPLES / name) for name in ("three_step.yaml", "expense_approval.yaml")]
    for definition in (FRAGILE, ROUTED, COUNTED, RETRIED):
        path = definitions / f"{definition['id']}.yaml"
        path.write_text(yaml.safe_dump(definition, sort_keys=False), encoding="utf-8")
        paths.append(str(path))
    cli("definition", "deploy", *paths)
    permissions = [arg for name in OPERATOR_PERMISSIONS for arg in ("--permission", name)]
    cli("role", "create", OPERATOR_ROLE, *permissions)
    service = Service(cli, data_dir / "service.log")
    edge: EnvoyProcess | None = None
    try:
        edge = start_edge(
            tmp_path_factory.mktemp("console-edge"),
            (Upstream("127.0.0.1", service.port),),
            tenant_rate_limit=TenantRateLimit(),
            console_dir=CONSOLE_DIR,
        )
        with httpx.Client(base_url=edge.rest_url, timeout=30) as http:
            yield ConsoleStack(
                cli,
                http,
                f"{edge.rest_url}/console/",
                operator=new_consumer(cli, http, OPERATOR_ROLE),
                consumer=new_consumer(cli, http, None),
            )
    finally:
        if edge is not None:
            edge.stop()
        service.stop()


# The machine may be busy: a page refreshes every 3 s, so give each expectation a few refreshes.
EXPECT_TIMEOUT_MS = 12_000


@pytest.fixture(scope="module")
def browser(console_stack: ConsoleStack) -> Iterator[Any]:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    executable = CHROMIUM if CHROMIUM.is_file() else Path(shutil.which("chromium") or CHROMIUM)
    # Chromium's sandbox needs user namespaces it cannot have as root in a container.
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(executable), args=args)
        yield launched
        launched.close()


# What a page may log when a test provokes a refusal on purpose: the browser reports each
# failed request on the console. Anything else logged is a fault.
REFUSED_REQUEST = re.compile(r"Failed to load resource: the server responded with a status of (\d{3})")


@dataclass
class PageLog:
    """Every message, uncaught error and dialog of one page."""

    problems: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)
    allowed_statuses: set[int] = field(default_factory=set)

    def on_console(self, message: Any) -> None:
        if message.type not in ("error", "warning"):
            return
        refused = REFUSED_REQUEST.search(message.text)
        if refused and int(refused.group(1)) in self.allowed_statuses:
            self.refused.append(int(refused.group(1)))
            return
        self.problems.append(f"console {message.type}: {message.text}")


@pytest.fixture
def page_log() -> PageLog:
    return PageLog()


@pytest.fixture
def page(browser: Any, console_stack: ConsoleStack, page_log: PageLog) -> Iterator[Any]:
    """A fresh page at 1280 px; the test fails if the page logs an error or opens a dialog."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(EXPECT_TIMEOUT_MS)
    opened = context.new_page()
    opened.on("console", page_log.on_console)
    opened.on("pageerror", lambda error: page_log.problems.append(f"page error: {error}"))

    def on_dialog(dialog: Any) -> None:
        page_log.dialogs.append(dialog.message)
        dialog.dismiss()

    opened.on("dialog", on_dialog)
    yield opened
    context.close()
    assert page_log.problems == [], page_log.problems
    assert page_log.dialogs == [], page_log.dialogs


SignIn = Callable[..., Any]


@pytest.fixture
def sign_in(page: Any, console_stack: ConsoleStack) -> SignIn:
    """Opens the console and signs in (as the stack's operator unless told otherwise)."""

    def run(who: Consumer | None = None, route: str = "") -> Any:
        from playwright.sync_api import expect

        who = who or console_stack.operator
        page.goto(console_stack.url + route)
        page.get_by_label("Client id").fill(who.client_id)
        page.get_by_label("Client secret").fill(who.client_secret)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("button", name="Sign out")).to_be_visible()
        return page

    return run
