#!/usr/bin/env bash
# Rolling restart of the compose cluster's masters under write load: checks that no
# acknowledged write is lost and that the API stays available.
#
# With the cluster up (make cluster), a background loop puts unique keys
# (rolling-restart/<run>/<n> = v<n>) through the published API ports on 127.0.0.1, one etcdctl
# call each with all three endpoints, as a client would. Meanwhile m1, m2 and m3 are restarted
# one at a time (`compose restart`), each waited for until healthy again. Then it reads the
# prefix back and reports: puts acknowledged, errors (with their messages), failed puts that
# landed anyway (allowed: a timeout does not mean the write was dropped), acknowledged puts
# lost (must be 0), whether every member holds the same keys, and the longest time without an
# acknowledged put (must stay under RR_MAX_GAP_MS, default 10000).
# Env: RKUBE_M1_PORT/RKUBE_M2_PORT/RKUBE_M3_PORT (as in docker-compose.yml), RR_SETTLE (seconds
# of load between restarts, default 3), RR_DOWN (seconds each member stays stopped, default 0:
# `compose restart`; above the election timeout a restarted leader is replaced by an election),
# RR_MAX_PUTS (bound on the loop, default 20000).
set -euo pipefail
# shellcheck source=docker/compose.sh
. "$(dirname "$0")/compose.sh"
export ETCDCTL_API=3

declare -A port=([m1]="${RKUBE_M1_PORT:-6443}" [m2]="${RKUBE_M2_PORT:-6444}" [m3]="${RKUBE_M3_PORT:-6445}")
endpoints="127.0.0.1:${port[m1]},127.0.0.1:${port[m2]},127.0.0.1:${port[m3]}"
settle="${RR_SETTLE:-3}"
down="${RR_DOWN:-0}"
max_puts="${RR_MAX_PUTS:-20000}"
max_gap_ms="${RR_MAX_GAP_MS:-10000}"
prefix="rolling-restart/$(date +%s)-$$"

work="$(mktemp -d "${TMPDIR:-/tmp}/rkube-rolling.XXXXXX")"
loop_pid=""
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  if [ -n "$loop_pid" ]; then
    kill "$loop_pid" 2>/dev/null || true
    wait "$loop_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

now_ms() { echo $(( ${EPOCHREALTIME/./} / 1000 )); }

# One line per put: "<ms> ok <n>" or "<ms> err <n> <message>". Stops on $work/stop, after
# max_puts, or after ten minutes, so it ends even if this script is killed.
put_loop() {
  local n=0 out deadline=$((SECONDS + 600))
  while [ ! -e "$work/stop" ] && [ "$n" -lt "$max_puts" ] && [ $SECONDS -lt "$deadline" ]; do
    n=$((n + 1))
    if out="$(etcdctl --endpoints="$endpoints" --dial-timeout=2s --command-timeout=3s \
      put "$prefix/$(printf '%06d' "$n")" "v$n" 2>&1)"; then
      echo "$(now_ms) ok $n" >>"$work/log"
    else
      out="$(grep '^Error:' <<<"$out" | tail -n 1 || true)"
      echo "$(now_ms) err $n ${out:-unknown error}" >>"$work/log"
    fi
  done
}

leader() {
  etcdctl --endpoints="$endpoints" --command-timeout=3s endpoint status 2>/dev/null \
    | awk -F', ' '$5 == "true" { print $1 }' | head -n 1
}

wait_healthy() {
  local m="$1" deadline=$((SECONDS + 90))
  until [ "$(health "$m")" = healthy ] \
    && etcdctl --endpoints="127.0.0.1:${port[$m]}" --command-timeout=2s endpoint health >/dev/null 2>&1; do
    if [ $SECONDS -ge "$deadline" ]; then
      echo "rolling-restart: $m not healthy after 90s" >&2
      compose logs --tail=30 "$m" >&2 || true
      return 1
    fi
    sleep 0.5
  done
}

