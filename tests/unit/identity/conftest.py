"""Fixtures for the identity tests: a fixed clock, a key ring in a temporary directory, a fake directory."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from orchestra_server.identity.access_tokens import AccessTokenIssuer, AccessTokenVerifier
from orchestra_server.identity.client_secrets import ScryptParams, hash_secret
from orchestra_server.identity.consumers import ACCESS_PERMISSION, ConsumerCredentials
from orchestra_server.identity.keys import KeyRing

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
ISSUER = "https://orchestra.example"
AUDIENCE = "orchestra-api"
# Cheap enough for many hashes per test; the real cost is covered on its own.
FAST = ScryptParams(n=16, r=1, p=1)


class FakeDirectory:
    """An in-memory consumer directory that counts its lookups."""

    def __init__(self) -> None:
        self.consumers: dict[str, ConsumerCredentials] = {}
        self.lookups = 0

    def add(
        self,
        client_id: str,
        secret: str,
        tenant_id: str = "tenant-a",
        permissions: frozenset[str] = frozenset({ACCESS_PERMISSION}),
        revoked: bool = False,
    ) -> ConsumerCredentials:
        consumer = ConsumerCredentials(
            client_id=client_id,
            secret_hash=hash_secret(secret, FAST),
            tenant_id=tenant_id,
            permissions=permissions,
            revoked=revoked,
        )
        self.consumers[client_id] = consumer
        return consumer

    def update(self, client_id: str, **changes: Any) -> None:
        self.consumers[client_id] = replace(self.consumers[client_id], **changes)

    def find_consumer(self, client_id: str) -> ConsumerCredentials | None:
        self.lookups += 1
        return self.consumers.get(client_id)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_json(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


@pytest.fixture
def keys_path(tmp_path: Path) -> Path:
    return tmp_path / "signing-keys.json"


@pytest.fixture
def key_ring(keys_path: Path) -> KeyRing:
    return KeyRing.load_or_create(keys_path, NOW)


@pytest.fixture
def issuer(key_ring: KeyRing) -> AccessTokenIssuer:
    return AccessTokenIssuer(key_ring, ISSUER, AUDIENCE)


@pytest.fixture
def verifier(key_ring: KeyRing) -> AccessTokenVerifier:
    return AccessTokenVerifier(key_ring, ISSUER, AUDIENCE)


@pytest.fixture
def directory() -> FakeDirectory:
    return FakeDirectory()
