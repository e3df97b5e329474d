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
from orchestra_server.errors import OrchestraError, Unauthenticated
from orchestra_server.wire.json_text import Json

DEFAULT_TIMEOUT_SECONDS = 30.0
NEXT_PAGE_HEADER = "x-next-page-token"


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

    def _request(
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

    def signal_token(self, token_id: str) -> None:
        self._request("POST", f"/orchestra-api/token/{_segment(token_id)}/signal")

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
        if self._owns_http:
            self._http.close()


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
