"""The forms values take outside the process, shared by the server and the clients.

Imports nothing of the server's layers (only the domain errors), so a client can use it
without loading the engine, the storage or the transport.
"""
