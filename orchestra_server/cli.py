"""The `orchestra` command: serve, run with the edge, administer definitions, tenants, consumers, keys."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from orchestra_server.bootstrap import (
    EXAMPLES,
    administration,
    build_edge,
    open_key_ring,
    open_storage,
    prepare_storage,
    utc_now,
)
from orchestra_server.errors import OrchestraError
from orchestra_server.identity.keys import MIN_PUBLISH_LEAD
from orchestra_server.service.processes import Caller
from orchestra_server.settings import ENVIRONMENT, MAX_CALL_THREADS, MAX_GRACE_PERIOD, Settings, SettingsError
from orchestra_server.storage.database import DatabaseNotReady
from orchestra_server.wire.key_set import KEY_SET_REFRESH_SECONDS
from orchestra_server.wire.rate_limits import TEXT_FORM, TenantRateLimit, parse_rate_limit

F = TypeVar("F", bound=Callable[..., Any])
DEFAULTS = Settings()


def _help(text: str, setting: str, default: object = None) -> str:
    """An option's help with its environment variable and its default (taken from Settings)."""
    shown = "" if default is None else f"; default: {default}"
    return f"{text} [env: {ENVIRONMENT[setting]}{shown}]"


def _setting_option(setting: str, kind: click.ParamType[Any], metavar: str, text: str) -> Callable[[F], F]:
    """The flag `--<setting>` over its environment variable, unset unless given, its help naming
    both and the default."""
    return click.option(
        "--" + setting.replace("_", "-"),
        type=kind,
        default=None,
        metavar=metavar,
        help=_help(text, setting, getattr(DEFAULTS, setting)),
    )


def fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def rate_limit_value(
    _context: click.Context, _param: click.Parameter, value: str | None
) -> TenantRateLimit | None:
    """An option's or argument's `RPS[:BURST]` as a limit; a usage error says what is wrong."""
    if value is None:
        return None
    try:
        return parse_rate_limit(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


# --- operator commands: who acts, and how their answers print ------------------------------------

TENANT_HELP = "The tenant whose data this is (another tenant's ids answer as unknown ones)."
# The actor the audit trail names for changes made on the server's own command line.
OPERATOR = "operator"
HISTORY_PAGE = 1000
INCIDENT_PAGE = 1000


def operator(tenant: str) -> Caller:
    """The CLI acts on the server as `operator`, holding every permission."""
    from orchestra_server.identity.consumers import (
        ACCESS_PERMISSION,
        DEPLOY_PERMISSION,
        DEPLOY_SHARED_PERMISSION,
        OPERATE_PERMISSION,
    )

    everything = {ACCESS_PERMISSION, OPERATE_PERMISSION, DEPLOY_PERMISSION, DEPLOY_SHARED_PERMISSION}
    return Caller(tenant, OPERATOR, frozenset(everything))


def plain(value: Any) -> Any:
    """A view as JSON-ready values: dataclasses and named tuples as objects, other tuples as
    lists, times in RFC 3339."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
        return {name: plain(getattr(value, name)) for name in value._fields}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def _every_page(read: Callable[[str], Any]) -> list[Any]:
    """Every item of a paged listing, following its page tokens to the end."""
    items: list[Any] = []
    token = ""
    while True:
        page = read(token)
        items.extend(page.items)
        token = page.next_page_token
        if not token:
            return items


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON value")


def _assignment(item: str) -> tuple[str, Any]:
    """`NAME=JSON` as a name and a value; the service checks the name and the limits."""
    name, equals, text = item.partition("=")
    if not equals or not name:
        fail(f"--variable {item!r} is not NAME=JSON")
    try:
        return name, json.loads(text, parse_constant=_refuse_constant)
    except ValueError as exc:
        fail(f"--variable {name}: the value is not JSON ({exc})")


def current_settings() -> Settings:
    """The settings `main` read from the environment (read here when a command runs on its own)."""
    context = click.get_current_context()
    found = context.find_object(Settings)
    if found is None:
        try:
            found = Settings.load()
        except SettingsError as exc:
            fail(str(exc))
    return found


def with_settings(func: F, **names: str) -> F:
    """Hands `func` the settings, with the flags in `names` (option name -> setting) put over them."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        flags = {setting: kwargs.pop(option) for option, setting in names.items()}
        try:
            settings = current_settings().given(**flags)
        except SettingsError as exc:
            fail(str(exc))
        return func(*args, settings=settings, **kwargs)

    return wrapper  # type: ignore[return-value]


STORAGE_OPTIONS = (
    click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help=_help(
            "Directory for the embedded database and the signing keys.", "data_dir", DEFAULTS.data_dir
        ),
    ),
    click.option(
        "--db",
        "db_url",
        default=None,
        help=_help("Database URL (postgresql://...); default: SQLite in the data directory.", "db_url"),
    ),
)


