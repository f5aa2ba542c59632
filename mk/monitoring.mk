# Monitoring (k8s/components/monitoring): a real Prometheus server and promtool for the tests in
# tests/monitoring. Included by the top-level Makefile.

VENV ?= .venv
# Debian's packages (prometheus 2.42 on bookworm); recommends would add node-exporter and more.
PROMETHEUS_APT := prometheus
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: prometheus monitoring-test

# Idempotent: nothing to do once both binaries are on PATH.
prometheus: ## install prometheus and promtool (Debian package) when missing
	@if command -v prometheus >/dev/null && command -v promtool >/dev/null; then \
	  echo "prometheus: $$(prometheus --version 2>&1 | head -1)"; \
	else \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(PROMETHEUS_APT) && \
	  command -v prometheus >/dev/null && command -v promtool >/dev/null; \
	fi

# tests/monitoring runs a real Prometheus and promtool (it skips, saying so, where they are missing).
test: prometheus

# The rules' promtool unit tests, the dashboard and component checks and the live scrape alone.
monitoring-test: prometheus models ## the monitoring tests against a real Prometheus
	$(VENV)/bin/python -m pytest -q tests/monitoring
