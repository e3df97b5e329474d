"""Assertions and calls shared by the contract tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class Consumer:
    client_id: str
    client_secret: str
    tenant: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}


def assert_no_store(response: httpx.Response) -> None:
    assert response.headers.get("cache-control") == "no-store", dict(response.headers)
    # The service-to-edge conventions stay between them.
    leaked = [name for name in response.headers if name.startswith("grpc-") or name == "x-http-status"]
    assert not leaked, leaked


def assert_error(response: httpx.Response, status: int, message: str | None = None) -> str:
    """The contract's error: the status, `{"error": "<message>"}` and nothing else."""
    assert response.status_code == status, f"{response.status_code} {response.text}"
    assert_no_store(response)
    assert response.headers.get("content-type", "").startswith("application/json")
    body = response.json()
    assert isinstance(body, dict)
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, str)
    assert error
    assert error.isascii()
    if message is not None:
        assert error == message
    return error


def assert_ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, f"{response.status_code} {response.text}"
    assert_no_store(response)
    assert response.headers.get("content-type", "").startswith("application/json")
    return response.json()


def start(
    http: httpx.Client, consumer: Consumer, definition: str, variables: dict[str, Any] | None = None
) -> str:
    body = {} if variables is None else {"variables": variables}
    answer = assert_ok(
        http.post(f"/orchestra-api/process/{definition}/start", json=body, headers=consumer.headers), 201
    )
    assert set(answer) == {"instance_id"}
    instance_id = answer["instance_id"]
    assert isinstance(instance_id, str)
    assert instance_id
    return instance_id


def get_instance(http: httpx.Client, consumer: Consumer, instance_id: str) -> dict[str, Any]:
    instance = assert_ok(http.get(f"/orchestra-api/instance/{instance_id}", headers=consumer.headers))
    assert isinstance(instance, dict)
    return instance


def parked_tokens(instance: dict[str, Any]) -> list[dict[str, Any]]:
    return [token for token in instance["tokens"] if token["status"] == "parked"]