def _with_options(func: F, options: Sequence[Callable[[F], F]]) -> F:
    for option in reversed(options):
        func = option(func)
    return func


def storage_options(func: F) -> F:
    """--data-dir and --db, taken by every command that opens the database or the keys."""
    return _with_options(with_settings(func, data_dir="data_dir", db_url="db_url"), STORAGE_OPTIONS)


def serving_options(func: F) -> F:
    """The options `serve` and `up` share: storage, the gRPC workers, token identity, metrics, logs.

    Also sets up logging for the serving process.
    """

    @functools.wraps(func)
    def configured(*args: Any, settings: Settings, **kwargs: Any) -> Any:
        from orchestra_server.observability.logs import configure_logging

        configure_logging(settings.log_level, json=(settings.log_format or default_log_format()) == "json")
        return func(*args, settings=settings, **kwargs)

    wrapped = with_settings(
        configured,
        data_dir="data_dir",
        db_url="db_url",
        issuer="issuer",
        audience="audience",
        metrics_host="metrics_host",
        metrics_port="metrics_port",
        log_format="log_format",
        grace_period="grace_period",
        call_threads="call_threads",
    )
    options = [
        *STORAGE_OPTIONS,
        click.option(
            "--grpc-host", default="127.0.0.1", show_default=True, help="Address of the gRPC workers."
        ),
        click.option(
            "--grpc-port",
            default=50051,
            show_default=True,
            type=click.IntRange(0, 65535),
            help="Port of the gRPC workers: `serve` shares it between them, with `up` worker N listens "
            "on this port + N.",
        ),
        click.option(
            "--workers",
            type=click.IntRange(1, 64),
            default=None,
            help="Worker processes (default: one per core, at most 8).",
        ),
        click.option(
            "--issuer", default=None, help=_help("Access token issuer (iss).", "issuer", DEFAULTS.issuer)
        ),
        click.option(
            "--audience",
            default=None,
            help=_help("Access token audience (aud).", "audience", DEFAULTS.audience),
        ),
        click.option(
            "--metrics-host",
            default=None,
            help=_help(
                "Address the Prometheus metrics endpoints listen on.", "metrics_host", DEFAULTS.metrics_host
            ),
        ),
        click.option(
            "--metrics-port",
            type=click.IntRange(0, 65535),
            default=None,
            help=_help(
                "Serve Prometheus metrics at http://HOST:PORT/metrics; worker N uses this port + N "
                "(0: each picks a free port and logs it). Default: no metrics endpoint.",
                "metrics_port",
            ),
        ),
        _setting_option(
            "grace_period",
            click.FloatRange(0, MAX_GRACE_PERIOD),
            "SECONDS",
            "On SIGTERM or Ctrl-C, serve on until idle (half of this at most), then stop taking "
            "calls and give those in flight the rest of it to finish.",
        ),
        _setting_option(
            "call_threads",
            click.IntRange(1, MAX_CALL_THREADS),
            "N",
            "Threads per worker that run calls; further calls wait in line for one. More threads "
            "only add switching between them: a worker runs Python on one core at a time.",
        ),
        click.option(
            "--log-format",
            type=click.Choice(["json", "text"]),
            default=None,
            help=_help(
                "Log line format (default: text on a terminal, else one JSON object per line).", "log_format"
            ),
        ),
    ]
    return _with_options(wrapped, options)  # type: ignore[return-value]


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
    """Domain errors, unusable settings and a database not ready end the command with their message
    and exit status 1, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except OrchestraError as exc:
            for problem in getattr(exc, "problems", None) or [str(exc)]:
                click.echo(f"error: {problem}", err=True)
            sys.exit(1)
        except (SettingsError, DatabaseNotReady) as exc:
            fail(str(exc))

    return wrapper  # type: ignore[return-value]


@click.group()
@click.version_option(package_name="orchestra-server")
@click.pass_context
def main(context: click.Context) -> None:
    """Orchestra: a multi-tenant workflow engine server."""
    try:
        settings = Settings.load()
    except SettingsError as exc:
        fail(str(exc))
    context.obj = settings
    logging.basicConfig(level=settings.log_level, stream=sys.stderr)
    logging.getLogger("alembic").setLevel(logging.WARNING)


# --- serving ---------------------------------------------------------------------------------


@main.command()
@serving_options
@click.option(
    "--scheduler/--no-scheduler",
    default=None,
    help="Fire due timers in this process (default: yes; with SQLite only in the first worker).",
)
# Set by `serve --workers N` on its own workers, which share its port; never by hand.
@click.option("--share-port", is_flag=True, hidden=True)
@reports_errors
def serve(
    settings: Settings,
    grpc_host: str,
    grpc_port: int,
    workers: int | None,
    scheduler: bool | None,
    share_port: bool,
) -> None:
    """Run the gRPC service alone (for deployments with their own edge)."""
    from orchestra_server import runtime

    count = workers or runtime.default_workers()
    metric_ports = metrics_ports(settings.metrics_port, count, {grpc_port})
    try:
        if not share_port:
            _check_ports(grpc_host, [grpc_port], settings, metric_ports)
        if count == 1:
            runtime.run_worker(
                settings,
                f"{grpc_host}:{grpc_port}",
                scheduler=scheduler is not False,
                metrics_address=None if metric_ports[0] is None else (settings.metrics_host, metric_ports[0]),
                share_port=share_port,
            )
            return
        if grpc_port == 0:
            raise click.UsageError("--workers above 1 needs a fixed --grpc-port (they share it)")
        prepare_storage(settings)  # migrate once, before the workers start
        specs = runtime.worker_specs(
            settings, grpc_host, [grpc_port] * count, metric_ports, scheduler=scheduler is not False
        )
        with runtime.running_pool(settings, specs) as (pool, stop):
            click.echo(f"gRPC: {grpc_host}:{grpc_port} ({count} workers)")
            try:
                pool.supervise(stop)
            except runtime.SupervisionFailed as exc:
                fail(str(exc))
    except runtime.StartFailed as exc:
        fail(str(exc))


def _check_ports(
    grpc_host: str,
    grpc_ports: Sequence[int],
    settings: Settings,
    metric_ports: Sequence[int | None],
    rest: tuple[str, int] | None = None,
) -> None:
    """StartFailed, naming the port, when another program holds one this command listens on."""
    from orchestra_server import runtime

    if rest is not None:
        runtime.check_port_free(*rest, "REST edge")
    for port in dict.fromkeys(grpc_ports):
        if port:
            runtime.check_port_free(grpc_host, port, "gRPC worker")
    for metrics_port in metric_ports:
        if metrics_port:
            runtime.check_port_free(settings.metrics_host, metrics_port, "metrics")


@main.command()
@serving_options
@click.option("--http-host", default="127.0.0.1", show_default=True, help="Address of the REST edge.")
@click.option("--http-port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--demo", is_flag=True, help="On a fresh database: deploy the examples and create a demo consumer."
)
@click.option(
    "--edge-admin",
    is_flag=True,
    help="Open the edge's admin interface on <data-dir>/edge/admin.sock (owner only; off by default).",
)
@click.option(
    "--tenant-rate-limit",
    callback=rate_limit_value,
    metavar=TEXT_FORM,
    default=None,
    help=_help(
        "Requests per second the edge lets each tenant send, and the burst it allows (default: twice "
        "RPS); 0 turns it off. A tenant's own limit (`orchestra tenant set-limit`) takes its place.",
        "tenant_rate_limit",
        DEFAULTS.tenant_rate_limit,
    ),
)
@reports_errors
def up(
    settings: Settings,
    http_host: str,
    http_port: int,
    grpc_host: str,
    grpc_port: int,
    workers: int | None,
    demo: bool,
    edge_admin: bool,
    tenant_rate_limit: TenantRateLimit | None,
) -> None:
    """Run the service and the REST edge together until Ctrl-C or SIGTERM."""
    from orchestra_server import runtime
    from orchestra_server.bootstrap import stored_tenant_limits
    from orchestra_server.edge import EdgeError

    settings = settings.given(tenant_rate_limit=tenant_rate_limit)
    if grpc_port == 0:
        raise click.UsageError("--grpc-port must be a fixed port: the edge is configured with it")
    count = workers or runtime.default_workers()
    grpc_ports = [grpc_port + i for i in range(count)]
    if grpc_ports[-1] > 65535:
        raise click.UsageError(f"--grpc-port {grpc_port} leaves no room for {count} workers")
    if http_port in grpc_ports:
        raise click.UsageError(f"--http-port {http_port} is one of the gRPC ports")
    metric_ports = metrics_ports(settings.metrics_port, count, {*grpc_ports, http_port})
    try:
        _check_ports(grpc_host, grpc_ports, settings, metric_ports, rest=(http_host, http_port))
    except runtime.StartFailed as exc:
        fail(str(exc))
    fresh = prepare_storage(settings)
    specs = runtime.worker_specs(settings, grpc_host, grpc_ports, metric_ports)
    try:
        with (
            stored_tenant_limits(settings) as read_tenant_limits,
            runtime.running_pool(settings, specs, log_dir=settings.data_dir / "logs") as (pool, stop),
        ):
            edge = build_edge(
                settings,
                http_host,
                http_port,
                [(runtime.connect_host(s.host), s.port) for s in specs],
                admin=edge_admin,
                tenant_limits=read_tenant_limits(),
            )
            watching = threading.Event()
            try:
                try:
                    edge.start()
                except EdgeError as exc:
                    reason = str(exc).splitlines()[0].rstrip(":")
                    fail(f"the REST edge did not start: {reason} (see {edge.log_path})")
                runtime.follow_tenant_limits(read_tenant_limits, edge.set_tenant_limits, watching)
                click.echo(f"REST: {edge.rest_url}")
                click.echo(f"console: {edge.rest_url}/console/")
                click.echo(f"gRPC: {', '.join(f'{grpc_host}:{s.port}' for s in specs)}")
                if settings.metrics_port:
                    targets = ", ".join(
                        f"{runtime.connect_host(settings.metrics_host)}:{p}" for p in metric_ports
                    )
                    click.echo(f"metrics: {targets}")
                if demo and fresh:
                    _seed_demo(settings, edge.rest_url)
                elif demo:
                    click.echo("(existing database: no demo data created)")
                click.echo("Press Ctrl-C to stop.")
                pool.supervise(stop, also=[runtime.Supervised("edge", lambda: edge.exit_status, edge.start)])
            except runtime.SupervisionFailed as exc:
                fail(str(exc))
            finally:
                watching.set()
                # Workers first: each finishes the calls the edge forwarded to it while the edge,
                # still up, carries the answers back (and answers new requests 503); then the edge.
                pool.stop()
                edge.stop()
    except runtime.StartFailed as exc:
        fail(str(exc))
    finally:
        click.echo("stopped")


DEMO_OPERATOR_ROLE = "operator"
DEMO_OPERATOR_PERMISSIONS = ("operate orchestra", "deploy orchestra definitions", "access orchestra api")


def _seed_demo(settings: Settings, rest_url: str) -> None:
    with administration(settings, writes=True) as admin:
        examples = sorted(EXAMPLES.glob("*.yaml"))
        for result in admin.definitions.deploy(examples):
            click.echo(f"deployed example: {result.definition_id}")
        created = admin.directory.create_consumer("default", None, "demo consumer")
        # The console's operator: the operations API, and the consumer API for variable edits
        # and signals from the instance page.
        admin.directory.create_role(DEMO_OPERATOR_ROLE, list(DEMO_OPERATOR_PERMISSIONS))
        operator = admin.directory.create_consumer("default", [DEMO_OPERATOR_ROLE], "demo operator")
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
    click.echo(f"Console operator (sign in at {rest_url}/console/; the secret is shown only this once):")
    click.echo(f"  client_id:     {operator.client_id}")
    click.echo(f"  client_secret: {operator.client_secret}")
    click.echo("")


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
    with administration(settings, writes=True) as admin:
        for result in admin.definitions.deploy(list(files), tenant=tenant):
            what = "deployed" if result.changed else "unchanged"
            click.echo(f"{what}: {result.definition_id} version {result.version} ({result.source})")


@definition.command("list")
@storage_options
@click.option("--tenant", default=None, help="Only the definitions scoped to this tenant.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@reports_errors
def definition_list(settings: Settings, tenant: str | None, as_json: bool) -> None:
    """List the newest version of every definition."""
    with administration(settings, writes=False) as admin:
        rows = admin.definitions.list(tenant=tenant)
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


@definition.command("show")
@storage_options
@click.argument("definition_id")
@click.option("--tenant", required=True, help=TENANT_HELP)
@click.option("--version", "version", type=click.IntRange(1), default=None, help="Default: the newest.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@reports_errors
def definition_show(
    settings: Settings, definition_id: str, tenant: str, version: int | None, as_json: bool
) -> None:
    """Show one version of a definition as the tenant sees it: nodes with live tokens, and flows."""
    with administration(settings, writes=False) as admin:
        graph = admin.operations.get_definition(operator(tenant), definition_id, version or 0)
    if as_json:
        click.echo(json.dumps(plain(graph), indent=2))
        return
    scope = "shared" if graph.scope == "shared" else f"tenant {tenant}"
    click.echo(f"{graph.definition_id}\tversion {graph.version} of {graph.latest_version}\t{scope}")
    if graph.label:
        click.echo(f"label: {graph.label}")
    click.echo(f"deployed: {graph.deployed_at.isoformat()}")
    click.echo("nodes (live tokens: parked/waiting/incident):")
    for node in graph.nodes:
        click.echo(
            f"  {node.id}\t{node.type}\tjoin {node.join}\tsplit {node.split}"
            f"\t{node.parked}/{node.waiting}/{node.incident}"
        )
    click.echo("flows:")
    for flow in graph.flows:
        marks = " (default)" if flow.default else " (timeout)" if flow.timeout else ""
        when = f"\twhen {flow.condition}" if flow.condition else ""
        click.echo(f"  {flow.from_node} -> {flow.to_node}{marks}{when}")


# --- instances and incidents, as an operator -------------------------------------------------


@main.group()
def instance() -> None:
    """Process instances of one tenant: find, inspect, cancel."""


@instance.command("list")
@storage_options
@click.option("--tenant", required=True, help=TENANT_HELP)
@click.option("--definition", "definition_id", default="", help="Only instances of this definition.")
@click.option(
    "--version", type=click.IntRange(1), default=None, help="Only this version (needs --definition)."
)
@click.option("--status", default="", help="running, completed, cancelled or failed.")
@click.option(
    "--has-incident/--no-incident", "has_incident", default=None, help="With or without an incident."
)
@click.option("--node", "node_id", default="", help="Only instances with a live token on this node.")
@click.option("--started-after", default="", help="RFC 3339, e.g. 2026-01-31T00:00:00Z.")
@click.option("--started-before", default="", help="RFC 3339.")
@click.option(
    "--variable",
    "variables",
    multiple=True,
    metavar="NAME=JSON",
    help="Only instances whose variable equals this JSON value (repeatable; all must hold).",
)
@click.option("--page-size", type=int, default=0, help="1..1000 (default 100).")
@click.option("--page-token", default="", help="The next page token a previous listing printed.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@reports_errors
def instance_list(
    settings: Settings,
    tenant: str,
    definition_id: str,
    version: int | None,
    status: str,
    has_incident: bool | None,
    node_id: str,
    started_after: str,
    started_before: str,
    variables: tuple[str, ...],
    page_size: int,
    page_token: str,
    as_json: bool,
) -> None:
    """List a tenant's instances matching every filter given, newest first, one page at a time."""
    from orchestra_server.service.operations import InstanceFilter

    query = InstanceFilter.parse(
        definition_id=definition_id,
        version=version or 0,
        status=status,
        has_incident=has_incident,
        node_id=node_id,
        started_after=started_after,
        started_before=started_before,
        variable=variables,
    )
    with administration(settings, writes=False) as admin:
        page = admin.operations.search_instances(
            operator(tenant), query, page_size=page_size, page_token=page_token
        )
    if as_json:
        click.echo(
            json.dumps({"instances": plain(page.items), "next_page_token": page.next_page_token}, indent=2)
        )
        return
    for item in page.items:
        click.echo(
            "\t".join(
                [
                    item.id,
                    f"{item.definition_id} v{item.definition_version}",
                    item.status,
                    item.started_at.isoformat(),
                    f"{item.open_incidents} incidents",
                ]
            )
        )
    if page.next_page_token:
        click.echo(f"next page: --page-token {page.next_page_token}")