for m in m1 m2 m3; do wait_healthy "$m"; done
echo "rolling-restart: load on $endpoints under $prefix/"
start_ms="$(now_ms)"
put_loop &
loop_pid=$!
sleep "$settle"
for m in m1 m2 m3; do
  t0="$(now_ms)"
  echo "rolling-restart: restarting $m (leader before: $(leader || true))"
  if [ "$down" = 0 ]; then
    compose restart "$m" >/dev/null 2>&1
  else
    compose stop "$m" >/dev/null 2>&1
    sleep "$down"
    compose start "$m" >/dev/null 2>&1
  fi
  wait_healthy "$m"
  echo "rolling-restart: $m healthy again after $(( $(now_ms) - t0 )) ms (leader now: $(leader || true))"
  sleep "$settle"
done
touch "$work/stop"
wait "$loop_pid" || true
loop_pid=""
end_ms="$(now_ms)"

# Read back through a linearizable read, then each member's own (serializable) view; members may
# trail the leader briefly, so their views are compared for a few seconds.
etcdctl --endpoints="$endpoints" --command-timeout=10s get --prefix "$prefix/" >"$work/read"
awk 'NR % 2 == 1 { print }' "$work/read" | sort >"$work/keys"
agree=no
for _ in $(seq 1 20); do
  same=yes
  for m in m1 m2 m3; do
    etcdctl --endpoints="127.0.0.1:${port[$m]}" --command-timeout=5s get --prefix "$prefix/" \
      --keys-only --consistency=s 2>/dev/null | grep -v '^$' | sort >"$work/keys.$m" || true
    cmp -s "$work/keys" "$work/keys.$m" || same=no
  done
  if [ "$same" = yes ]; then agree=yes; break; fi
  sleep 0.5
done

# lost: acknowledged and not read back with its value; landed: failed but present.
read -r acked errors lost landed < <(awk -v prefix="$prefix/" '
  FNR == NR { if (NR % 2 == 1) key = $0; else value[key] = $0; next }
  $2 == "ok" { acked++; k = sprintf("%s%06d", prefix, $3); if (value[k] != "v" $3) { lost++; print "LOST " k > "/dev/stderr" } }
  $2 == "err" { errors++; if (sprintf("%s%06d", prefix, $3) in value) landed++ }
  END { print acked + 0, errors + 0, lost + 0, landed + 0 }' "$work/read" "$work/log")
gap="$(awk -v start="$start_ms" -v end="$end_ms" '
  $2 == "ok" { if ($1 - last > max) { max = $1 - last; at = last } last = $1 }
  BEGIN { last = start } END { if (end - last > max) max = end - last; print max + 0 }' "$work/log")"

echo "rolling-restart: $(( (end_ms - start_ms) / 1000 ))s, puts acknowledged $acked, errors $errors" \
  "(of which landed anyway $landed), acknowledged lost $lost, keys read back $(wc -l <"$work/keys")," \
  "members agree: $agree, longest gap between acknowledged puts ${gap} ms"
if [ "$errors" -gt 0 ]; then
  echo "rolling-restart: errors seen:"
  awk '$2 == "err" { $1 = $2 = $3 = ""; sub(/^ +/, ""); print }' "$work/log" | sort | uniq -c
fi
etcdctl --endpoints="$endpoints" del --prefix "$prefix/" >/dev/null || true

fail=0
[ "$acked" -gt 0 ] || { echo "rolling-restart: FAIL: no put was acknowledged" >&2; fail=1; }
[ "$lost" -eq 0 ] || { echo "rolling-restart: FAIL: $lost acknowledged puts lost" >&2; fail=1; }
[ "$agree" = yes ] || { echo "rolling-restart: FAIL: members hold different keys" >&2; fail=1; }
[ "$gap" -le "$max_gap_ms" ] || { echo "rolling-restart: FAIL: API unavailable for $gap ms" >&2; fail=1; }
[ "$fail" -eq 0 ] && echo "rolling-restart: PASS"
exit "$fail"
