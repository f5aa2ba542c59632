# shellcheck shell=bash
# What docker/ci-image-test.sh and docker/ci-vit-server-image-test.sh share, sourced by both after they set NAME
# (the test container's name): the repository root as working directory, the engine and Python, logging,
# removal of the container on exit (its last logs shown), free ports, the wait for readiness and the SIGTERM check.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DOCKER="${DOCKER:-/usr/bin/docker}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
LOG_TAG="$(basename "$0" .sh)"
log() { echo "[$LOG_TAG] $*" >&2; }

cleanup() {
  if "$DOCKER" inspect "$NAME" >/dev/null 2>&1; then
    "$DOCKER" logs --tail 50 "$NAME" >&2 || true
    "$DOCKER" rm -f "$NAME" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

# Sets REST_PORT and GRPC_PORT to two free ports (the engine runs containers on the host network).
pick_ports() {
  read -r REST_PORT GRPC_PORT < <("$PY" -c 'from services.kit.launch import free_port; print(free_port(), free_port())')
}

# The project's launcher waits for URL (on this host's Python): `docker top` fails once the container has stopped.
wait_ready() {
  "$PY" -m services.kit.launch --ready "$1" --timeout "$READY_TIMEOUT_S" --alive "$DOCKER top $NAME"
}

# SIGTERM must drain and leave exit code 0.
stop_expect_clean_exit() {
  log "SIGTERM"
  "$DOCKER" stop --time 30 "$NAME" >/dev/null
  local code
  code="$("$DOCKER" inspect -f '{{.State.ExitCode}}' "$NAME")"
  if [ "$code" != 0 ]; then
    log "exit code after SIGTERM: $code (want 0)"
    exit 1
  fi
}

# The gRPC health check the probes make (on GRPC_PORT), then the image's own HEALTHCHECK run exactly as Docker would.
check_health() {
  "$PY" - "$GRPC_PORT" "$DOCKER" "$NAME" <<'EOF_PY'
import json, subprocess, sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

grpc_port, docker, name = sys.argv[1:]
with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
assert status == health_pb2.HealthCheckResponse.SERVING, status

test = json.loads(subprocess.run([docker, "inspect", "-f", "{{json .Config.Healthcheck.Test}}", name],
                                 capture_output=True, text=True, check=True).stdout)
assert test[0] == "CMD", test
subprocess.run([docker, "exec", name, *test[1:]], check=True, timeout=10)
print("healthcheck ok", file=sys.stderr)
EOF_PY
}
