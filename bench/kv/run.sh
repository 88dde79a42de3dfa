#!/usr/bin/env bash
# Benchmarks rkube against etcd 3.4 with the same client (bench-kv) and the same workloads:
# a 3-member cluster of each on loopback, both running. It writes BENCH_KEYS keys into each
# (fill) and samples its members' RSS; then runs linearizable and serializable ranges and puts
# at every (clients, conns) pair of BENCH_PAIRS, each on both systems in turn; samples RSS
# again, stops everything, and prints both systems side by side with the ratios rkube/etcd
# (bench-kv report).
#
# Usage: bench/kv/run.sh            (scripts/deps.sh bench installs etcd-server and etcd-client)
# Knobs (environment):
#   BENCH_PAIRS               "clients:conns ..."         default "1:1 16:10 256:100 1000:100"
#   BENCH_PUT_TOTAL_SINGLE    puts with 1 client          default 2000
#   BENCH_PUT_TOTAL           puts with more clients      default 30000
#   BENCH_RANGE_TOTAL_SINGLE  ranges with 1 client        default 5000
#   BENCH_RANGE_TOTAL         ranges with more clients    default 50000
#   BENCH_MAX_SECS            a run stops sending after this long even if its total is not
#                             reached (the output shows how many were sent; not for fill)
#                                                         default 20
#   BENCH_KEYS                keys written by fill (also the range key space)   default 100000
#   BENCH_FILL_PAIR           clients:conns of the fill   default 256:100
#   BENCH_SYSTEMS             which systems, in order     default "rkube etcd"
#   BENCH_TARGET_LEADER=1     send every request to the leader only (default: all members;
#                             a single-client put to the leader alone is run in addition, to
#                             show the cost of a follower forwarding to the leader)
#   BENCH_PORT_BASE           loopback ports used: base+1..3, +11..13, +101..103, +111..113
#                                                         default 31000
#   BENCH_RESULTS             directory for results.jsonl, report.md and logs   default bench/results
#   BENCH_SETTLE_SECS         before each run, wait up to this long for the members of both
#                             systems to go quiet (under 10 % of one CPU together), so that one
#                             run does not pay for the background work the previous run left
#                             (compactions, backend commits); the wait is logged  default 20
#   BENCH_NO_BUILD=1          use the binaries already built
#   BENCH_KEEP=1              keep the members' data directories
#   ETCD, ETCDCTL             default /usr/bin/etcd, etcdctl from PATH
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"

