#!/usr/bin/env bash
# Install and start a Docker engine on a Debian host (idempotent).
# CI machines start with only the docker client and no systemd, so dockerd is started by hand.
set -euo pipefail

if ! command -v dockerd >/dev/null 2>&1 || ! command -v mmdebstrap >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq docker.io mmdebstrap >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  setsid dockerd >/var/log/dockerd.log 2>&1 < /dev/null &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
fi
docker info --format 'docker engine {{.ServerVersion}} ({{.Driver}}) is up'
