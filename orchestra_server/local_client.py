"""The in-process clients: the use cases called directly, for one tenant.

They live outside `client/` because they load the server: the remote clients do not.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import fields
from typing import Any, TypeVar

from orchestra_server.client import operations as ops
from orchestra_server.client.contract import InstancePage, InstanceSummary, InstanceView, TokenView
from orchestra_server.engine.model import Json
from orchestra_server.identity.consumers import DEPLOY_PERMISSION, OPERATE_PERMISSION
from orchestra_server.service.operations import InstanceFilter, OperationsService
from orchestra_server.service.processes import Caller, ProcessService

V = TypeVar("V")


class LocalOrchestraClient:
    def __init__(self, processes: ProcessService, tenant_id: str, actor: str = "local") -> None:
        self._processes = processes
        self._caller = Caller(tenant_id, actor)

    def start_process(
        self,
        definition_id: str,
        variables: Mapping[str, Json] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> str:
        return self._processes.start_process(
            self._caller, definition_id, dict(variables or {}), idempotency_key=idempotency_key
        )

    def list_instances(
        self,
        *,
        definition_id: str | None = None,
        status: str | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> InstancePage:
        page = self._processes.list_instances(
            self._caller,
            definition_id=definition_id,
            status=status,
            page_size=page_size,
            page_token=page_token,
        )
        return InstancePage(
            tuple(InstanceSummary(s.id, s.definition_id, s.status) for s in page.instances),
            page.next_page_token,
        )

    def get_instance(self, instance_id: str) -> InstanceView:
        found = self._processes.get_instance(self._caller, instance_id)
        return InstanceView(
            id=found.id,
            definition_id=found.definition_id,
            status=found.status,
            tenant_id=found.tenant_id,
            tokens=tuple(
                TokenView(t.id, t.node_id, t.status, t.incident_kind, t.incident_reason, t.since)
                for t in found.tokens
            ),
            definition_version=found.definition_version,
            started_at=found.started_at,
            updated_at=found.updated_at,
        )

    def signal_token(self, token_id: str, variables: Mapping[str, Json] | None = None) -> None:
        self._processes.signal_token(self._caller, token_id, variables)

    def get_variables(self, instance_id: str) -> dict[str, Json]:
        return self._processes.get_variables(self._caller, instance_id)

    def set_variable(self, instance_id: str, name: str, value: Json) -> None:
        self._processes.set_variable(self._caller, instance_id, name, value)

    def close(self) -> None:
        """Nothing to release: the caller owns the service."""


class LocalOperationsClient:
    """The operations API in-process, acting for one tenant with the permissions given.

    Filters go through the same wire form as over gRPC and REST (`InstanceFilter.parse`), so
    malformed ones are refused with the same messages.
    """

    def __init__(
        self,
        operations: OperationsService,
        tenant_id: str,
        actor: str = "local",
        permissions: Iterable[str] = (OPERATE_PERMISSION, DEPLOY_PERMISSION),
    ) -> None:
        self._operations = operations
        self._caller = Caller(tenant_id, actor, frozenset(permissions))

    def deploy_definition(self, source: str, *, scope: str = "") -> ops.DeployOutcome:
        return _as(ops.DeployOutcome, self._operations.deploy_definition(self._caller, source, scope=scope))

    def list_definitions(self) -> tuple[ops.DefinitionSummary, ...]:
        return tuple(
            _as(
                ops.DefinitionSummary,
                summary,
                versions=tuple(_as(ops.DefinitionVersion, v) for v in summary.versions),
            )
            for summary in self._operations.list_definitions(self._caller)
        )

    def get_definition(self, definition_id: str, version: int = 0) -> ops.DefinitionGraph:
        graph = self._operations.get_definition(self._caller, definition_id, version)
        return _as(
            ops.DefinitionGraph,
            graph,
            nodes=tuple(_as(ops.DefinitionNode, n) for n in graph.nodes),
            flows=tuple(_as(ops.DefinitionFlow, f) for f in graph.flows),
        )

    def search_instances(
        self,
        *,
        definition_id: str | None = None,
        version: int | None = None,
        status: str | None = None,
        has_incident: bool | None = None,
        node_id: str | None = None,
        started_after: ops.Moment | None = None,
        started_before: ops.Moment | None = None,
        variables: Mapping[str, Json] | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> ops.Page[ops.InstanceOverview]:
        query = _parsed(
            ops.instance_filters(
                definition_id=definition_id,
                version=version,
                status=status,
                has_incident=has_incident,
                node_id=node_id,
                started_after=started_after,
                started_before=started_before,
                variables=variables,
            )
        )
        page = self._operations.search_instances(
            self._caller, query, page_size=page_size, page_token=page_token
        )
        return ops.Page(tuple(_as(ops.InstanceOverview, i) for i in page.items), page.next_page_token)

    def get_instance_detail(self, instance_id: str) -> ops.InstanceDetail:
        found = self._operations.get_instance_detail(self._caller, instance_id)
        return _as(
            ops.InstanceDetail,
            found,
            variables=dict(found.variables),
            tokens=tuple(_as(ops.TokenDetail, t) for t in found.tokens),
        )

    def get_instance_history(
        self, instance_id: str, *, page_size: int = 0, page_token: str = ""
    ) -> ops.Page[ops.HistoryEntry]:
        page = self._operations.get_instance_history(
            self._caller, instance_id, page_size=page_size, page_token=page_token
        )
        return ops.Page(tuple(_as(ops.HistoryEntry, e) for e in page.items), page.next_page_token)

    def cancel_instance(self, instance_id: str, reason: str = "") -> None:
        self._operations.cancel_instance(self._caller, instance_id, reason)

    def list_incidents(
        self,
        *,
        definition_id: str | None = None,
        node_id: str | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> ops.Page[ops.Incident]:
        page = self._operations.list_incidents(
            self._caller,
            definition_id=definition_id or "",
            node_id=node_id or "",
            page_size=page_size,
            page_token=page_token,
        )
        return ops.Page(tuple(_as(ops.Incident, i) for i in page.items), page.next_page_token)

    def resolve_incident(
        self, token_id: str, action: str, variables: Mapping[str, Json] | None = None
    ) -> str:
        return self._operations.resolve_incident(self._caller, token_id, action, variables)

    def cancel_instances(
        self,
        *,
        definition_id: str | None = None,
        version: int | None = None,
        has_incident: bool | None = None,
        node_id: str | None = None,
        started_after: ops.Moment | None = None,
        started_before: ops.Moment | None = None,
        variables: Mapping[str, Json] | None = None,
        reason: str = "",
        dry_run: bool = False,
        max: int = 0,
    ) -> ops.BatchOutcome:
        query = _parsed(
            ops.instance_filters(
                definition_id=definition_id,
                version=version,
                has_incident=has_incident,
                node_id=node_id,
                started_after=started_after,
                started_before=started_before,
                variables=variables,
            )
        )
        outcome = self._operations.cancel_instances(
            self._caller, query, reason=reason, dry_run=dry_run, max=max
        )
        return _as(ops.BatchOutcome, outcome)

    def retry_incidents(
        self,
        *,
        definition_id: str | None = None,
        node_id: str | None = None,
        dry_run: bool = False,
        max: int = 0,
    ) -> ops.BatchOutcome:
        outcome = self._operations.retry_incidents(
            self._caller, definition_id=definition_id or "", node_id=node_id or "", dry_run=dry_run, max=max
        )
        return _as(ops.BatchOutcome, outcome)

    def close(self) -> None:
        """Nothing to release: the caller owns the service."""


def _parsed(query: ops.InstanceFilters) -> InstanceFilter:
    return InstanceFilter.parse(
        definition_id=query.definition_id,
        version=query.version,
        status=query.status,
        has_incident=query.has_incident,
        node_id=query.node_id,
        started_after=query.started_after,
        started_before=query.started_before,
        variable=query.variable,
    )


def _as(cls: type[V], view: object, **replaced: Any) -> V:
    """A service view as the client's value of the same fields (the names are the proto's in both)."""
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    return cls(**{name: replaced[name] if name in replaced else getattr(view, name) for name in names})
