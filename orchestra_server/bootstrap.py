"""The composition root: the one place that builds the parts of a process from its Settings.

`cli` and `runtime` ask for what they need here: a serving `Application` (services, scheduler,
metrics, key ring, authenticator), the REST edge in front of the workers, or, for an
administrative command, only the database and services it uses, or only the key ring.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from orchestra_server.edge import EdgeSettings, EnvoyProcess, Upstream
from orchestra_server.edge.config import REPO_ROOT
from orchestra_server.identity.access_tokens import AccessTokenIssuer, AccessTokenVerifier
from orchestra_server.identity.authenticator import Authenticator, check_forwarded_tenant
from orchestra_server.identity.client_secrets import SecretChecks
from orchestra_server.identity.keys import KeyRing, load_or_create_page_token_key
from orchestra_server.identity.token_endpoint import TokenEndpoint
from orchestra_server.observability.metrics import Metrics
from orchestra_server.service.definitions import DefinitionService
from orchestra_server.service.directory import DirectoryService
from orchestra_server.service.operations import OperationsService
from orchestra_server.service.processes import Caller, ProcessService
from orchestra_server.service.scheduler import TimerScheduler
from orchestra_server.service.status import read_engine_state
from orchestra_server.settings import Settings
from orchestra_server.storage.database import Database, LogCheckpointer, open_database
from orchestra_server.storage.migrate import current_revision, require_current, upgrade
from orchestra_server.transport.server import ServerDependencies
from orchestra_server.wire.rate_limits import TenantRateLimit

# The example definitions `orchestra up --demo` deploys.
EXAMPLES = REPO_ROOT / "examples"
# The web console's static files, served by the edge under /console/.
CONSOLE_DIR = Path(__file__).resolve().parent / "console"


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


def _open_database(settings: Settings, *, must_exist: bool = False) -> Database:
    return open_database(
        settings.database_url,
        pool_size=max(settings.pool_size, settings.call_threads),
        sqlite_synchronous=settings.sqlite_synchronous,
        must_exist=must_exist,
    )


def open_storage(settings: Settings) -> Database:
    """Opens the database, creating it when needed, and brings its schema up to date."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    database = _open_database(settings)
    try:
        upgrade(database)
    except BaseException:
        database.dispose()
        raise
    return database


def open_existing_storage(settings: Settings) -> Database:
    """Opens the database as it is, for commands that only read: never created nor migrated.

    DatabaseNotReady when there is no database or its schema is not this version's.
    """
    database = _open_database(settings, must_exist=True)
    try:
        require_current(database)
    except BaseException:
        database.dispose()
        raise
    return database


def prepare_storage(settings: Settings) -> bool:
    """Migrates the database before workers start; True when it had no schema before."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    database = _open_database(settings)
    try:
        fresh = current_revision(database) is None
        upgrade(database)
    finally:
        database.dispose()
    return fresh


def open_key_ring(settings: Settings, now: datetime) -> KeyRing:
    """The signing keys, creating the file with a first key when there is none."""
    return KeyRing.load_or_create(settings.signing_keys_path, now, max_token_lifetime=settings.token_lifetime)


@dataclass
class Administration:
    """The services an administrative command uses, on one database; no keys, no scheduler."""

    database: Database
    clock: Callable[[], datetime]
    definitions: DefinitionService
    directory: DirectoryService
    # Where the page-token key lives; read (or created) only by a command that pages.
    signing_keys_path: Path
    _operations: OperationsService | None = field(default=None, repr=False)

    @property
    def operations(self) -> OperationsService:
        if self._operations is None:
            self._operations = _operations(
                self.database,
                self.clock,
                new_id,
                load_or_create_page_token_key(self.signing_keys_path),
                self.definitions,
            )
        return self._operations

    def close(self) -> None:
        self.database.dispose()


@contextmanager
def administration(
    settings: Settings, *, writes: bool, clock: Callable[[], datetime] = utc_now
) -> Iterator[Administration]:
    """The services for one command, closed when it is done.

    A command that `writes` brings the schema up to date first, as the server does on start;
    one that only reads leaves the database as it finds it.
    """
    database = open_storage(settings) if writes else open_existing_storage(settings)
    admin = Administration(
        database=database,
        clock=clock,
        definitions=DefinitionService(database, clock=clock),
        directory=DirectoryService(database, clock=clock),
        signing_keys_path=settings.signing_keys_path,
    )
    try:
        yield admin
    finally:
        admin.close()


def _operations(
    database: Database,
    clock: Callable[[], datetime],
    ids: Callable[[], str],
    page_token_key: bytes,
    definitions: DefinitionService,
) -> OperationsService:
    """The operations service of an administrative command, over its own process service."""
    processes = ProcessService(database, clock=clock, new_id=ids, page_token_key=page_token_key)
    return OperationsService(
        database,
        clock=clock,
        new_id=ids,
        page_token_key=page_token_key,
        processes=processes,
        definitions=definitions,
    )


@dataclass
class Application:
    """Everything one serving process runs on."""

    settings: Settings
    database: Database
    clock: Callable[[], datetime]
    processes: ProcessService
    definitions: DefinitionService
    directory: DirectoryService
    operations: OperationsService
    key_ring: KeyRing
    token_endpoint: TokenEndpoint
    authenticator: Authenticator
    metrics: Metrics
    # None: this process fires no timers (with SQLite only the first worker does).
    scheduler: TimerScheduler | None
    # SQLite in a file: its log is checkpointed in the background once started.
    checkpointer: LogCheckpointer | None = None
    _closed: bool = field(default=False, repr=False)

    def health_problems(self) -> list[str]:
        """What keeps this process from serving well: the database, the scheduler."""
        problems = []
        try:
            self.database.check_writable()
        except Exception:  # any failure means the database cannot serve
            problems.append("database unavailable")
        if self.scheduler is not None and not self.scheduler.healthy:
            problems.append("scheduler not running")
        return problems

    def authenticate(self, authorization: str | None, tenant_hint: str | None, now: datetime) -> Caller:
        principal = self.authenticator.authenticate(authorization, now)
        check_forwarded_tenant(principal, tenant_hint)
        return Caller(
            tenant_id=principal.tenant_id, actor=principal.client_id, permissions=principal.permissions
        )

    def jwks_json(self, now: datetime) -> bytes:
        return json.dumps(self.key_ring.jwks(now), separators=(",", ":")).encode()

    def server_dependencies(self) -> ServerDependencies:
        """What the gRPC server uses of this application, and nothing more."""
        return ServerDependencies(
            processes=self.processes,
            operations=self.operations,
            token_endpoint=self.token_endpoint,
            key_set=self.jwks_json,
            authenticate=self.authenticate,
            metrics=self.metrics,
            clock=self.clock,
            health_problems=self.health_problems,
        )

    def start(self) -> None:
        """Starts the background work: the timer scheduler, when this process runs one, and the
        checkpoints of a SQLite database's log."""
        if self.checkpointer is not None:
            self.checkpointer.start()
        if self.scheduler is not None:
            self.scheduler.start()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.scheduler is not None:
                self.scheduler.stop()
            if self.checkpointer is not None:
                self.checkpointer.stop()
            self.database.dispose()


