"""Screenshots of each console page from a demo stack: `python -m tests.console.screenshots DIR`.

Runs `orchestra up --demo` on a temporary data directory and free ports, signs in as the demo's
console operator, starts a few instances (one of them into an incident), and writes one PNG per
page into DIR (`make screenshots` writes docs/console/). Needs Debian's Chromium.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ORCHESTRA = Path(sys.executable).parent / "orchestra"
CHROMIUM = Path(os.environ.get("ORCHESTRA_CHROMIUM", "/usr/bin/chromium"))
READY = "Press Ctrl-C to stop."
START_TIMEOUT = 60.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_demo(data_dir: Path) -> tuple[subprocess.Popen[str], str, str, str]:
    """The demo stack, its REST address, and the console operator's client id and secret."""
    http_port, grpc_port = _free_port(), _free_port()
    process = subprocess.Popen(
        [
            str(ORCHESTRA),
            "up",
            "--demo",
            "--workers",
            "1",
            "--data-dir",
            str(data_dir),
            "--http-port",
            str(http_port),
            "--grpc-port",
            str(grpc_port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRA_")},
    )
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if line.strip() == READY:
            break
    text = "\n".join(lines)
    operator = re.search(r"Console operator.*\n\s+client_id:\s+(\S+)\n\s+client_secret:\s+(\S+)", text)
    rest = re.search(r"^REST: (\S+)$", text, re.MULTILINE)
    if operator is None or rest is None:
        process.kill()
        raise SystemExit(f"the demo did not start:\n{text}")
    return process, rest.group(1), operator.group(1), operator.group(2)


def _seed(api: httpx.Client, headers: dict[str, str]) -> str:
    """Instances in several states; returns the id of one with an incident."""

    def start(definition: str, variables: dict[str, Any]) -> str:
        path = f"/orchestra-api/process/{definition}/start"
        answer = api.post(path, json={"variables": variables}, headers=headers)
        answer.raise_for_status()
        return str(answer.json()["instance_id"])

    def tokens(instance_id: str) -> list[dict[str, Any]]:
        answer = api.get(f"/orchestra-ops/v1/instances/{instance_id}", headers=headers)
        answer.raise_for_status()
        return list(answer.json()["instance"]["tokens"])

    def signal_token(token_id: str, variables: dict[str, Any] | None = None) -> None:
        body = {"variables": variables} if variables else {}
        api.post(f"/orchestra-api/token/{token_id}/signal", json=body, headers=headers).raise_for_status()

    for amount, submitter in ((1800, "ann"), (5400, "bob"), (12000, "carla"), (250, "dev")):
        start("expense_approval", {"amount": amount, "submitter": submitter})
    # Finance decides without saying whether it approves: the `decided` gateway has no
    # `approved` to read, and the token stops there in incident.
    stuck = start("expense_approval", {"amount": 2300, "submitter": "erin"})
    for token in tokens(stuck):
        signal_token(token["id"])
    review = start("parallel_review", {"document": "Q3 report"})
    for token in tokens(review)[:2]:
        signal_token(token["id"])
    start("parallel_review", {"document": "Pricing page"})
    done = start("three_step", {})
    for token in tokens(done):
        signal_token(token["id"])
    cancelled = start("three_step", {})
    api.post(f"/orchestra-ops/v1/instances/{cancelled}/cancel", json={"reason": "duplicate"}, headers=headers)
    start("reminder", {"note": "renew the certificate"})
    return stuck


def main(out_dir: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="orchestra-screens-") as scratch:
        process, rest_url, client_id, client_secret = _start_demo(Path(scratch))
        try:
            with httpx.Client(base_url=rest_url, timeout=30) as api:
                credentials = {"client_id": client_id, "client_secret": client_secret}
                token = api.post(
                    "/oauth/token", data={"grant_type": "client_credentials", **credentials}
                ).json()["access_token"]
                stuck = _seed(api, {"authorization": f"Bearer {token}"})
            args = ["--no-sandbox"] if os.geteuid() == 0 else []
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
                page = browser.new_page(viewport={"width": 1280, "height": 860})
                page.goto(f"{rest_url}/console/")
                page.get_by_label("Client id").fill(client_id)
                page.screenshot(path=str(out_dir / "sign-in.png"))
                page.get_by_label("Client secret").fill(client_secret)
                page.get_by_role("button", name="Sign in").click()
                expect(page.get_by_role("button", name="Sign out")).to_be_visible()

                shots = [
                    ("definitions.png", "#/definitions/expense_approval", "svg.diagram"),
                    ("instances.png", "#/instances", "table.list tbody tr"),
                    ("instance.png", f"#/instances/{stuck}", "ol.timeline li"),
                    ("incidents.png", "#/incidents", "table.list tbody tr"),
                ]
                for name, route, ready in shots:
                    page.evaluate(f"() => {{ location.hash = '{route}'; }}")
                    page.locator(ready).first.wait_for()
                    page.wait_for_timeout(300)
                    page.screenshot(path=str(out_dir / name), full_page=True)
                page.set_viewport_size({"width": 390, "height": 844})
                page.evaluate(f"() => {{ location.hash = '#/instances/{stuck}'; }}")
                page.wait_for_timeout(500)
                page.screenshot(path=str(out_dir / "instance-390.png"))
                browser.close()
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
    for path in sorted(out_dir.glob("*.png")):
        print(path)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/console"))
