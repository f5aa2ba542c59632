#!/usr/bin/env bash
# Build the local Debian base image for CPU builds where no container registry is
# reachable: debootstrap a minimal bookworm with Python, add the host's CA
# certificates, `docker import` it.  The rootfs tarball is cached under
# .docker/base/ (git-ignored) keyed by the recipe's hash, so a second run - or a
# fresh Docker data root - takes seconds instead of a minute of debootstrap.
#   docker/build-base.sh [image-tag]       (default localhost/debian-base:bookworm)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TAG="${1:-${BASE_IMAGE:-localhost/debian-base:bookworm}}"
SUITE="${DEBIAN_SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DOCKER="${DOCKER:-/usr/bin/docker}"
CACHE="${ROOT}/.docker/base"
RECIPE="${ROOT}/docker/base"

packages="$(grep -v '^#' "${RECIPE}/packages.txt" | grep -v '^$' | paste -sd, -)"
# The CA set is part of the key: a new proxy CA must rebuild the base.
key="$( { echo "$SUITE $MIRROR $packages"; cat "${RECIPE}/finalize.sh"; \
          cat /usr/local/share/ca-certificates/*.crt 2>/dev/null || true; } | sha256sum | cut -c1-16)"
tarball="${CACHE}/${SUITE}-${key}.tar"

if [ "$("$DOCKER" image inspect -f '{{index .Config.Labels "modelserve.base.key"}}' "$TAG" 2>/dev/null)" = "$key" ]; then
  echo "base image $TAG is up to date ($key)" >&2
  exit 0
fi

if [ ! -s "$tarball" ]; then
  command -v debootstrap >/dev/null || {
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >&2
  }
  mkdir -p "$CACHE"
  rootfs="$(mktemp -d "${CACHE}/rootfs.XXXXXX")"
  trap 'rm -rf "$rootfs"' EXIT
  echo "debootstrap $SUITE ($packages) into $rootfs" >&2
  debootstrap --variant=minbase --include="$packages" "$SUITE" "$rootfs" "$MIRROR" >&2
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
  fi
  cp "${RECIPE}/finalize.sh" "$rootfs/tmp/finalize.sh"
  chroot "$rootfs" /bin/sh /tmp/finalize.sh >&2
  # Write then rename: an interrupted run must not leave a truncated cache entry.
  tar --numeric-owner -C "$rootfs" -cf "${tarball}.part" .
  mv "${tarball}.part" "$tarball"
  # Old keys are dead weight (each ~200 MB).
  find "$CACHE" -maxdepth 1 -name "${SUITE}-*.tar" ! -name "$(basename "$tarball")" -delete
fi

"$DOCKER" import \
  --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change "LABEL modelserve.base.key=${key}" \
  --change 'CMD ["/bin/bash"]' \
  "$tarball" "$TAG" >&2
echo "built base image $TAG ($key)" >&2
