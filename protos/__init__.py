"""The wire contract shared by the services and their clients: the gRPC protos and their generated code.

Clients import only this package (never `services`), so they can ship alone.
"""
