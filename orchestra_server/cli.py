"""The `orchestra` command: serve, run with the edge, administer definitions, tenants, consumers, keys."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from orchestra_server.bootstrap import Application, Settings, build_application, open_storage
from orchestra_server.errors import OrchestraError

F = TypeVar("F", bound=Callable[..., Any])


def storage_options(func: F) -> F:
    """--data-dir and --db, taken by every command."""

    @click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="ORCHESTRA_DATA_DIR",
        default="data",
        show_default=True,
        help="Directory for the embedded database and the signing keys.",
    )
    @click.option(
        "--db",
        "db_url",
        envvar="ORCHESTRA_DB_URL",
        default=None,
        help="Database URL (postgresql://...); default: SQLite in the data directory.",
    )
    @functools.wraps(func)
    def wrapper(*args: Any, data_dir: Path, db_url: str | None, **kwargs: Any) -> Any:
        settings = Settings.from_environment(data_dir=data_dir, db_url=db_url)
        return func(*args, settings=settings, **kwargs)

    return wrapper  # type: ignore[return-value]


def observability_options(func: F) -> F:
    """--metrics-host, --metrics-port and --log-format, taken by the serving commands; sets up logging."""

    @click.option(
        "--metrics-host",
        default="127.0.0.1",
        show_default=True,
        envvar="ORCHESTRA_METRICS_HOST",
        help="Address the Prometheus metrics endpoints listen on.",
    )
    @click.option(
        "--metrics-port",
        type=click.IntRange(0, 65535),
        default=None,
        envvar="ORCHESTRA_METRICS_PORT",
        help="Serve Prometheus metrics at http://HOST:PORT/metrics; worker N uses this port + N "
        "(0: each picks a free port and logs it). Default: no metrics endpoint.",
    )
    @click.option(
        "--log-format",
        type=click.Choice(["json", "text"]),
        default=None,
        envvar="ORCHESTRA_LOG_FORMAT",
        help="Log line format (default: text on a terminal, else one JSON object per line).",
    )
    @functools.wraps(func)
    def wrapper(*args: Any, log_format: str | None, **kwargs: Any) -> Any:
        from orchestra_server.observability.logs import configure_logging

        configure_logging(
            os.environ.get("ORCHESTRA_LOG_LEVEL", "INFO"),
            json=(log_format or default_log_format()) == "json",
        )
        return func(*args, log_format=log_format, **kwargs)

    return wrapper  # type: ignore[return-value]


def default_log_format() -> str:
    return "text" if sys.stderr.isatty() else "json"


def metrics_ports(base: int | None, count: int, grpc_ports: set[int]) -> list[int | None]:
    """Worker N's metrics port: `base` + N (all 0 when `base` is 0, all None when it is unset)."""
    if base is None:
        return [None] * count
    if base == 0:
        return [0] * count
    ports = [base + i for i in range(count)]
    if ports[-1] > 65535:
        raise click.UsageError(f"--metrics-port {base} leaves no room for {count} workers")
    if grpc_ports.intersection(ports):
        raise click.UsageError("the metrics ports overlap the gRPC ports")
    return list(ports)


