"""Locust load tests for the platform: users per service and protocol, the mixed scenario, a step
shape, and `python -m loadtests.run` (what `make loadtest` runs). See loadtests/README.md."""
