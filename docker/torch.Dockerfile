# The torch services (translation, asr, tts, imagegen): one image per SERVICE, each holding only
# that service's pyproject extra and code, running `python -m services.<SERVICE>`, REST :8000, gRPC :50051.
#
#   make images [TORCH=cuda|cpu] [TORCH_WHEELS=dir]     (docker/README.md), or directly:
#   docker build -f docker/torch.Dockerfile --build-arg SERVICE=asr -t modelserve/asr:dev .
# TORCH picks the torch 2.13.0 build: cuda (PyPI's wheel, the CUDA build on Linux), cpu (PyTorch's
# CPU wheel index, no multi-GB CUDA libraries; use it with a CPU base such as debian:bookworm-slim),
# or wheels (a torch wheel staged in docker/wheels/ by docker/build-torch-image.sh, for offline builds).
# Models: mounted at /models (HF_HOME=/models/hf-cache or checkpoint dirs), or baked
# in with --build-arg MODELS_DIR=models/bake/<SERVICE>.
ARG BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

FROM ${BASE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG DEBIAN_FRONTEND=noninteractive
# CUDA runtime and Debian slim images ship no Python; the local Debian base already has it.
# hadolint ignore=DL3008
RUN if ! python3 -c "import ensurepip, venv" 2>/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first and exactly pinned: an unpinned pull by the extra would fetch another build.
ARG TORCH_VERSION=2.13.0
ARG TORCH=cuda
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY docker/wheels/ /tmp/torch-wheels/
# wheels: the staged wheel alone, then its dependencies from the index.
# hadolint ignore=DL3013  # pinned through TORCH_VERSION, which hadolint cannot read
RUN case "$TORCH" in \
      cuda) pip install "torch==${TORCH_VERSION}" ;; \
      cpu) pip install --index-url "$TORCH_CPU_INDEX_URL" "torch==${TORCH_VERSION}" ;; \
      wheels) pip install --no-index --no-deps --find-links /tmp/torch-wheels "torch==${TORCH_VERSION}" \
              && pip install "torch==${TORCH_VERSION}" ;; \
      *) echo "TORCH must be cuda, cpu or wheels, not '$TORCH'" >&2; exit 1 ;; \
    esac

# Only this service's extra. The package dirs are empty here, so this layer holds the
# dependencies alone and survives code edits; the project itself runs from /app.
ARG SERVICE
RUN if [ -z "$SERVICE" ]; then echo "--build-arg SERVICE=<translation|asr|tts|imagegen> is required" >&2; exit 1; fi
WORKDIR /src
COPY pyproject.toml ./
# hadolint ignore=DL3013  # versions are pinned in pyproject.toml
RUN mkdir -p services clients tools \
    && pip install ".[${SERVICE}]" \
    && pip uninstall -y modelserve

COPY services/ /app/services/
COPY protos/ /app/protos/
WORKDIR /app/services
# Keep this service and the shared libraries; drop every other runnable package (the other
# services). A missing entry point fails here rather than in the pod.
RUN test -f "${SERVICE}/__main__.py" \
    && for d in */; do d="${d%/}"; \
         if [ "$d" != "$SERVICE" ] && [ -f "$d/__main__.py" ]; then rm -rf "$d"; fi; \
       done \
    && find /app -name __pycache__ -prune -exec rm -rf {} + \
    && python -m compileall -q /app

FROM ${BASE}
ARG DEBIAN_FRONTEND=noninteractive
# Same interpreter path as the builder stage, so the venv's python symlink resolves.
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
    && useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin modelserve
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app /app
# The init container runs this from the same image to fill the /models cache (it needs only huggingface_hub).
COPY clients/models_fetch.py /app/fetch_models.py
ARG MODELS_DIR=docker/no-models
COPY --chown=10001:10001 ${MODELS_DIR}/ /models/

ARG SERVICE
# The server never downloads (the init container or the image provides the weights).
# MODELSERVE_SERVICE names the module to run and the prefix of its settings (<SERVICE>_REST_PORT...).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    HF_HOME=/models/hf-cache \
    HF_HUB_OFFLINE=1 \
    MODELSERVE_SERVICE=${SERVICE}
LABEL io.modelserve.service=${SERVICE}
WORKDIR /app
USER 10001:10001
EXPOSE 8000 50051
# Liveness only (readiness is /readyz); start period covers loading a multi-GB model.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15m --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; port = os.environ.get(os.environ['MODELSERVE_SERVICE'].upper() + '_REST_PORT', '8000'); urllib.request.urlopen('http://127.0.0.1:%s/healthz' % port, timeout=4)"]
# SIGTERM starts the service's drain (<SERVICE>_SHUTDOWN_GRACE_S); it exits 0 when done.
STOPSIGNAL SIGTERM
# exec: python replaces the shell and gets the SIGTERM itself; arguments pass through.
ENTRYPOINT ["/bin/sh", "-c", "exec python -m \"services.$MODELSERVE_SERVICE\" \"$@\"", "serve"]
