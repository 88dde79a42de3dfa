#!/usr/bin/env bash
# Builds the local Docker image rkube:dev FROM scratch out of files from this machine, for both
# the masters (`rkube server`) and the workers (`rkube node`) of docker-compose.yml:
#   - the release rkube and rkctl binaries (already built by `make images` in $CARGO_TARGET_DIR);
#   - etcdctl (Debian etcd-client), for health checks and debugging;
#   - what the kubelet's runc runtime runs: runc (Debian runc), ip (iproute2) and iptables
#     (Debian iptables, its nft backend, with its extension modules);
#   - busybox (Debian busybox-static) for a shell and basic tools (nsenter among them);
#   - the workers' entrypoint, docker/node-start.sh as rkube-node-start;
#   - exactly the shared libraries all of these load (found with ldd, copied with their paths,
#     the dynamic loader included);
#   - two demo images for pods, /usr/share/rkube/demo-images.tar (an OCI layout archive that
#     `rkube image import` reads: httpd:demo, a busybox httpd serving "hello from rkube" on port
#     80, and busybox:demo), built from busybox-static by scripts/test-registry.sh; the workers
#     import it at start, since no registry is reachable.
# The build context is a small staging directory, never the repository or the target directory.
# Usage: docker/build-image.sh   (env: CARGO_TARGET_DIR, RKUBE_IMAGE)
set -euo pipefail
cd "$(dirname "$0")/.."

target="${CARGO_TARGET_DIR:-$HOME/.cache/rkube-target}"
image="${RKUBE_IMAGE:-rkube:dev}"
rkube="$target/release/rkube"
rkctl="$target/release/rkctl"
busybox=/bin/busybox
# iptables' extension modules (/usr/lib/<multiarch>/xtables on Debian).
xtables_dir="$(dpkg -L iptables 2>/dev/null | grep -m1 '/xtables$' || true)"

for exe in "$rkube" "$rkctl"; do
  [ -x "$exe" ] || { echo "build-image: $exe is missing; run make images" >&2; exit 1; }
done
# tool path: the Debian package it comes from
declare -A tools=([etcdctl]=etcd-client [runc]=runc [ip]=iproute2 [xtables-nft-multi]=iptables)
declare -A tool_path=()
for t in "${!tools[@]}"; do
  tool_path[$t]="$(PATH="$PATH:/usr/sbin:/sbin" command -v "$t" || true)"
  [ -n "${tool_path[$t]}" ] || { echo "build-image: $t is missing (Debian: ${tools[$t]}); run docker/deps.sh" >&2; exit 1; }
done
[ -n "$xtables_dir" ] && [ -d "$xtables_dir" ] \
  || { echo "build-image: iptables' xtables module directory is missing (Debian: iptables); run docker/deps.sh" >&2; exit 1; }
if ! file -L "$busybox" | grep -q 'statically linked'; then
  echo "build-image: $busybox is not busybox-static; run docker/deps.sh" >&2
  exit 1
fi

stage="$(mktemp -d "${TMPDIR:-/tmp}/rkube-image.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
root="$stage/rootfs"
mkdir -p "$root/usr/local/bin" "$root/usr/bin" "$root/bin" "$root/etc" "$root/tmp" \
  "$root/var/lib/rkube" "$root/run" "$root/usr/share/rkube" "$root$(dirname "$xtables_dir")"
chmod 1777 "$root/tmp"
ln -s ../run "$root/var/run"

# Debug line tables (profile.release debug = 1) are most of the binaries' size; the symbol table
# stays, so backtraces still name functions.
objcopy --strip-debug "$rkube" "$root/usr/local/bin/rkube"
objcopy --strip-debug "$rkctl" "$root/usr/local/bin/rkctl"
cp docker/node-start.sh "$root/usr/local/bin/rkube-node-start"
cp "${tool_path[etcdctl]}" "$root/usr/bin/etcdctl"
cp "${tool_path[runc]}" "$root/usr/bin/runc"
cp -L "${tool_path[ip]}" "$root/usr/bin/ip"
cp "${tool_path[xtables-nft-multi]}" "$root/usr/bin/xtables-nft-multi"
for name in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
  ln -s xtables-nft-multi "$root/usr/bin/$name"
done
cp -a "$xtables_dir" "$root$xtables_dir"
cp "$busybox" "$root/bin/busybox"
# Applets, except where a real tool of the same name is installed (ip).
for applet in $("$busybox" --list); do
  [ -e "$root/bin/$applet" ] || [ -e "$root/usr/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done

# The demo images: the OCI layout of scripts/test-registry.sh, its images named NAME:demo (a tag
# other than latest, so the kubelet uses the imported image instead of pulling it).
scripts/test-registry.sh layout "$stage/demo" >/dev/null
sed -i 's/"org.opencontainers.image.ref.name":"\([a-z]*\)"/"org.opencontainers.image.ref.name":"\1:demo"/g' \
  "$stage/demo/oci/index.json"
grep -q '"httpd:demo"' "$stage/demo/oci/index.json" \
  || { echo "build-image: the demo layout has no httpd image" >&2; exit 1; }
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$stage/demo/oci" \
  -cf "$root/usr/share/rkube/demo-images.tar" .
rm -rf "$stage/demo"

# Every shared library the binaries load, at the path ldd resolves it to (the loader searches
# /lib/x86_64-linux-gnu by default, and the interpreter path is fixed in each ELF file);
# iptables' extension modules are loaded with dlopen, so ldd is asked about them too.
libs=()
for exe in "$rkube" "$rkctl" "${tool_path[@]}" "$xtables_dir"/*.so; do
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
  'rkube --version >/dev/null && rkctl --help >/dev/null && etcdctl version >/dev/null &&
   runc --version >/dev/null && /usr/bin/ip -V >/dev/null && iptables --version >/dev/null' \
  || { echo "build-image: $image does not run its binaries" >&2; exit 1; }
echo "build-image: $image $(docker image inspect -f '{{.Size}}' "$image" | awk '{ printf "%.1f MB", $1 / 1e6 }') (revision $revision)"
