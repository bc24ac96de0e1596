#!/usr/bin/env bash
# The efficiency check with the application's own upload cap: a tracker, one seeder and N
# leechers (default 24) on 127.0.0.1, every peer's upload capped with --upload-limit (default
# 4 MiB/s), a 32 MiB file in 256 KiB pieces, all leechers started together. Prints the last and
# the median completion against the Kumar-Ross bound T_min = max(F/u_s, N*F/(u_s + N*u)) and
# checks every copy.
#
# Usage: bench/capped-swarm.sh [--no-build]
#   env: N=24 UP=4194304 SIZE_MIB=32 PIECE=262144 RUNS=1
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-24}; UP=${UP:-4194304}; SIZE_MIB=${SIZE_MIB:-32}; PIECE=${PIECE:-262144}; RUNS=${RUNS:-1}
[ "${1:-}" = --no-build ] || cargo build --release --quiet --bin p2p-node
node="$PWD/target/release/p2p-node"
work=$(mktemp -d); pids=()
cleanup() {
  trap - EXIT
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
wait_line() { for _ in $(seq 600); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "timeout waiting for '$2' in $1" >&2; exit 1; }

head -c $((SIZE_MIB << 20)) /dev/urandom >"$work/payload.bin"
size=$((SIZE_MIB << 20))
tmin=$(awk -v f=$size -v u="$UP" -v n="$N" 'BEGIN { a = f / u; b = n * f / (u + n * u); printf "%.3f", (a > b ? a : b) }')

for run in $(seq 1 "$RUNS"); do
  r="$work/run$run"; mkdir -p "$r"
  "$node" tracker --listen 127.0.0.1:0 >"$r/tracker.log" 2>"$r/tracker.err" & pids+=($!)
  wait_line "$r/tracker.log" "listening on"
  tracker=$(awk '/listening on/{print $3; exit}' "$r/tracker.log")
  "$node" peer --tracker "$tracker" --store "$r/seed" --share "$work/payload.bin" --piece-size "$PIECE" \
    --upload-limit "$UP" >"$r/seed.log" 2>"$r/seed.err" & pids+=($!)
  wait_line "$r/seed.log" "^sharing"
  id=$(awk '/^sharing/{print $2; exit}' "$r/seed.log")
  start=$(date +%s.%N); leechers=()
  for i in $(seq 1 "$N"); do
    ( "$node" peer --tracker "$tracker" --store "$r/l$i" --get "$id" --out "$r/o$i" --exit-when-done \
        --upload-limit "$UP" >"$r/l$i.log" 2>"$r/l$i.err"
      echo "$? $(date +%s.%N)" >"$r/l$i.done" ) & leechers+=($!); pids+=($!)
  done
  for p in "${leechers[@]}"; do wait "$p" || true; done
  ok=0; times=()
  for i in $(seq 1 "$N"); do
    read -r code end <"$r/l$i.done"
    times+=("$(awk -v e="$end" -v s="$start" 'BEGIN { printf "%.3f", e - s }')")
    [ "$code" = 0 ] && cmp -s "$work/payload.bin" "$r/o$i/payload.bin" && ok=$((ok + 1))
  done
  sorted=$(printf '%s\n' "${times[@]}" | sort -n)
  last=$(echo "$sorted" | tail -1); median=$(echo "$sorted" | awk '{ a[NR] = $1 } END { print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }')
  awk -v run="$run" -v n="$N" -v ok=$ok -v last="$last" -v med="$median" -v tmin="$tmin" -v up="$UP" -v mib="$SIZE_MIB" \
    'BEGIN { printf "run %d: 1+%d peers, uploads capped at %.2f MiB/s, %d MiB: %d/%d identical, last %.2f s (%.2fx T_min), median %.2f s (%.2fx), T_min %.2f s\n", run, n, up / 1048576, mib, ok, n, last, last / tmin, med, med / tmin, tmin }'
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=()
done
