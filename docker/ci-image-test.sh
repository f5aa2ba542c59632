#!/usr/bin/env bash
# Real image test: build the translation image (docker/torch.Dockerfile, CPU torch) on the locally built Debian
# base, run it the way the pod runs it (uid 10001, read-only root, /tmp tmpfs, no
# capabilities, models mounted read-only), wait for /readyz, translate one text over REST,
# check gRPC health and the image's own HEALTHCHECK, then SIGTERM and expect exit code 0.
#   DOCKER_HOST=unix:///... docker/ci-image-test.sh      (docker/start-dockerd.sh prints it)
set -euo pipefail

NAME="modelserve-ci-translation-$$"
# shellcheck source=docker/ci-common.sh
source "$(dirname "$0")/ci-common.sh"
BASE="${BASE_IMAGE:-localhost/debian-base:bookworm}"
IMAGE="${IMAGE:-modelserve/translation:ci}"
READY_TIMEOUT_S="${READY_TIMEOUT_S:-240}"

log "base image"
docker/build-base.sh "$BASE"

# torch without the multi-GB CUDA build: TORCH_WHEELS when given; else, where the wheel this
# host's pip would install for torch==2.13.0 is a local file (a find-links directory, as on the CI
# machine), that file's directory, so the build needs no index; else PyTorch's CPU index.
if [ -z "${TORCH_WHEELS:-}" ]; then
  TORCH_WHEELS="$("$PY" - <<'EOF_PY'
import json, os, subprocess, sys, urllib.parse, urllib.request
report = subprocess.run(
    [sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed", "--no-deps",
     "--report", "-", "torch==2.13.0"], capture_output=True, text=True)
if report.returncode == 0:
    url = json.loads(report.stdout)["install"][0]["download_info"]["url"]
    if url.startswith("file:"):
        print(os.path.dirname(urllib.request.url2pathname(urllib.parse.urlparse(url).path)))
EOF_PY
)"
fi
export TORCH_WHEELS
export TORCH="${TORCH:-cpu}"
if [ -n "$TORCH_WHEELS" ]; then log "torch: the wheel in $TORCH_WHEELS"; else log "torch: TORCH=$TORCH"; fi

log "build $IMAGE"
start=$(date +%s)
BASE="$BASE" docker/build-torch-image.sh translation "$IMAGE" --progress plain \
  >"${TMPDIR:-/tmp}/ci-image-build.log" 2>&1 || {
    tail -40 "${TMPDIR:-/tmp}/ci-image-build.log" >&2; exit 1; }
log "built in $(( $(date +%s) - start )) s"

# The final stage must carry no compilers, pip caches or root user, and of the services only its own.
"$DOCKER" run --rm --network host --entrypoint sh "$IMAGE" -c \
  '! command -v gcc && ! command -v cc && ! command -v g++ && [ ! -e /root/.cache/pip ] && [ "$(id -u)" = 10001 ]' \
  || { log "final stage has a compiler/cache or runs as root"; exit 1; }
"$DOCKER" run --rm --network host --entrypoint sh "$IMAGE" -c \
  '[ -f /app/services/translation/__main__.py ] && [ -d /app/services/kit ] && [ -d /app/protos ] \
   && for s in asr tts imagegen vit; do [ ! -e "/app/services/$s" ] || exit 1; done' \
  || { log "the image holds other services than translation, or lacks kit/protos"; exit 1; }

if [ ! -f models/translation/wmt19-en-de/config.json ]; then
  log "building tiny translation models"
  "$PY" -m tools.tiny_models --only translation
fi
# A world-readable copy: the container runs as uid 10001, and the tiny-model builder may
# leave files private to their owner (a pod gets this from fsGroup instead).
MODELS_COPY="$ROOT/.docker/ci-models"
rm -rf "$MODELS_COPY" && mkdir -p "$MODELS_COPY/translation"
cp -r models/translation/wmt19-en-de models/translation/wmt19-de-en "$MODELS_COPY/translation/"
chmod -R a+rX "$MODELS_COPY"
MODELS_JSON='{"en-de": "/models/translation/wmt19-en-de", "de-en": "/models/translation/wmt19-de-en"}'

pick_ports

run_flags=(--network host --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges
  -v "$MODELS_COPY/translation:/models/translation:ro"
  -e "TRANSLATION_MODELS=$MODELS_JSON" -e TRANSLATION_DEVICE=cpu -e TRANSLATION_THREADS=2
  -e "TRANSLATION_REST_PORT=$REST_PORT" -e "TRANSLATION_GRPC_PORT=$GRPC_PORT" -e TRANSLATION_SHUTDOWN_GRACE_S=10)

# What the init container runs: local directories need no download, and it must say so.
fetch_out="$("$DOCKER" run --rm "${run_flags[@]}" --entrypoint python "$IMAGE" /app/fetch_models.py TRANSLATION_MODELS 2>&1)"
echo "$fetch_out" >&2
grep -q "local directory, nothing to fetch" <<<"$fetch_out"

log "run on ports $REST_PORT/$GRPC_PORT"
"$DOCKER" run -d --name "$NAME" "${run_flags[@]}" "$IMAGE" >/dev/null
wait_ready "http://127.0.0.1:$REST_PORT/readyz"

"$PY" - "$REST_PORT" <<'EOF'
import json, sys, urllib.request

rest = sys.argv[1]
base = f"http://127.0.0.1:{rest}"

body = json.dumps({"text": "Hello world", "source_lang": "en", "target_lang": "de"}).encode()
req = urllib.request.Request(base + "/v1/translate", data=body, headers={"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=60) as r:
    assert r.status == 200, r.status
    reply = json.load(r)
assert isinstance(reply.get("translations"), list) and len(reply["translations"]) == 1, reply
assert isinstance(reply["translations"][0], str), reply
print(f"translate -> {reply}", file=sys.stderr)

with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
    assert b"serving_queue_depth" in r.read(), "no serving_queue_depth gauge in /metrics"
EOF
# The k8s startupProbe is a grpc: probe on GRPC_PORT.
check_health

stop_expect_clean_exit
"$DOCKER" rm "$NAME" >/dev/null
log "ok: built, ready, translated, drained, exit 0"
