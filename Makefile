# modelserve: `make demo` and `make test` do everything on a fresh machine (see README.md).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
MODELS ?= models
# The tiny offline models; a real deployment sets the same variables to Hub ids or directories.
LOCAL_ENV := set -a && . ./env/tiny.env && set +a
# `make serve`/`make demo` take MODELS=hub: the real checkpoints the k8s ConfigMaps name (env/hub.env), fetched
# first (safetensors only, resumable, with progress bars) into HUB_MODELS_DIR and served offline from it.
# CONVERT_PICKLE=1 lets that fetch convert a checkpoint that ships only pickled weights (trusting its source).
HUB_MODELS_DIR ?= .cache/hub-models
CONVERT_PICKLE ?=
ifeq ($(MODELS),hub)
override MODELS := models
SERVE_MODELS := hub-models
SERVE_ENV := set -a && . ./env/hub.env && HF_HOME=$(HUB_MODELS_DIR)/hf-cache \
  TTS_VOICES_DIR=$(HUB_MODELS_DIR)/voices VIT_MODEL_BASE=$(HUB_MODELS_DIR)/vit-serving && set +a
else
SERVE_MODELS := models
SERVE_ENV := $(LOCAL_ENV)
endif
# KEEP=1: `make demo` leaves the platform running (it prints how to stop it).
KEEP ?=
# inference.proto (the Open Inference Protocol) is loaded from its descriptor set into a pool of its own (see
# protos/inference.py), so that Triton's and KServe's clients, which register the same names, share a process with it.
PROTOS := $(filter-out protos/inference.proto,$(wildcard protos/*.proto))

.PHONY: help setup models hub-models serve demo test lint bench protos clean

# Every target's `## ` comment, from this file and mk/*.mk; names built by make functions are expanded by make.
help: ## this list: every target and what it does
	@echo "make <target> [VARIABLE=value ...]"
	@awk -F ':[^#]*## ' '/^[^#[:space:]][^:=]*:[^=#]*## / && !seen[$$1]++ {print $$1 "\t" $$2}' $(MAKEFILE_LIST) | \
	  while IFS=$$'\t' read -r targets text; do \
	    case $$targets in *'$$('*) \
	      targets=$$($(MAKE) -s --no-print-directory --eval "help-expand: ; @echo $$targets" help-expand);; \
	    esac; \
	    printf '  %-22s  %s\n' "$$targets" "$$text"; \
	  done

# torch goes first and pinned: anything that pulls torch unpinned would fetch another build. Which build
# (for `make setup` and `make images`, README.md "Choosing the torch build"):
#   TORCH=cuda  PyPI's wheel (on Linux the CUDA build, multi-GB with its CUDA libraries); the default
#   TORCH=cpu   PyTorch's CPU wheel index (TORCH_CPU_INDEX_URL): no CUDA libraries
#   TORCH_WHEELS=dir  a directory holding a torch-$(TORCH_VERSION) wheel (offline builds); overrides TORCH
# pip's own configuration still applies: where it names a local torch wheel (find-links), pip prefers it.
TORCH_VERSION := 2.13.0
TORCH ?= cuda
TORCH_WHEELS ?=
TORCH_CPU_INDEX_URL ?= https://download.pytorch.org/whl/cpu
ifneq ($(filter-out cuda cpu,$(TORCH)),)
$(error TORCH must be cuda or cpu (or set TORCH_WHEELS=dir), not '$(TORCH)')
endif
ifneq ($(TORCH_WHEELS),)
TORCH_INSTALL := --no-index --no-deps --find-links $(TORCH_WHEELS) torch==$(TORCH_VERSION) && \
  $(PY) -m pip install -q torch==$(TORCH_VERSION)
else ifeq ($(TORCH),cpu)
TORCH_INSTALL := --index-url $(TORCH_CPU_INDEX_URL) torch==$(TORCH_VERSION)
else
TORCH_INSTALL := torch==$(TORCH_VERSION)
endif

setup: $(STAMP) ## create .venv and install the project with every extra (once per pyproject.toml change)
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_INSTALL)
	$(PY) -m pip install -q -e '.[all,dev]'
	@# Triton's client, the conformance client of the Open Inference Protocol tests: its grpc extra pins protobuf<7,
	@# which tensorflow-serving-api's protobuf 7 outranks; without its pins it imports and runs on protobuf 7.
	$(PY) -m pip install -q --no-deps tritonclient==2.73.0 python-rapidjson==1.25
	touch $@

models: setup ## build the tiny offline models into models/ and export the ViT SavedModel
	$(PY) -m tools.tiny_models --out $(MODELS)
	@# The ViT service serves a TF SavedModel exported from the tiny HF checkpoint (TF Serving layout),
	@# exported again whenever the exporter (and so the graph's own input checks) changed.
	test $(MODELS)/vit-serving/hf-vit/1/saved_model.pb -nt services/vit/export.py || { rm -rf $(MODELS)/vit-serving && \
	  $(PY) -m services.vit.export --checkpoint $(MODELS)/vit/hf-vit --model-base $(MODELS)/vit-serving --version 1; }

protos: setup ## regenerate the gRPC code in protos/ from the .proto files
	for proto in $(PROTOS); do \
	  $(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. $$proto || exit 1; \
	done
	$(PY) -m grpc_tools.protoc -I. --descriptor_set_out=protos/inference.binpb protos/inference.proto

hub-models: setup ## fetch env/hub.env's real checkpoints into HUB_MODELS_DIR (CONVERT_PICKLE=1: convert pickles)
	$(PY) -m clients models fetch --profile hub --dir $(HUB_MODELS_DIR) $(if $(CONVERT_PICKLE),--convert-pickle)

serve: $(SERVE_MODELS) ## run the platform in the foreground on the tiny models (MODELS=hub: the real ones; Ctrl-C stops it)
	$(SERVE_ENV) && exec $(PY) -m services

demo: $(SERVE_MODELS) ## start the platform, call every service, write the answers to demo-output/ (KEEP=1, MODELS=hub)
	$(SERVE_ENV) && $(PY) -m tools.demo --out demo-output $(if $(KEEP),--keep)

test: models real-asr ## the full test suite (what CI runs)
	$(PY) -m pytest -q -ra

lint: setup ## ruff over the Python sources
	$(PY) -m ruff check services clients tools tests bench loadtests

bench: models ## run every bench/bench_*.py on the tiny models
	$(LOCAL_ENV) && for script in bench/bench_*.py; do $(PY) $$script || exit 1; done

clean: ## remove the built models, demo-output/ and pytest's cache
	rm -rf $(MODELS) demo-output .pytest_cache

-include mk/*.mk
