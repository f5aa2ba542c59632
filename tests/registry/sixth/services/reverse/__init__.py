"""A sixth, minimal service that exists only in the tests: it reverses text.

Laid out like the shipped ones: put `tests/registry/sixth/services` on `services.__path__` (and its
`clients`, and the compiled `protos`, on theirs) and the platform, the clients, the manifests and the
load tests find it from its folder and proto alone (tests/registry).
"""
