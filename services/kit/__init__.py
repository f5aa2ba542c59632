"""The serving kit: configuration, batching, operations, errors, REST/gRPC/Open Inference Protocol servers,
metrics, lifecycle, and the launcher that starts a server as a process (`launch`).

It never imports a service; services import it. A service is a model runner plus request schemas and its
`Operation`s (`operations`), which the service binds to a REST route, a gRPC method and an OIP model, all bundled
in a `Service` and handed to `server.run`.
"""
