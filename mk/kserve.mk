# KServe (k8s/kserve): tests/k8s/test_kserve.py checks the manifests against the model classes of
# KServe's Python SDK. Installed without its dependencies: its protobuf<7 pin clashes with ours, and
# the test needs only the generated models (it never imports the model server).

KSERVE_VERSION ?= 0.21.0
KSERVE_STAMP := $(VENV)/.kserve-$(KSERVE_VERSION)

.PHONY: kserve-models

kserve-models: $(KSERVE_STAMP) ## install KServe's SDK models (no dependencies) for the KServe tests
$(KSERVE_STAMP): $(STAMP)
	$(PY) -m pip install -q --no-deps kserve==$(KSERVE_VERSION)
	touch $@

test: kserve-models
