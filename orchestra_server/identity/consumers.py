"""What identity knows of a consumer, apart from any protocol: its credentials and the access permission."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# The permission a consumer's roles must grant for it to get tokens and call the API.
# What a consumer's roles may grant. Each route checks its own: the consumer API needs
# ACCESS_PERMISSION, the operations API OPERATE_PERMISSION (DeployDefinition:
# DEPLOY_PERMISSION, and for a definition shared by every tenant DEPLOY_SHARED_PERMISSION too).
ACCESS_PERMISSION = "access orchestra api"
OPERATE_PERMISSION = "operate orchestra"
DEPLOY_PERMISSION = "deploy orchestra definitions"
DEPLOY_SHARED_PERMISSION = "deploy shared orchestra definitions"
# A consumer holding any of these gets access tokens; one holding none is refused at the door.
API_PERMISSIONS = frozenset({ACCESS_PERMISSION, OPERATE_PERMISSION, DEPLOY_PERMISSION})


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
