#!/bin/sh
# The workers' entrypoint in docker-compose.yml (inside rkube:dev, run by busybox sh; installed
# as /usr/local/bin/rkube-node-start by docker/build-image.sh). It
#   1. makes the container's cgroup mounts and /proc/sys writable: Docker mounts them read-only
#      unless the container is privileged, runc creates each pod's cgroups below them (only this
#      container's own cgroups are visible there), and the pod network turns on ip_forward
#      (in this container's network namespace); the container has CAP_SYS_ADMIN for this;
#   2. imports the demo pod images baked into the image (httpd:demo, busybox:demo), since no
#      registry is reachable; the store is content-addressed, so this is a no-op on restarts;
#   3. runs the kubelet, `rkube node` (configured by RKUBE_* variables), with any arguments.
set -eu

mount | awk '($5 ~ /^cgroup2?$/ || $3 == "/proc/sys") && $6 ~ /^\(ro[,)]/ { print $3 }' | while read -r m; do
  mount -o remount,bind,rw "$m" || { echo "rkube-node-start: cannot make $m writable" >&2; exit 1; }
done
demo=/usr/share/rkube/demo-images.tar
if [ -f "$demo" ]; then
  rkube image import "$demo"
fi
exec rkube node "$@"
