#!/usr/bin/env bash
# Installs, with apt-get, the Debian packages the jepsen harness needs on the host and says
# what it installs: iptables (packet filters applied in the containers' network namespaces)
# and util-linux (nsenter); with the argument `etcd`, also etcd-server and etcd-client (the
# comparison image). Docker and Compose are checked by docker/deps.sh. Usage:
# tests/jepsen/deps.sh [etcd]
set -euo pipefail

want=(iptables util-linux)
[ "${1:-}" = etcd ] && want+=(etcd-server etcd-client)
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "jepsen deps: all present (${want[*]})"
else
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "jepsen deps: installing missing Debian packages: ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "jepsen deps: the harness runs nsenter and iptables in containers' namespaces: run it as root" >&2
  exit 1
fi