def reports_errors(func: F) -> F:
    """Domain errors end the command with their message and exit status 1, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except OrchestraError as exc:
            problems = getattr(exc, "problems", None) or [str(exc)]
            for problem in problems:
                click.echo(f"error: {problem}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def application(settings: Settings) -> Application:
    return build_application(settings)


@contextmanager
def opened(settings: Settings) -> Iterator[Application]:
    """The application for one administrative command, closed when it is done."""
    app = application(settings)
    try:
        yield app
    finally:
        app.close()


@click.group()
@click.version_option(package_name="orchestra-server")
def main() -> None:
    """Orchestra: a multi-tenant workflow engine server."""
    logging.basicConfig(level=os.environ.get("ORCHESTRA_LOG_LEVEL", "INFO").upper(), stream=sys.stderr)
    logging.getLogger("alembic").setLevel(logging.WARNING)


# --- serving ---------------------------------------------------------------------------------


@main.command()
@storage_options
@click.option("--grpc-host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--grpc-port", default=50051, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Server processes sharing the port (default: one per core, at most 8).",
)
@click.option(
    "--scheduler/--no-scheduler",
    default=None,
    help="Fire due timers in this process (default: yes; with SQLite only in the first worker).",
)
@click.option("--issuer", envvar="ORCHESTRA_ISSUER", default=None, help="Access token issuer (iss).")
@click.option("--audience", envvar="ORCHESTRA_AUDIENCE", default=None, help="Access token audience (aud).")
@observability_options
@reports_errors
def serve(
    settings: Settings,
    grpc_host: str,
    grpc_port: int,
    workers: int | None,
    scheduler: bool | None,
    issuer: str | None,
    audience: str | None,
    metrics_host: str,
    metrics_port: int | None,
    log_format: str | None,
) -> None:
    """Run the gRPC service alone (for deployments with their own edge)."""
    from orchestra_server import runtime

    settings = _with_identity(settings, issuer, audience)
    count = workers or runtime.default_workers()
    metric_ports = metrics_ports(metrics_port, count, {grpc_port})
    if count == 1:
        runtime.run_worker(
            settings,
            f"{grpc_host}:{grpc_port}",
            scheduler=scheduler is not False,
            metrics_address=None if metric_ports[0] is None else (metrics_host, metric_ports[0]),
        )
        return
    if grpc_port == 0:
        raise click.UsageError("--workers above 1 needs a fixed --grpc-port (they share it)")
    open_storage(settings).dispose()  # migrate once, before the workers start
    sqlite = settings.db_url is None or settings.db_url.startswith("sqlite")
    specs = [
        runtime.WorkerSpec(
            grpc_host,
            grpc_port,
            scheduler=scheduler is not False and (i == 0 or not sqlite),
            metrics_port=metric_ports[i],
        )
        for i in range(count)
    ]
    pool = runtime.WorkerPool(settings, specs, metrics_host=metrics_host, log_format=log_format)
    stop = runtime.wait_for_signal()
    pool.start()
    click.echo(f"gRPC: {grpc_host}:{grpc_port} ({count} workers)")
    try:
        pool.supervise(stop)
    finally:
        pool.stop()


@main.command()
@storage_options
@click.option("--http-host", default="127.0.0.1", show_default=True, help="Address of the REST edge.")
@click.option("--http-port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option("--grpc-host", default="127.0.0.1", show_default=True, help="Address of the gRPC workers.")
@click.option(
    "--grpc-port",
    default=50051,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="Port of the first worker; worker N listens on this port + N.",
)
@click.option(
    "--workers", type=click.IntRange(1, 64), default=None, help="Worker processes (default: one per core)."
)
@click.option(
    "--demo", is_flag=True, help="On a fresh database: deploy the examples and create a demo consumer."
)
@click.option("--issuer", envvar="ORCHESTRA_ISSUER", default=None, help="Access token issuer (iss).")
@click.option("--audience", envvar="ORCHESTRA_AUDIENCE", default=None, help="Access token audience (aud).")
@click.option(
    "--edge-admin",
    is_flag=True,
    help="Open Envoy's admin interface on <data-dir>/edge/admin.sock (owner only).",
)
@observability_options
@reports_errors
def up(
    settings: Settings,
    http_host: str,
    http_port: int,
    grpc_host: str,
    grpc_port: int,
    workers: int | None,
    demo: bool,
    issuer: str | None,
    audience: str | None,
    edge_admin: bool,
    metrics_host: str,
    metrics_port: int | None,
    log_format: str | None,
) -> None:
    """Run the service and the REST edge together until Ctrl-C or SIGTERM."""
    from orchestra_server import runtime
    from orchestra_server.edge import EdgeSettings, EnvoyProcess, Upstream

    settings = _with_identity(settings, issuer, audience)
    count = workers or runtime.default_workers()
    metric_ports = metrics_ports(metrics_port, count, {grpc_port + i for i in range(count)} | {http_port})
    fresh = _prepare_storage(settings)
    stop = runtime.wait_for_signal()
    sqlite = settings.db_url is None or settings.db_url.startswith("sqlite")
    specs = [
        runtime.WorkerSpec(
            grpc_host, grpc_port + i, scheduler=i == 0 or not sqlite, metrics_port=metric_ports[i]
        )
        for i in range(count)
    ]
    pool = runtime.WorkerPool(
        settings, specs, log_dir=settings.data_dir / "logs", metrics_host=metrics_host, log_format=log_format
    )
    pool.start()
    edge = EnvoyProcess(
        EdgeSettings(
            rest_host=http_host,
            rest_port=http_port,
            upstreams=tuple(Upstream(runtime.connect_host(s.host), s.port) for s in specs),
            issuer=settings.issuer,
            audience=settings.audience,
            admin_socket=settings.data_dir / "edge" / "admin.sock" if edge_admin else None,
        ),
        settings.data_dir / "edge",
    )
    try:
        edge.start()
        click.echo(f"REST: {edge.rest_url}")
        ports = ", ".join(f"{grpc_host}:{s.port}" for s in specs)
        click.echo(f"gRPC: {ports}")
        if metrics_port:
            targets = ", ".join(f"{runtime.connect_host(metrics_host)}:{p}" for p in metric_ports)
            click.echo(f"metrics: {targets}")
        if demo and fresh:
            _seed_demo(settings, edge.rest_url)
        elif demo:
            click.echo("(existing database: no demo data created)")
        click.echo("Press Ctrl-C to stop.")
        pool.supervise(stop)
    finally:
        edge.stop()
        pool.stop()
        click.echo("stopped")


def _prepare_storage(settings: Settings) -> bool:
    """Migrates the database; True when it had no schema before (a fresh data directory)."""
    from orchestra_server.storage.database import open_database
    from orchestra_server.storage.migrate import current_revision, upgrade

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    database = open_database(settings.database_url)
    try:
        fresh = current_revision(database) is None
        upgrade(database)
    finally:
        database.dispose()
    return fresh


def _seed_demo(settings: Settings, rest_url: str) -> None:
    from orchestra_server.edge.config import REPO_ROOT

    with opened(settings) as app:
        examples = sorted((REPO_ROOT / "examples").glob("*.yaml"))
        for result in app.definitions.deploy(examples):
            click.echo(f"deployed example: {result.definition_id}")
        created = app.directory.create_consumer("default", None, "demo consumer")
    click.echo("")
    click.echo("Demo consumer in tenant 'default' (the secret is shown only this once):")
    click.echo(f"  client_id:     {created.client_id}")
    click.echo(f"  client_secret: {created.client_secret}")
    click.echo("Get a token:")
    click.echo(
        f"  curl -s -X POST {rest_url}/oauth/token -d grant_type=client_credentials "
        f"-d client_id={created.client_id} -d client_secret={created.client_secret}"
    )
    click.echo("")


def _with_identity(settings: Settings, issuer: str | None, audience: str | None) -> Settings:
    from dataclasses import replace

    return replace(settings, issuer=issuer or settings.issuer, audience=audience or settings.audience)


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@storage_options
@reports_errors
def db_upgrade(settings: Settings) -> None:
    """Apply the schema migrations (the server also does this on start)."""
    open_storage(settings).dispose()
    click.echo("database is up to date")


# --- definitions -----------------------------------------------------------------------------


@main.group()
def definition() -> None:
    """Process definitions."""


@definition.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@reports_errors
def definition_validate(files: tuple[Path, ...]) -> None:
    """Check definition files without deploying them."""
    from orchestra_server.service.definitions import load_definition_files

    for item in load_definition_files(list(files)):
        click.echo(f"ok: {item.source} ({item.definition.id})")


@definition.command("deploy")
@storage_options
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--tenant", default=None, help="Scope the definitions to one tenant (default: shared).")
@reports_errors
def definition_deploy(settings: Settings, files: tuple[Path, ...], tenant: str | None) -> None:
    """Deploy definition files: all of them, or none when any is invalid."""
    with opened(settings) as app:
        for result in app.definitions.deploy(list(files), tenant=tenant):
            what = "deployed" if result.changed else "unchanged"
            click.echo(f"{what}: {result.definition_id} version {result.version} ({result.source})")


@definition.command("list")
@storage_options
@click.option("--tenant", default=None, help="Only the definitions scoped to this tenant.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@reports_errors
def definition_list(settings: Settings, tenant: str | None, as_json: bool) -> None:
    """List the newest version of every definition."""
    with opened(settings) as app:
        rows = app.definitions.list(tenant=tenant)
    items = [
        {
            "id": r.definition_id,
            "tenant": r.tenant_key or None,
            "version": r.version,
            "deployed_at": r.deployed_at.isoformat(),
            "source": r.source,
        }
        for r in rows
    ]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    for item in items:
        click.echo(
            f"{item['id']}\tversion {item['version']}\t{item['tenant'] or '(shared)'}\t{item['deployed_at']}"
        )


# --- tenants, roles, consumers, keys -----------------------------------------------------------


@main.group()
def tenant() -> None:
    """Tenants."""


@tenant.command("create")
@storage_options
@click.argument("tenant_id")
@click.option("--label", default=None)
@reports_errors
def tenant_create(settings: Settings, tenant_id: str, label: str | None) -> None:
    """Create a tenant."""
    with opened(settings) as app:
        app.directory.create_tenant(tenant_id, label)
    click.echo(f"created tenant {tenant_id}")


@tenant.command("list")
@storage_options
@reports_errors
def tenant_list(settings: Settings) -> None:
    """List tenants."""
    with opened(settings) as app:
        for tenant_id, label, created_at in app.directory.list_tenants():
            click.echo(f"{tenant_id}\t{label or ''}\t{created_at.isoformat()}")


@main.group()
def role() -> None:
    """Roles and their permissions."""


@role.command("create")
@storage_options
@click.argument("name")
@click.option("--permission", "permissions", multiple=True, help="A permission, e.g. 'access orchestra api'.")
@reports_errors
def role_create(settings: Settings, name: str, permissions: tuple[str, ...]) -> None:
    """Create a role."""
    with opened(settings) as app:
        app.directory.create_role(name, list(permissions))
    click.echo(f"created role {name}")


@role.command("grant")
@storage_options
@click.argument("name")
@click.argument("permission")
@reports_errors
def role_grant(settings: Settings, name: str, permission: str) -> None:
    """Grant a permission to a role."""
    with opened(settings) as app:
        app.directory.grant(name, permission)
    click.echo(f"granted '{permission}' to {name}")


@role.command("revoke")
@storage_options
@click.argument("name")
@click.argument("permission")
@reports_errors
def role_revoke(settings: Settings, name: str, permission: str) -> None:
    """Remove a permission from a role."""
    with opened(settings) as app:
        app.directory.revoke(name, permission)
    click.echo(f"revoked '{permission}' from {name}")


@role.command("list")
@storage_options
@reports_errors
def role_list(settings: Settings) -> None:
    """List roles with their permissions."""
    with opened(settings) as app:
        for name, permissions in app.directory.list_roles().items():
            click.echo(f"{name}\t{', '.join(permissions)}")


@main.group()
def consumer() -> None:
    """Consumers: the sites that call the API."""


@consumer.command("create")
@storage_options
@click.option("--tenant", required=True, help="The tenant the consumer is bound to, for good.")
@click.option("--role", "roles", multiple=True, help="A role (default: the built-in api_consumer role).")
@click.option("--label", default=None)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@reports_errors
def consumer_create(
    settings: Settings, tenant: str, roles: tuple[str, ...], label: str | None, as_json: bool
) -> None:
    """Create a consumer and print its client id and secret (shown only this once)."""
    with opened(settings) as app:
        created = app.directory.create_consumer(tenant, list(roles) or None, label)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "client_id": created.client_id,
                    "client_secret": created.client_secret,
                    "tenant": created.tenant,
                }
            )
        )
    else:
        click.echo(f"client_id:     {created.client_id}")
        click.echo(f"client_secret: {created.client_secret}")
        click.echo(f"tenant:        {created.tenant}")
        click.echo("The secret is not stored and cannot be shown again.")


@consumer.command("list")
@storage_options
@click.option("--tenant", default=None)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@reports_errors
def consumer_list(settings: Settings, tenant: str | None, as_json: bool) -> None:
    """List consumers (never their secrets)."""
    with opened(settings) as app:
        records = app.directory.list_consumers(tenant)
    items: list[dict[str, Any]] = [
        {
            "client_id": r.client_id,
            "tenant": r.tenant_id,
            "label": r.label,
            "roles": list(r.roles),
            "revoked": r.revoked_at is not None,
        }
        for r in records
    ]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    for item in items:
        state = "revoked" if item["revoked"] else "active"
        click.echo(
            "\t".join(
                [item["client_id"], item["tenant"], state, ",".join(item["roles"]), item["label"] or ""]
            )
        )


@consumer.command("revoke")
@storage_options
@click.argument("client_id")
@reports_errors
def consumer_revoke(settings: Settings, client_id: str) -> None:
    """Revoke a consumer: its tokens stop working within seconds."""
    with opened(settings) as app:
        app.directory.revoke_consumer(client_id)
    click.echo(f"revoked {client_id}")


@main.group()
def keys() -> None:
    """Access token signing keys."""


@keys.command("rotate")
@storage_options
@click.option(
    "--publish-lead",
    type=click.IntRange(0, 86_400),
    default=None,
    help="Seconds the new key is published before it signs (default 60; at least 35: the edge "
    "refetches keys every 30 s).",
)
@reports_errors
def keys_rotate(settings: Settings, publish_lead: int | None) -> None:
    """Add a new signing key: published at once, used after the publish lead; old keys stay published."""
    from datetime import timedelta

    from orchestra_server.identity.keys import KEY_SET_REFRESH_SECONDS, MIN_PUBLISH_LEAD

    lead = timedelta(seconds=publish_lead) if publish_lead is not None else settings.key_publish_lead
    if lead < MIN_PUBLISH_LEAD:
        # The edge would refuse the new key's tokens until its next refresh.
        raise click.BadParameter(
            f"{lead.total_seconds():.0f} s is too short: the edge refetches the signing keys every "
            f"{KEY_SET_REFRESH_SECONDS} s, so a new key must be published at least "
            f"{MIN_PUBLISH_LEAD.total_seconds():.0f} s before it signs",
            param_hint="'--publish-lead'",
        )
    with opened(settings) as app:
        key = app.key_ring.rotate(app.clock(), lead)
    click.echo(f"new key {key.kid} signs from {key.active_from.isoformat()}")


@main.command()
@storage_options
@click.option("--tenant", default=None, help="Only this tenant's records.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@reports_errors
def audit(settings: Settings, tenant: str | None, limit: int, as_json: bool) -> None:
    """Show the audit trail, newest first."""
    with opened(settings) as app:
        rows = app.directory.audit(tenant, limit)
    for row in rows:
        at = row["at"]
        record = {**row, "at": at.isoformat() if hasattr(at, "isoformat") else at}
        if as_json:
            click.echo(json.dumps(record))
        else:
            click.echo(
                "\t".join(
                    str(v or "")
                    for v in (record["at"], row["tenant_id"], row["actor"], row["action"], row["instance_id"])
                )
            )


if __name__ == "__main__":
    main()