def build_application(
    settings: Settings,
    *,
    clock: Callable[[], datetime] = utc_now,
    ids: Callable[[], str] = new_id,
    database: Database | None = None,
    scheduler: bool = False,
) -> Application:
    """Builds a serving process's parts; with `scheduler` it fires timers once started."""
    database = database or open_storage(settings)
    directory = DirectoryService(database, clock=clock)
    key_ring = open_key_ring(settings, clock())
    issuer = AccessTokenIssuer(key_ring, settings.issuer, settings.audience, lifetime=settings.token_lifetime)
    verifier = AccessTokenVerifier(key_ring, settings.issuer, settings.audience)
    page_token_key = load_or_create_page_token_key(settings.signing_keys_path)
    processes = ProcessService(database, clock=clock, new_id=ids, page_token_key=page_token_key)
    definitions = DefinitionService(database, clock=clock)
    timers = TimerScheduler(database, processes, clock=clock) if scheduler else None
    metrics = Metrics()
    metrics.watch(lambda: read_engine_state(database, clock()), timers)
    return Application(
        settings=settings,
        database=database,
        clock=clock,
        processes=processes,
        definitions=definitions,
        directory=directory,
        operations=OperationsService(
            database,
            clock=clock,
            new_id=ids,
            page_token_key=page_token_key,
            processes=processes,
            definitions=definitions,
        ),
        key_ring=key_ring,
        token_endpoint=TokenEndpoint(
            directory, issuer, checks=SecretChecks.for_call_threads(settings.call_threads)
        ),
        authenticator=Authenticator(
            verifier, directory, recheck_seconds=settings.revocation_recheck_seconds, clock=clock
        ),
        metrics=metrics,
        scheduler=timers,
        checkpointer=database.log_checkpointer(),
    )


def build_edge(
    settings: Settings,
    rest_host: str,
    rest_port: int,
    upstreams: Sequence[tuple[str, int]],
    *,
    admin: bool = False,
    tenant_limits: Mapping[str, TenantRateLimit] | None = None,
) -> EnvoyProcess:
    """The REST edge in front of the workers at `upstreams` (host, port), not yet started.

    Every tenant gets `settings.tenant_rate_limit` but those in `tenant_limits`, which get their
    own. With `admin` its admin interface listens on a unix socket only the owner may open.
    """
    return EnvoyProcess(
        EdgeSettings(
            rest_host=rest_host,
            rest_port=rest_port,
            upstreams=tuple(Upstream(host, port) for host, port in upstreams),
            issuer=settings.issuer,
            audience=settings.audience,
            template_dir=settings.edge_dir,
            console_dir=CONSOLE_DIR,
            admin_socket=settings.data_dir / "edge" / "admin.sock" if admin else None,
            tenant_rate_limit=settings.tenant_rate_limit,
        ),
        settings.data_dir / "edge",
        tenant_limits=tenant_limits,
    )


# The stored tenant limits are read on a connection or two of their own, every few seconds.
_LIMIT_READER_POOL = 2


@contextmanager
def stored_tenant_limits(settings: Settings) -> Iterator[Callable[[], dict[str, TenantRateLimit]]]:
    """A function reading the tenants' own rate limits from the database, for the supervisor
    that keeps the edge's copy current; the database is closed when the block ends."""
    database = open_database(
        settings.database_url, pool_size=_LIMIT_READER_POOL, sqlite_synchronous=settings.sqlite_synchronous
    )
    try:
        yield DirectoryService(database, clock=utc_now).tenant_rate_limits
    finally:
        database.dispose()
