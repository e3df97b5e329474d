"""The REST client: the contract's HTTP paths, a client-credentials token kept fresh, errors mapped back."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from orchestra_server.client.contract import (
    InstancePage,
    InstanceSummary,
    InstanceView,
    TokenView,
    error_for_http,
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
    InstanceFilters,
    InstanceOverview,
    Moment,
    Page,
    TokenDetail,
    instance_filters,
)
from orchestra_server.errors import OrchestraError, Unauthenticated
from orchestra_server.wire.json_text import Json

DEFAULT_TIMEOUT_SECONDS = 30.0
NEXT_PAGE_HEADER = "x-next-page-token"
OPS = "/orchestra-ops/v1"


class RestConnection:
    """One HTTP client to the edge and one consumer's access token, shared by the APIs a client calls."""

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        *,
        http: httpx.Client | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self._http = http or httpx.Client(base_url=base_url, timeout=timeout)
        self._owns_http = http is None
        self._credentials = (client_id, client_secret)
        self._tokens = TokenCache(self._fetch_token)

    def _fetch_token(self) -> tuple[str, int]:
        response = self._http.post(
            "/oauth/token",
            content=token_request_body(*self._credentials),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        if response.status_code != 200:
            raise _error(response)
        data = response.json()
        return str(data["access_token"]), int(data["expires_in"])

    def request(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> httpx.Response:
        # One retry when the server refused a token we thought valid (expired, key rotated).
        for attempt in (1, 2):
            token = self._tokens.token()
            response = self._http.request(
                method, path, headers={**(headers or {}), "authorization": f"Bearer {token}"}, **kwargs
            )
            if response.status_code < 400:
                return response
            error = _error(response)
            if isinstance(error, Unauthenticated) and attempt == 1:
                self._tokens.invalidate(token)
                continue
            raise error
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._owns_http:
            self._http.close()


class RestOrchestraClient:
    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        *,
        http: httpx.Client | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self._connection = RestConnection(base_url, client_id, client_secret, http=http, timeout=timeout)
        self._request = self._connection.request

    def start_process(
        self,
        definition_id: str,
        variables: Mapping[str, Json] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> str:
        headers = {"idempotency-key": idempotency_key} if idempotency_key is not None else {}
        response = self._request(
            "POST",
            f"/orchestra-api/process/{_segment(definition_id)}/start",
            json={"variables": dict(variables or {})},
            headers=headers,
        )
        return str(response.json()["instance_id"])

    def list_instances(
        self,
        *,
        definition_id: str | None = None,
        status: str | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> InstancePage:
        params: dict[str, str | int] = {}
        if definition_id:
            params["definition_id"] = definition_id
        if status:
            params["status"] = status
        if page_size:
            params["page_size"] = page_size
        if page_token:
            params["page_token"] = page_token
        response = self._request("GET", "/orchestra-api/instances", params=params)
        items = response.json()
        return InstancePage(
            tuple(InstanceSummary(i["id"], i["definition_id"], i["status"]) for i in items),
            response.headers.get(NEXT_PAGE_HEADER, ""),
        )

    def get_instance(self, instance_id: str) -> InstanceView:
        data = self._request("GET", f"/orchestra-api/instance/{_segment(instance_id)}").json()
        return InstanceView(
            id=data["id"],
            definition_id=data["definition_id"],
            status=data["status"],
            tenant_id=data["tenant_id"],
            tokens=tuple(
                TokenView(
                    t["id"],
                    t["node_id"],
                    t["status"],
                    t.get("incident_kind"),
                    t.get("incident_reason"),
                    _moment(t["since"]) if "since" in t else None,
                )
                for t in data["tokens"]
            ),
            definition_version=int(data["definition_version"]),
            started_at=_moment(data["started_at"]),
            updated_at=_moment(data["updated_at"]),
        )

    def signal_token(self, token_id: str, variables: Mapping[str, Json] | None = None) -> None:
        # Without variables no body at all, exactly the request the contract has always had.
        path = f"/orchestra-api/token/{_segment(token_id)}/signal"
        if variables:
            self._request("POST", path, json={"variables": dict(variables)})
        else:
            self._request("POST", path)

    def get_variables(self, instance_id: str) -> dict[str, Json]:
        data = self._request("GET", f"/orchestra-api/instance/{_segment(instance_id)}/variables").json()
        return {k: _whole_numbers(v) for k, v in data.items()}

    def set_variable(self, instance_id: str, name: str, value: Json) -> None:
        self._request(
            "PUT",
            f"/orchestra-api/instance/{_segment(instance_id)}/variable/{_segment(name)}",
            json={"value": value},
        )

    def close(self) -> None:
        self._connection.close()


class RestOperationsClient:
    """The operations API through the edge (`/orchestra-ops/v1/`), for one consumer's tenant.

    Answers are the proto messages in JSON (snake_case names, int64 counts as strings, times
    as RFC 3339, unset times and incident fields absent).
    """

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        *,
        http: httpx.Client | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self._connection = RestConnection(base_url, client_id, client_secret, http=http, timeout=timeout)
        self._request = self._connection.request

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, f"{OPS}{path}", **kwargs).json()

    def deploy_definition(self, source: str, *, scope: str = "") -> DeployOutcome:
        body = {"source": source, **({"scope": scope} if scope else {})}
        data = self._json("POST", "/definitions", json=body)
        return DeployOutcome(
            str(data["definition_id"]), int(data["version"]), bool(data["changed"]), str(data["scope"])
        )

    def list_definitions(self) -> tuple[DefinitionSummary, ...]:
        data = self._json("GET", "/definitions")
        return tuple(
            DefinitionSummary(
                definition_id=d["definition_id"],
                latest_version=int(d["latest_version"]),
                label=d.get("label", ""),
                scope=d["scope"],
                running_instances=int(d["running_instances"]),
                open_incidents=int(d["open_incidents"]),
                versions=tuple(
                    DefinitionVersion(
                        int(v["version"]), _moment(v["deployed_at"]), int(v.get("running_instances", 0))
                    )
                    for v in d.get("versions", [])
                ),
            )
            for d in data.get("definitions", [])
        )

    def get_definition(self, definition_id: str, version: int = 0) -> DefinitionGraph:
        params = {"version": version} if version else {}
        data = self._json("GET", f"/definitions/{_segment(definition_id)}", params=params)
        return DefinitionGraph(
            definition_id=data["definition_id"],
            version=int(data["version"]),
            latest_version=int(data["latest_version"]),
            label=data.get("label", ""),
            scope=data["scope"],
            deployed_at=_moment(data["deployed_at"]),
            nodes=tuple(_node(n) for n in data.get("nodes", [])),
            flows=tuple(
                DefinitionFlow(
                    int(f.get("order", 0)),
                    f["from_node"],
                    f["to_node"],
                    f.get("condition", ""),
                    bool(f.get("default", False)),
                    bool(f.get("timeout", False)),
                )
                for f in data.get("flows", [])
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
        params = _query_params(query) + _paging(page_size, page_token)
        data = self._json("GET", "/instances", params=params)
        return Page(
            tuple(
                InstanceOverview(
                    id=i["id"],
                    definition_id=i["definition_id"],
                    definition_version=int(i["definition_version"]),
                    status=i["status"],
                    started_at=_moment(i["started_at"]),
                    updated_at=_moment(i["updated_at"]),
                    ended_at=_moment(i["ended_at"]) if i.get("ended_at") else None,
                    open_incidents=int(i["open_incidents"]),
                )
                for i in data.get("instances", [])
            ),
            data.get("next_page_token", ""),
        )

    def get_instance_detail(self, instance_id: str) -> InstanceDetail:
        found = self._json("GET", f"/instances/{_segment(instance_id)}")["instance"]
        return InstanceDetail(
            id=found["id"],
            definition_id=found["definition_id"],
            definition_version=int(found["definition_version"]),
            status=found["status"],
            started_at=_moment(found["started_at"]),
            updated_at=_moment(found["updated_at"]),
            ended_at=_moment(found["ended_at"]) if found.get("ended_at") else None,
            variables={k: _whole_numbers(v) for k, v in (found.get("variables") or {}).items()},
            tokens=tuple(
                TokenDetail(
                    id=t["id"],
                    node_id=t["node_id"],
                    status=t["status"],
                    since=_moment(t["since"]) if t.get("since") else None,
                    due_at=_moment(t["due_at"]) if t.get("due_at") else None,
                    incident_kind=t.get("incident_kind"),
                    incident_reason=t.get("incident_reason"),
                )
                for t in found.get("tokens", [])
            ),
        )

    def get_instance_history(
        self, instance_id: str, *, page_size: int = 0, page_token: str = ""
    ) -> Page[HistoryEntry]:
        data = self._json(
            "GET", f"/instances/{_segment(instance_id)}/history", params=_paging(page_size, page_token)
        )
        return Page(
            tuple(
                HistoryEntry(
                    at=_moment(e["at"]),
                    actor=e.get("actor", ""),
                    action=e["action"],
                    nodes=tuple(e.get("nodes", [])),
                    tokens_consumed=tuple(e.get("tokens_consumed", [])),
                    tokens_created=tuple(e.get("tokens_created", [])),
                    variables=tuple(e.get("variables", [])),
                    status=e.get("status", ""),
                    incidents=tuple(e.get("incidents", [])),
                    reason=e.get("reason", ""),
                )
                for e in data.get("entries", [])
            ),
            data.get("next_page_token", ""),
        )

    def cancel_instance(self, instance_id: str, reason: str = "") -> None:
        self._request("POST", f"{OPS}/instances/{_segment(instance_id)}/cancel", json={"reason": reason})

    def list_incidents(
        self,
        *,
        definition_id: str | None = None,
        node_id: str | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> Page[Incident]:
        params: list[tuple[str, str | int]] = []
        if definition_id:
            params.append(("definition_id", definition_id))
        if node_id:
            params.append(("node_id", node_id))
        data = self._json("GET", "/incidents", params=params + _paging(page_size, page_token))
        return Page(
            tuple(
                Incident(
                    instance_id=i["instance_id"],
                    definition_id=i["definition_id"],
                    definition_version=int(i["definition_version"]),
                    token_id=i["token_id"],
                    node_id=i["node_id"],
                    kind=i.get("kind", ""),
                    reason=i.get("reason", ""),
                    since=_moment(i["since"]) if i.get("since") else None,
                )
                for i in data.get("incidents", [])
            ),
            data.get("next_page_token", ""),
        )

    def resolve_incident(
        self, token_id: str, action: str, variables: Mapping[str, Json] | None = None
    ) -> str:
        body: dict[str, Any] = {"action": action}
        if variables:
            body["variables"] = dict(variables)
        data = self._json("POST", f"/tokens/{_segment(token_id)}/resolve", json=body)
        return str(data["instance_status"])

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
        body: dict[str, Any] = {
            "definition_id": query.definition_id,
            "version": query.version,
            "node_id": query.node_id,
            "started_after": query.started_after,
            "started_before": query.started_before,
            "variable": list(query.variable),
            "reason": reason,
            "dry_run": dry_run,
            "max": max,
        }
        if query.has_incident is not None:
            body["has_incident"] = query.has_incident
        return _batch(self._json("POST", "/instances:cancel", json=body))

    def retry_incidents(
        self,
        *,
        definition_id: str | None = None,
        node_id: str | None = None,
        dry_run: bool = False,
        max: int = 0,
    ) -> BatchOutcome:
        body = {
            "definition_id": definition_id or "",
            "node_id": node_id or "",
            "dry_run": dry_run,
            "max": max,
        }
        return _batch(self._json("POST", "/incidents:retry", json=body))

    def close(self) -> None:
        self._connection.close()


def _query_params(query: InstanceFilters) -> list[tuple[str, str | int]]:
    """The filters as query parameters, absent ones left out; `variable` repeats."""
    params: list[tuple[str, str | int]] = [
        (name, value)
        for name, value in (
            ("definition_id", query.definition_id),
            ("version", query.version),
            ("status", query.status),
            ("node_id", query.node_id),
            ("started_after", query.started_after),
            ("started_before", query.started_before),
        )
        if value
    ]
    if query.has_incident is not None:
        params.append(("has_incident", "true" if query.has_incident else "false"))
    params.extend(("variable", item) for item in query.variable)
    return params


def _paging(page_size: int, page_token: str) -> list[tuple[str, str | int]]:
    params: list[tuple[str, str | int]] = []
    if page_size:
        params.append(("page_size", page_size))
    if page_token:
        params.append(("page_token", page_token))
    return params


def _node(n: dict[str, Any]) -> DefinitionNode:
    tokens = n.get("tokens") or {}
    return DefinitionNode(
        id=n["id"],
        type=n["type"],
        label=n.get("label", ""),
        join=n.get("join", ""),
        split=n.get("split", ""),
        threshold=int(n.get("threshold", 0)),
        timer_after=n.get("timer_after", ""),
        timer_until=n.get("timer_until", ""),
        timeout_after=n.get("timeout_after", ""),
        timeout_to=n.get("timeout_to", ""),
        parked=int(tokens.get("parked", 0)),
        waiting=int(tokens.get("waiting", 0)),
        incident=int(tokens.get("incident", 0)),
    )


def _batch(data: dict[str, Any]) -> BatchOutcome:
    return BatchOutcome(
        int(data["matched"]),
        int(data["done"]),
        int(data["skipped"]),
        int(data["failed"]),
        tuple(data.get("errors", [])),
    )


def _segment(value: str) -> str:
    """One path segment, with '/' and everything else outside the unreserved set escaped."""
    return quote(value, safe="")


def _whole_numbers(value: Json) -> Json:
    """Numbers travel as doubles: 1.0 is the integer 1, as every transport reports it."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    return value


def _error(response: httpx.Response) -> OrchestraError:
    try:
        message = str(response.json().get("error", ""))
    except ValueError:
        message = response.text[:200]
    return error_for_http(response.status_code, message)


def _moment(text: str) -> datetime:
    """An RFC 3339 time as the edge prints it (UTC, `Z`), as an aware datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
