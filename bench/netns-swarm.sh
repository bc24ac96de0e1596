#!/usr/bin/env bash
# The efficiency check on kernel-shaped links: a tracker, one seeder and N leechers (default 12),
# each in a network namespace of its own on one bridge, every uplink shaped by `tc tbf`
# (default 32 Mbit/s), a 16 MiB file in 256 KiB pieces, all leechers started together.
# Prints each leecher's completion time, the last and the median against the Kumar-Ross bound
# T_min = max(F/u_s, N*F/(u_s + N*u)) (downlinks are not shaped), and checks every copy.
#
# Usage (as root; needs iproute2 with tc): bench/netns-swarm.sh [--no-build]
#   env: N=12 RATE_MBIT=32 SIZE_MIB=16 PIECE=262144 RUNS=1
# Traffic stays inside the namespaces and the bridge this script creates and removes.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-12}; RATE_MBIT=${RATE_MBIT:-32}; SIZE_MIB=${SIZE_MIB:-16}; PIECE=${PIECE:-262144}; RUNS=${RUNS:-1}
[ "${1:-}" = --no-build ] || cargo build --release --quiet --bin p2p-node
node="$PWD/target/release/p2p-node"
tag=sw$$; net=10.215.$(( $$ % 200 )); bridge=br$tag
work=$(mktemp -d); chmod 755 "$work"; spaces=(); pids=()
cleanup() {
  trap - EXIT
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  for s in "${spaces[@]}"; do ip netns del "$s" 2>/dev/null || true; done
  ip link del "$bridge" 2>/dev/null || true; rm -rf "$work"
}
trap cleanup EXIT

# host I: namespace $tag-I with address $net.I on the bridge, its egress shaped by tbf.
host() {
  local i=$1 space="$tag-$1"
  ip netns add "$space"; spaces+=("$space")
  ip link add "v$tag$i" type veth peer name eth0 netns "$space"
  ip link set "v$tag$i" master "$bridge" up
  ip netns exec "$space" ip addr add "$net.$i/24" dev eth0
  ip netns exec "$space" ip link set eth0 up
  ip netns exec "$space" ip link set lo up
  ip netns exec "$space" tc qdisc add dev eth0 root tbf rate "${RATE_MBIT}mbit" burst 32kb latency 100ms
}
in_host() { local i=$1; shift; ip netns exec "$tag-$i" "$@"; }
wait_line() { for _ in $(seq 600); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "timeout waiting for '$2' in $1:" >&2; cat "${1%.log}.err" >&2; exit 1; }

ip link add "$bridge" type bridge; ip link set "$bridge" up
for i in $(seq 1 $((N + 2))); do host "$i"; done
head -c $((SIZE_MIB << 20)) /dev/urandom >"$work/payload.bin"
size=$((SIZE_MIB << 20)); up=$((RATE_MBIT * 1000000 / 8))
tmin=$(awk -v f=$size -v u=$up -v n=$N 'BEGIN { a = f / u; b = n * f / (u + n * u); printf "%.3f", (a > b ? a : b) }')

for run in $(seq 1 "$RUNS"); do
  r="$work/run$run"; mkdir -p "$r"
  # Fresh ports per run, so a run never waits for the last one's sockets to go.
  tport=$((7000 + run)); pport=$((7100 + run))
  in_host 1 "$node" tracker --listen "$net.1:$tport" >"$r/tracker.log" 2>"$r/tracker.err" & pids+=($!)
  wait_line "$r/tracker.log" "listening on"
  in_host 2 "$node" peer --tracker "$net.1:$tport" --listen "$net.2:$pport" --store "$r/seed" \
    --share "$work/payload.bin" --piece-size "$PIECE" >"$r/seed.log" 2>"$r/seed.err" & pids+=($!)
  wait_line "$r/seed.log" "^sharing"
  id=$(awk '/^sharing/{print $2; exit}' "$r/seed.log")
  start=$(date +%s.%N); leechers=()
  for i in $(seq 1 "$N"); do
    h=$((i + 2))
    ( in_host "$h" "$node" peer --tracker "$net.1:$tport" --listen "$net.$h:$pport" --store "$r/l$i" \
        --get "$id" --out "$r/o$i" --exit-when-done >"$r/l$i.log" 2>"$r/l$i.err"
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
  awk -v run="$run" -v n="$N" -v ok=$ok -v last="$last" -v med="$median" -v tmin="$tmin" -v rate="$RATE_MBIT" -v mib="$SIZE_MIB" \
    'BEGIN { printf "run %d: 1+%d peers, %d Mbit/s uplinks, %d MiB: %d/%d identical, last %.2f s (%.2fx T_min), median %.2f s (%.2fx), T_min %.2f s\n", run, n, rate, mib, ok, n, last, last / tmin, med, med / tmin, tmin }'
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=()
done
