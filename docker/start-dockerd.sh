#!/usr/bin/env bash
# Start a Docker engine without systemd (CI containers have none) and print the
# DOCKER_HOST to use.  Idempotent: a second call finds the running engine.
#   eval "$(docker/start-dockerd.sh)"   # exports DOCKER_HOST
set -euo pipefail

SOCK="${MODELSERVE_DOCKER_SOCK:-/run/modelserve-docker/docker.sock}"
DATA_ROOT="${MODELSERVE_DOCKER_DATA_ROOT:-/var/lib/modelserve-docker}"
LOG="${MODELSERVE_DOCKER_LOG:-/tmp/modelserve-dockerd.log}"
export DOCKER_HOST="unix://${SOCK}"
# Debian's client: the one first on PATH may lack BuildKit support for our flags.
DOCKER=/usr/bin/docker

ready() { [ -S "$SOCK" ] && "$DOCKER" version >/dev/null 2>&1; }

if ready; then
  echo "export DOCKER_HOST=${DOCKER_HOST}"
  exit 0
fi

if ! command -v dockerd >/dev/null 2>&1 || [ ! -x "$DOCKER" ]; then
  # Progress to stderr: stdout is meant for eval.
  {
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker.io
  } >&2
fi

mkdir -p "$(dirname "$SOCK")" "$DATA_ROOT"
# No bridge/iptables: the sandbox has no netfilter rights; containers use --network host.
# setsid: the engine must outlive the shell (and process group) that started it.
setsid dockerd --bridge=none --iptables=false --ip-masq=false \
  --data-root "$DATA_ROOT" --exec-root "$(dirname "$SOCK")/exec" \
  --pidfile "$(dirname "$SOCK")/dockerd.pid" \
  --host "$DOCKER_HOST" >"$LOG" 2>&1 < /dev/null &

for _ in $(seq 1 60); do
  if ready; then
    echo "export DOCKER_HOST=${DOCKER_HOST}"
    exit 0
  fi
  sleep 1
done
echo "dockerd did not become ready in 60 s; log: $LOG" >&2
tail -20 "$LOG" >&2
exit 1
