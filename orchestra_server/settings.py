"""Every setting of an Orchestra process, read once from the environment and the command line.

Each default is stated here (or, for the signing key lead, next to the reason for it in the key
ring) and nowhere else; `bootstrap` builds every part from a `Settings` value, and nothing else
in the package reads the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from orchestra_server.identity.keys import DEFAULT_PUBLISH_LEAD
from orchestra_server.storage.database import (
    DEFAULT_SQLITE_SYNCHRONOUS,
    SQLITE_SYNCHRONOUS_LEVELS,
    default_url,
)
from orchestra_server.wire.rate_limits import DEFAULT_TENANT_RATE_LIMIT, TenantRateLimit, parse_rate_limit

SIGNING_KEYS_FILE = "signing-keys.json"
LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# A bound so a grace period given in milliseconds by mistake is refused, not waited out.
MAX_GRACE_PERIOD = 3600.0
DEFAULT_CALL_THREADS = 4
MAX_CALL_THREADS = 64

# Setting name -> the environment variable that supplies it when no flag does.
ENVIRONMENT: Mapping[str, str] = {
    "data_dir": "ORCHESTRA_DATA_DIR",
    "db_url": "ORCHESTRA_DB_URL",
    "issuer": "ORCHESTRA_ISSUER",
    "audience": "ORCHESTRA_AUDIENCE",
    "signing_keys_file": "ORCHESTRA_SIGNING_KEYS_FILE",
    "sqlite_synchronous": "ORCHESTRA_SQLITE_SYNCHRONOUS",
    "log_level": "ORCHESTRA_LOG_LEVEL",
    "log_format": "ORCHESTRA_LOG_FORMAT",
    "metrics_host": "ORCHESTRA_METRICS_HOST",
    "metrics_port": "ORCHESTRA_METRICS_PORT",
    "edge_dir": "ORCHESTRA_EDGE_DIR",
    "grace_period": "ORCHESTRA_GRACE_PERIOD",
    "call_threads": "ORCHESTRA_CALL_THREADS",
    "tenant_rate_limit": "ORCHESTRA_TENANT_RATE_LIMIT",
}


class SettingsError(ValueError):
    """A flag or environment variable holds a value Orchestra cannot use."""


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("data")
    # None: SQLite in the data directory.
    db_url: str | None = None
    issuer: str = "orchestra"
    audience: str = "orchestra-api"
    # None: signing-keys.json in the data directory.
    signing_keys_file: Path | None = None
    sqlite_synchronous: str = DEFAULT_SQLITE_SYNCHRONOUS
    log_level: str = "INFO"
    # None: text on a terminal, else one JSON object per line.
    log_format: str | None = None
    metrics_host: str = "127.0.0.1"
    # None: no metrics endpoint; 0: each worker picks a free port.
    metrics_port: int | None = None
    # None: envoy/ at the repository root.
    edge_dir: Path | None = None
    token_lifetime: timedelta = timedelta(hours=1)
    key_publish_lead: timedelta = DEFAULT_PUBLISH_LEAD
    # Revoking a consumer or removing its permission takes effect within this time.
    revocation_recheck_seconds: float = 2.0
    # Database connections per process (at least call_threads: a running call never waits for one).
    pool_size: int = 16
    # Threads per worker process that run calls (ServerOptions.max_workers); further calls admitted
    # wait in line for one.
    call_threads: int = DEFAULT_CALL_THREADS
    # Seconds a stopping worker lets the calls in flight finish before it cancels them and exits.
    grace_period: float = 10.0
    # What the edge allows each tenant that has no limit of its own (`tenant set-limit`).
    tenant_rate_limit: TenantRateLimit = DEFAULT_TENANT_RATE_LIMIT

    def __post_init__(self) -> None:
        if self.sqlite_synchronous not in SQLITE_SYNCHRONOUS_LEVELS:
            raise SettingsError(
                f"{ENVIRONMENT['sqlite_synchronous']} must be one of {', '.join(SQLITE_SYNCHRONOUS_LEVELS)}"
            )
        if self.log_level not in LOG_LEVELS:
            raise SettingsError(f"{ENVIRONMENT['log_level']} must be one of {', '.join(LOG_LEVELS)}")
        if self.log_format is not None and self.log_format not in LOG_FORMATS:
            raise SettingsError(f"{ENVIRONMENT['log_format']} must be one of {', '.join(LOG_FORMATS)}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise SettingsError(f"{ENVIRONMENT['metrics_port']} must be a port number (0 to 65535)")
        if not 0 <= self.grace_period <= MAX_GRACE_PERIOD:
            raise SettingsError(
                f"{ENVIRONMENT['grace_period']} must be a number of seconds from 0 to {MAX_GRACE_PERIOD:.0f}"
            )
        if not 1 <= self.call_threads <= MAX_CALL_THREADS:
            raise SettingsError(
                f"{ENVIRONMENT['call_threads']} must be a whole number from 1 to {MAX_CALL_THREADS}"
            )
        problem = self.tenant_rate_limit.problem()
        if problem is not None:
            raise SettingsError(f"{ENVIRONMENT['tenant_rate_limit']}: {problem}")

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **flags: Any) -> Settings:
        """The settings of this process: a flag given wins, then its environment variable, then the default.

        `environ` defaults to the process environment; flags left at None count as not given.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, variable in ENVIRONMENT.items():
            text = env.get(variable, "").strip()
            if text:
                values[name] = _parse(name, variable, text)
        known = {f.name for f in fields(cls)}
        for name, value in flags.items():
            if name not in known:
                raise TypeError(f"unknown setting {name}")
            if value is not None:
                values[name] = value
        return cls(**values)

    def given(self, **flags: Any) -> Settings:
        """These settings with the flags that were given (not None) put over them."""
        return replace(self, **{name: value for name, value in flags.items() if value is not None})

    @property
    def database_url(self) -> str:
        return self.db_url or default_url(self.data_dir.resolve())

    @property
    def uses_sqlite(self) -> bool:
        return self.db_url is None or self.db_url.startswith("sqlite")

    @property
    def signing_keys_path(self) -> Path:
        return self.signing_keys_file or self.data_dir / SIGNING_KEYS_FILE


def _parse(name: str, variable: str, text: str) -> Any:
    if name in ("data_dir", "signing_keys_file", "edge_dir"):
        return Path(text)
    if name == "metrics_port":
        try:
            return int(text)
        except ValueError:
            raise SettingsError(f"{variable} must be a port number (0 to 65535)") from None
    if name == "call_threads":
        try:
            return int(text)
        except ValueError:
            raise SettingsError(f"{variable} must be a whole number from 1 to {MAX_CALL_THREADS}") from None
    if name == "grace_period":
        try:
            return float(text)
        except ValueError:
            raise SettingsError(f"{variable} must be a number of seconds") from None
    if name == "tenant_rate_limit":
        try:
            return parse_rate_limit(text)
        except ValueError as exc:
            raise SettingsError(f"{variable}: {exc}") from None
    if name in ("sqlite_synchronous", "log_level"):
        return text.upper()
    return text
