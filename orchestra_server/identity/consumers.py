"""What identity knows of a consumer, apart from any protocol: its credentials and the access permission."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# The permission a consumer's roles must grant for it to get tokens and call the API.
ACCESS_PERMISSION = "access orchestra api"


@dataclass(frozen=True)
class ConsumerCredentials:
    """What the token endpoint and the authenticator need to know about one consumer."""

    client_id: str
    secret_hash: str
    tenant_id: str
    permissions: frozenset[str]
    revoked: bool


class ConsumerDirectory(Protocol):
    """Looks consumers up by client id (the directory service implements this)."""

    def find_consumer(self, client_id: str) -> ConsumerCredentials | None: ...
