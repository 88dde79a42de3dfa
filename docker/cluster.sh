#!/usr/bin/env bash
# Starts and stops the compose cluster (docker-compose.yml): three masters and two workers.
#   docker/cluster.sh up     start it (image $RKUBE_IMAGE, default rkube:dev, must exist: make
#                            images) and wait
#   docker/cluster.sh wait   wait until m1..m3 are healthy and agree on a leader, then until the
#                            workers w1, w2 are Ready nodes; print members and nodes
#   docker/cluster.sh down   remove its containers, network and volumes
# RKUBE_CLUSTER_WAIT: seconds to wait for each of the two (default 120).
set -euo pipefail
# shellcheck source=docker/compose.sh
. "$(dirname "$0")/compose.sh"

masters=(m1 m2 m3)
workers=(w1 w2)
image="${RKUBE_IMAGE:-rkube:dev}"
endpoints=172.28.0.11:6443,172.28.0.12:6443,172.28.0.13:6443

wait_ready() {
  local deadline=$((SECONDS + ${RKUBE_CLUSTER_WAIT:-120})) states s leaders
  while :; do
    states=""
    for s in "${masters[@]}"; do states+="$s=$(health "$s") "; done
    if [ "$(grep -o '=healthy' <<<"$states" | wc -l)" -eq "${#masters[@]}" ]; then
      # Each member reports the leader it follows; all three must name the same, non-zero one.
      leaders="$(compose exec -T m1 etcdctl --endpoints="$endpoints" --command-timeout=3s \
        endpoint status -w json 2>/dev/null | grep -o '"leader":[0-9]*' | sort -u || true)"
      if [ "$(wc -l <<<"$leaders")" -eq 1 ] && [ -n "$leaders" ] \
        && [ "$leaders" != '"leader":0' ]; then
        break
      fi
      states+="leaders: ${leaders:-none}"
    fi
    if [ $SECONDS -ge "$deadline" ]; then
      echo "cluster: not ready after ${RKUBE_CLUSTER_WAIT:-120}s: $states" >&2
      compose ps >&2 || true
      compose logs --tail=20 >&2 || true
      exit 1
    fi
    sleep 2
  done
  echo "cluster: masters ready in ${SECONDS}s"
  compose exec -T m1 etcdctl --endpoints="$endpoints" member list -w table
  compose exec -T m1 etcdctl --endpoints="$endpoints" endpoint status -w table
}

# Waits until every worker is a Ready node (`rkctl get nodes` through m1's API).
wait_nodes() {
  local deadline=$((SECONDS + ${RKUBE_CLUSTER_WAIT:-120})) nodes w missing
  while :; do
    nodes="$(compose exec -T m1 rkctl get nodes 2>&1 || true)"
    missing=""
    for w in "${workers[@]}"; do
      awk -v w="$w" '$1 == w && $2 == "Ready" { found = 1 } END { exit !found }' <<<"$nodes" \
        || missing+=" $w"
    done
    [ -z "$missing" ] && break
    if [ $SECONDS -ge "$deadline" ]; then
      echo "cluster: workers not Ready after ${RKUBE_CLUSTER_WAIT:-120}s:$missing; rkctl get nodes:" >&2
      echo "$nodes" >&2
      for w in "${workers[@]}"; do compose logs --tail=20 "$w" >&2 || true; done
      exit 1
    fi
    sleep 2
  done
  echo "cluster: workers Ready after ${SECONDS}s"
  compose exec -T m1 rkctl get nodes -o wide
}

case "${1:-}" in
  up)
    docker image inspect "$image" >/dev/null 2>&1 \
      || { echo "cluster: image $image is missing; run make images" >&2; exit 1; }
    compose up -d
    wait_ready
    wait_nodes
    ;;
  wait) wait_ready; wait_nodes ;;
  down) compose down -v --remove-orphans ;;
  *) echo "usage: $0 up|wait|down" >&2; exit 2 ;;
esac
