"""The serving kit: configuration, batching, errors, REST/gRPC servers, metrics, lifecycle.

It never imports a service; services import it. A service is a model runner plus schemas, routes
and a servicer, bundled in a `Service` and handed to `server.run`.
"""
