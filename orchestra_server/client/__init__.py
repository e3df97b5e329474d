"""One client contract for the seven operations, reachable in-process, over gRPC and over REST.

Every implementation returns the same plain values and raises the same exception types
(the branches of `orchestra_server.errors`) for the same failures.
"""

from orchestra_server.client.contract import (
    InstancePage,
    InstanceSummary,
    InstanceView,
    OrchestraClient,
    TokenView,
)
from orchestra_server.client.grpc import GrpcOrchestraClient
from orchestra_server.client.local import LocalOrchestraClient
from orchestra_server.client.rest import RestOrchestraClient

__all__ = [
    "GrpcOrchestraClient",
    "InstancePage",
    "InstanceSummary",
    "InstanceView",
    "LocalOrchestraClient",
    "OrchestraClient",
    "RestOrchestraClient",
    "TokenView",
]
