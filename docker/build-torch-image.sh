#!/usr/bin/env bash
# Build one torch service image from docker/torch.Dockerfile.
#   docker/build-torch-image.sh SERVICE IMAGE [extra docker build args...]
# Environment (mk/k8s.mk passes the make variables of the same names):
#   TORCH         cuda (default: PyPI's torch wheel, the CUDA build on Linux) or cpu (PyTorch's CPU index,
#                 TORCH_CPU_INDEX_URL when set)
#   TORCH_WHEELS  a directory holding a torch-2.13.0 wheel for the image's Python: overrides TORCH,
#                 for builds without the index (the wheel is staged into docker/wheels/, git-ignored)
#   BASE          the base image; empty: the CUDA runtime for cuda, debian:bookworm-slim otherwise
#   DOCKER        the docker client (default /usr/bin/docker: Debian's, BuildKit built in)
set -euo pipefail

if [ $# -lt 2 ]; then
  echo "usage: $0 SERVICE IMAGE [docker build args...]" >&2
  exit 2
fi
SERVICE="$1"
IMAGE="$2"
shift 2
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
DOCKER="${DOCKER:-/usr/bin/docker}"
TORCH="${TORCH:-cuda}"
TORCH_VERSION="$(sed -n 's/^ARG TORCH_VERSION=//p' docker/torch.Dockerfile)"
STAGE=docker/wheels

if [ ! -f "services/$SERVICE/__main__.py" ]; then
  echo "no torch service '$SERVICE' (services/$SERVICE/__main__.py)" >&2
  exit 2
fi

wheels=()
if [ -n "${TORCH_WHEELS:-}" ]; then
  TORCH=wheels
  shopt -s nullglob
  wheels=("$TORCH_WHEELS"/torch-"$TORCH_VERSION"-*.whl "$TORCH_WHEELS"/torch-"$TORCH_VERSION"+*.whl)
  shopt -u nullglob
  if [ ${#wheels[@]} -eq 0 ]; then
    echo "TORCH_WHEELS=$TORCH_WHEELS holds no torch-$TORCH_VERSION wheel" >&2
    exit 1
  fi
fi
case "$TORCH" in
  cuda | cpu | wheels) ;;
  *) echo "TORCH must be cuda or cpu (or set TORCH_WHEELS), not '$TORCH'" >&2; exit 2 ;;
esac

# Only the wheel the build asks for goes into the context: stale ones would be sent every time.
# A hard link where the directory shares the filesystem: no copy of a 200 MB-2 GB file.
find "$STAGE" -maxdepth 1 -name '*.whl' -delete
for wheel in "${wheels[@]}"; do
  ln -f "$wheel" "$STAGE/" 2>/dev/null || cp -f "$wheel" "$STAGE/"
done

build_args=()
if [ -n "${BASE:-}" ]; then
  build_args=(--build-arg "BASE=$BASE")
elif [ "$TORCH" != cuda ]; then
  build_args=(--build-arg "BASE=debian:bookworm-slim")
fi

if [ -n "${TORCH_CPU_INDEX_URL:-}" ]; then
  build_args+=(--build-arg "TORCH_CPU_INDEX_URL=$TORCH_CPU_INDEX_URL")
fi

echo "build $IMAGE: SERVICE=$SERVICE TORCH=$TORCH ${build_args[*]}" >&2
DOCKER_BUILDKIT=1 "$DOCKER" build --network host -f docker/torch.Dockerfile \
  --build-arg "SERVICE=$SERVICE" --build-arg "TORCH=$TORCH" "${build_args[@]}" "$@" -t "$IMAGE" .
