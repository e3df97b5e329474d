"""The gRPC transport: servicers, the error table, authentication and the server factory."""
