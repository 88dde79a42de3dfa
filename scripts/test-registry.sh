#!/usr/bin/env bash
# A real OCI registry on loopback for the kubelet tests, filled with images built from local
# files (no registry on the internet is involved).
#
#   scripts/test-registry.sh start DIR   # prints the registry's port on stdout
#   scripts/test-registry.sh stop DIR
#   scripts/test-registry.sh layout DIR  # only builds the images into DIR/oci (no registry)
#
# With TEST_REGISTRY_CREDS=USER:PASSWORD in the environment (not REGISTRY_*: docker-registry reads
# those as configuration) the registry requires basic auth
# (htpasswd, from apache2-utils).
#
# `start` builds two images in an OCI layout under DIR/oci, from busybox-static:
#   library/httpd:latest    `/bin/busybox httpd -f -v -p 80 -h /www` (serves /www/index.html,
#                           "hello from rkube") under a shell that stops it at SIGTERM, as
#                           Apache's httpd stops (as PID 1, busybox httpd would ignore it)
#   library/busybox:latest  cmd `sh`
# runs Debian's docker-registry on a free 127.0.0.1 port with its storage in DIR/data, pushes
# both images to it with skopeo, and writes archives for `rkube image import`:
# DIR/archives/httpd-oci.tar (OCI layout) and DIR/archives/httpd-docker.tar (`docker save`).
set -euo pipefail

cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop|layout DIR" >&2; exit 2; }

need() {
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || { echo "test-registry: $tool is missing (run: make test-deps)" >&2; exit 1; }
  done
}

stop() {
  if [ -f "$dir/registry.pid" ]; then
    pid=$(cat "$dir/registry.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$dir/registry.pid"
  fi
}

# blob FILE: moves FILE into the layout's blobs under its digest; prints "sha256:HEX SIZE".
blob() {
  local hex size
  hex=$(sha256sum "$1" | cut -d' ' -f1)
  size=$(stat -c %s "$1")
  mv "$1" "$dir/oci/blobs/sha256/$hex"
  echo "sha256:$hex $size"
}

build_images() {
  local busybox rootfs layer_tar diff_id layer layer_digest layer_size
  busybox=$(command -v busybox)
  rootfs="$dir/rootfs"
  rm -rf "$rootfs" "$dir/oci"
  mkdir -p "$rootfs/bin" "$rootfs/www" "$rootfs/etc" "$rootfs/tmp" "$dir/oci/blobs/sha256"
  cp "$busybox" "$rootfs/bin/busybox"
  for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"
  done
  echo "hello from rkube" >"$rootfs/www/index.html"
  echo "root:x:0:0:root:/root:/bin/sh" >"$rootfs/etc/passwd"
  echo "root:x:0:" >"$rootfs/etc/group"
  chmod 1777 "$rootfs/tmp"

  layer_tar="$dir/layer.tar"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$rootfs" -cf "$layer_tar" .
  diff_id="sha256:$(sha256sum "$layer_tar" | cut -d' ' -f1)"
  gzip -n -f "$layer_tar"
  layer=$(blob "$layer_tar.gz")
  layer_digest=${layer% *}
  layer_size=${layer#* }

  local manifests=""
  for image in httpd busybox; do
    local process config cfg cfg_digest cfg_size man man_digest man_size
    if [ "$image" = httpd ]; then
      process='"Entrypoint":["/bin/busybox","sh","-c","trap \"kill $httpd; exit 0\" TERM; /bin/busybox httpd -f -v -p 80 -h /www \u0026 httpd=$!; wait"]'
    else
      process='"Cmd":["sh"]'
    fi
    config="$dir/config-$image.json"
    printf '{"architecture":"amd64","os":"linux","config":{%s,"Env":["PATH=/bin"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["%s"]}}' \
      "$process" "$diff_id" >"$config"
    cfg=$(blob "$config")
    cfg_digest=${cfg% *}
    cfg_size=${cfg#* }
    man="$dir/manifest-$image.json"
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%s}]}' \
      "$cfg_digest" "$cfg_size" "$layer_digest" "$layer_size" >"$man"
    man=$(blob "$man")
    man_digest=${man% *}
    man_size=${man#* }
    [ -z "$manifests" ] || manifests="$manifests,"
    manifests="$manifests{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"$man_digest\",\"size\":$man_size,\"annotations\":{\"org.opencontainers.image.ref.name\":\"$image\"}}"
  done
  printf '{"schemaVersion":2,"manifests":[%s]}' "$manifests" >"$dir/oci/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' >"$dir/oci/oci-layout"
  rm -rf "$rootfs"
}

start() {
  need docker-registry skopeo busybox python3 curl sha256sum gzip tar
  local auth_config="" creds=() curl_auth=()
  mkdir -p "$dir"
  if [ -n "${TEST_REGISTRY_CREDS:-}" ]; then
    need htpasswd
    htpasswd -Bbn "${TEST_REGISTRY_CREDS%%:*}" "${TEST_REGISTRY_CREDS#*:}" >"$dir/htpasswd"
    auth_config="auth:
  htpasswd:
    realm: rkube-test
    path: $dir/htpasswd"
    creds=(--dest-creds "$TEST_REGISTRY_CREDS")
    curl_auth=(-u "$TEST_REGISTRY_CREDS")
  fi
  stop
  mkdir -p "$dir/data" "$dir/archives"
  build_images
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
$auth_config
EOF
  setsid docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 </dev/null &
  echo $! >"$dir/registry.pid"
  for _ in $(seq 100); do
    curl -fsS "${curl_auth[@]}" "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fsS "${curl_auth[@]}" "http://127.0.0.1:$port/v2/" >/dev/null || { echo "test-registry: registry did not start:" >&2; cat "$dir/registry.log" >&2; stop; exit 1; }
  for image in httpd busybox; do
    skopeo --insecure-policy copy -q --dest-tls-verify=false "${creds[@]}" \
      "oci:$dir/oci:$image" "docker://127.0.0.1:$port/library/$image:latest" >&2
  done
  skopeo --insecure-policy copy -q "oci:$dir/oci:httpd" "oci-archive:$dir/archives/httpd-oci.tar:httpd" >&2
  skopeo --insecure-policy copy -q "oci:$dir/oci:httpd" "docker-archive:$dir/archives/httpd-docker.tar:example.com/demo/httpd:v1" >&2
  echo "$port"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  layout) need busybox sha256sum gzip tar; mkdir -p "$dir"; build_images ;;
  *) echo "usage: $0 start|stop|layout DIR" >&2; exit 2 ;;
esac
