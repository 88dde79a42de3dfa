#!/usr/bin/env bash
# Builds the local Docker image etcd-jepsen:3.4 FROM scratch out of Debian's etcd-server
# (etcd 3.4) and etcd-client packages and exactly the shared libraries they load, for
# docker/etcd-compose.yml: the same harness (tests/jepsen) runs against etcd as against rkube.
# Nothing is pulled. Usage: docker/build-etcd-image.sh   (env: ETCD_IMAGE)
set -euo pipefail
cd "$(dirname "$0")/.."

image="${ETCD_IMAGE:-etcd-jepsen:3.4}"
etcd="$(command -v etcd || true)"
etcdctl="$(command -v etcdctl || true)"
[ -n "$etcd" ] || { echo "build-etcd-image: etcd is missing (Debian: etcd-server)" >&2; exit 1; }
[ -n "$etcdctl" ] || { echo "build-etcd-image: etcdctl is missing (Debian: etcd-client)" >&2; exit 1; }

stage="$(mktemp -d "${TMPDIR:-/tmp}/etcd-image.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
root="$stage/rootfs"
mkdir -p "$root/usr/bin" "$root/tmp" "$root/var/lib/etcd" "$root/etc"
chmod 1777 "$root/tmp"
cp "$etcd" "$root/usr/bin/etcd"
cp "$etcdctl" "$root/usr/bin/etcdctl"
for exe in "$etcd" "$etcdctl"; do
  ldd "$exe" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'
done | sort -u | while read -r lib; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
cat >"$stage/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY rootfs/ /
ENV ETCDCTL_API=3
ENTRYPOINT ["/usr/bin/etcd"]
DOCKERFILE
DOCKER_BUILDKIT=0 docker build -q -t "$image" "$stage" >/dev/null
docker run --rm --entrypoint /usr/bin/etcd "$image" --version | head -n 1
echo "build-etcd-image: $image $(docker image inspect -f '{{.Size}}' "$image" | awk '{ printf "%.1f MB", $1 / 1e6 }')"
