"""The in-process client: the use cases called directly, for one tenant.

It lives outside `client/` because it loads the server: the remote clients do not.
"""

from __future__ import annotations

from collections.abc import Mapping

from orchestra_server.client.contract import InstancePage, InstanceSummary, InstanceView, TokenView
from orchestra_server.engine.model import Json
from orchestra_server.service.processes import Caller, ProcessService


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

    def signal_token(self, token_id: str) -> None:
        self._processes.signal_token(self._caller, token_id)

    def get_variables(self, instance_id: str) -> dict[str, Json]:
        return self._processes.get_variables(self._caller, instance_id)

    def set_variable(self, instance_id: str, name: str, value: Json) -> None:
        self._processes.set_variable(self._caller, instance_id, name, value)

    def close(self) -> None:
        """Nothing to release: the caller owns the service."""
