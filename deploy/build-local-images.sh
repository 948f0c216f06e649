#!/bin/sh
# Builds local stand-ins for the two images docker-compose.yml pulls from Docker Hub, on a
# Docker host that cannot reach any registry (as on the machine where compose-check.sh was
# first run):
#
#   local/debian:bookworm       Debian 12 minbase, made by debootstrap from an apt mirror
#   local/python:3.11-slim      for python:3.11-slim (deploy/images/python/)
#   local/postgres:15           for postgres:16      (deploy/images/postgres/)
#
# Needs root, debootstrap and a reachable Debian mirror. Then:
#
#   HPO_PYTHON_IMAGE=local/python:3.11-slim HPO_POSTGRES_IMAGE=local/postgres:15 \
#     deploy/compose-check.sh
#
# Variables: DEBIAN_MIRROR (default http://deb.debian.org/debian), ROOTFS (scratch folder,
# default /tmp/hpo-rootfs, removed afterwards). An image that exists already is kept:
# delete it to rebuild.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
rootfs=${ROOTFS:-/tmp/hpo-rootfs}

has_image() { docker image inspect "$1" >/dev/null 2>&1; }

if ! has_image local/debian:bookworm; then
    rm -rf "$rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror"
    security=$(echo "$mirror" | sed 's,/debian/*$,/debian-security,')
    cat > "$rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
SOURCES
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import - local/debian:bookworm
    rm -rf "$rootfs"
fi
has_image local/python:3.11-slim || docker build -t local/python:3.11-slim "$here/images/python"
has_image local/postgres:15 || docker build -t local/postgres:15 "$here/images/postgres"
docker image ls 'local/*'
