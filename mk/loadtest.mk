# Load tests: `make loadtest [SERVICE=all|translation|asr|tts|imagegen|vit] [HOST=http://host:8000]
#   [USERS=20] [DURATION=60s] [PROTOCOL=both|rest|grpc] [SHAPE=constant|step] [PAYLOADS=tiny|standard]`.
# Without HOST it starts the local platform with the tiny models first (loadtests/README.md).
# Results: loadtest-results/<time>-<service>/ (CSV, report.html, loadtest.png, latency_by_request.png).

SERVICE ?= all
HOST ?=
USERS ?= 20
DURATION ?= 60s
PROTOCOL ?= both
SHAPE ?= constant
# Extra options for loadtests/run.py, e.g. LOADTEST_ARGS="--grpc-host h:50051 --namespace prod --steps 8"
LOADTEST_ARGS ?=
LOADTEST_COMMON = --service $(SERVICE) --users $(USERS) --duration $(DURATION) --protocol $(PROTOCOL) \
  --shape $(SHAPE) $(if $(PAYLOADS),--payloads $(PAYLOADS)) $(LOADTEST_ARGS)

.PHONY: loadtest

ifeq ($(strip $(HOST)),)
loadtest: models ## load-test SERVICE (the local tiny platform, or HOST); results in loadtest-results/
	$(LOCAL_ENV) && $(PY) -m loadtests.run --local $(LOADTEST_COMMON)
else
loadtest: setup
	$(PY) -m loadtests.run --host $(HOST) $(LOADTEST_COMMON)
endif
