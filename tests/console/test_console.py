"""The web console in Chromium against the real stack: served by the edge with its security
headers, sign-in, every page, every action, live refresh, refusals and hostile values."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest

from orchestra_server.bootstrap import CONSOLE_DIR
from orchestra_server.edge.config import CONSOLE_CONTENT_SECURITY_POLICY
from tests.console.conftest import TENANT, ConsoleStack, PageLog, SignIn

pytestmark = pytest.mark.timeout(180)

MARKUP = "<img src=x onerror=alert(1)>"


def expect(target: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


# -- served by the edge ---------------------------------------------------------------------------


def test_every_file_is_served_with_its_type_and_the_security_headers(console_stack: ConsoleStack) -> None:
    http = console_stack.http
    expected = {
        "/console/": "text/html",
        "/console/app.js": "text/javascript",
        "/console/api.js": "text/javascript",
        "/console/diagram.js": "text/javascript",
        "/console/console.css": "text/css",
        "/console/vendor/dagre.js": "text/javascript",
    }
    for path, kind in expected.items():
        response = http.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith(kind), (path, response.headers)
        assert response.headers["content-security-policy"] == CONSOLE_CONTENT_SECURITY_POLICY
        assert (
            "'unsafe-inline'"
            not in response.headers["content-security-policy"].split("script-src")[1].split(";")[0]
        )
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["cache-control"] in ("no-cache", "public, max-age=3600"), path
    # The bytes are the files' own, not wrapped in the API's error format.
    assert http.get("/console/app.js").content == (CONSOLE_DIR / "app.js").read_bytes()
    assert http.get("/console/").content == (CONSOLE_DIR / "index.html").read_bytes()


def test_the_bare_path_redirects_and_nothing_else_is_served(console_stack: ConsoleStack) -> None:
    http = console_stack.http
    moved = http.get("/console")
    assert moved.status_code == 301
    assert moved.headers["location"].endswith("/console/")
    for path in (
        "/console/package.json",
        "/console/node_modules/@dagrejs/dagre/package.json",
        "/console/x.js",
    ):
        assert http.get(path).status_code == 404, path
    assert http.post("/console/").status_code == 404
    # The API behind the same edge keeps its own answers.
    refused = http.get("/orchestra-ops/v1/definitions")
    assert refused.status_code == 401
    assert refused.headers["cache-control"] == "no-store"


# -- sign-in --------------------------------------------------------------------------------------


def test_sign_in_shows_the_consumer_and_tenant_and_sign_out_forgets(
    page: Any, sign_in: SignIn, console_stack: ConsoleStack
) -> None:
    sign_in()
    header = page.locator("header.top")
    expect(header).to_contain_text(console_stack.operator.client_id)
    expect(header).to_contain_text(f"tenant {TENANT}")
    expect(page.get_by_role("heading", name="Definitions")).to_be_visible()
    # Nothing kept where a later visitor could find it.
    stored = page.evaluate("() => [localStorage.length, sessionStorage.length, document.cookie]")
    assert stored == [0, 0, ""]
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("Client id")).to_be_visible()
    page.evaluate("() => { location.hash = '#/instances'; }")
    expect(page.get_by_label("Client id")).to_be_visible()
    expect(page.get_by_role("heading", name="Instances")).to_have_count(0)


def test_a_wrong_secret_is_refused_on_the_form(
    page: Any, console_stack: ConsoleStack, page_log: PageLog
) -> None:
    page_log.allowed_statuses.add(401)
    page.goto(console_stack.url)
    page.get_by_label("Client id").fill(console_stack.operator.client_id)
    page.get_by_label("Client secret").fill("not-the-secret")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("were not accepted")
    expect(page.get_by_role("button", name="Sign out")).to_have_count(0)


def test_a_consumer_that_is_not_an_operator_is_told_so(
    page: Any, sign_in: SignIn, console_stack: ConsoleStack, page_log: PageLog
) -> None:
    page_log.allowed_statuses.add(403)
    sign_in(console_stack.consumer)
    expect(page.get_by_role("alert")).to_contain_text("not an operator")
    assert page_log.refused, "the refusal came from the API"


def test_a_revoked_consumer_returns_to_sign_in(
    page: Any, sign_in: SignIn, console_stack: ConsoleStack, page_log: PageLog
) -> None:
    page_log.allowed_statuses.add(401)
    doomed = console_stack.new_consumer()
    sign_in(doomed)
    expect(page.get_by_role("heading", name="Definitions")).to_be_visible()
    console_stack.cli("consumer", "revoke", doomed.client_id)
    # The next refresh (every 3 s) meets a 401 once the revocation is seen (within 2 s).
    expect(page.get_by_label("Client id")).to_be_visible(timeout=20_000)
    expect(page.get_by_role("alert")).to_contain_text("Sign in again")


def test_the_token_is_renewed_before_it_expires(page: Any, sign_in: SignIn) -> None:
    # The page's clock is the test's: an hour passes in a moment.
    page.clock.install()
    sign_in()
    expect(page.locator("tbody tr", has_text="fragile")).to_be_visible()
    with page.expect_request("**/oauth/token") as renewal:
        page.clock.fast_forward("50:00")
    assert renewal.value.method == "POST"
    assert renewal.value.response().status == 200
    page.clock.fast_forward("00:05")
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    expect(page.get_by_role("alert")).to_have_count(0)


def test_an_expired_token_returns_to_sign_in(page: Any, sign_in: SignIn, page_log: PageLog) -> None:
    page.clock.install()
    sign_in()
    expect(page.locator("tbody tr", has_text="fragile")).to_be_visible()
    # The token endpoint cannot be reached, so the token is never renewed and runs out.
    page.route("**/oauth/token", lambda route: route.abort("connectionrefused"))
    page.clock.fast_forward("01:01:00")
    page.clock.fast_forward("00:05")
    expect(page.get_by_label("Client id")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("expired")
    page_log.problems[:] = [p for p in page_log.problems if "ERR_CONNECTION_REFUSED" not in p]


# -- definitions ----------------------------------------------------------------------------------


def test_a_definitions_diagram_has_shapes_conditions_and_the_default_flow(page: Any, sign_in: SignIn) -> None:
    sign_in(route="#/definitions/routed")
    diagram = page.locator("svg.diagram")
    expect(diagram).to_be_visible()
    assert diagram.locator("g.node").count() == 5
    assert diagram.locator("g.node.type-start circle.shape").count() == 1
    assert diagram.locator("g.node.type-end circle.shape").count() == 1
    assert diagram.locator("g.node.type-gateway polygon.shape").count() == 1
    assert diagram.locator("g.node.type-wait rect.shape").count() == 2
    assert diagram.locator("g.node.type-gateway text.mark").text_content() == "\N{MULTIPLICATION SIGN}"
    expect(diagram.locator("text.flow-label")).to_have_text(["amount < 100"])
    default = diagram.locator('g.flow.default[data-from="route"][data-to="slow"]')
    expect(default).to_have_count(1)
    expect(default.locator("path.default-mark")).to_have_count(1)
    assert diagram.locator("g.flow.default").count() == 1
    # Laid out left to right: every flow ends to the right of where it starts.
    for flow in diagram.locator("g.flow path.line").all():
        points = [float(x) for x in re.findall(r"[ML]([0-9.]+),", flow.get_attribute("d"))]
        assert points[-1] > points[0]


def test_a_timer_a_timeout_flow_and_both_gateway_kinds(page: Any, sign_in: SignIn) -> None:
    sign_in(route="#/definitions/expense_approval")
    diagram = page.locator("svg.diagram")
    expect(diagram.locator("g.node.type-timer circle.dial")).to_have_count(1)
    expect(diagram.locator('g.flow.timeout[data-from="approve"][data-to="escalate"]')).to_have_count(1)
    expect(diagram.locator("text.flow-label", has_text="amount > 1000")).to_have_count(1)
    expect(diagram.locator("text.flow-label", has_text="approved")).to_have_count(1)


def test_live_counts_appear_on_the_right_nodes_and_follow_new_instances(
    page: Any, sign_in: SignIn, console_stack: ConsoleStack
) -> None:
    console_stack.start("counted")
    console_stack.start("counted")
    console_stack.incident("counted")
    sign_in(route="#/definitions/counted")
    task = page.locator('svg.diagram g.node[data-node="task"]')
    expect(task.locator("g.badge.parked")).to_have_attribute("data-count", "2")
    expect(task.locator("g.badge.incident")).to_have_attribute("data-count", "1")
    assert page.locator('svg.diagram g.node[data-node="s"] g.badge').count() == 0
    assert page.locator('svg.diagram g.node[data-node="e"] g.badge').count() == 0
    row = page.locator("tbody tr", has_text="counted")
    expect(row).to_contain_text("3")
    # Without a reload: the page polls.
    console_stack.start("counted")
    expect(task.locator("g.badge.parked")).to_have_attribute("data-count", "3")


# -- one instance ---------------------------------------------------------------------------------


def test_an_incident_is_red_with_its_reason_and_is_retried_from_the_page(
    page: Any, sign_in: SignIn, console_stack: ConsoleStack
) -> None:
    instance_id = console_stack.incident()
    sign_in(route=f"#/instances/{instance_id}")
    node = page.locator('svg.diagram g.node[data-node="task"]')
    expect(node.locator("g.badge.incident")).to_have_attribute("data-count", "1")
    expect(node).to_have_class(re.compile(r"\bhas-incident\b"))
    # The path so far: from the start to the task.
    expect(page.locator('svg.diagram g.flow.taken[data-from="s"][data-to="task"]')).to_have_count(1)
    expect(page.locator('svg.diagram g.flow.taken[data-to="e"]')).to_have_count(0)
    # The reason is one click away.
    node.click()
    expect(page.locator(".node-note")).to_contain_text("approved")
    page.get_by_label(re.compile("Variables to set first")).fill('{"approved": true}')
    page.get_by_role("button", name="Retry the incident on task").click()
    expect(page.get_by_role("status")).to_contain_text("the instance is completed")
    assert console_stack.detail(instance_id)["status"] == "completed"
    expect(page.locator("dl.facts-grid")).to_contain_text("completed")


def test_skip_an_incident_with_variables(page: Any, sign_in: SignIn, console_stack: ConsoleStack) -> None:
    instance_id = console_stack.incident()
    sign_in(route=f"#/instances/{instance_id}")
    page.get_by_label(re.compile("Variables to set first")).fill('{"approved": true')
    page.get_by_role("button", name="Skip the incident on task").click()
    expect(page.locator("td.actions [role=alert]")).to_contain_text("not valid JSON")
    assert console_stack.detail(instance_id)["tokens"][0]["status"] == "incident"
    page.get_by_label(re.compile("Variables to set first")).fill('{"approved": true}')
    page.get_by_role("button", name="Skip the incident on task").click()
    expect(page.get_by_role("status")).to_contain_text("Skip done on task; the instance is completed")
    assert console_stack.detail(instance_id)["variables"] == {"approved": True}


def test_signal_a_parked_token_with_variables(
    page: Any, sign_in: SignIn, console_stack: ConsoleStack
) -> None:
    instance_id = console_stack.start("fragile")
    sign_in(route=f"#/instances/{instance_id}")
    page.get_by_label(re.compile("Variables to set first")).fill('{"approved": true}')
    page.get_by_role("button", name="Signal the token on task").click()
    expect(page.get_by_role("status")).to_contain_text("Signalled")
    assert console_stack.detail(instance_id)["status"] == "completed"


def test_cancel_an_instance_after_confirming(page: Any, sign_in: SignIn, console_stack: ConsoleStack) -> None:
    instance_id = console_stack.start("three_step")
    sign_in(route=f"#/instances/{instance_id}")
    page.get_by_role("button", name="Cancel instance").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Cancel this instance?")
    dialog.get_by_role("button", name="Keep it").click()
    assert console_stack.detail(instance_id)["status"] == "running"
    page.get_by_role("button", name="Cancel instance").click()
    page.get_by_role("dialog").get_by_role("button", name="Cancel instance").click()
    expect(page.get_by_role("status")).to_contain_text("The instance is cancelled.")
    assert console_stack.detail(instance_id)["status"] == "cancelled"
    expect(page.get_by_role("button", name="Cancel instance")).to_be_disabled()


def test_edit_a_variable_with_validation(
    page: Any, sign_in: SignIn, console_stack: ConsoleStack, page_log: PageLog
) -> None:
    page_log.allowed_statuses.add(400)
    instance_id = console_stack.start("three_step", {"amount": 10})
    sign_in(route=f"#/instances/{instance_id}")
    row = page.locator("table.variables tbody tr", has_text="amount")
    expect(row).to_contain_text("10")
    page.get_by_role("button", name="Edit amount").click()
    editor = page.get_by_label("New value of amount (JSON)")
    editor.fill("{not json")
    page.get_by_role("button", name="Save").click()
    expect(row.get_by_role("alert")).to_contain_text("Not valid JSON")
    assert console_stack.detail(instance_id)["variables"] == {"amount": 10}
    editor.fill('{"net": 42, "items": [1, 2]}')
    page.get_by_role("button", name="Save").click()
    # An object's members come back in no set order (a JSON object is unordered), so the shown
    # value is read back as JSON rather than matched as text.
    shown = row.locator("code")
    expect(shown).to_contain_text('"net":42')
    expect(shown).to_contain_text('"items":[1,2]')
    assert json.loads(shown.inner_text()) == {"net": 42, "items": [1, 2]}
    assert console_stack.detail(instance_id)["variables"] == {"amount": {"net": 42, "items": [1, 2]}}
    # The service's own validation, shown where the reader typed.
    page.get_by_label("Variable name").fill("9lives")
    page.get_by_label("Value (JSON)").fill("1")
    page.get_by_role("button", name="Set variable").click()
    expect(page.locator("form.add-variable [role=alert]")).to_contain_text("variable name must be")
    assert "9lives" not in console_stack.detail(instance_id)["variables"]


def test_markup_in_values_labels_and_reasons_shows_as_text(
    page: Any, sign_in: SignIn, console_stack: ConsoleStack
) -> None:
    # Variable names are machine names; values, labels and flow texts are free text.
    instance_id = console_stack.incident(variables={"note": MARKUP, "nested": {"html": MARKUP}})
    sign_in(route="#/definitions/routed")
    expect(page.locator("tbody")).to_contain_text("<b>Routed</b><img src=x onerror=alert(2)>")
    expect(page.locator("svg.diagram")).to_contain_text("<i>Route</i>")
    page.evaluate(f"() => {{ location.hash = '#/instances/{instance_id}'; }}")
    expect(page.locator("table.variables")).to_contain_text(f'"{MARKUP}"')
    expect(page.locator("table.variables")).to_contain_text(f'{{"html":"{MARKUP}"}}')
    page.evaluate("() => { location.hash = '#/incidents'; }")
    expect(page.locator("tbody tr", has_text=instance_id)).to_be_visible()
    # No element was made from the markup, and no script ran (the page fixture fails on any
    # dialog).
    assert page.locator("img").count() == 0
    assert page.locator("main b, main i").count() == 0


# -- lists and batches ----------------------------------------------------------------------------


def test_batch_cancel_by_filter_says_how_many_and_what_happened(
    page: Any, sign_in: SignIn, console_stack: ConsoleStack
) -> None:
    batch = uuid.uuid4().hex[:8]
    doomed = [console_stack.start("three_step", {"batch": batch}) for _ in range(3)]
    spared = console_stack.start("three_step", {"batch": "other"})
    sign_in(route="#/instances")
    page.get_by_label("Variables equal").fill(f'batch="{batch}"')
    page.get_by_role("button", name="Apply filters").click()
    expect(page.locator("table.list tbody tr")).to_have_count(3)
    page.get_by_role("button", name="Cancel all matching…").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("3 instances match the filter")
    dialog.get_by_role("button", name="Cancel 3").click()
    expect(page.get_by_role("status")).to_contain_text("Matched 3: cancelled 3, skipped 0, failed 0.")
    assert {console_stack.detail(i)["status"] for i in doomed} == {"cancelled"}
    assert console_stack.detail(spared)["status"] == "running"


def test_a_variable_filter_may_hold_query_characters(
    page: Any, sign_in: SignIn, console_stack: ConsoleStack
) -> None:
    tricky = f"a&b+c%d={uuid.uuid4().hex[:6]}"
    wanted = console_stack.start("three_step", {"tag": tricky})
    console_stack.start("three_step", {"tag": tricky.replace("+", " ")})
    sign_in(route="#/instances")
    page.get_by_label("Variables equal").fill(f"tag={json.dumps(tricky)}")
    page.get_by_role("button", name="Apply filters").click()
    expect(page.locator("table.list tbody tr")).to_have_count(1)
    expect(page.locator("table.list tbody tr")).to_contain_text(wanted)
    # The filter survives in the address, and reading it back gives the same search.
    page.reload()
    sign_in(route=page.url.split("/console/")[1])
    expect(page.get_by_label("Variables equal")).to_have_value(f"tag={json.dumps(tricky)}")
    expect(page.locator("table.list tbody tr")).to_have_count(1)


def test_a_filter_typed_while_the_definitions_load_is_kept(
    page: Any, sign_in: SignIn, console_stack: ConsoleStack
) -> None:
    # The definitions menu fills in when its list arrives; the reader may have typed by then.
    batch = uuid.uuid4().hex[:8]
    ids = [console_stack.start("three_step", {"batch": batch}) for _ in range(2)]
    held: list[Any] = []

    def hold(route: Any) -> None:
        held.append(route)

    page.route("**/orchestra-ops/v1/definitions", hold)
    sign_in(route="#/instances")
    page.get_by_label("Variables equal").fill(f'batch="{batch}"')
    for _ in range(100):
        if held:
            break
        page.wait_for_timeout(100)
    assert held, "the definitions were never asked for"
    for route in held:
        route.continue_()
    page.unroute("**/orchestra-ops/v1/definitions", hold)
    expect(page.locator("table.list tbody tr").first).to_be_visible()
    expect(page.get_by_label("Variables equal")).to_have_value(f'batch="{batch}"')
    page.get_by_role("button", name="Apply filters").click()
    expect(page.locator("table.list tbody tr")).to_have_count(2)
    for instance_id in ids:
        expect(page.get_by_label(f"Select instance {instance_id}")).to_be_visible()


def test_cancel_the_selected_instances_and_keep_the_selection_across_refreshes(
    page: Any, sign_in: SignIn, console_stack: ConsoleStack
) -> None:
    batch = uuid.uuid4().hex[:8]
    ids = [console_stack.start("three_step", {"batch": batch}) for _ in range(3)]
    sign_in(route="#/instances")
    page.get_by_label("Variables equal").fill(f'batch="{batch}"')
    page.get_by_role("button", name="Apply filters").click()
    expect(page.locator("table.list tbody tr")).to_have_count(3)
    page.get_by_label(f"Select instance {ids[0]}").check()
    page.get_by_label(f"Select instance {ids[1]}").check()
    # A new match arrives with the next refresh; the selection stays.
    ids.append(console_stack.start("three_step", {"batch": batch}))
    expect(page.locator("table.list tbody tr")).to_have_count(4)
    expect(page.get_by_label(f"Select instance {ids[0]}")).to_be_checked()
    expect(page.get_by_label(f"Select instance {ids[1]}")).to_be_checked()
    expect(page.get_by_text("2 selected")).to_be_visible()
    page.get_by_role("button", name="Cancel selected").click()
    page.get_by_role("dialog").get_by_role("button", name="Cancel 2").click()
    expect(page.get_by_role("status")).to_contain_text("Cancelled 2 of 2; 0 not running (skipped); 0 failed.")
    statuses = [console_stack.detail(i)["status"] for i in ids]
    assert statuses == ["cancelled", "cancelled", "running", "running"]


def test_retry_in_batch_the_selected_instances_and_every_matching_incident(
    page: Any, sign_in: SignIn, console_stack: ConsoleStack
) -> None:
    ids = [console_stack.incident("retried") for _ in range(2)]
    sign_in(route="#/instances?definition_id=retried")
    expect(page.locator("table.list tbody tr")).to_have_count(2)
    for instance_id in ids:
        page.get_by_label(f"Select instance {instance_id}").check()
    page.get_by_role("button", name="Retry incidents of selected").click()
    page.get_by_role("dialog").get_by_role("button", name="Retry 2").click()
    # Nothing changed what the condition reads, so the retried tokens stop there again.
    expect(page.get_by_role("status")).to_contain_text("Retried 2 incidents; 2 still in incident; 0 failed.")
    # Give the condition its variable, then retry everything the filter matches.
    for instance_id in ids:
        console_stack.http.put(
            f"/orchestra-api/instance/{instance_id}/variable/approved",
            json={"value": True},
            headers=console_stack.operator.headers,
        ).raise_for_status()
    page.get_by_role("link", name="Incidents").click()
    page.get_by_label("Definition").fill("retried")
    page.get_by_role("button", name="Apply filters").click()
    expect(page.locator("table.list tbody tr")).to_have_count(2)
    page.get_by_role("button", name="Retry all matching…").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("2 incidents match")
    dialog.get_by_role("button", name="Retry 2").click()
    expect(page.get_by_role("status")).to_contain_text("Matched 2: retried 2, skipped 0, failed 0.")
    assert [console_stack.detail(i)["status"] for i in ids] == ["completed", "completed"]
    expect(page.locator("table.list tbody tr")).to_have_count(0)


def test_incidents_page_lists_reason_and_age_and_cancels_a_branch(
    page: Any, sign_in: SignIn, console_stack: ConsoleStack
) -> None:
    instance_id = console_stack.incident()
    sign_in(route="#/incidents")
    row = page.locator("tbody tr", has_text=instance_id)
    expect(row).to_contain_text("approved")
    expect(row.locator("td").nth(4)).to_have_text(re.compile(r"^\d+ (s|min|h|d)$"))
    row.get_by_role("button", name="Cancel branch").click()
    expect(page.get_by_role("status")).to_contain_text("the instance is completed")
    expect(page.locator("tbody tr", has_text=instance_id)).to_have_count(0)
    assert console_stack.detail(instance_id)["status"] == "completed"


def test_not_found_and_network_failures_are_shown(page: Any, sign_in: SignIn, page_log: PageLog) -> None:
    page_log.allowed_statuses.add(404)
    sign_in(route=f"#/instances/{uuid.uuid4()}")
    expect(page.get_by_role("alert")).to_contain_text("Not found")
    expect(page.get_by_role("heading", name="Instance not found")).to_be_visible()
    # The network goes away: the next refresh says so.
    page.route("**/orchestra-ops/**", lambda route: route.abort("connectionrefused"))
    page.evaluate("() => { location.hash = '#/incidents'; }")
    expect(page.get_by_role("alert")).to_contain_text("cannot be reached")
    page_log.problems[:] = [p for p in page_log.problems if "ERR_CONNECTION_REFUSED" not in p]


# -- narrow screens and the keyboard --------------------------------------------------------------


def test_usable_at_390_px(page: Any, sign_in: SignIn, console_stack: ConsoleStack) -> None:
    instance_id = console_stack.incident()
    page.set_viewport_size({"width": 390, "height": 844})
    sign_in(route=f"#/instances/{instance_id}")
    expect(page.locator("svg.diagram")).to_be_visible()
    # Nothing but the scrolling tables and diagram is wider than the screen.
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    for name in ("Definitions", "Instances", "Incidents"):
        expect(page.get_by_role("navigation").get_by_role("link", name=name)).to_be_in_viewport()
    retry = page.get_by_role("button", name="Retry the incident on task")
    retry.scroll_into_view_if_needed()
    expect(retry).to_be_in_viewport()
    retry.click()
    expect(page.get_by_role("status")).to_contain_text("Retry done on task")


def test_every_action_is_reachable_by_keyboard(
    page: Any, sign_in: SignIn, console_stack: ConsoleStack
) -> None:
    instance_id = console_stack.incident()
    sign_in(route=f"#/instances/{instance_id}")
    expect(page.locator("table.tokens")).to_contain_text("incident")
    reached = []
    for _ in range(80):
        page.keyboard.press("Tab")
        reached.append(
            page.evaluate(
                "() => { const e = document.activeElement;"
                " return e ? (e.getAttribute('aria-label') || e.textContent || '').trim() : ''; }"
            )
        )
    wanted = [
        "Cancel instance",
        "Retry the incident on task",
        "Skip the incident on task",
        "Cancel branch the incident on task",
        "Set variable",
        "Definitions",
        "Sign out",
    ]
    for name in wanted:
        assert any(name in text for text in reached), (name, reached)
    assert any(text.startswith("Check") for text in reached), "the diagram's nodes take focus"
    # A confirmation opens and closes from the keyboard.
    page.get_by_role("button", name="Cancel instance").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("dialog")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.get_by_role("dialog")).to_have_count(0)
    assert console_stack.detail(instance_id)["status"] == "running"
    # And the focus ring is drawn.
    page.get_by_role("button", name="Cancel instance").focus()
    outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid"


def test_the_console_calls_only_the_edge(console_stack: ConsoleStack) -> None:
    # Nothing is fetched from elsewhere: every import and stylesheet is a relative path.
    for path in CONSOLE_DIR.glob("*.js"):
        text = path.read_text(encoding="utf-8")
        for target in re.findall(r"""(?:from|import)\s*\(?\s*["']([^"']+)["']""", text):
            assert target.startswith("./"), (path.name, target)
        for unsafe in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert unsafe not in text, (path.name, unsafe)
        for storage in ("localStorage", "document.cookie"):
            assert storage not in text, (path.name, storage)
    index = console_stack.http.get("/console/").text
    assert "http" not in index.replace("http-equiv", "")
