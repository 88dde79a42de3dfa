#!/usr/bin/env bash
# Benchmarks pod start-up on one real node (issue 5): one `rkube server` (its scheduler and
# controllers in-process, the default) and one `rkube node` with runc, its images from Debian's
# docker-registry on loopback (scripts/test-registry.sh: `httpd` built from busybox-static).
# bench-pods waits for the node, runs a warm-up pod (which pulls the image), then BENCH_PODS
# pods one at a time, in batches of BENCH_BATCH and all at once: create → Running and
# delete → gone, seen
# through a pod watch. Then, from the same run, the floor: the same command started by runc
# alone from one prepared busybox bundle (`runc run --detach`, `runc delete --force`: what any
# runc-based kubelet pays at least), and the anchor: the same containers through the Docker
# daemon of this machine (`docker load` of the same image, `docker run -d`, `docker rm -f`).
# Prints the report: all side by side, where rkube's time goes, memory, and the target
# (create → Running p99 ≤ 0.5 s).
#
# Needs root (runc, network namespaces, iptables) and scripts/deps.sh test (runc,
# busybox-static, docker-registry, skopeo); Docker is optional (without it the report says so).
#
# Usage: bench/pods/run.sh
# Knobs (environment):
#   BENCH_PODS          pods (containers) per run                  default 100
#   BENCH_BATCH         pods created at once in the batched run    default 10
#   BENCH_MODES         runs, in order: one (a pod at a time), batches, all   default one,batches,all
#   BENCH_RUNC          0: no runc-alone floor                     default 1
#   BENCH_DOCKER        0: no Docker anchor                        default 1
#   BENCH_PORT_BASE     loopback ports base+1 (API), +11 (Raft), +21 (kubelet)   default 31400
#   BENCH_BRIDGE        the node's bridge                          default rkbench0
#   BENCH_POD_CIDR      the node's pod subnet                      default 10.239.0.0/24
#   BENCH_RESULTS       pods-results.jsonl, pods-report.md and the logs   default bench/results
#   BENCH_NO_BUILD=1    use the binaries already built
#   BENCH_KEEP=1        keep the work directory (data, node state, registry)
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"

