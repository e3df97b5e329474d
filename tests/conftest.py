"""Shared fixtures: databases on SQLite and on a real PostgreSQL, and a fixed clock."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from orchestra_server.storage.database import Database, open_database
from orchestra_server.storage.migrate import upgrade

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_ADMIN_URL = os.environ.get("ORCHESTRA_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# Rows the first migration seeds; a reset keeps them.
_SEEDED = {"tenants": ("id", "default"), "roles": ("name", "api_consumer")}
_TABLES = (
    "idempotency_keys",
    "audit",
    "variables",
    "tokens",
    "instances",
    "definitions",
    "consumer_roles",
    "consumers",
    "role_permissions",
    "roles",
    "tenants",
)


def _postgres_reachable() -> str | None:
    try:
        engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # any failure to connect means "no PostgreSQL here"
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return None


def require_postgres() -> None:
    problem = _postgres_reachable()
    if problem is None:
        return
    if IN_CI:
        pytest.fail(f"PostgreSQL is required in CI but not reachable at {PG_ADMIN_URL}: {problem}")
    pytest.skip(f"no PostgreSQL on this machine ({problem}); CI runs these tests")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test session, dropped at the end."""
    require_postgres()
    name = f"orchestra_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    database = open_database(url)
    upgrade(database)
    database.dispose()
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def reset_postgres(database: Database) -> None:
    with database.engine.begin() as conn:
        conn.execute(text("TRUNCATE " + ", ".join(_TABLES[:-4]) + " RESTART IDENTITY CASCADE"))
        conn.execute(text("DELETE FROM consumer_roles"))
        conn.execute(text("DELETE FROM consumers"))
        conn.execute(text("DELETE FROM role_permissions WHERE role <> 'api_consumer'"))
        conn.execute(text("DELETE FROM roles WHERE name <> 'api_consumer'"))
        conn.execute(text("DELETE FROM tenants WHERE id <> 'default'"))


@pytest.fixture(scope="session")
def migrated_sqlite_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty SQLite file, made once per session; tests take copies of it."""
    path = tmp_path_factory.mktemp("sqlite-template") / "orchestra.db"
    template = open_database(f"sqlite:///{path}")
    upgrade(template)
    template.dispose()
    # The last connection closed checkpoints the write-ahead log into the file itself.
    assert not path.with_name(path.name + "-wal").exists(), "the template's write-ahead log was not folded in"
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated, empty database: SQLite in a temporary directory, or the session's PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path / "orchestra.db"
        # A copy of the session's migrated file is the same schema as migrating anew, at a
        # fraction of the cost; tests/integration/test_migrations.py runs the migrations themselves.
        shutil.copyfile(request.getfixturevalue("migrated_sqlite_file"), path)
        db = open_database(f"sqlite:///{path}")
        upgrade(db)  # a no-op at the newest revision; it would catch a stale template
    else:
        url = request.getfixturevalue("postgres_url")
        db = open_database(url)
        reset_postgres(db)
    try:
        yield db
    finally:
        db.dispose()


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
# Every ProcessService a test builds signs page tokens with this key, as the
# workers of one deployment share theirs.
PAGE_TOKEN_KEY = bytes(range(32))


# --- one id for each test -------------------------------------------------------------------------


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Gives each test an id of its own where a plugin gave several the same one.

    schemathesis names the test of each API operation `test[METHOD /path]` but leaves all of
    them the id of the one test function; the workers of a distributed run are handed tests by
    id, so all but the first of them would silently not run.
    """
    seen: dict[str, int] = {}
    for item in items:
        seen[item.nodeid] = seen.get(item.nodeid, 0) + 1
    for item in items:
        if seen[item.nodeid] > 1 and isinstance(item, pytest.Function) and item.name != item.originalname:
            _set_nodeid(item, f"{item.nodeid.rsplit('::', 1)[0]}::{item.name}")
    ids = [item.nodeid for item in items]
    assert len(ids) == len(set(ids)), "two tests share an id: a distributed run would drop one"


def _set_nodeid(item: pytest.Item, nodeid: str) -> None:
    # pytest has no public way to rename a collected test; where it keeps the id differs by version
    # (the assertion above fails the run should neither place take).
    try:
        from _pytest.nodeid import coerce_node_id
    except ImportError:  # pytest before 9.2 keeps the id as a string
        item._nodeid = nodeid
    else:
        item._id = coerce_node_id(nodeid)


# --- a run leaves the tree as it found it --------------------------------------------------------

# What a run may leave in the working tree: the installed packages (Python and the Node
# client's), caches of the tools and the
# example database the property tests replay from; all of them ignored by git.
_RUN_LEFTOVERS_ALLOWED = (
    ".venv/",
    "clients/node/node_modules/",
    ".pytest_cache/",
    ".mypy_cache/",
    ".ruff_cache/",
    ".hypothesis/",
)
_BEFORE_RUN = pytest.StashKey[set[str] | None]()


def _untracked_paths() -> set[str] | None:
    """Untracked paths, ignored ones included, outside the allowed caches (None: not a git checkout)."""
    if not (ROOT / ".git").exists():
        return None
    import subprocess

    listed = subprocess.run(
        ["git", "status", "--porcelain", "-z", "--untracked-files=all", "--ignored"],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    if listed.returncode != 0:
        return None
    paths = set()
    for entry in listed.stdout.decode(errors="replace").split("\0"):
        status, path = entry[:2], entry[3:]
        if status not in ("??", "!!") or not path:
            continue
        if path.startswith(_RUN_LEFTOVERS_ALLOWED) or "__pycache__/" in path or ".egg-info/" in path:
            continue
        paths.add(path)
    return paths


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_BEFORE_RUN] = _untracked_paths()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fails the run when tests left files in the repository (they belong in temporary folders)."""
    before = session.config.stash.get(_BEFORE_RUN, None)
    after = _untracked_paths()
    if before is None or after is None or hasattr(session.config, "workerinput"):
        return
    left = sorted(after - before)
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                "the run left files in the repository: " + ", ".join(left[:20]), red=True, bold=True
            )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
