#!/usr/bin/env bash
# Checks for the Debian packages whose files go into the rkube:dev image and installs the
# missing ones with apt-get, saying what it installs: busybox-static (a shell and basic tools
# inside the FROM-scratch image, and the demo pod images), etcd-client (etcdctl, for health
# checks and debugging), and what the workers' runc runtime runs: runc, iproute2 (ip) and
# iptables. Also checks that docker and a Compose (v1 `docker-compose` or v2 `docker compose`)
# exist; those are not installed here. Usage: docker/deps.sh
set -euo pipefail

want=(busybox-static etcd-client runc iproute2 iptables)
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "docker deps: all present (${want[*]})"
else
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "docker deps: installing missing Debian packages: ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
fi

if ! command -v docker >/dev/null 2>&1; then
  echo "docker deps: docker is not installed (Debian: docker.io)" >&2
  exit 1
fi
if ! command -v docker-compose >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1; then
  echo "docker deps: neither docker-compose nor the docker compose plugin is installed" \
    "(Debian: docker-compose)" >&2
  exit 1
fi
