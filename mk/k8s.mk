# Containers and Kubernetes: images, deploy/undeploy, k8s-validate, image-test.
# Included by the top-level Makefile; k8s/README.md explains the cluster path.

VENV ?= .venv
DOCKER ?= /usr/bin/docker
IMAGE_TAG ?= 0.1.0
# TORCH and TORCH_WHEELS (the torch build, top-level Makefile) apply to the images too.
# IMAGE_BASE: the torch images' base; empty: the CUDA runtime for TORCH=cuda, debian:bookworm-slim
# otherwise; `local`: docker/build-base.sh's debootstrapped Debian (LOCAL_BASE), for machines that
# reach no container registry.
IMAGE_BASE ?=
LOCAL_BASE ?= localhost/debian-base:bookworm
# Every service declared torch in its services/<name>/registry.py (standard library only: any python3).
TORCH_SERVICES := $(shell python3 -m services.registry --torch)
K8S_PATH ?= .
K8S_OUT ?= .docker/k8s-rendered
K8S_VERSIONS ?= 1.30.0 1.32.0
# checkov gets its own venv: it would downgrade packaging, networkx, python-dateutil... in .venv.
CHECKOV_VENV ?= .venv-checkov
CHECKOV_VERSION ?= 3.3.30
CHECKOV_STAMP := $(CHECKOV_VENV)/.checkov-$(CHECKOV_VERSION)
# Accepted findings (k8s/README.md): images are pinned by release tag, not digest, and the pull
# policy is IfNotPresent, not Always.
CHECKOV_ACCEPTED := CKV_K8S_43,CKV_K8S_15

# The engine docker/start-dockerd.sh runs, unless DOCKER_HOST says otherwise.
ifeq ($(origin DOCKER_HOST),undefined)
ifneq ($(wildcard /run/modelserve-docker/docker.sock),)
export DOCKER_HOST := unix:///run/modelserve-docker/docker.sock
endif
endif

.PHONY: images image-base $(addprefix image-,$(TORCH_SERVICES)) image-vit image-vit-server \
        manifests deploy undeploy k8s-status k8s-validate checkov-venv image-test dockerd

images: $(addprefix image-,$(TORCH_SERVICES)) image-vit image-vit-server ## build every service's image

image-base: ## build the local Debian base image (IMAGE_BASE=local)
ifeq ($(IMAGE_BASE),local)
	docker/build-base.sh $(LOCAL_BASE)
endif

# One Dockerfile for all of them (docker/torch.Dockerfile, --build-arg SERVICE=<name>).
$(addprefix image-,$(TORCH_SERVICES)): image-%: image-base ## build that torch service's image
	TORCH=$(TORCH) TORCH_WHEELS=$(TORCH_WHEELS) TORCH_CPU_INDEX_URL=$(TORCH_CPU_INDEX_URL) DOCKER=$(DOCKER) \
	  BASE=$(if $(filter local,$(IMAGE_BASE)),$(LOCAL_BASE),$(IMAGE_BASE)) \
	  docker/build-torch-image.sh $* modelserve/$*:$(IMAGE_TAG)

# TF Serving only ships as the tensorflow/serving image: without it locally (no registry) this is skipped.
image-vit: ## build the ViT image on tensorflow/serving (skipped when that image is unavailable)
	@base=$$(sed -n 's/^ARG BASE=//p' docker/vit.Dockerfile); \
	if ! $(DOCKER) image inspect $$base >/dev/null 2>&1 && ! $(DOCKER) pull $$base >/dev/null 2>&1; then \
	  echo "image-vit: $$base not available (no registry?), skipped"; \
	elif [ ! -d models/vit-serving/hf-vit ]; then \
	  echo "image-vit: export the SavedModel first (python -m services.vit.export ...)"; exit 1; \
	else \
	  DOCKER_BUILDKIT=1 $(DOCKER) build --network host -f docker/vit.Dockerfile -t modelserve/vit:$(IMAGE_TAG) .; \
	fi

