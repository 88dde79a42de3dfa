#!/usr/bin/env bash
# Checks that the compose cluster's workers run pods: creates a Deployment of the demo image the
# workers import at start (`rkctl run pods-test --image=httpd:demo --replicas=2`, through m1's
# API), waits until both pods are Running on the workers with pod IPs, fetches each pod's page
# over HTTP from the worker that runs it (pods on different workers cannot reach each other yet:
# no overlay network), then deletes the Deployment and waits until its pods are gone from the API
# and none of its runc containers is left on any worker. Reports the timings. Removes the
# Deployment also when a step fails. With the cluster up (make cluster). Env: PODS_TEST_WAIT
# (seconds per step, default 120), PODS_TEST_IMAGE (default httpd:demo).
set -euo pipefail
# shellcheck source=docker/compose.sh
. "$(dirname "$0")/compose.sh"

name=pods-test
image="${PODS_TEST_IMAGE:-httpd:demo}"
wait_s="${PODS_TEST_WAIT:-120}"
workers=(w1 w2)
created=no

# stdin from /dev/null: `compose exec` would otherwise read the input of the loops below.
rkctl() { compose exec -T m1 rkctl "$@" </dev/null; }
now_ms() { echo $(( ${EPOCHREALTIME/./} / 1000 )); }
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  if [ "$created" = yes ]; then
    echo "pods-test: removing deployment $name after a failure" >&2
    rkctl delete deployment "$name" --wait=false >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

fail() {
  echo "pods-test: FAIL: $*" >&2
  rkctl get deploy,rs,pods -o wide >&2 || true
  rkctl describe pods -l "run=$name" 2>&1 | tail -n 40 >&2 || true
  exit 1
}

# Lines "NAME STATUS IP NODE" of the Deployment's pods (wide output, read from the right: the
# RESTARTS column may hold spaces).
pods() {
  rkctl get pods -l "run=$name" -o wide --no-headers 2>/dev/null \
    | awk 'NF >= 9 { print $1, $3, $(NF - 3), $(NF - 2) }'
}

# The runc containers each worker runs before the test (other pods'), to tell ours apart.
runc_list() { compose exec -T "$1" runc --root /var/lib/rkube/kubelet/runtime/runc list -q </dev/null | sort; }
declare -A before=()
for w in "${workers[@]}"; do before[$w]="$(runc_list "$w")"; done

t0="$(now_ms)"
rkctl run "$name" --image="$image" --replicas=2 --port=80 >/dev/null
created=yes
deadline=$((SECONDS + wait_s))
while :; do
  list="$(pods)"
  running="$(awk -v w="${workers[*]}" '
    BEGIN { n = split(w, a, " "); for (i = 1; i <= n; i++) worker[a[i]] = 1 }
    $2 == "Running" && $3 ~ /^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$/ && ($4 in worker)' <<<"$list")"
  [ "$(grep -c . <<<"$running")" -eq 2 ] && break
  [ $SECONDS -lt "$deadline" ] || fail "2 pods not Running on the workers with IPs after ${wait_s}s"
  sleep 1
done
echo "pods-test: 2 pods Running after $(( $(now_ms) - t0 )) ms:"
sed 's/^/  /' <<<"$running"

while read -r pod _ ip node; do
  # (busybox 1.35's wget crashes with -T: timeout bounds it instead.)
  page="$(compose exec -T "$node" timeout 10 wget -q -O - "http://$ip/" </dev/null 2>&1)" \
    || fail "GET http://$ip/ from $node ($pod): $page"
  echo "pods-test: $pod on $node answers on $ip:80: $page"
done <<<"$running"

t1="$(now_ms)"
rkctl delete deployment "$name" --timeout="${wait_s}s" >/dev/null
created=no
deadline=$((SECONDS + wait_s))
until [ -z "$(pods)" ]; do
  [ $SECONDS -lt "$deadline" ] || fail "pods still there ${wait_s}s after deleting the deployment"
  sleep 1
done
echo "pods-test: deployment deleted, pods gone from the API after $(( $(now_ms) - t1 )) ms"
for w in "${workers[@]}"; do
  until left="$(comm -23 <(runc_list "$w") <(printf '%s\n' "${before[$w]}" | grep .))" && [ -z "$left" ]; do
    [ $SECONDS -lt "$deadline" ] || fail "runc containers left on $w after ${wait_s}s: $left"
    sleep 1
  done
done
echo "pods-test: none of its runc containers left on ${workers[*]} after $(( $(now_ms) - t1 )) ms"
echo "pods-test: PASS"
