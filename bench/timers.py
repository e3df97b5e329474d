"""How long due timers take to drain: parked timer tokens seeded due in the past, then
``TimerScheduler.drain()`` timed in one or several processes at once, each built as a worker
builds its scheduler (``build_application(..., scheduler=True)``)."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path
from typing import Any

from bench.seed import seed_instances
from orchestra_server.bootstrap import build_application
from orchestra_server.edge.config import REPO_ROOT
from orchestra_server.settings import Settings
from orchestra_server.storage.database import open_database

TENANT = "timers"


def prepare(data_dir: Path, db_url: str | None) -> Settings:
    settings = Settings.load(data_dir=data_dir, db_url=db_url)
    app = build_application(settings)
    try:
        app.definitions.deploy([REPO_ROOT / "examples" / "reminder.yaml"])
        app.directory.create_tenant(TENANT)
    finally:
        app.close()
    return settings


def _drain_main(job: dict[str, Any]) -> dict[str, Any]:
    settings = Settings.load(data_dir=Path(job["data_dir"]), db_url=job["db_url"])
    app = build_application(settings, scheduler=True)
    try:
        scheduler = app.scheduler
        assert scheduler is not None
        delay = job["start_at"] - time.time()
        if delay > 0:
            time.sleep(delay)
        began = time.time()
        fired = scheduler.drain()
        ended = time.time()
    finally:
        app.close()
    return {"fired": fired, "began": began, "ended": ended}


def due_left(url: str) -> int:
    db = open_database(url, pool_size=1)
    try:
        with db.reading() as conn:
            return int(
                conn.exec_driver_sql(
                    "SELECT count(*) FROM tokens WHERE due_at IS NOT NULL AND status = 'parked'"
                ).scalar_one()
            )
    finally:
        db.dispose()


def _forget_due(url: str) -> None:
    """After a capped drain: the timers left due are dropped, so the next case starts from none."""
    db = open_database(url, pool_size=1)
    try:
        with db.writing() as conn:
            conn.exec_driver_sql("DELETE FROM tokens WHERE due_at IS NOT NULL AND status = 'parked'")
    finally:
        db.dispose()


def drain(settings: Settings, count: int, processes: int, cap_seconds: float | None = None) -> dict[str, Any]:
    """Seeds `count` due timers, drains them with `processes` schedulers; the wall time of the drain.

    With `cap_seconds`, schedulers still busy after that long are stopped; the rate so far is
    reported and the total time extrapolated from it (flagged `capped`)."""
    url = settings.database_url
    seed_started = time.monotonic()
    seed_instances(url, TENANT, count, definition_id="reminder", due_in_past=True)
    seed_seconds = time.monotonic() - seed_started
    due_before = due_left(url)
    start_at = time.time() + 3.0
    job = {"data_dir": str(settings.data_dir), "db_url": settings.db_url, "start_at": start_at}
    context = multiprocessing.get_context("spawn")
    pool = context.Pool(processes)
    try:
        pending = pool.map_async(_drain_main, [job] * processes)
        timeout = None if cap_seconds is None else max(1.0, start_at + cap_seconds - time.time())
        pending.wait(timeout)
        capped = not pending.ready()
        if capped:
            pool.terminate()
            answers = []
        else:
            answers = pending.get()
            pool.close()
    finally:
        pool.join()
    left = due_left(url)
    if capped:
        _forget_due(url)
        seconds = float(cap_seconds or 0)
        fired = due_before - left
    else:
        seconds = max(a["ended"] for a in answers) - min(a["began"] for a in answers)
        fired = sum(a["fired"] for a in answers)
    rate = fired / seconds if seconds else None
    return {
        "timers": count,
        "processes": processes,
        "fired": fired,
        "left_due": left,
        "seconds": round(seconds if not capped else count / rate if rate else float("nan"), 2),
        "measured_seconds": round(seconds, 2),
        "capped": capped,
        "per_second": round(rate, 1) if rate else None,
        "seed_seconds": round(seed_seconds, 2),
        "per_process_fired": [a["fired"] for a in answers],
    }
