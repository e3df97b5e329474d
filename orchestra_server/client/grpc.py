"""The gRPC client: typed stubs, a bearer token in the metadata, errors mapped back to the contract's."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC
from typing import TypeVar

import grpc
from google.api import httpbody_pb2
from google.protobuf.message import Message
from orchestra.v1 import auth_service_pb2 as auth_pb
from orchestra.v1 import auth_service_pb2_grpc as auth_grpc
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
from orchestra_server.errors import Unauthenticated
from orchestra_server.wire import values
from orchestra_server.wire.json_text import Json
from orchestra_server.wire.message_sizes import CLIENT_MESSAGE_OPTIONS

R = TypeVar("R", bound=Message)
DEFAULT_TIMEOUT_SECONDS = 30.0


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
        # A channel passed in must allow the same message sizes (message_sizes.CLIENT_MESSAGE_OPTIONS).
        self._channel = channel or grpc.insecure_channel(target, options=CLIENT_MESSAGE_OPTIONS)
        self._owns_channel = channel is None
        self._stub = pb_grpc.OrchestraServiceStub(self._channel)
        self._auth = auth_grpc.AuthServiceStub(self._channel)
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

    def _call(
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

    def signal_token(self, token_id: str) -> None:
        self._call(self._stub.SignalToken, pb.SignalTokenRequest(token_id=token_id))

    def get_variables(self, instance_id: str) -> dict[str, Json]:
        answer = self._call(self._stub.GetVariables, pb.GetVariablesRequest(instance_id=instance_id))
        return values.map_to_python(answer.variables)

    def set_variable(self, instance_id: str, name: str, value: Json) -> None:
        request = pb.SetVariableRequest(instance_id=instance_id, name=name, value=values.to_proto(value))
        self._call(self._stub.SetVariable, request)

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()
