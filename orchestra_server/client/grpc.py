"""The gRPC client: typed stubs, a bearer token in the metadata, errors mapped back to the contract's."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TypeVar

import grpc
from google.api import httpbody_pb2
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from orchestra.v1 import auth_service_pb2 as auth_pb
from orchestra.v1 import auth_service_pb2_grpc as auth_grpc
from orchestra.v1 import operations_service_pb2 as ops_pb
from orchestra.v1 import operations_service_pb2_grpc as ops_grpc
from orchestra.v1 import orchestra_service_pb2 as pb
from orchestra.v1 import orchestra_service_pb2_grpc as pb_grpc

from orchestra_server.client.contract import (
    InstancePage,
    InstanceSummary,
    InstanceView,
    TokenView,
    error_for_grpc,
)
from orchestra_server.client.credentials import TokenCache, token_request_body
from orchestra_server.client.operations import (
    BatchOutcome,
    DefinitionFlow,
    DefinitionGraph,
    DefinitionNode,
    DefinitionSummary,
    DefinitionVersion,
    DeployOutcome,
    HistoryEntry,
    Incident,
    InstanceDetail,
    InstanceOverview,
    Moment,
    Page,
    TokenDetail,
    instance_filters,
)
from orchestra_server.errors import Unauthenticated
from orchestra_server.wire import values
from orchestra_server.wire.json_text import Json
from orchestra_server.wire.message_sizes import CLIENT_MESSAGE_OPTIONS

R = TypeVar("R", bound=Message)
DEFAULT_TIMEOUT_SECONDS = 30.0


class GrpcConnection:
    """One channel and one consumer's access token, shared by the service stubs a client calls."""

    def __init__(
        self,
        target: str,
        client_id: str,
        client_secret: str,
        *,
        channel: grpc.Channel | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        # A channel passed in must allow the same message sizes (message_sizes.CLIENT_MESSAGE_OPTIONS).
        self.channel = channel or grpc.insecure_channel(target, options=CLIENT_MESSAGE_OPTIONS)
        self._owns_channel = channel is None
        self._auth = auth_grpc.AuthServiceStub(self.channel)
        self._timeout = timeout
        self._credentials = (client_id, client_secret)
        self._tokens = TokenCache(self._fetch_token)

    def _fetch_token(self) -> tuple[str, int]:
        body = httpbody_pb2.HttpBody(
            content_type="application/x-www-form-urlencoded", data=token_request_body(*self._credentials)
        )
        try:
            answer = self._auth.IssueToken(auth_pb.IssueTokenRequest(http_body=body), timeout=self._timeout)
        except grpc.RpcError as exc:
            raise error_for_grpc(exc.code(), exc.details() or "") from None
        data = json.loads(answer.http_body.data)
        return str(data["access_token"]), int(data["expires_in"])

    def call(
        self, method: Callable[..., R], request: Message, metadata: tuple[tuple[str, str], ...] = ()
    ) -> R:
        # One retry when the server refused a token we thought valid (expired, key rotated).
        for attempt in (1, 2):
            token = self._tokens.token()
            try:
                return method(
                    request, metadata=(("authorization", f"Bearer {token}"), *metadata), timeout=self._timeout
                )
            except grpc.RpcError as exc:
                error = error_for_grpc(exc.code(), exc.details() or "")
                if isinstance(error, Unauthenticated) and attempt == 1:
                    self._tokens.invalidate(token)
                    continue
                raise error from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._owns_channel:
            self.channel.close()


class GrpcOrchestraClient:
    def __init__(
        self,
        target: str,
        client_id: str,
        client_secret: str,
        *,
        channel: grpc.Channel | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self._connection = GrpcConnection(target, client_id, client_secret, channel=channel, timeout=timeout)
        self._stub = pb_grpc.OrchestraServiceStub(self._connection.channel)
        self._call = self._connection.call

    def start_process(
        self,
        definition_id: str,
        variables: Mapping[str, Json] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> str:
        request = pb.StartProcessRequest(definition_id=definition_id)
        for name, value in (variables or {}).items():
            values.to_proto(value, request.variables[name])
        metadata = (("idempotency-key", idempotency_key),) if idempotency_key is not None else ()
        return self._call(self._stub.StartProcess, request, metadata).instance_id

    def list_instances(
        self,
        *,
        definition_id: str | None = None,
        status: str | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> InstancePage:
        answer = self._call(
            self._stub.ListInstances,
            pb.ListInstancesRequest(
                definition_id=definition_id or "",
                status=status or "",
                page_size=page_size,
                page_token=page_token,
            ),
        )
        return InstancePage(
            tuple(InstanceSummary(s.id, s.definition_id, s.status) for s in answer.instances),
            answer.next_page_token,
        )

    def get_instance(self, instance_id: str) -> InstanceView:
        found = self._call(self._stub.GetInstance, pb.GetInstanceRequest(instance_id=instance_id)).instance
        return InstanceView(
            id=found.id,
            definition_id=found.definition_id,
            status=found.status,
            tenant_id=found.tenant_id,
            tokens=tuple(
                TokenView(
                    t.id,
                    t.node_id,
                    t.status,
                    t.incident_kind if t.HasField("incident_kind") else None,
                    t.incident_reason if t.HasField("incident_reason") else None,
                    t.since.ToDatetime(tzinfo=UTC) if t.HasField("since") else None,
                )
                for t in found.tokens
            ),
            definition_version=found.definition_version,
            started_at=found.started_at.ToDatetime(tzinfo=UTC),
            updated_at=found.updated_at.ToDatetime(tzinfo=UTC),
        )

    def signal_token(self, token_id: str, variables: Mapping[str, Json] | None = None) -> None:
        request = pb.SignalTokenRequest(token_id=token_id)
        for name, value in (variables or {}).items():
            values.to_proto(value, request.variables[name])
        self._call(self._stub.SignalToken, request)

    def get_variables(self, instance_id: str) -> dict[str, Json]:
        answer = self._call(self._stub.GetVariables, pb.GetVariablesRequest(instance_id=instance_id))
        return values.map_to_python(answer.variables)

    def set_variable(self, instance_id: str, name: str, value: Json) -> None:
        request = pb.SetVariableRequest(instance_id=instance_id, name=name, value=values.to_proto(value))
        self._call(self._stub.SetVariable, request)

    def close(self) -> None:
        self._connection.close()


class GrpcOperationsClient:
    """The operations API over gRPC (`orchestra.v1.OperationsService`), for one consumer's tenant."""

    def __init__(
        self,
        target: str,
        client_id: str,
        client_secret: str,
        *,
        channel: grpc.Channel | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self._connection = GrpcConnection(target, client_id, client_secret, channel=channel, timeout=timeout)
        self._stub = ops_grpc.OperationsServiceStub(self._connection.channel)
        self._call = self._connection.call

    def deploy_definition(self, source: str, *, scope: str = "") -> DeployOutcome:
        answer = self._call(
            self._stub.DeployDefinition, ops_pb.DeployDefinitionRequest(source=source, scope=scope)
        )
        return DeployOutcome(answer.definition_id, answer.version, answer.changed, answer.scope)

    def list_definitions(self) -> tuple[DefinitionSummary, ...]:
        answer = self._call(self._stub.ListDefinitions, ops_pb.ListDefinitionsRequest())
        return tuple(
            DefinitionSummary(
                definition_id=d.definition_id,
                latest_version=d.latest_version,
                label=d.label,
                scope=d.scope,
                running_instances=d.running_instances,
                open_incidents=d.open_incidents,
                versions=tuple(
                    DefinitionVersion(v.version, _moment(v.deployed_at), v.running_instances)
                    for v in d.versions
                ),
            )
            for d in answer.definitions
        )

    def get_definition(self, definition_id: str, version: int = 0) -> DefinitionGraph:
        request = ops_pb.GetDefinitionRequest(definition_id=definition_id, version=version)
        answer = self._call(self._stub.GetDefinition, request)
        return DefinitionGraph(
            definition_id=answer.definition_id,
            version=answer.version,
            latest_version=answer.latest_version,
            label=answer.label,
            scope=answer.scope,
            deployed_at=_moment(answer.deployed_at),
            nodes=tuple(
                DefinitionNode(
                    id=n.id,
                    type=n.type,
                    label=n.label,
                    join=n.join,
                    split=n.split,
                    threshold=n.threshold,
                    timer_after=n.timer_after,
                    timer_until=n.timer_until,
                    timeout_after=n.timeout_after,
                    timeout_to=n.timeout_to,
                    parked=n.tokens.parked,
                    waiting=n.tokens.waiting,
                    incident=n.tokens.incident,
                )
                for n in answer.nodes
            ),
            flows=tuple(
                DefinitionFlow(f.order, f.from_node, f.to_node, f.condition, f.default, f.timeout)
                for f in answer.flows
            ),
        )

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
        query = instance_filters(
            definition_id=definition_id,
            version=version,
            status=status,
            has_incident=has_incident,
            node_id=node_id,
            started_after=started_after,
            started_before=started_before,
            variables=variables,
        )
        request = ops_pb.SearchInstancesRequest(
            definition_id=query.definition_id,
            version=query.version,
            status=query.status,
            node_id=query.node_id,
            started_after=query.started_after,
            started_before=query.started_before,
            variable=query.variable,
            page_size=page_size,
            page_token=page_token,
        )
        if query.has_incident is not None:
            request.has_incident = query.has_incident
        answer = self._call(self._stub.SearchInstances, request)
        return Page(
            tuple(
                InstanceOverview(
                    id=i.id,
                    definition_id=i.definition_id,
                    definition_version=i.definition_version,
                    status=i.status,
                    started_at=_moment(i.started_at),
                    updated_at=_moment(i.updated_at),
                    ended_at=_moment(i.ended_at) if i.HasField("ended_at") else None,
                    open_incidents=i.open_incidents,
                )
                for i in answer.instances
            ),
            answer.next_page_token,
        )

    def get_instance_detail(self, instance_id: str) -> InstanceDetail:
        found = self._call(
            self._stub.GetInstanceDetail, ops_pb.GetInstanceDetailRequest(instance_id=instance_id)
        ).instance
        return InstanceDetail(
            id=found.id,
            definition_id=found.definition_id,
            definition_version=found.definition_version,
            status=found.status,
            started_at=_moment(found.started_at),
            updated_at=_moment(found.updated_at),
            ended_at=_moment(found.ended_at) if found.HasField("ended_at") else None,
            variables=values.map_to_python(found.variables.fields),
            tokens=tuple(
                TokenDetail(
                    id=t.id,
                    node_id=t.node_id,
                    status=t.status,
                    since=_moment(t.since) if t.HasField("since") else None,
                    due_at=_moment(t.due_at) if t.HasField("due_at") else None,
                    incident_kind=t.incident_kind if t.HasField("incident_kind") else None,
                    incident_reason=t.incident_reason if t.HasField("incident_reason") else None,
                )
                for t in found.tokens
            ),
        )

    def get_instance_history(
        self, instance_id: str, *, page_size: int = 0, page_token: str = ""
    ) -> Page[HistoryEntry]:
        answer = self._call(
            self._stub.GetInstanceHistory,
            ops_pb.GetInstanceHistoryRequest(
                instance_id=instance_id, page_size=page_size, page_token=page_token
            ),
        )
        return Page(
            tuple(
                HistoryEntry(
                    at=_moment(e.at),
                    actor=e.actor,
                    action=e.action,
                    nodes=tuple(e.nodes),
                    tokens_consumed=tuple(e.tokens_consumed),
                    tokens_created=tuple(e.tokens_created),
                    variables=tuple(e.variables),
                    status=e.status,
                    incidents=tuple(e.incidents),
                    reason=e.reason,
                )
                for e in answer.entries
            ),
            answer.next_page_token,
        )

    def cancel_instance(self, instance_id: str, reason: str = "") -> None:
        self._call(
            self._stub.CancelInstance, ops_pb.CancelInstanceRequest(instance_id=instance_id, reason=reason)
        )

    def list_incidents(
        self,
        *,
        definition_id: str | None = None,
        node_id: str | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> Page[Incident]:
        answer = self._call(
            self._stub.ListIncidents,
            ops_pb.ListIncidentsRequest(
                definition_id=definition_id or "",
                node_id=node_id or "",
                page_size=page_size,
                page_token=page_token,
            ),
        )
        return Page(
            tuple(
                Incident(
                    instance_id=i.instance_id,
                    definition_id=i.definition_id,
                    definition_version=i.definition_version,
                    token_id=i.token_id,
                    node_id=i.node_id,
                    kind=i.kind,
                    reason=i.reason,
                    since=_moment(i.since) if i.HasField("since") else None,
                )
                for i in answer.incidents
            ),
            answer.next_page_token,
        )

    def resolve_incident(
        self, token_id: str, action: str, variables: Mapping[str, Json] | None = None
    ) -> str:
        request = ops_pb.ResolveIncidentRequest(token_id=token_id, action=action)
        for name, value in (variables or {}).items():
            values.to_proto(value, request.variables[name])
        return self._call(self._stub.ResolveIncident, request).instance_status

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
        query = instance_filters(
            definition_id=definition_id,
            version=version,
            has_incident=has_incident,
            node_id=node_id,
            started_after=started_after,
            started_before=started_before,
            variables=variables,
        )
        request = ops_pb.CancelInstancesRequest(
            definition_id=query.definition_id,
            version=query.version,
            node_id=query.node_id,
            started_after=query.started_after,
            started_before=query.started_before,
            variable=query.variable,
            reason=reason,
            dry_run=dry_run,
            max=max,
        )
        if query.has_incident is not None:
            request.has_incident = query.has_incident
        return _batch(self._call(self._stub.CancelInstances, request))

    def retry_incidents(
        self,
        *,
        definition_id: str | None = None,
        node_id: str | None = None,
        dry_run: bool = False,
        max: int = 0,
    ) -> BatchOutcome:
        request = ops_pb.RetryIncidentsRequest(
            definition_id=definition_id or "", node_id=node_id or "", dry_run=dry_run, max=max
        )
        return _batch(self._call(self._stub.RetryIncidents, request))

    def close(self) -> None:
        self._connection.close()


def _moment(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def _batch(answer: ops_pb.CancelInstancesResponse | ops_pb.RetryIncidentsResponse) -> BatchOutcome:
    return BatchOutcome(answer.matched, answer.done, answer.skipped, answer.failed, tuple(answer.errors))
