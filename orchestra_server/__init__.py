"""Orchestra: a multi-tenant workflow engine server."""

__version__ = "0.1.0"
