"""Fires due timers and wait timeouts in bounded batches, exactly once across every scheduler."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from orchestra_server.errors import OrchestraError
from orchestra_server.service.limits import IDEMPOTENCY_RETENTION
from orchestra_server.service.processes import ProcessService
from orchestra_server.storage import repository as repo
from orchestra_server.storage.database import Database

_log = logging.getLogger("orchestra.scheduler")

DEFAULT_BATCH = 200
DEFAULT_POLL_SECONDS = 0.5
# Long enough to fire a whole batch; a scheduler that dies loses its batch for this long at most.
DEFAULT_LEASE = timedelta(seconds=30)
# Firings committed together: one commit and a few statements per this many instead of one
# per timer, short enough that SQLite's write lock, which holds every other writer back, is not
# held for long (about 0.1-0.2 ms of work per firing). On PostgreSQL a chunk holds only its own
# instances' row locks, and each chunk costs round trips and a commit of its own.
DEFAULT_FIRE_CHUNK_SQLITE = 50
DEFAULT_FIRE_CHUNK_POSTGRES = 100
# Idempotency keys past their retention are forgotten this often.
SWEEP_EVERY = timedelta(minutes=10)


class TimerScheduler:
    """Each firing takes the instance's row lock, so a firing and a hand signal of the same
    token, or two schedulers, can never both advance it: the later one finds the token consumed
    (or not yet due) and lets it be. Firings are committed in chunks, each chunk's instances
    locked in one order; a chunk that fails as a whole (a failing statement or a deadlock with
    another writer, say) is retried one firing at a time."""

    def __init__(
        self,
        database: Database,
        processes: ProcessService,
        *,
        clock: Callable[[], datetime],
        batch_size: int = DEFAULT_BATCH,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
        lease: timedelta = DEFAULT_LEASE,
        fire_chunk: int | None = None,
    ) -> None:
        self._db = database
        self._processes = processes
        self._clock = clock
        self._batch = batch_size
        self._poll = poll_seconds
        self._lease = lease
        default_chunk = DEFAULT_FIRE_CHUNK_POSTGRES if database.is_postgres else DEFAULT_FIRE_CHUNK_SQLITE
        self._chunk = fire_chunk or default_chunk
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_run_at: datetime | None = None
        self.last_error: str | None = None
        self.fired_total = 0
        self.last_claimed = 0
        self._next_sweep: datetime | None = None

    def run_once(self) -> int:
        """Claims one batch of due tokens and fires them; returns how many fired."""
        now = self._clock()
        with self._db.writing() as conn:
            claimed = repo.claim_due_tokens(conn, now, self._batch, now + self._lease)
        fired = 0
        for start in range(0, len(claimed), self._chunk):
            fired += self._fire(claimed[start : start + self._chunk])
        self.fired_total += fired
        self.last_run_at = now
        self.last_claimed = len(claimed)
        return fired

    def _fire(self, chunk: list[tuple[str, str]]) -> int:
        try:
            return self._processes.fire_due_tokens(chunk)
        except Exception as exc:  # retried one by one below, where each failure is its own
            _log.info("firing %d timers together failed (%s); firing them one at a time", len(chunk), exc)
        fired = 0
        for token_id, tenant_id in chunk:
            try:
                fired += self._processes.fire_due_token(tenant_id, token_id)
            except OrchestraError as exc:
                # The lease runs out and a later round retries it; others in the batch go on.
                _log.warning("firing token %s failed: %s", token_id, exc)
            except Exception:  # a failing statement of one firing leaves the others to go on
                _log.exception("firing token %s failed", token_id)
        return fired

    def sweep(self) -> int:
        """Forgets idempotency keys past their retention; returns how many."""
        now = self._clock()
        with self._db.writing() as conn:
            return repo.forget_idempotency_keys(conn, now - IDEMPOTENCY_RETENTION)

    def _maybe_sweep(self) -> None:
        now = self._clock()
        if self._next_sweep is None or now >= self._next_sweep:
            self._next_sweep = now + SWEEP_EVERY
            self.sweep()

    def drain(self, max_rounds: int = 1_000_000) -> int:
        """Fires everything due now (tests and start-up catch-up)."""
        total = 0
        for _ in range(max_rounds):
            total += self.run_once()
            if self.last_claimed == 0:
                break
        return total

    @property
    def healthy(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.last_error is None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="timer-scheduler", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
                self._maybe_sweep()
                self.last_error = None
            except Exception as exc:  # the loop must outlive a database outage
                self.last_error = type(exc).__name__
                self.last_claimed = 0
                _log.error("scheduler round failed", exc_info=exc)
            if self.last_claimed < self._batch:
                self._stop.wait(self._poll)
