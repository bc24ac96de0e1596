#!/usr/bin/env bash
# Measures the backbone's acceptance figures with real p2p-node processes on 127.0.0.1:
#   1. the seed's example: D fetches a 3-piece file from A, B, C (one piece each);
#   2. resume: a 64 MiB download from one seeder capped at 8 MiB/s, SIGKILLed half-way and
#      restarted, against the same download uninterrupted;
#   3. upload caps add up: 48 MiB from one seeder capped at 8 MiB/s, then from three.
# Usage: bench/backbone.sh   (builds the release binary first; takes about 30 s)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin p2p-node
node="$PWD/target/release/p2p-node"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"; }
# A signal ends the script through its exit, so the cleanup runs then too.
trap cleanup EXIT; trap 'exit 130' INT; trap 'exit 143' TERM

now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.2f\", $1 }"; }
# wait_line FILE PATTERN: waits (at most 60 s) until FILE has a line matching PATTERN.
wait_line() { for _ in $(seq 600); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "timeout waiting for '$2' in $1" >&2; exit 1; }
# start NAME ARGS...: runs p2p-node in the background, stdout to $work/NAME.log.
start() { local name=$1; shift; "$node" "$@" >"$work/$name.log" 2>"$work/$name.err" & pids+=($!); wait_line "$work/$name.log" "listening on"; }
tracker() { start "$1" tracker --listen 127.0.0.1:0 --key "$work/$1.key"; awk '/listening on/{print $3; exit}' "$work/$1.log"; }
file_id() { awk '/^sharing/{print $2; exit}' "$work/$1.log"; }

echo "== 1. seed example: A, B, C hold one piece each of a 3-piece file; D gets all three"
t=$(tracker t1); head -c $((3 * 262144)) /dev/urandom >"$work/seed.bin"
for i in 0 1 2; do
  start "p$i" peer --tracker "$t" --store "$work/s$i" --share "$work/seed.bin" --piece-size 262144 --only-pieces $i
  wait_line "$work/p$i.log" "^sharing"
done
id=$(file_id p0); begin=$(now)
"$node" peer --tracker "$t" --store "$work/d" --get "$id" --exit-when-done >"$work/d.log"
echo "D complete in $(calc "$(now) - $begin") s (process start to exit)"
cmp "$work/seed.bin" "$work/d/seed.bin" && echo "D's copy is identical"

echo "== 2. resume: 64 MiB, one seeder capped at 8 MiB/s"
t=$(tracker t2); head -c $((64 << 20)) /dev/urandom >"$work/big.bin"
start seed peer --tracker "$t" --store "$work/ss" --share "$work/big.bin" --upload-limit 8388608
wait_line "$work/seed.log" "^sharing"; id=$(file_id seed)
begin=$(now)
"$node" peer --tracker "$t" --store "$work/full" --get "$id" --exit-when-done >"$work/full.log"
full=$(calc "$(now) - $begin"); echo "uninterrupted: $full s"
begin=$(now)
"$node" peer --tracker "$t" --store "$work/half" --get "$id" --exit-when-done >"$work/half1.log" & victim=$!; pids+=($victim)
sleep "$(calc "$full / 2")"; kill -9 "$victim"; wait "$victim" 2>/dev/null || true
first=$(calc "$(now) - $begin"); begin=$(now)
"$node" peer --tracker "$t" --store "$work/half" --get "$id" --exit-when-done >"$work/half2.log"
second=$(calc "$(now) - $begin")
echo "killed after $first s; restart: $(grep '^resumed' "$work/half2.log" | cut -d' ' -f3) pieces resumed, finished in $second s"
echo "restart fetched $(awk '/^downloaded/{print $3}' "$work/half2.log") of $((64 << 20)) bytes"
cmp "$work/big.bin" "$work/half/big.bin" && echo "resumed copy is identical"

echo "== 3. upload caps add up: 48 MiB, seeders capped at 8 MiB/s each"
head -c $((48 << 20)) /dev/urandom >"$work/caps.bin"
for n in 1 3; do
  t=$(tracker "tc$n")
  for i in $(seq "$n"); do
    start "c$n-$i" peer --tracker "$t" --store "$work/c$n-$i" --share "$work/caps.bin" --upload-limit 8388608
    wait_line "$work/c$n-$i.log" "^sharing"
  done
  id=$(file_id "c$n-1"); begin=$(now)
  "$node" peer --tracker "$t" --store "$work/cd$n" --get "$id" --exit-when-done >"$work/cd$n.log"
  echo "$n seeder(s): $(calc "$(now) - $begin") s"
  cmp "$work/caps.bin" "$work/cd$n/caps.bin"
done
