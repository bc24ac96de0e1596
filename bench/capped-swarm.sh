#!/usr/bin/env bash
# The efficiency check with the application's own upload cap: a tracker, one seeder and N
# leechers (default 24) on 127.0.0.1, every peer's upload capped with --upload-limit (default
# 4 MiB/s), a 32 MiB file in 256 KiB pieces, all leechers started together. Prints the last and
# the median completion against the Kumar-Ross bound T_min = max(F/u_s, N*F/(u_s + N*u)),
# checks every copy and says how busy the host's CPUs were meanwhile; with the defaults it
# first prints the simulator's prediction for the same setup (scenarios/capped-uploads.toml,
# seeds 1-3), which should agree within 10 %.
#
# Usage: bench/capped-swarm.sh [--no-build]
#   env: N=24 UP=4194304 SIZE_MIB=32 PIECE=262144 RUNS=1
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-24}; UP=${UP:-4194304}; SIZE_MIB=${SIZE_MIB:-32}; PIECE=${PIECE:-262144}; RUNS=${RUNS:-1}
[ "${1:-}" = --no-build ] || cargo build --release --quiet --bin p2p-node --bin p2p-sim
node="$PWD/target/release/p2p-node"
. bench/swarm-common.sh
work=$(mktemp -d); pids=()
cleanup() {
  trap - EXIT
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  rm -rf "$work"
}
# A signal ends the script through its exit, so the cleanup runs then too.
trap cleanup EXIT; trap 'exit 130' INT; trap 'exit 143' TERM

head -c $((SIZE_MIB << 20)) /dev/urandom >"$work/payload.bin"
size=$((SIZE_MIB << 20))
tmin=$(kumar_ross "$size" "$UP" "$N")
defaults=$([ "$N/$UP/$SIZE_MIB/$PIECE" = 24/4194304/32/262144 ] && echo true || echo false)
predict scenarios/capped-uploads.toml "$defaults"

for run in $(seq 1 "$RUNS"); do
  r="$work/run$run"; mkdir -p "$r"
  "$node" tracker --listen 127.0.0.1:0 --key "$r/tracker.key" >"$r/tracker.log" 2>"$r/tracker.err" & pids+=($!)
  wait_line "$r/tracker.log" "listening on"
  tracker=$(awk '/listening on/{print $3; exit}' "$r/tracker.log")
  "$node" peer --tracker "$tracker" --store "$r/seed" --share "$work/payload.bin" --piece-size "$PIECE" \
    --upload-limit "$UP" >"$r/seed.log" 2>"$r/seed.err" & pids+=($!)
  wait_line "$r/seed.log" "^sharing"
  id=$(awk '/^sharing/{print $2; exit}' "$r/seed.log")
  read -r cpu_b cpu_t < <(cpu_mark)
  start=$(date +%s.%N); leechers=()
  for i in $(seq 1 "$N"); do
    ( "$node" peer --tracker "$tracker" --store "$r/l$i" --get "$id" --out "$r/o$i" --exit-when-done \
        --upload-limit "$UP" >"$r/l$i.log" 2>"$r/l$i.err"
      echo "$? $(date +%s.%N)" >"$r/l$i.done" ) & leechers+=($!); pids+=($!)
  done
  for p in "${leechers[@]}"; do wait "$p" || true; done
  host_busy=$(cpu_busy "$cpu_b" "$cpu_t")
  summarize "$r" "$N" "$start" "$work/payload.bin" "$tmin" "run $run: 1+$N peers, uploads capped at $UP B/s, $SIZE_MIB MiB"
  echo "$host_busy"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=()
done