count=${BENCH_PODS:-100}
batch=${BENCH_BATCH:-10}
modes=${BENCH_MODES:-one,batches,all}
use_runc=${BENCH_RUNC:-1}
use_docker=${BENCH_DOCKER:-1}
port_base=${BENCH_PORT_BASE:-31400}
bridge=${BENCH_BRIDGE:-rkbench0}
pod_cidr=${BENCH_POD_CIDR:-10.239.0.0/24}
results=${BENCH_RESULTS:-$repo/bench/results}
target_dir=${CARGO_TARGET_DIR:-target}
case "$target_dir" in /*) ;; *) target_dir=$repo/$target_dir ;; esac
bin=$target_dir/release
docker_image=example.com/demo/httpd:v1
docker_prefix=rkube-bench-pods

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root: the node drives runc, network namespaces and iptables"

rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain -- src proto build.rs Cargo.toml Cargo.lock 2>/dev/null)" ]; then
  rev="$rev with uncommitted changes in src/"
fi
if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
  log "building rkube and bench-pods (release)"
  cargo build --release --bin rkube --bin bench-pods
else
  rev="$rev (tree; binaries not rebuilt, from $(date -u -r "$bin/rkube" '+%H:%M UTC' 2>/dev/null || echo '?'))"
fi
for b in rkube bench-pods; do [ -x "$bin/$b" ] || die "$bin/$b missing"; done

port() { echo $((port_base + $1)); }
for p in "$(port 1)" "$(port 11)" "$(port 21)"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then die "port $p is in use (set BENCH_PORT_BASE)"; fi
done
if ip link show dev "$bridge" >/dev/null 2>&1; then die "bridge $bridge exists already (set BENCH_BRIDGE)"; fi

work=$(mktemp -d "${TMPDIR:-/tmp}/rkube-bench-pods.XXXXXX")
# Private copies: a build running meanwhile must not swap the binaries under the benchmark.
cp "$bin/rkube" "$bin/bench-pods" "$work/"
bin=$work
mkdir -p "$results"
out=$results/pods-results.jsonl
: >"$out"
server_pid="" node_pid="" registry_started=0 docker_loaded=0

# Stops a process: TERM, up to 10 s to exit, then KILL.
stop() {
  local pid=$1 deadline=$((SECONDS + 10))
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  set +e
  # The node first, then what it leaves (containers, netns, veths, the bridge and its rules).
  stop "$node_pid"
  node_pid=""
  "$bin/bench-pods" cleanup --state-dir "$work/state" --bridge "$bridge" --pod-cidr "$pod_cidr" \
    --shim "$bin/rkube" >>"$results/pods-node.log" 2>&1 || log "cleanup of the node failed; see $results/pods-node.log"
  stop "$server_pid"
  server_pid=""
  [ "$registry_started" = 1 ] && scripts/test-registry.sh stop "$work/registry"
  # Containers of an interrupted runc-alone run.
  if [ -d "$work/runc/state" ]; then
    runc --root "$work/runc/state" list -q 2>/dev/null | xargs -r -n 1 runc --root "$work/runc/state" delete --force
  fi
  if [ "$use_docker" = 1 ] && command -v docker >/dev/null 2>&1; then
    docker ps -aq --filter "name=^$docker_prefix-" 2>/dev/null | xargs -r docker rm -f >/dev/null 2>&1
    [ "$docker_loaded" = 1 ] && docker rmi "$docker_image" >/dev/null 2>&1
  fi
  if [ "${BENCH_KEEP:-0}" = 1 ]; then log "work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

started=$SECONDS
log "starting the test registry"
registry_started=1
registry_port=$(scripts/test-registry.sh start "$work/registry")
registry=127.0.0.1:$registry_port

endpoint=127.0.0.1:$(port 1)
log "starting rkube server at $endpoint"
"$bin/rkube" server --id 1 --data-dir "$work/server" \
  --listen-api "$endpoint" --listen-peer "127.0.0.1:$(port 11)" >"$results/pods-server.log" 2>&1 &
server_pid=$!
log "starting rkube node bench-node (runc, bridge $bridge, $pod_cidr; images from $registry)"
"$bin/rkube" node --server "$endpoint" --node-name bench-node --runtime runc \
  --pod-cidr "$pod_cidr" --bridge "$bridge" --state-dir "$work/state" --image-dir "$work/images" \
  --kubelet-port "$(port 21)" --insecure-registry "$registry" --registry-mirror "$registry" \
  >"$results/pods-node.log" 2>&1 &
node_pid=$!
sleep 1
kill -0 "$server_pid" 2>/dev/null || die "rkube server exited; see $results/pods-server.log"
kill -0 "$node_pid" 2>/dev/null || die "rkube node exited; see $results/pods-node.log"

log "rkube: $count pods, runs $modes (batches of $batch) (load average $(cut -d' ' -f1-3 /proc/loadavg))"
"$bin/bench-pods" rkube --endpoints "$endpoint" --node bench-node --count "$count" --batch "$batch" \
  --modes "$modes" --memory "server=$server_pid,node=$node_pid" --json "$out" </dev/null

runc_note=""
if [ "$use_runc" != 1 ]; then
  runc_note="runc-alone floor not run (BENCH_RUNC=0)."
else
  log "runc alone (floor): the same $count containers (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  "$bin/bench-pods" runc --work-dir "$work/runc" --count "$count" --batch "$batch" --modes "$modes" \
    --json "$out" </dev/null || runc_note="runc-alone floor failed; see the log above."
fi

docker_note=""
if [ "$use_docker" != 1 ]; then
  docker_note="Docker anchor not run (BENCH_DOCKER=0)."
elif ! command -v docker >/dev/null 2>&1 || ! docker version >/dev/null 2>&1; then
  docker_note="Docker anchor not run: no Docker daemon answers here."
else
  if ! docker image inspect "$docker_image" >/dev/null 2>&1; then
    docker load -i "$work/registry/archives/httpd-docker.tar" >/dev/null
    docker_loaded=1
  fi
  log "Docker (anchor): the same $count containers (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  "$bin/bench-pods" docker --image "$docker_image" --prefix "$docker_prefix" --count "$count" \
    --batch "$batch" --modes "$modes" --json "$out" </dev/null || docker_note="Docker anchor failed; see the log above."
fi

report=$results/pods-report.md
{
  echo "rkube $rev; bench-pods, $count pods on one node (runc $(runc --version | head -1 | awk '{print $3}')," \
    "rkube server and node on the same machine); $(nproc) CPUs; $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  "$bin/bench-pods" report "$out"
  [ -z "$runc_note" ] || { echo; echo "$runc_note"; }
  [ -z "$docker_note" ] || { echo; echo "$docker_note"; }
  echo
  echo "Load average at the end $(cut -d' ' -f1-3 /proc/loadavg); $((SECONDS - started)) s from the start of the registry."
} >"$report.tmp"
mv "$report.tmp" "$report"
cat "$report"
log "done in $((SECONDS - started)) s; results in $out, report in $report"
