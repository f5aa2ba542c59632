# GPU check (README.md, "GPU check"): `make gpu-check [OUT=gpu-check-results]` on a machine with torch and a
# CUDA GPU, offline: production-size random-weight models, every torch service on cuda/float16, REST + gRPC
# requests, exactness checks, a throughput table in OUT/results.md and results.json.
# `make gpu-check DEVICE=cpu` is its dry run at tiny sizes (`make test` runs it: tests/tools/test_gpu_check.py).
# `make gpu-wheels` (with internet) fills GPU_WHEELS with the pinned packages the check installs offline
# into GPU_VENV when the GPU machine lacks them (tools/gpu_check/requirements.txt; never torch).

DEVICE ?= cuda
DTYPE ?= $(if $(filter cpu,$(DEVICE)),float32,float16)
OUT ?= gpu-check-results
# The GPU machine's python with torch (and CUDA); GPU_CHECK_ARGS go to `python -m tools.gpu_check`.
GPU_PYTHON ?= python3
GPU_CHECK_ARGS ?=
GPU_WHEELS ?= .cache/gpu-wheels
GPU_VENV ?= .cache/gpu-venv
# The GPU machine's python version and platform tags (pip matches manylinux_2_N exactly: list several).
GPU_PYTHON_VERSION ?= 3.12
GPU_PLATFORMS ?= manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
  manylinux1_x86_64

.PHONY: gpu-check gpu-wheels

ifeq ($(DEVICE),cpu)
gpu-check: models ## check every service on a GPU, results in OUT (DEVICE=cpu: tiny models on the CPU)
	$(PY) -m tools.gpu_check --device cpu --dtype $(DTYPE) --sizes tiny --out $(OUT) $(GPU_CHECK_ARGS)
else
gpu-check:
	$(GPU_PYTHON) -m tools.gpu_check.bootstrap --wheels $(GPU_WHEELS) --venv $(GPU_VENV) -- \
	  --device $(DEVICE) --dtype $(DTYPE) --sizes real --out $(OUT) $(GPU_CHECK_ARGS)
endif

gpu-wheels: ## download the wheels gpu-check installs on an offline GPU machine
	rm -rf $(GPU_WHEELS) && mkdir -p $(GPU_WHEELS)
	python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
	  --python-version $(GPU_PYTHON_VERSION) --implementation cp $(addprefix --platform ,$(GPU_PLATFORMS)) \
	  -d $(GPU_WHEELS) -r tools/gpu_check/requirements.txt
	@ls $(GPU_WHEELS)/*.whl | wc -l | xargs printf 'gpu-wheels: %s wheels, '; \
	  cat $(GPU_WHEELS)/*.whl | wc -c | awk '{printf "%.1f MiB in $(GPU_WHEELS)\n", $$1 / 1048576}'

# The ViT image of the gpu overlay (k8s/components/vit-on-gpu): docker/vit.Dockerfile on the TF Serving GPU
# base. Like image-vit, skipped where that base image cannot be found (no registry).
VIT_GPU_BASE ?= tensorflow/serving:2.21.0-gpu

.PHONY: image-vit-gpu
image-vit-gpu: ## build the ViT image on the tensorflow/serving GPU image
	@if ! $(DOCKER) image inspect $(VIT_GPU_BASE) >/dev/null 2>&1 && ! $(DOCKER) pull $(VIT_GPU_BASE) >/dev/null 2>&1; then \
	  echo "image-vit-gpu: $(VIT_GPU_BASE) not available (no registry?), skipped"; \
	elif [ ! -d models/vit-serving/hf-vit ]; then \
	  echo "image-vit-gpu: export the SavedModel first (python -m services.vit.export ...)"; exit 1; \
	else \
	  DOCKER_BUILDKIT=1 $(DOCKER) build --network host -f docker/vit.Dockerfile --build-arg BASE=$(VIT_GPU_BASE) \
	    -t modelserve/vit-gpu:$(IMAGE_TAG) .; \
	fi
