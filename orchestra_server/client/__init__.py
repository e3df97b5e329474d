"""One client contract for the seven operations, reachable over gRPC and over REST.

Every implementation returns the same plain values and raises the same exception types
(the branches of `orchestra_server.errors`) for the same failures. The package loads none of
the server's layers; the in-process implementation, which does, is
`orchestra_server.local_client.LocalOrchestraClient`.
"""

from orchestra_server.client.contract import (
    InstancePage,
    InstanceSummary,
    InstanceView,
    OrchestraClient,
    TokenView,
)
from orchestra_server.client.grpc import GrpcOrchestraClient
from orchestra_server.client.rest import RestOrchestraClient

__all__ = [
    "GrpcOrchestraClient",
    "InstancePage",
    "InstanceSummary",
    "InstanceView",
    "OrchestraClient",
    "RestOrchestraClient",
    "TokenView",
]
