#!/usr/bin/env bash
# Builds the local Docker image rkube:dev FROM scratch out of files from this machine: the
# release rkube binary (already built by `make images` in $CARGO_TARGET_DIR), exactly the shared
# libraries that it and etcdctl load (found with ldd, copied with their paths, the dynamic loader
# included), etcdctl (Debian etcd-client), busybox (Debian busybox-static) for a shell and basic
# tools, and /tmp. The build context is a small staging directory, never the repository or the
# target directory. Usage: docker/build-image.sh   (env: CARGO_TARGET_DIR, RKUBE_IMAGE)
set -euo pipefail
cd "$(dirname "$0")/.."

target="${CARGO_TARGET_DIR:-$HOME/.cache/rkube-target}"
image="${RKUBE_IMAGE:-rkube:dev}"
rkube="$target/release/rkube"
etcdctl="$(command -v etcdctl || true)"
busybox=/bin/busybox

[ -x "$rkube" ] || { echo "build-image: $rkube is missing; run make images" >&2; exit 1; }
[ -n "$etcdctl" ] || { echo "build-image: etcdctl is missing; run docker/deps.sh" >&2; exit 1; }
if ! file -L "$busybox" | grep -q 'statically linked'; then
  echo "build-image: $busybox is not busybox-static; run docker/deps.sh" >&2
  exit 1
fi

stage="$(mktemp -d "${TMPDIR:-/tmp}/rkube-image.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
root="$stage/rootfs"
mkdir -p "$root/usr/local/bin" "$root/usr/bin" "$root/bin" "$root/etc" "$root/tmp" \
  "$root/var/lib/rkube"
chmod 1777 "$root/tmp"

# Debug line tables (profile.release debug = 1) are most of the binary's size; the symbol table
# stays, so backtraces still name functions.
objcopy --strip-debug "$rkube" "$root/usr/local/bin/rkube"
cp "$etcdctl" "$root/usr/bin/etcdctl"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
  [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done

# Every shared library the binaries load, at the path ldd resolves it to (the loader searches
# /lib/x86_64-linux-gnu by default, and the interpreter path is fixed in each ELF file).
libs=()
for exe in "$rkube" "$etcdctl"; do
  if ldd "$exe" | grep -q 'not found'; then
    echo "build-image: $exe needs a library this machine lacks:" >&2
    ldd "$exe" >&2
    exit 1
  fi
  while read -r lib; do libs+=("$lib"); done < <(
    ldd "$exe" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
done
for lib in $(printf '%s\n' "${libs[@]}" | sort -u); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done

printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
cp docker/Dockerfile "$stage/Dockerfile"

echo "build-image: libraries: $(printf '%s\n' "${libs[@]}" | sort -u | tr '\n' ' ')"
echo "build-image: context $(du -sh "$stage" | cut -f1)"
old="$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)"
revision="$(git describe --always --dirty 2>/dev/null || echo unknown)"
DOCKER_BUILDKIT=0 docker build -q -t "$image" --label "rkube.revision=$revision" "$stage" >/dev/null
new="$(docker image inspect -f '{{.Id}}' "$image")"
# The image this build replaced is ours and now untagged; remove it unless a container uses it.
if [ -n "$old" ] && [ "$old" != "$new" ]; then docker rmi "$old" >/dev/null 2>&1 || true; fi
docker run --rm --entrypoint /bin/sh "$image" -c \
  'rkube --version >/dev/null 2>&1 || rkube --help >/dev/null; etcdctl version >/dev/null' \
  || { echo "build-image: $image does not run its binaries" >&2; exit 1; }
echo "build-image: $image $(docker image inspect -f '{{.Size}}' "$image" | awk '{ printf "%.1f MB", $1 / 1e6 }') (revision $revision)"
