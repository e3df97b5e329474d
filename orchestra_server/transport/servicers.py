"""Thin servicers: decode the request, call the use case, encode the answer."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime

import grpc
from google.api import httpbody_pb2
from orchestra.v1 import auth_service_pb2 as auth_pb
from orchestra.v1 import auth_service_pb2_grpc as auth_grpc
from orchestra.v1 import diagnostics_service_pb2 as diag_pb
from orchestra.v1 import diagnostics_service_pb2_grpc as diag_grpc
from orchestra.v1 import orchestra_service_pb2 as pb
from orchestra.v1 import orchestra_service_pb2_grpc as pb_grpc

from orchestra_server.errors import InvalidArgument
from orchestra_server.identity.token_endpoint import TokenEndpoint
from orchestra_server.service.processes import ProcessService, TokenView
from orchestra_server.transport.errors import HTTP_STATUS_METADATA
from orchestra_server.transport.guard import current_caller, metadata_value
from orchestra_server.transport.timestamps import set_timestamp
from orchestra_server.wire import values

IDEMPOTENCY_METADATA = "idempotency-key"
_OAUTH_ERROR_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED}


class OrchestraServicer(pb_grpc.OrchestraServiceServicer):
    def __init__(self, processes: ProcessService) -> None:
        self._processes = processes

    def StartProcess(
        self, request: pb.StartProcessRequest, context: grpc.ServicerContext
    ) -> pb.StartProcessResponse:
        instance_id = self._processes.start_process(
            current_caller(),
            request.definition_id,
            values.map_to_python(request.variables),
            idempotency_key=metadata_value(context, IDEMPOTENCY_METADATA),
        )
        context.send_initial_metadata(((HTTP_STATUS_METADATA, "201"),))
        return pb.StartProcessResponse(instance_id=instance_id)

    def ListInstances(
        self, request: pb.ListInstancesRequest, context: grpc.ServicerContext
    ) -> pb.ListInstancesResponse:
        page = self._processes.list_instances(
            current_caller(),
            definition_id=request.definition_id or None,
            status=request.status or None,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListInstancesResponse(
            instances=[
                pb.InstanceSummary(id=s.id, definition_id=s.definition_id, status=s.status)
                for s in page.instances
            ],
            next_page_token=page.next_page_token,
        )

    def GetInstance(
        self, request: pb.GetInstanceRequest, context: grpc.ServicerContext
    ) -> pb.GetInstanceResponse:
        view = self._processes.get_instance(current_caller(), request.instance_id)
        instance = pb.Instance(
            id=view.id,
            definition_id=view.definition_id,
            status=view.status,
            tenant_id=view.tenant_id,
            tokens=[_token(t) for t in view.tokens],
            definition_version=view.definition_version,
        )
        set_timestamp(instance.started_at, view.started_at)
        set_timestamp(instance.updated_at, view.updated_at)
        return pb.GetInstanceResponse(instance=instance)

    def SignalToken(
        self, request: pb.SignalTokenRequest, context: grpc.ServicerContext
    ) -> pb.SignalTokenResponse:
        self._processes.signal_token(
            # No variables is the signal as it always was.
            current_caller(),
            request.token_id,
            values.map_to_python(request.variables) or None,
        )
        return pb.SignalTokenResponse(status="signalled")

    def GetVariables(
        self, request: pb.GetVariablesRequest, context: grpc.ServicerContext
    ) -> pb.GetVariablesResponse:
        found = self._processes.get_variables(current_caller(), request.instance_id)
        response = pb.GetVariablesResponse()
        for name, value in found.items():
            values.to_proto(value, response.variables[name])
        return response

    def SetVariable(
        self, request: pb.SetVariableRequest, context: grpc.ServicerContext
    ) -> pb.SetVariableResponse:
        if not request.HasField("value"):
            raise InvalidArgument("value is required")
        self._processes.set_variable(
            current_caller(), request.instance_id, request.name, values.to_python(request.value)
        )
        return pb.SetVariableResponse(status="set")


def _token(view: TokenView) -> pb.Token:
    # The incident fields are set only on incidents, so REST shows them only there.
    token = pb.Token(id=view.id, node_id=view.node_id, status=view.status)
    if view.incident_kind is not None:
        token.incident_kind = view.incident_kind
    if view.incident_reason is not None:
        token.incident_reason = view.incident_reason
    if view.since is not None:
        set_timestamp(token.since, view.since)
    return token


class AuthServicer(auth_grpc.AuthServiceServicer):
    def __init__(
        self, token_endpoint: TokenEndpoint, jwks: Callable[[datetime], bytes], clock: Callable[[], datetime]
    ) -> None:
        self._endpoint = token_endpoint
        self._jwks = jwks
        self._clock = clock

    def IssueToken(
        self, request: auth_pb.IssueTokenRequest, context: grpc.ServicerContext
    ) -> auth_pb.IssueTokenResponse:
        answer = self._endpoint.handle(
            request.http_body.data,
            request.http_body.content_type or None,
            metadata_value(context, "authorization"),
            self._clock(),
        )
        if answer.status != 200:
            # RFC 6749 5.2: the error code is the whole message, so the edge answers {"error": code}.
            code = json.loads(answer.body)["error"]
            extra = [(k.lower(), v) for k, v in answer.headers.items() if k.lower() == "www-authenticate"]
            context.set_trailing_metadata(((HTTP_STATUS_METADATA, str(answer.status)), *extra))
            context.abort(_OAUTH_ERROR_CODES.get(answer.status, grpc.StatusCode.INVALID_ARGUMENT), code)
        context.send_initial_metadata((("pragma", "no-cache"),))
        return auth_pb.IssueTokenResponse(
            http_body=httpbody_pb2.HttpBody(content_type="application/json", data=answer.body)
        )

    def GetJwks(
        self, request: auth_pb.GetJwksRequest, context: grpc.ServicerContext
    ) -> auth_pb.GetJwksResponse:
        return auth_pb.GetJwksResponse(
            http_body=httpbody_pb2.HttpBody(content_type="application/json", data=self._jwks(self._clock()))
        )


class DiagnosticsServicer(diag_grpc.DiagnosticsServiceServicer):
    def Ping(self, request: diag_pb.PingRequest, context: grpc.ServicerContext) -> diag_pb.PingResponse:
        return diag_pb.PingResponse(status="ok", tenant_id=current_caller().tenant_id)
