# modelserve: `make demo` and `make test` do everything on a fresh machine (see README.md).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
MODELS ?= models
# The tiny offline models; a real deployment sets the same variables to Hub ids or directories.
LOCAL_ENV := set -a && . ./env/tiny.env && set +a
# inference.proto (the Open Inference Protocol) is loaded from its descriptor set into a pool of its own (see
# protos/inference.py), so that Triton's and KServe's clients, which register the same names, share a process with it.
PROTOS := $(filter-out protos/inference.proto,$(wildcard protos/*.proto))

.PHONY: help setup models serve demo test test-fast lint bench protos clean

help:
	@echo "make demo   set up, build tiny models, start the platform, call every service"
	@echo "make test   the full test suite (what CI runs)"
	@echo "make setup | models | serve | lint | bench | protos | clean"

# torch goes first and pinned: anything that pulls torch unpinned downloads a multi-GB CUDA build.
setup: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[all,dev]'
	@# Triton's client, the conformance client of the Open Inference Protocol tests: its grpc extra pins protobuf<7,
	@# which tensorflow-serving-api's protobuf 7 outranks; without its pins it imports and runs on protobuf 7.
	$(PY) -m pip install -q --no-deps tritonclient==2.73.0 python-rapidjson==1.25
	touch $@

models: setup
	$(PY) -m tools.tiny_models --out $(MODELS)
	@# The ViT service serves a TF SavedModel exported from the tiny HF checkpoint (TF Serving layout),
	@# exported again whenever the exporter (and so the graph's own input checks) changed.
	test $(MODELS)/vit-serving/hf-vit/1/saved_model.pb -nt services/vit/export.py || { rm -rf $(MODELS)/vit-serving && \
	  $(PY) -m services.vit.export --checkpoint $(MODELS)/vit/hf-vit --model-base $(MODELS)/vit-serving --version 1; }

protos: setup
	for proto in $(PROTOS); do \
	  $(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. $$proto || exit 1; \
	done
	$(PY) -m grpc_tools.protoc -I. --descriptor_set_out=protos/inference.binpb protos/inference.proto

serve: models
	$(LOCAL_ENV) && exec $(PY) -m services

demo: models
	$(LOCAL_ENV) && $(PY) -m tools.demo --out demo-output

test: models real-asr
	$(PY) -m pytest -q -ra

lint: setup
	$(PY) -m ruff check services clients tools tests bench loadtests

bench: models
	$(LOCAL_ENV) && for script in bench/bench_*.py; do $(PY) $$script || exit 1; done

clean:
	rm -rf $(MODELS) demo-output .pytest_cache

-include mk/*.mk
