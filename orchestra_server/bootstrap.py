"""The composition root: settings from flags and environment, and the one place that wires the parts."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import text

from orchestra_server.identity.access_tokens import AccessTokenIssuer, AccessTokenVerifier
from orchestra_server.identity.authenticator import Authenticator, check_forwarded_tenant
from orchestra_server.identity.keys import KeyRing, load_or_create_page_token_key
from orchestra_server.identity.token_endpoint import TokenEndpoint
from orchestra_server.observability.metrics import Metrics
from orchestra_server.service.definitions import DefinitionService
from orchestra_server.service.directory import DirectoryService
from orchestra_server.service.processes import Caller, ProcessService
from orchestra_server.service.scheduler import TimerScheduler
from orchestra_server.storage.database import Database, default_url, open_database
from orchestra_server.storage.migrate import upgrade

DEFAULT_DATA_DIR = Path("data")
DEFAULT_ISSUER = "orchestra"
DEFAULT_AUDIENCE = "orchestra-api"
SIGNING_KEYS_FILE = "signing-keys.json"


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class Settings:
    data_dir: Path = DEFAULT_DATA_DIR
    db_url: str | None = None
    issuer: str = DEFAULT_ISSUER
    audience: str = DEFAULT_AUDIENCE
    token_lifetime: timedelta = timedelta(hours=1)
    # How long a new signing key is published before it signs: the edge refetches the key
    # set every 30 s and does not refetch on an unknown key id, so twice that is safe.
    key_publish_lead: timedelta = timedelta(seconds=60)
    # Revoking a consumer or removing its permission takes effect within this time.
    revocation_recheck_seconds: float = 2.0
    pool_size: int = 16

    @classmethod
    def from_environment(
        cls, *, data_dir: Path | None = None, db_url: str | None = None, **overrides: object
    ) -> Settings:
        env = os.environ
        values: dict[str, object] = {
            "data_dir": data_dir or Path(env.get("ORCHESTRA_DATA_DIR", str(DEFAULT_DATA_DIR))),
            "db_url": db_url or env.get("ORCHESTRA_DB_URL") or None,
            "issuer": env.get("ORCHESTRA_ISSUER", DEFAULT_ISSUER),
            "audience": env.get("ORCHESTRA_AUDIENCE", DEFAULT_AUDIENCE),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    @property
    def database_url(self) -> str:
        return self.db_url or default_url(self.data_dir.resolve())

    @property
    def signing_keys_path(self) -> Path:
        override = os.environ.get("ORCHESTRA_SIGNING_KEYS_FILE")
        return Path(override) if override else self.data_dir / SIGNING_KEYS_FILE


def open_storage(settings: Settings) -> Database:
    """Opens the database and brings its schema up to date."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    database = open_database(settings.database_url, pool_size=settings.pool_size)
    upgrade(database)
    return database


@dataclass
class Application:
    settings: Settings
    database: Database
    clock: Callable[[], datetime]
    processes: ProcessService
    definitions: DefinitionService
    directory: DirectoryService
    key_ring: KeyRing
    token_endpoint: TokenEndpoint
    authenticator: Authenticator
    scheduler: TimerScheduler | None = None
    metrics: Metrics = field(default_factory=Metrics)
    _closed: bool = field(default=False, repr=False)

    def health_problems(self) -> list[str]:
        """What keeps this process from serving well: the database, the scheduler."""
        problems = []
        try:
            with self.database.reading() as conn:
                conn.execute(text("SELECT 1"))
        except Exception:  # any failure means the database cannot serve
            problems.append("database unreachable")
        if self.scheduler is not None and not self.scheduler.healthy:
            problems.append("scheduler not running")
        return problems

    def authenticate(self, authorization: str | None, tenant_hint: str | None, now: datetime) -> Caller:
        principal = self.authenticator.authenticate(authorization, now)
        check_forwarded_tenant(principal, tenant_hint)
        return Caller(tenant_id=principal.tenant_id, actor=principal.client_id)

    def jwks_json(self, now: datetime) -> bytes:
        return json.dumps(self.key_ring.jwks(now), separators=(",", ":")).encode()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.database.dispose()


def build_application(
    settings: Settings,
    *,
    clock: Callable[[], datetime] = utc_now,
    ids: Callable[[], str] = new_id,
    database: Database | None = None,
) -> Application:
    database = database or open_storage(settings)
    directory = DirectoryService(database, clock=clock)
    key_ring = KeyRing.load_or_create(
        settings.signing_keys_path, clock(), max_token_lifetime=settings.token_lifetime
    )
    issuer = AccessTokenIssuer(key_ring, settings.issuer, settings.audience, lifetime=settings.token_lifetime)
    verifier = AccessTokenVerifier(key_ring, settings.issuer, settings.audience)
    app = Application(
        settings=settings,
        database=database,
        clock=clock,
        processes=ProcessService(
            database,
            clock=clock,
            new_id=ids,
            page_token_key=load_or_create_page_token_key(settings.signing_keys_path),
        ),
        definitions=DefinitionService(database, clock=clock),
        directory=directory,
        key_ring=key_ring,
        token_endpoint=TokenEndpoint(directory, issuer),
        authenticator=Authenticator(
            verifier, directory, recheck_seconds=settings.revocation_recheck_seconds, clock=clock
        ),
    )
    app.metrics.watch(app)
    return app
