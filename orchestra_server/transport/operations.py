"""The operations servicer: decode the request, call the operations use case, encode the answer.

The views of service.operations carry the proto's field names, so each message is built field
for field; times become google.protobuf.Timestamp and an absent time stays unset.
"""

from __future__ import annotations

import grpc
from orchestra.v1 import operations_service_pb2 as ops
from orchestra.v1 import operations_service_pb2_grpc as ops_grpc

from orchestra_server.service.operations import (
    DefinitionSummaryView,
    GraphFlow,
    GraphNode,
    HistoryEntryView,
    IncidentView,
    InstanceFilter,
    InstanceOverviewView,
    OperationsService,
    TokenDetailView,
)
from orchestra_server.transport.errors import HTTP_STATUS_METADATA
from orchestra_server.transport.guard import current_caller
from orchestra_server.transport.timestamps import set_timestamp, timestamp
from orchestra_server.wire import values

# DeployDefinition answers 201 when it deployed a new version, 200 when the source was unchanged.
_DEPLOYED_STATUS = "201"


class OperationsServicer(ops_grpc.OperationsServiceServicer):
    def __init__(self, operations: OperationsService) -> None:
        self._operations = operations

    def DeployDefinition(
        self, request: ops.DeployDefinitionRequest, context: grpc.ServicerContext
    ) -> ops.DeployDefinitionResponse:
        outcome = self._operations.deploy_definition(current_caller(), request.source, scope=request.scope)
        if outcome.changed:
            context.send_initial_metadata(((HTTP_STATUS_METADATA, _DEPLOYED_STATUS),))
        return ops.DeployDefinitionResponse(
            definition_id=outcome.definition_id,
            version=outcome.version,
            changed=outcome.changed,
            scope=outcome.scope,
        )

    def ListDefinitions(
        self, request: ops.ListDefinitionsRequest, context: grpc.ServicerContext
    ) -> ops.ListDefinitionsResponse:
        found = self._operations.list_definitions(current_caller())
        return ops.ListDefinitionsResponse(definitions=[_summary(d) for d in found])

    def GetDefinition(
        self, request: ops.GetDefinitionRequest, context: grpc.ServicerContext
    ) -> ops.GetDefinitionResponse:
        graph = self._operations.get_definition(current_caller(), request.definition_id, request.version)
        return ops.GetDefinitionResponse(
            definition_id=graph.definition_id,
            version=graph.version,
            latest_version=graph.latest_version,
            label=graph.label,
            scope=graph.scope,
            deployed_at=timestamp(graph.deployed_at),
            nodes=[_node(n) for n in graph.nodes],
            flows=[_flow(f) for f in graph.flows],
        )

    def SearchInstances(
        self, request: ops.SearchInstancesRequest, context: grpc.ServicerContext
    ) -> ops.SearchInstancesResponse:
        query = InstanceFilter.parse(
            definition_id=request.definition_id,
            version=request.version,
            status=request.status,
            has_incident=request.has_incident if request.HasField("has_incident") else None,
            node_id=request.node_id,
            started_after=request.started_after,
            started_before=request.started_before,
            variable=tuple(request.variable),
        )
        page = self._operations.search_instances(
            current_caller(), query, page_size=request.page_size, page_token=request.page_token
        )
        response = ops.SearchInstancesResponse(next_page_token=page.next_page_token)
        add = response.instances.add
        for view in page.items:
            _overview(add(), view)
        return response

    def GetInstanceDetail(
        self, request: ops.GetInstanceDetailRequest, context: grpc.ServicerContext
    ) -> ops.GetInstanceDetailResponse:
        view = self._operations.get_instance_detail(current_caller(), request.instance_id)
        detail = ops.InstanceDetail(
            id=view.id,
            definition_id=view.definition_id,
            definition_version=view.definition_version,
            status=view.status,
            started_at=timestamp(view.started_at),
            updated_at=timestamp(view.updated_at),
            ended_at=timestamp(view.ended_at),
            tokens=[_token(t) for t in view.tokens],
        )
        # Set even when empty, so REST prints `{}` rather than leaving the field out.
        detail.variables.SetInParent()
        for name, value in view.variables.items():
            values.to_proto(value, detail.variables.fields[name])
        return ops.GetInstanceDetailResponse(instance=detail)

    def GetInstanceHistory(
        self, request: ops.GetInstanceHistoryRequest, context: grpc.ServicerContext
    ) -> ops.GetInstanceHistoryResponse:
        page = self._operations.get_instance_history(
            current_caller(), request.instance_id, page_size=request.page_size, page_token=request.page_token
        )
        response = ops.GetInstanceHistoryResponse(next_page_token=page.next_page_token)
        add = response.entries.add
        for view in page.items:
            _entry(add(), view)
        return response

    def CancelInstance(
        self, request: ops.CancelInstanceRequest, context: grpc.ServicerContext
    ) -> ops.CancelInstanceResponse:
        self._operations.cancel_instance(current_caller(), request.instance_id, request.reason)
        return ops.CancelInstanceResponse(instance_id=request.instance_id, status="cancelled")

    def ListIncidents(
        self, request: ops.ListIncidentsRequest, context: grpc.ServicerContext
    ) -> ops.ListIncidentsResponse:
        page = self._operations.list_incidents(
            current_caller(),
            definition_id=request.definition_id,
            node_id=request.node_id,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        response = ops.ListIncidentsResponse(next_page_token=page.next_page_token)
        add = response.incidents.add
        for view in page.items:
            _incident(add(), view)
        return response

    def ResolveIncident(
        self, request: ops.ResolveIncidentRequest, context: grpc.ServicerContext
    ) -> ops.ResolveIncidentResponse:
        status = self._operations.resolve_incident(
            current_caller(), request.token_id, request.action, values.map_to_python(request.variables)
        )
        return ops.ResolveIncidentResponse(action=request.action, instance_status=status)

    def CancelInstances(
        self, request: ops.CancelInstancesRequest, context: grpc.ServicerContext
    ) -> ops.CancelInstancesResponse:
        query = InstanceFilter.parse(
            definition_id=request.definition_id,
            version=request.version,
            has_incident=request.has_incident if request.HasField("has_incident") else None,
            node_id=request.node_id,
            started_after=request.started_after,
            started_before=request.started_before,
            variable=tuple(request.variable),
        )
        outcome = self._operations.cancel_instances(
            current_caller(), query, reason=request.reason, dry_run=request.dry_run, max=request.max
        )
        return ops.CancelInstancesResponse(
            matched=outcome.matched,
            done=outcome.done,
            skipped=outcome.skipped,
            failed=outcome.failed,
            errors=outcome.errors,
        )

    def RetryIncidents(
        self, request: ops.RetryIncidentsRequest, context: grpc.ServicerContext
    ) -> ops.RetryIncidentsResponse:
        outcome = self._operations.retry_incidents(
            current_caller(),
            definition_id=request.definition_id,
            node_id=request.node_id,
            dry_run=request.dry_run,
            max=request.max,
        )
        return ops.RetryIncidentsResponse(
            matched=outcome.matched,
            done=outcome.done,
            skipped=outcome.skipped,
            failed=outcome.failed,
            errors=outcome.errors,
        )


def _summary(view: DefinitionSummaryView) -> ops.DefinitionSummary:
    return ops.DefinitionSummary(
        definition_id=view.definition_id,
        latest_version=view.latest_version,
        label=view.label,
        scope=view.scope,
        running_instances=view.running_instances,
        open_incidents=view.open_incidents,
        versions=[
            ops.DefinitionVersion(
                version=v.version, deployed_at=timestamp(v.deployed_at), running_instances=v.running_instances
            )
            for v in view.versions
        ],
    )


def _node(node: GraphNode) -> ops.DefinitionNode:
    return ops.DefinitionNode(
        id=node.id,
        type=node.type,
        label=node.label,
        join=node.join,
        split=node.split,
        threshold=node.threshold,
        timer_after=node.timer_after,
        timer_until=node.timer_until,
        timeout_after=node.timeout_after,
        timeout_to=node.timeout_to,
        tokens=ops.TokenCounts(parked=node.parked, waiting=node.waiting, incident=node.incident),
    )


def _flow(flow: GraphFlow) -> ops.DefinitionFlow:
    return ops.DefinitionFlow(
        order=flow.order,
        from_node=flow.from_node,
        to_node=flow.to_node,
        condition=flow.condition,
        default=flow.default,
        timeout=flow.timeout,
    )


# The paged lists fill each item in place (``add()`` on the repeated field, Timestamps set
# field by field): building standalone messages and copying them in costs about twice as much
# per item, and a page holds up to 1,000.


def _overview(item: ops.InstanceOverview, view: InstanceOverviewView) -> None:
    item.id = view.id
    item.definition_id = view.definition_id
    item.definition_version = view.definition_version
    item.status = view.status
    set_timestamp(item.started_at, view.started_at)
    set_timestamp(item.updated_at, view.updated_at)
    if view.ended_at is not None:
        set_timestamp(item.ended_at, view.ended_at)
    item.open_incidents = view.open_incidents


def _token(view: TokenDetailView) -> ops.TokenDetail:
    # The incident fields are set only on incidents, so REST shows them only there.
    token = ops.TokenDetail(
        id=view.id,
        node_id=view.node_id,
        status=view.status,
        since=timestamp(view.since),
        due_at=timestamp(view.due_at),
    )
    if view.incident_kind is not None:
        token.incident_kind = view.incident_kind
    if view.incident_reason is not None:
        token.incident_reason = view.incident_reason
    return token


def _entry(item: ops.HistoryEntry, view: HistoryEntryView) -> None:
    set_timestamp(item.at, view.at)
    item.actor = view.actor
    item.action = view.action
    item.nodes.extend(view.nodes)
    item.tokens_consumed.extend(view.tokens_consumed)
    item.tokens_created.extend(view.tokens_created)
    item.variables.extend(view.variables)
    item.status = view.status
    item.incidents.extend(view.incidents)
    item.reason = view.reason


def _incident(item: ops.Incident, view: IncidentView) -> None:
    item.instance_id = view.instance_id
    item.definition_id = view.definition_id
    item.definition_version = view.definition_version
    item.token_id = view.token_id
    item.node_id = view.node_id
    item.kind = view.kind
    item.reason = view.reason
    if view.since is not None:
        set_timestamp(item.since, view.since)