# services/vit's own server (TF Serving's protocol and v2) for KServe's v2 runtime: Python and the `vit` extra,
# no torch, on IMAGE_BASE (empty: the Dockerfile's debian:bookworm-slim; `local`: LOCAL_BASE).
image-vit-server: image-base ## build the ViT image on services/vit's server (OIP v2, for k8s/kserve)
	@test -d models/vit-serving/hf-vit || { \
	  echo "image-vit-server: export the SavedModel first (make models, or python -m services.vit.export ...)"; exit 1; }
	DOCKER_BUILDKIT=1 $(DOCKER) build --network host -f docker/vit-server.Dockerfile \
	  $(if $(IMAGE_BASE),--build-arg BASE=$(if $(filter local,$(IMAGE_BASE)),$(LOCAL_BASE),$(IMAGE_BASE))) \
	  -t modelserve/vit-server:$(IMAGE_TAG) .

# The lists that name every service (k8s/base, release-images, /kustomization.yaml, k8s/kserve/base), from
# services/*/registry.py and each service's own k8s/base/<name>/ and k8s/kserve/base/<name>/ folders.
manifests: ## regenerate the Kubernetes service lists from the registry (tests/k8s fails when stale)
	$(VENV)/bin/python -m tools.deploy.service_lists

deploy: ## apply the kustomization (K8S_PATH) to the current kubectl context
	$(VENV)/bin/python -m tools.deploy --path $(K8S_PATH) apply

undeploy: ## delete what deploy applied
	$(VENV)/bin/python -m tools.deploy --path $(K8S_PATH) delete

k8s-status: ## the deployed services' pods, rollouts and readiness
	$(VENV)/bin/python -m tools.deploy status

checkov-venv: $(CHECKOV_STAMP) ## install checkov into its own venv (.venv-checkov)
$(CHECKOV_STAMP):
	rm -rf $(CHECKOV_VENV)
	python3 -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install -q checkov==$(CHECKOV_VERSION)
	touch $@

# tests/k8s/test_k8s_checkov.py runs it (and skips only where this venv is missing).
test: checkov-venv

# Render every kustomization (Components only render inside one; k8s/kserve's custom resources are
# checked by tests/k8s/test_kserve.py), validate each against every
# version strictly - kubernetes-validate only warns on a missing schema, so that fails here -
# then checkov the deployable renders (the root and the overlays; offline: no mapping download),
# then lint the sources and the Dockerfiles.
k8s-validate: checkov-venv ## render, schema-validate, checkov and lint every manifest and Dockerfile
	@set -e; rm -rf $(K8S_OUT); mkdir -p $(K8S_OUT); \
	dirs=". $$(find k8s -path k8s/kserve -prune -o -name kustomization.yaml -exec grep -L '^kind: Component' {} + | xargs -n1 dirname | sort)"; \
	for d in $$dirs; do \
	  out=$(K8S_OUT)/$$(echo $$d | tr / _).yaml; \
	  kubectl kustomize $$d > $$out; \
	  for v in $(K8S_VERSIONS); do \
	    log=$$($(VENV)/bin/kubernetes-validate --strict --quiet -k $$v $$out 2>&1) || { echo "$$log"; echo "FAIL $$d ($$v)"; exit 1; }; \
	    if echo "$$log" | grep -q -e "Couldn't find schema" -e '^WARN' -e '^ERROR'; then echo "$$log"; echo "FAIL $$d ($$v)"; exit 1; fi; \
	  done; \
	  echo "ok $$d ($(K8S_VERSIONS))"; \
	done
	@set -e; files="-f $(K8S_OUT)/..yaml"; for f in $(K8S_OUT)/k8s_overlays_*.yaml; do files="$$files -f $$f"; done; \
	BC_SKIP_MAPPING=TRUE $(CHECKOV_VENV)/bin/checkov --skip-download --quiet --compact \
	  --skip-check $(CHECKOV_ACCEPTED) $$files; \
	echo "ok checkov (accepted: $(CHECKOV_ACCEPTED))"
	$(VENV)/bin/yamllint -s -c k8s/yamllint.yaml k8s kustomization.yaml
	$(VENV)/bin/hadolint docker/*.Dockerfile
	@echo "k8s-validate: ok"

# Start (or find) the Docker engine, then the real build + run tests of the translation and vit-server images.
dockerd: ## start (or find) the local Docker engine
	@docker/start-dockerd.sh

image-test: ## build the translation and vit-server images and test them running
	eval "$$(docker/start-dockerd.sh)" && PYTHON=$(VENV)/bin/python docker/ci-image-test.sh \
	  && PYTHON=$(VENV)/bin/python docker/ci-vit-server-image-test.sh