pairs=${BENCH_PAIRS:-"1:1 16:10 256:100 1000:100"}
put_total_single=${BENCH_PUT_TOTAL_SINGLE:-2000}
put_total=${BENCH_PUT_TOTAL:-30000}
range_total_single=${BENCH_RANGE_TOTAL_SINGLE:-5000}
range_total=${BENCH_RANGE_TOTAL:-50000}
max_secs=${BENCH_MAX_SECS:-20}
settle_secs=${BENCH_SETTLE_SECS:-20}
keys=${BENCH_KEYS:-100000}
fill_pair=${BENCH_FILL_PAIR:-256:100}
systems=${BENCH_SYSTEMS:-"rkube etcd"}
port_base=${BENCH_PORT_BASE:-31000}
results=${BENCH_RESULTS:-$repo/bench/results}
etcd_bin=${ETCD:-/usr/bin/etcd}
etcdctl_bin=${ETCDCTL:-etcdctl}
target_dir=${CARGO_TARGET_DIR:-target}
case "$target_dir" in /*) ;; *) target_dir=$repo/$target_dir ;; esac
bin=$target_dir/release
leader_flag=()
[ "${BENCH_TARGET_LEADER:-0}" = 1 ] && leader_flag=(--target-leader)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in "$etcdctl_bin"; do command -v "$tool" >/dev/null || die "$tool not found (scripts/deps.sh bench)"; done
case " $systems " in *" etcd "*) [ -x "$etcd_bin" ] || die "$etcd_bin not found (scripts/deps.sh bench)" ;; esac

# Which rkube is measured: the commit, and whether the sources differ from it.
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain -- src proto build.rs Cargo.toml Cargo.lock 2>/dev/null)" ]; then
  rev="$rev with uncommitted changes in src/"
fi
if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
  log "building rkube and bench-kv (release)"
  cargo build --release --bin rkube --bin bench-kv
else
  # The binary may be older than the tree: say when it was built.
  rev="$rev (tree; binary not rebuilt, from $(date -u -r "$bin/rkube" '+%H:%M UTC' 2>/dev/null || echo '?'))"
fi
[ -x "$bin/rkube" ] && [ -x "$bin/bench-kv" ] || die "binaries missing under $bin"

work=$(mktemp -d "${TMPDIR:-/tmp}/rkube-bench.XXXXXX")
# Private copies: a build running meanwhile must not swap the binaries under the benchmark.
cp "$bin/rkube" "$bin/bench-kv" "$work/"
bin=$work
mkdir -p "$results"
out=$results/results.jsonl
: >"$out"
# Member pids per system: "pid pid pid".
declare -A members=()

# Stops the members of a system: TERM, up to 10 s to exit, then KILL.
stop_members() {
  local sys=$1 pid deadline
  for pid in ${members[$sys]:-}; do kill -TERM "$pid" 2>/dev/null || true; done
  deadline=$((SECONDS + 10))
  for pid in ${members[$sys]:-}; do
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  unset "members[$sys]"
}

cleanup() {
  local sys
  for sys in "${!members[@]}"; do stop_members "$sys"; done
  if [ "${BENCH_KEEP:-0}" = 1 ]; then log "data kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port() { echo $((port_base + $1)); }

# Refuses to start when something already listens on a port the cluster needs.
check_free() {
  local p
  for p in "$@"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then die "port $p is in use (set BENCH_PORT_BASE)"; fi
  done
}

# Prints the comma-separated client endpoints of a system.
endpoints() {
  local off
  case $1 in rkube) off=0 ;; etcd) off=100 ;; *) die "unknown system $1" ;; esac
  echo "127.0.0.1:$(port $((off + 1))),127.0.0.1:$(port $((off + 2))),127.0.0.1:$(port $((off + 3)))"
}

start_rkube() {
  local i cluster="1=127.0.0.1:$(port 11),2=127.0.0.1:$(port 12),3=127.0.0.1:$(port 13)"
  check_free "$(port 1)" "$(port 2)" "$(port 3)" "$(port 11)" "$(port 12)" "$(port 13)"
  for i in 1 2 3; do
    "$bin/rkube" server --id "$i" --data-dir "$work/rkube$i" \
      --listen-api "127.0.0.1:$(port "$i")" --listen-peer "127.0.0.1:$(port $((10 + i)))" \
      --initial-cluster "$cluster" >"$results/rkube$i.log" 2>&1 &
    members[rkube]+="$! "
  done
}

start_etcd() {
  local i cluster="e1=http://127.0.0.1:$(port 111),e2=http://127.0.0.1:$(port 112),e3=http://127.0.0.1:$(port 113)"
  check_free "$(port 101)" "$(port 102)" "$(port 103)" "$(port 111)" "$(port 112)" "$(port 113)"
  for i in 1 2 3; do
    "$etcd_bin" --name "e$i" --data-dir "$work/etcd$i" \
      --listen-client-urls "http://127.0.0.1:$(port $((100 + i)))" \
      --advertise-client-urls "http://127.0.0.1:$(port $((100 + i)))" \
      --listen-peer-urls "http://127.0.0.1:$(port $((110 + i)))" \
      --initial-advertise-peer-urls "http://127.0.0.1:$(port $((110 + i)))" \
      --initial-cluster "$cluster" --initial-cluster-state new \
      --initial-cluster-token rkube-bench >"$results/etcd$i.log" 2>&1 &
    members[etcd]+="$! "
  done
}

# Waits (at most 60 s) until every member answers Maintenance.Status and names a leader.
wait_ready() {
  local sys=$1 eps status pid deadline=$((SECONDS + 60))
  eps=$(endpoints "$sys")
  while [ $SECONDS -lt $deadline ]; do
    for pid in ${members[$sys]}; do
      kill -0 "$pid" 2>/dev/null || die "a $sys member exited during start-up; see $results/$sys*.log"
    done
    if status=$(ETCDCTL_API=3 "$etcdctl_bin" --endpoints="$eps" --command-timeout=2s -w json endpoint status 2>/dev/null) &&
      [ "$(grep -o '"leader":[1-9][0-9]*' <<<"$status" | sort -u | wc -l)" -eq 1 ] &&
      [ "$(grep -o '"leader":[1-9][0-9]*' <<<"$status" | wc -l)" -eq 3 ]; then
      log "$sys ready at $eps"
      return 0
    fi
    sleep 0.5
  done
  die "$sys cluster at $eps not ready after 60 s; see $results/$sys*.log"
}

# Appends one JSON line with the summed VmRSS and RssAnon of a system's members.
sample_rss() {
  local sys=$1 phase=$2 pid rss=0 anon=0 v a
  for pid in ${members[$sys]}; do
    v=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
    a=$(awk '/^RssAnon:/ {print $2}' "/proc/$pid/status")
    rss=$((rss + v))
    anon=$((anon + a))
  done
  log "$sys RSS $phase: $((rss / 1024)) MiB (anonymous $((anon / 1024)) MiB), sum over 3 members"
  printf '{"label":"%s","workload":"rss","phase":"%s","rss_kib":%d,"rss_anon_kib":%d}\n' \
    "$sys" "$phase" "$rss" "$anon" >>"$out"
}

# Appends each member's Raft log entries and WAL fsyncs over the whole run: rkube logs its
# counts when it shuts down (call after stop_members); etcd counts WAL fsyncs on /metrics and
# its entries are its Raft index (call before stop_members).
group_commit() {
  local sys=$1 i p syncs entries line
  for i in 1 2 3; do
    syncs="" entries=""
    case $sys in
      rkube)
        line=$(grep -h "raft log group commit" "$results/rkube$i.log" | tail -1) || true
        syncs=$(grep -o ' syncs=[0-9]*' <<<"$line" | cut -d= -f2) || true
        entries=$(grep -o ' entries=[0-9]*' <<<"$line" | cut -d= -f2) || true
        ;;
      etcd)
        p=$(port $((100 + i)))
        syncs=$(curl -s --max-time 5 "http://127.0.0.1:$p/metrics" |
          awk '$1 == "etcd_disk_wal_fsync_duration_seconds_count" {print $2}') || true
        entries=$(ETCDCTL_API=3 "$etcdctl_bin" --endpoints="127.0.0.1:$p" -w json endpoint status |
          grep -o '"raftIndex":[0-9]*' | cut -d: -f2) || true
        ;;
    esac
    if [ -z "$syncs" ] || [ -z "$entries" ]; then
      log "$sys member $i: no group-commit counts"
      continue
    fi
    log "$sys member $i: $entries Raft log entries, $syncs WAL fsyncs"
    printf '{"label":"%s","workload":"group-commit","member":%d,"syncs":%s,"entries":%s}\n' \
      "$sys" "$i" "$syncs" "$entries" >>"$out"
  done
}

# CPU time (clock ticks) the members of every running system have used so far.
members_ticks() {
  local pid total=0 t
  for pid in ${members[*]}; do
    t=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null) || t=0
    total=$((total + t))
  done
  echo "$total"
}

# Waits until the members of both systems together use under 10 % of one CPU over a second, at
# most settle_secs; logs how long it took.
settle() {
  local start=$SECONDS hz before after
  hz=$(getconf CLK_TCK)
  while [ $((SECONDS - start)) -lt "$settle_secs" ]; do
    before=$(members_ticks)
    sleep 1
    after=$(members_ticks)
    # 10 % of one CPU over a second, in ticks.
    if [ $(((after - before) * 10)) -le "$hz" ]; then
      log "quiet after $((SECONDS - start)) s"
      return 0
    fi
  done
  log "still busy after $settle_secs s (load average $(cut -d' ' -f1-3 /proc/loadavg)); running anyway"
}

# Runs one bench-kv command against a system; its JSON line goes to the results, and to the log.
bench() {
  local sys=$1 line
  shift
  line=$("$bin/bench-kv" "$@" --endpoints "$(endpoints "$sys")" --label "$sys" --json "${leader_flag[@]}" </dev/null)
  echo "$line" >>"$out"
  log "$line"
}

# The runs after the fill, one a line: bench-kv arguments.
plan() {
  local mode pair clients conns
  for mode in linearizable serializable; do
    for pair in $pairs; do
      clients=${pair%:*} conns=${pair#*:}
      echo "range $([ $mode = serializable ] && echo --serializable) --key-space $keys --clients $clients" \
        "--conns $conns --total $([ "$clients" = 1 ] && echo "$range_total_single" || echo "$range_total")" \
        "--max-secs $max_secs"
    done
  done
  for pair in $pairs; do
    clients=${pair%:*} conns=${pair#*:}
    echo "put --key-space $keys --clients $clients --conns $conns" \
      "--total $([ "$clients" = 1 ] && echo "$put_total_single" || echo "$put_total") --max-secs $max_secs"
  done
  if [ ${#leader_flag[@]} -eq 0 ]; then
    echo "put --target-leader --key-space $keys --clients 1 --conns 1 --total $put_total_single --max-secs $max_secs"
  fi
}

started=$SECONDS
# Both clusters run side by side and every workload runs on each in turn, in alternating
# order, so that anything else busy on the machine weighs on both alike. The load average in
# the log shows how busy it was.
read -r -a order <<<"$systems"
for sys in "${order[@]}"; do
  log "starting a 3-member $sys cluster at $(endpoints "$sys")"
  "start_$sys"
done
for sys in "${order[@]}"; do wait_ready "$sys"; done
for sys in "${order[@]}"; do
  log "$sys: writing $keys keys (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  bench "$sys" fill --keys "$keys" --clients "${fill_pair%:*}" --conns "${fill_pair#*:}"
  sample_rss "$sys" "after-fill-$keys-keys"
done
n=0
while read -r -a args; do
  if [ $((n % 2)) = 1 ]; then turn=$(printf '%s\n' "${order[@]}" | tac); else turn=${order[*]}; fi
  for sys in $turn; do
    settle
    bench "$sys" "${args[@]}"
  done
  n=$((n + 1))
done < <(plan)
for sys in "${order[@]}"; do sample_rss "$sys" "after-all-runs"; done
log "runs done (load average $(cut -d' ' -f1-3 /proc/loadavg))"
for sys in "${order[@]}"; do
  if [ "$sys" = etcd ]; then group_commit "$sys"; fi
  stop_members "$sys"
  if [ "$sys" = rkube ]; then group_commit "$sys"; fi
done

{
  echo "rkube $rev vs $("$etcd_bin" --version 2>/dev/null | head -1); $(nproc) CPUs; $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  "$bin/bench-kv" report "$out"
} | tee "$results/report.md"
log "done in $((SECONDS - started)) s; results in $out, table in $results/report.md"
