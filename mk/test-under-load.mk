# `make test-under-load`: the full suite (as `make test` runs it) with Debian's stress-ng keeping both cores
# busy beside it, to show that no test depends on speed. Not part of `make test`; the same prerequisites.
STRESS_CPUS ?= 2

.PHONY: test-under-load
test-under-load: models real-asr kserve-models checkov-venv prometheus browser ## the full test suite with `stress-ng --cpu 2` loading the cores beside it
	@if ! command -v stress-ng >/dev/null; then \
	  echo "test-under-load: installing stress-ng (Debian package)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq stress-ng >/dev/null; \
	fi
	@# stress-ng stops whatever the tests' result (and by itself after an hour at the latest).
	stress-ng --cpu $(STRESS_CPUS) --timeout 60m --quiet & stress=$$!; \
	trap 'kill $$stress 2>/dev/null; wait $$stress 2>/dev/null' EXIT; \
	$(PY) -m pytest -q -ra
