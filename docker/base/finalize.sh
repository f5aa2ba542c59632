#!/bin/sh
# Runs inside the debootstrapped rootfs (chroot) before it is imported.
set -eu
# The sandbox's egress proxy re-signs TLS: without its CA pip inside builds fails.
update-ca-certificates
# Nothing in the image should be cached package data.
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/* /tmp/* /root/.cache
