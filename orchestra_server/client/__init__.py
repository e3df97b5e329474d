"""Two client contracts, each reachable over gRPC and over REST: the consumer's seven operations
(`OrchestraClient`) and the operations API for the people who run a tenant (`OperationsClient`).

Every implementation returns the same plain values and raises the same exception types
(the branches of `orchestra_server.errors`) for the same failures. The package loads none of
the server's layers; the in-process implementations, which do, are
`orchestra_server.local_client.LocalOrchestraClient` and `LocalOperationsClient`.
"""

from orchestra_server.client.contract import (
    InstancePage,
    InstanceSummary,
    InstanceView,
    OrchestraClient,
    TokenView,
)
from orchestra_server.client.grpc import GrpcOperationsClient, GrpcOrchestraClient
from orchestra_server.client.operations import OperationsClient
from orchestra_server.client.rest import RestOperationsClient, RestOrchestraClient

__all__ = [
    "GrpcOperationsClient",
    "GrpcOrchestraClient",
    "InstancePage",
    "InstanceSummary",
    "InstanceView",
    "OperationsClient",
    "OrchestraClient",
    "RestOperationsClient",
    "RestOrchestraClient",
    "TokenView",
]
