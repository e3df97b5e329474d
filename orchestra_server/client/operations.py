"""The operations contract: what an operator's client offers over every transport, with its own values.

The values mirror `orchestra.v1.OperationsService`'s messages field for field (token counts
per node flattened to `parked`, `waiting`, `incident`), so each transport maps them
mechanically. Filters travel as the wire's strings on every transport, built once here, so
a malformed filter is refused with the same message whichever way it went.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, Protocol, TypeVar

from orchestra_server.wire.json_text import Json, dump_json

__all__ = [
    "RESOLVE_ACTIONS",
    "BatchOutcome",
    "DefinitionFlow",
    "DefinitionGraph",
    "DefinitionNode",
    "DefinitionSummary",
    "DefinitionVersion",
    "DeployOutcome",
    "HistoryEntry",
    "Incident",
    "InstanceDetail",
    "InstanceOverview",
    "OperationsClient",
    "Page",
    "TokenDetail",
    "instance_filters",
    "rfc3339",
]

T = TypeVar("T")
RESOLVE_ACTIONS = ("retry", "skip", "cancel_branch")
# A time filter: an aware datetime, or RFC 3339 text sent as it is (the server checks it).
Moment = datetime | str


@dataclass(frozen=True, slots=True)
class DeployOutcome:
    definition_id: str
    version: int
    changed: bool
    scope: str


@dataclass(frozen=True, slots=True)
class DefinitionVersion:
    version: int
    deployed_at: datetime
    running_instances: int


@dataclass(frozen=True, slots=True)
class DefinitionSummary:
    definition_id: str
    latest_version: int
    label: str
    scope: str
    running_instances: int
    open_incidents: int
    versions: tuple[DefinitionVersion, ...]


@dataclass(frozen=True, slots=True)
class DefinitionNode:
    id: str
    type: str
    label: str
    join: str
    split: str
    threshold: int
    timer_after: str
    timer_until: str
    timeout_after: str
    timeout_to: str
    # The tenant's live tokens on this node, by status.
    parked: int
    waiting: int
    incident: int


@dataclass(frozen=True, slots=True)
class DefinitionFlow:
    order: int
    from_node: str
    to_node: str
    condition: str
    default: bool
    timeout: bool


@dataclass(frozen=True, slots=True)
class DefinitionGraph:
    definition_id: str
    version: int
    latest_version: int
    label: str
    scope: str
    deployed_at: datetime
    nodes: tuple[DefinitionNode, ...]
    flows: tuple[DefinitionFlow, ...]


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: tuple[T, ...]
    next_page_token: str = ""


@dataclass(frozen=True, slots=True)
class InstanceOverview:
    id: str
    definition_id: str
    definition_version: int
    status: str
    started_at: datetime
    updated_at: datetime
    ended_at: datetime | None
    open_incidents: int


@dataclass(frozen=True, slots=True)
class TokenDetail:
    id: str
    node_id: str
    status: str
    since: datetime | None
    due_at: datetime | None
    incident_kind: str | None
    incident_reason: str | None


@dataclass(frozen=True, slots=True)
class InstanceDetail:
    id: str
    definition_id: str
    definition_version: int
    status: str
    started_at: datetime
    updated_at: datetime
    ended_at: datetime | None
    variables: dict[str, Json]
    tokens: tuple[TokenDetail, ...]


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    at: datetime
    actor: str
    action: str
    nodes: tuple[str, ...]
    tokens_consumed: tuple[str, ...]
    tokens_created: tuple[str, ...]
    variables: tuple[str, ...]
    status: str
    incidents: tuple[str, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class Incident:
    instance_id: str
    definition_id: str
    definition_version: int
    token_id: str
    node_id: str
    kind: str
    reason: str
    since: datetime | None


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    matched: int
    done: int
    skipped: int
    failed: int
    errors: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class InstanceFilters:
    """The instance filters as the wire carries them: strings, zero meaning absent."""

    definition_id: str = ""
    version: int = 0
    status: str = ""
    has_incident: bool | None = None
    node_id: str = ""
    started_after: str = ""
    started_before: str = ""
    variable: tuple[str, ...] = ()


def rfc3339(moment: Moment | None) -> str:
    """A time filter as RFC 3339 text in UTC; text is passed on unchanged for the server to judge."""
    if moment is None:
        return ""
    if isinstance(moment, str):
        return moment
    if moment.tzinfo is None:
        # A naive time names no instant; sent as it is, the server refuses it naming the filter.
        return moment.isoformat()
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def instance_filters(
    *,
    definition_id: str | None = None,
    version: int | None = None,
    status: str | None = None,
    has_incident: bool | None = None,
    node_id: str | None = None,
    started_after: Moment | None = None,
    started_before: Moment | None = None,
    variables: Mapping[str, Json] | None = None,
) -> InstanceFilters:
    """The keyword filters of search_instances and cancel_instances in their wire form.

    Each variable filter becomes `name=<compact JSON>`, the form SearchInstances documents.
    """
    return InstanceFilters(
        definition_id=definition_id or "",
        version=version or 0,
        status=status or "",
        has_incident=has_incident,
        node_id=node_id or "",
        started_after=rfc3339(started_after),
        started_before=rfc3339(started_before),
        variable=tuple(f"{name}={dump_json(value)}" for name, value in (variables or {}).items()),
    )


class OperationsClient(Protocol):
    """The operations API for one tenant: the one its credentials are bound to.

    Every method raises the contract's errors (`orchestra_server.errors`): NotFound for an
    instance or definition the tenant does not have (another tenant's included),
    InvalidArgument naming the parameter for malformed input, Unprocessable for an action the
    instance's or token's state does not allow, PermissionDenied without the permission.
    """

    def deploy_definition(self, source: str, *, scope: str = "") -> DeployOutcome:
        """Validates and deploys a definition's YAML or JSON source; `scope` "" is the tenant's."""
        ...

    def list_definitions(self) -> tuple[DefinitionSummary, ...]:
        """Every definition available to the tenant, by id, with live counts."""
        ...

    def get_definition(self, definition_id: str, version: int = 0) -> DefinitionGraph:
        """One version (0: the newest) as a graph with the tenant's live tokens per node."""
        ...

    def search_instances(
        self,
        *,
        definition_id: str | None = None,
        version: int | None = None,
        status: str | None = None,
        has_incident: bool | None = None,
        node_id: str | None = None,
        started_after: Moment | None = None,
        started_before: Moment | None = None,
        variables: Mapping[str, Json] | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> Page[InstanceOverview]:
        """One page of the instances matching every filter given, newest first."""
        ...

    def get_instance_detail(self, instance_id: str) -> InstanceDetail:
        """The instance with its variables and live tokens (incident kind and reason included)."""
        ...

    def get_instance_history(
        self, instance_id: str, *, page_size: int = 0, page_token: str = ""
    ) -> Page[HistoryEntry]:
        """One page of the instance's audit trail, oldest first."""
        ...

    def cancel_instance(self, instance_id: str, reason: str = "") -> None:
        """Cancels a running instance: every live token goes, its timers never fire."""
        ...

    def list_incidents(
        self,
        *,
        definition_id: str | None = None,
        node_id: str | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> Page[Incident]:
        """One page of the tenant's open incidents, oldest first."""
        ...

    def resolve_incident(
        self, token_id: str, action: str, variables: Mapping[str, Json] | None = None
    ) -> str:
        """Sets `variables`, then retries, skips or cancels the branch of a token in incident.

        Returns the instance's status afterwards.
        """
        ...

    def cancel_instances(
        self,
        *,
        definition_id: str | None = None,
        version: int | None = None,
        has_incident: bool | None = None,
        node_id: str | None = None,
        started_after: Moment | None = None,
        started_before: Moment | None = None,
        variables: Mapping[str, Json] | None = None,
        reason: str = "",
        dry_run: bool = False,
        max: int = 0,
    ) -> BatchOutcome:
        """Cancels the running instances matching the filters, each on its own, at most `max`."""
        ...

    def retry_incidents(
        self,
        *,
        definition_id: str | None = None,
        node_id: str | None = None,
        dry_run: bool = False,
        max: int = 0,
    ) -> BatchOutcome:
        """Retries the open incidents matching the filters, oldest first, at most `max`."""
        ...

    def close(self) -> None: ...
