# The ViT server of services/vit (`python -m services.vit`): TF Serving's REST/gRPC protocol and the Open
# Inference Protocol (v2) on TF Serving's ports, REST :8501, gRPC :8500, over the SavedModel exported by
# `python -m services.vit.export`, baked in at /models/hf-vit/<version> as in docker/vit.Dockerfile.
# KServe's v2 runtime runs it (k8s/kserve/base/vit.yaml): tensorflow/serving speaks no v2.
#   make image-vit-server [IMAGE_BASE=local]   or
#   docker build -f docker/vit-server.Dockerfile -t modelserve/vit-server:dev .
# Only the `vit` extra (TensorFlow, the TF Serving API, Pillow): no torch, no exporter.
# docker/vit-server.Dockerfile.dockerignore lets models/vit-serving into this build's context only.
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG DEBIAN_FRONTEND=noninteractive
# Debian slim ships no Python; the local Debian base (docker/build-base.sh) already has it.
# hadolint ignore=DL3008
RUN if ! python3 -c "import ensurepip, venv" 2>/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# The package dirs are empty here, so this layer holds the dependencies alone and survives code edits;
# the project itself runs from /app.
WORKDIR /src
COPY pyproject.toml ./
# hadolint ignore=DL3013  # versions are pinned in pyproject.toml
RUN mkdir -p services clients tools \
    && pip install ".[vit]" \
    && pip uninstall -y modelserve \
    && if pip show torch >/dev/null 2>&1; then echo "the vit extra pulled torch in" >&2; exit 1; fi

COPY services/__init__.py /app/services/
COPY services/kit/ /app/services/kit/
COPY services/vit/ /app/services/vit/
COPY protos/ /app/protos/
# The exporter needs keras-hub and torch, which this image leaves out: the model comes exported.
RUN rm /app/services/vit/export.py \
    && find /app -name __pycache__ -prune -exec rm -rf {} + \
    && python -m compileall -q /app

ARG SAVED_MODEL_DIR=models/vit-serving/hf-vit
COPY ${SAVED_MODEL_DIR}/ /models/hf-vit/
# The exporter leaves version directories private to their owner; the server runs as uid 10001.
RUN test -n "$(find /models/hf-vit -mindepth 2 -maxdepth 2 -name saved_model.pb)" \
    && chmod -R a+rX,go-w /models

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
COPY --from=builder /models /models

# TF Serving's model layout and ports (services/vit/settings.py); k8s/kserve's vit-config sets the same.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    VIT_MODEL_BASE=/models \
    VIT_MODEL_NAME=hf-vit
WORKDIR /app
USER 10001:10001
EXPOSE 8500 8501
# Liveness only (readiness is /readyz and /v2/health/ready).
HEALTHCHECK --interval=30s --timeout=5s --start-period=2m --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('VIT_REST_PORT', '8501'), timeout=4)"]
# SIGTERM starts the drain (VIT_SHUTDOWN_GRACE_S); the server exits 0 when done. Exec form: python is the
# container's first process and gets the signal itself.
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "services.vit"]