@instance.command("show")
@storage_options
@click.argument("instance_id")
@click.option("--tenant", required=True, help=TENANT_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@reports_errors
def instance_show(settings: Settings, instance_id: str, tenant: str, as_json: bool) -> None:
    """Show an instance: version, times, variables and every live token (incidents with their reason)."""
    with administration(settings, writes=False) as admin:
        found = admin.operations.get_instance_detail(operator(tenant), instance_id)
    if as_json:
        click.echo(json.dumps(plain(found), indent=2))
        return
    click.echo(f"{found.id}\t{found.definition_id} v{found.definition_version}\t{found.status}")
    click.echo(f"started: {found.started_at.isoformat()}\tupdated: {found.updated_at.isoformat()}")
    if found.ended_at is not None:
        click.echo(f"ended: {found.ended_at.isoformat()}")
    click.echo("tokens:")
    for token in found.tokens:
        since = token.since.isoformat() if token.since else ""
        due = f"\tdue {token.due_at.isoformat()}" if token.due_at else ""
        incident = f"\t{token.incident_kind}: {token.incident_reason}" if token.incident_kind else ""
        click.echo(f"  {token.id}\t{token.node_id}\t{token.status}\tsince {since}{due}{incident}")
    click.echo("variables:")
    for name, value in sorted(found.variables.items()):
        click.echo(f"  {name} = {json.dumps(value, ensure_ascii=False)}")


@instance.command("history")
@storage_options
@click.argument("instance_id")
@click.option("--tenant", required=True, help=TENANT_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@reports_errors
def instance_history(settings: Settings, instance_id: str, tenant: str, as_json: bool) -> None:
    """Show an instance's audit trail, oldest first: who did what, which tokens moved."""
    with administration(settings, writes=False) as admin:
        entries = _every_page(
            lambda token: admin.operations.get_instance_history(
                operator(tenant), instance_id, page_size=HISTORY_PAGE, page_token=token
            )
        )
    for entry in entries:
        if as_json:
            click.echo(json.dumps(plain(entry)))
            continue
        columns = [entry.at.isoformat(), entry.actor, entry.action, entry.status, ",".join(entry.nodes)]
        extra = [*entry.incidents, *([f"reason: {entry.reason}"] if entry.reason else [])]
        click.echo("\t".join([*columns, "; ".join(extra)]).rstrip("\t"))


@instance.command("cancel")
@storage_options
@click.argument("instance_id")
@click.option("--tenant", required=True, help=TENANT_HELP)
@click.option("--reason", default="", help="Why, for the audit trail.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@reports_errors
def instance_cancel(settings: Settings, instance_id: str, tenant: str, reason: str, as_json: bool) -> None:
    """Cancel a running instance: every live token is removed and its timers never fire."""
    with administration(settings, writes=True) as admin:
        admin.operations.cancel_instance(operator(tenant), instance_id, reason)
    if as_json:
        click.echo(json.dumps({"instance_id": instance_id, "status": "cancelled"}))
    else:
        click.echo(f"cancelled {instance_id}")


@main.group()
def incident() -> None:
    """Tokens in incident: find them, then retry, skip or cancel their branch."""


@incident.command("list")
@storage_options
@click.option("--tenant", required=True, help=TENANT_HELP)
@click.option("--definition", "definition_id", default="", help="Only incidents of this definition.")
@click.option("--node", "node_id", default="", help="Only incidents on this node.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@reports_errors
def incident_list(settings: Settings, tenant: str, definition_id: str, node_id: str, as_json: bool) -> None:
    """List a tenant's open incidents, oldest first."""
    with administration(settings, writes=False) as admin:
        found = _every_page(
            lambda token: admin.operations.list_incidents(
                operator(tenant),
                definition_id=definition_id,
                node_id=node_id,
                page_size=INCIDENT_PAGE,
                page_token=token,
            )
        )
    if as_json:
        click.echo(json.dumps(plain(found), indent=2))
        return
    for item in found:
        since = item.since.isoformat() if item.since else ""
        click.echo(
            "\t".join(
                [
                    item.token_id,
                    item.instance_id,
                    f"{item.definition_id} v{item.definition_version}",
                    item.node_id,
                    since,
                    f"{item.kind}: {item.reason}",
                ]
            )
        )


def _resolve_command(action: str, name: str, summary: str) -> None:
    @incident.command(name, help=summary)
    @storage_options
    @click.argument("token_id")
    @click.option("--tenant", required=True, help=TENANT_HELP)
    @click.option(
        "--variable",
        "variables",
        multiple=True,
        metavar="NAME=JSON",
        help="Set this variable first, in the same transaction (repeatable).",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @reports_errors
    def resolve(
        settings: Settings, token_id: str, tenant: str, variables: tuple[str, ...], as_json: bool
    ) -> None:
        values = dict(_assignment(item) for item in variables)
        with administration(settings, writes=True) as admin:
            status = admin.operations.resolve_incident(operator(tenant), token_id, action, values or None)
        if as_json:
            click.echo(json.dumps({"action": action, "instance_status": status}))
        else:
            click.echo(f"{name}: {token_id}; the instance is {status}")


_resolve_command("retry", "retry", "Retry the move that failed (after setting any --variable).")
_resolve_command("skip", "skip", "Move the token on as if its node had completed, choosing flows as usual.")
_resolve_command(
    "cancel_branch", "cancel-branch", "Remove the token; the instance completes if nothing else is live."
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
    with administration(settings, writes=True) as admin:
        admin.directory.create_tenant(tenant_id, label)
    click.echo(f"created tenant {tenant_id}")


@tenant.command("list")
@storage_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@reports_errors
def tenant_list(settings: Settings, as_json: bool) -> None:
    """List tenants, with the rate limit of those that have their own."""
    with administration(settings, writes=False) as admin:
        tenants = admin.directory.list_tenants()
    if as_json:
        items = [
            {
                "id": t.id,
                "label": t.label,
                "created_at": t.created_at.isoformat(),
                # None: the edge's default (`orchestra up --tenant-rate-limit`).
                "rate_limit": None if t.rate_limit is None else str(t.rate_limit),
            }
            for t in tenants
        ]
        click.echo(json.dumps(items, indent=2))
        return
    for t in tenants:
        limit = "rate limit: default" if t.rate_limit is None else f"rate limit: {t.rate_limit.describe()}"
        click.echo(f"{t.id}\t{t.label or ''}\t{t.created_at.isoformat()}\t{limit}")


@tenant.command("set-limit")
@storage_options
@click.argument("tenant_id")
@click.argument("limit", required=False, callback=rate_limit_value, metavar=TEXT_FORM)
@click.option("--clear", is_flag=True, help="Take the tenant's own limit away: the edge's default applies.")
@reports_errors
def tenant_set_limit(settings: Settings, tenant_id: str, limit: TenantRateLimit | None, clear: bool) -> None:
    """Give a tenant a request rate limit of its own at the edge: RPS requests per second, a burst
    of BURST (default twice RPS); 0 for no limit. A running `orchestra up` applies it within
    seconds, without a restart."""
    if clear == (limit is not None):
        raise click.UsageError(f"give either {TEXT_FORM} or --clear")
    with administration(settings, writes=True) as admin:
        admin.directory.set_tenant_rate_limit(tenant_id, limit)
    if limit is None:
        click.echo(f"tenant {tenant_id}: the default rate limit applies")
    else:
        click.echo(f"tenant {tenant_id}: rate limit {limit.describe()}")


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
    with administration(settings, writes=True) as admin:
        admin.directory.create_role(name, list(permissions))
    click.echo(f"created role {name}")


@role.command("grant")
@storage_options
@click.argument("name")
@click.argument("permission")
@reports_errors
def role_grant(settings: Settings, name: str, permission: str) -> None:
    """Grant a permission to a role."""
    with administration(settings, writes=True) as admin:
        admin.directory.grant(name, permission)
    click.echo(f"granted '{permission}' to {name}")


@role.command("revoke")
@storage_options
@click.argument("name")
@click.argument("permission")
@reports_errors
def role_revoke(settings: Settings, name: str, permission: str) -> None:
    """Remove a permission from a role."""
    with administration(settings, writes=True) as admin:
        admin.directory.revoke(name, permission)
    click.echo(f"revoked '{permission}' from {name}")


@role.command("list")
@storage_options
@reports_errors
def role_list(settings: Settings) -> None:
    """List roles with their permissions."""
    with administration(settings, writes=False) as admin:
        for name, permissions in admin.directory.list_roles().items():
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
    with administration(settings, writes=True) as admin:
        created = admin.directory.create_consumer(tenant, list(roles) or None, label)
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
    with administration(settings, writes=False) as admin:
        records = admin.directory.list_consumers(tenant)
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
    with administration(settings, writes=True) as admin:
        admin.directory.revoke_consumer(client_id)
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
    help="Seconds the new key is published before it signs "
    f"(default {int(DEFAULTS.key_publish_lead.total_seconds())}; at least "
    f"{int(MIN_PUBLISH_LEAD.total_seconds())}: the edge refetches keys every {KEY_SET_REFRESH_SECONDS} s).",
)
@reports_errors
def keys_rotate(settings: Settings, publish_lead: int | None) -> None:
    """Add a new signing key: published at once, used after the publish lead; old keys stay published."""
    from datetime import timedelta

    lead = timedelta(seconds=publish_lead) if publish_lead is not None else settings.key_publish_lead
    if lead < MIN_PUBLISH_LEAD:
        # The edge would refuse the new key's tokens until its next refresh.
        raise click.BadParameter(
            f"{lead.total_seconds():.0f} s is too short: the edge refetches the signing keys every "
            f"{KEY_SET_REFRESH_SECONDS} s, so a new key must be published at least "
            f"{MIN_PUBLISH_LEAD.total_seconds():.0f} s before it signs",
            param_hint="'--publish-lead'",
        )
    now = utc_now()
    key = open_key_ring(settings, now).rotate(now, lead)
    click.echo(f"new key {key.kid} signs from {key.active_from.isoformat()}")


@main.command()
@storage_options
@click.option("--tenant", default=None, help="Only this tenant's records.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@reports_errors
def audit(settings: Settings, tenant: str | None, limit: int, as_json: bool) -> None:
    """Show the audit trail, newest first."""
    with administration(settings, writes=False) as admin:
        rows = admin.directory.audit(tenant, limit)
    for row in rows:
        at = row["at"]
        record = {**row, "at": at.isoformat() if hasattr(at, "isoformat") else at}
        if as_json:
            click.echo(json.dumps(record))
        else:
            columns = (record["at"], row["tenant_id"], row["actor"], row["action"], row["instance_id"])
            click.echo("\t".join([*(str(v or "") for v in columns), _incidents_of(row["detail"])]))


def _incidents_of(detail: object) -> str:
    """The incidents an audit row records, as `kind at node: reason`, for the text listing."""
    try:
        created = json.loads(str(detail)).get("created", [])
    except (ValueError, AttributeError):
        return ""
    return "; ".join(
        f"{token['incident_kind']} at {token.get('node_id')}: {token.get('incident_reason', '')}"
        for token in created
        if isinstance(token, dict) and token.get("incident_kind")
    )


if __name__ == "__main__":
    main()
