#!/usr/bin/env bash
# Real image test of modelserve/vit-server (docker/vit-server.Dockerfile, `make image-vit-server`), the image
# KServe's v2 runtime runs (k8s/kserve/base/vit.yaml): build it on the locally built Debian base, check it holds
# no torch, no compiler and runs as uid 10001, run it the way the runtime does (read-only root, /tmp tmpfs, no
# capabilities, vit-config's settings), wait for /v2/health/ready, classify one image over v2 REST and over TF
# Serving's :predict, check gRPC health and the image's HEALTHCHECK, then SIGTERM and expect exit code 0.
#   DOCKER_HOST=unix:///... docker/ci-vit-server-image-test.sh      (docker/start-dockerd.sh prints it)
set -euo pipefail

NAME="modelserve-ci-vit-server-$$"
# shellcheck source=docker/ci-common.sh
source "$(dirname "$0")/ci-common.sh"
TAG="${IMAGE_TAG:-ci}"
IMAGE="modelserve/vit-server:$TAG"
READY_TIMEOUT_S="${READY_TIMEOUT_S:-120}"

if [ ! -f models/vit-serving/hf-vit/1/saved_model.pb ]; then
  log "exporting the tiny ViT SavedModel"
  [ -f models/vit/hf-vit/model.safetensors ] || "$PY" -m tools.tiny_models --only vit
  "$PY" -m services.vit.export --checkpoint models/vit/hf-vit --model-base models/vit-serving --version 1
fi

log "build $IMAGE"
start=$(date +%s)
make --no-print-directory image-vit-server IMAGE_BASE=local IMAGE_TAG="$TAG" DOCKER="$DOCKER" \
  >"${TMPDIR:-/tmp}/ci-vit-server-build.log" 2>&1 || {
    tail -40 "${TMPDIR:-/tmp}/ci-vit-server-build.log" >&2; exit 1; }
log "built in $(( $(date +%s) - start )) s"

"$DOCKER" run --rm --network host --entrypoint sh "$IMAGE" -c \
  '! command -v gcc && ! command -v cc && [ ! -e /root/.cache/pip ] && [ "$(id -u)" = 10001 ] \
   && ! python -c "import torch" 2>/dev/null && python -c "import tensorflow" 2>/dev/null' \
  || { log "the image holds torch or a compiler, lacks TensorFlow, or runs as root"; exit 1; }
"$DOCKER" run --rm --network host --entrypoint sh "$IMAGE" -c \
  '[ -f /app/services/vit/__main__.py ] && [ -d /app/services/kit ] && [ -d /app/protos ] \
   && for s in translation asr tts imagegen; do [ ! -e "/app/services/$s" ] || exit 1; done' \
  || { log "the image holds other services than vit, or lacks kit/protos"; exit 1; }

pick_ports

# k8s/kserve's vit-config, but on free ports (the engine runs containers on the host network).
log "run on ports $REST_PORT/$GRPC_PORT"
"$DOCKER" run -d --name "$NAME" --network host --read-only --tmpfs /tmp --cap-drop ALL \
  --security-opt no-new-privileges --user 10001:10001 \
  -e VIT_MODEL_BASE=/models -e VIT_MODEL_NAME=hf-vit -e VIT_POLL_INTERVAL_S=0 -e VIT_THREADS=2 \
  -e VIT_REQUEST_TIMEOUT_S=30 -e VIT_DOCS=false -e VIT_GRPC_REFLECTION=false -e VIT_SHUTDOWN_GRACE_S=10 \
  -e "VIT_REST_PORT=$REST_PORT" -e "VIT_GRPC_PORT=$GRPC_PORT" "$IMAGE" >/dev/null
# KServe's readinessProbe.
wait_ready "http://127.0.0.1:$REST_PORT/v2/health/ready"

"$PY" - "$REST_PORT" <<'EOF_PY'
import base64, io, json, sys, urllib.request

from PIL import Image

rest = sys.argv[1]
base = f"http://127.0.0.1:{rest}"


def post(path: str, document: dict) -> dict:
    request = urllib.request.Request(
        base + path, data=json.dumps(document).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as r:
        assert r.status == 200, r.status
        return json.load(r)


buffer = io.BytesIO()
Image.new("RGB", (64, 48), (200, 30, 90)).save(buffer, "PNG")
image = base64.b64encode(buffer.getvalue()).decode()
with urllib.request.urlopen(base + "/v2/models/hf-vit/ready", timeout=5) as r:
    assert r.status == 200, r.status
v2 = post("/v2/models/hf-vit/infer", {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [image]}]})
outputs = {output["name"]: output for output in v2["outputs"]}
assert v2["model_name"] == "hf-vit" and outputs["label"]["shape"] == [1], v2
tfs = post("/v1/models/hf-vit:predict", {"instances": [{"b64": image}]})
assert tfs["predictions"][0]["label"] == outputs["label"]["data"][0], (tfs, v2)
print(f"v2 infer -> {outputs['label']['data']}, :predict agrees", file=sys.stderr)
EOF_PY
check_health

stop_expect_clean_exit
# Read whole before grep: under pipefail, grep -q leaving early would fail the pipe with SIGPIPE.
logs="$("$DOCKER" logs "$NAME" 2>&1)"
grep -q "shutting down: draining" <<<"$logs" || { log "no drain in the logs after SIGTERM"; exit 1; }
"$DOCKER" rm "$NAME" >/dev/null
log "ok: built, ready, classified over v2 and :predict, drained, exit 0"
