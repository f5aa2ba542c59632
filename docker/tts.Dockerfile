# Text-to-speech and voice conversion service (SpeechT5 + HiFi-GAN) - `python -m services.tts`, REST :8000, gRPC :50051.
#
# GPU (default base, CUDA torch from the PyTorch index):
#   docker build -f docker/tts.Dockerfile -t modelserve/tts:dev .
# CPU on the locally built Debian base (no registry needed; see docker/README.md):
#   docker/build-base.sh && cp /opt/wheels/torch-2.13.0+cpu-*.whl docker/wheels/
#   DOCKER_BUILDKIT=1 docker build --network host -f docker/tts.Dockerfile \
#     --build-arg BASE=localhost/debian-base:bookworm --build-arg TORCH_INDEX_URL= -t modelserve/tts:cpu .
# Models: mounted at /models (HF_HOME=/models/hf-cache or checkpoint dirs), or baked
# in with --build-arg MODELS_DIR=models/bake/tts.
ARG BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

FROM ${BASE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG DEBIAN_FRONTEND=noninteractive
# CUDA runtime images ship no Python; the local Debian base already has it.
# hadolint ignore=DL3008
RUN if ! python3 -c "import ensurepip, venv" 2>/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first and exactly pinned: an unpinned pull by the extra would fetch another build.
# docker/wheels/ may hold the local CPU wheel (CPU builds set TORCH_INDEX_URL empty).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
COPY docker/wheels/ /tmp/wheels/
# hadolint ignore=DL3013  # pinned through TORCH_VERSION, which hadolint cannot read
RUN pip install --find-links /tmp/wheels ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}"

# Only this service's extra. The package dirs are empty here, so this layer holds the
# dependencies alone and survives code edits; the project itself runs from /app.
WORKDIR /src
COPY pyproject.toml ./
# hadolint ignore=DL3013  # versions are pinned in pyproject.toml
RUN mkdir -p services clients tools \
    && pip install ".[tts]" \
    && pip uninstall -y modelserve

COPY services/ /app/services/
COPY protos/ /app/protos/
WORKDIR /app/services
# Keep this service and the shared libraries; drop the other services (the known ones and any
# other runnable package). A missing entry point fails here rather than in the pod.
RUN test -f tts/__main__.py \
    && for d in */; do d="${d%/}"; \
         case "$d" in tts) ;; translation|asr|imagegen|vit) rm -rf "$d" ;; \
           *) if [ -f "$d/__main__.py" ]; then rm -rf "$d"; fi ;; esac; \
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
# The init container runs this from the same image to fill the /models cache.
COPY docker/fetch_models.py /app/fetch_models.py
ARG MODELS_DIR=docker/no-models
COPY --chown=10001:10001 ${MODELS_DIR}/ /models/

# The server never downloads (the init container or the image provides the weights).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    HF_HOME=/models/hf-cache \
    HF_HUB_OFFLINE=1 \
    TTS_REST_PORT=8000 \
    TTS_GRPC_PORT=50051
WORKDIR /app
USER 10001:10001
EXPOSE 8000 50051
# Liveness only (readiness is /readyz); start period covers loading a multi-GB model.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15m --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('TTS_REST_PORT', '8000'), timeout=4)"]
# SIGTERM starts the service's drain (TTS_SHUTDOWN_GRACE_S); it exits 0 when done.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "services.tts"]
