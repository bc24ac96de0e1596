#!/usr/bin/env bash
# The efficiency check on kernel-shaped links: a tracker, one seeder and N leechers (default 12),
# each in a network namespace of its own on one bridge, every uplink shaped by `tc tbf`
# (default 32 Mbit/s), a 16 MiB file in 256 KiB pieces, all leechers started together.
# With DOWN_MBIT set, every downlink is shaped too: a tbf on the bridge's side of each host's
# veth, which every frame towards that host passes, whoever sent it. With SEED_MBIT set, the
# seeder's uplink is shaped to that rate instead (a fast seeder).
# Prints the last and the median completion against the Kumar-Ross bound T_min = max(F/u_s, F/d,
# N*F/(u_s + N*u)) (F/d only with shaped downlinks), checks every copy, and says what the
# shapers saw: the seeder's bytes on the wire over F (headers and retransmissions included) and
# the packets every shaper dropped, and how busy the host's CPUs were (every host shares them: a
# busy machine, not the links, may set the pace). With the defaults it first prints the
# simulator's prediction for the same setup (scenarios/shaped-links.toml, seeds 1-3; with
# DOWN_MBIT=32, scenarios/shaped-links-symmetric.toml; with SEED_MBIT=160 DOWN_MBIT=32 too,
# scenarios/shaped-links-fast-seeder.toml, and with RATE_MBIT=16 besides,
# scenarios/shaped-links-fast-seeder-16mbit.toml; with N=20 RATE_MBIT=8 DOWN_MBIT=32 SIZE_MIB=4,
# scenarios/shaped-links-8mbit.toml, and with DOWN_MBIT=8 SEED_MBIT=80 instead,
# scenarios/shaped-links-fast-seeder-8mbit.toml; with N=20 RATE_MBIT=2 DOWN_MBIT=8 SIZE_MIB=1,
# scenarios/shaped-links-2mbit-small-file.toml), which should agree within 20 %.
#
# TCP in the namespaces uses CC (default cubic, the Linux default) through each namespace's
# route, whatever the host's default is: a host set to BBR v1 loses 5-8 % of the seeder's
# packets at its shaper while a dozen flows probe at once (BENCHMARKS.md, "Real processes
# against the simulator"); `CC=bbr` measures that.
#
# With QUEUES=1 it also samples the backlog of the seeder's and three leechers' shapers every
# 100 ms while the leechers run and prints its mean: the standing queue a loss-based TCP keeps
# in front of a shaped uplink, which the simulator's twin models (`queue_ms`). Sampling forks a
# `tc` per host and sample, so it is off by default.
#
# With KEEP_DIR=dir the runs' files (each node's stdout and stderr, the downloads) are copied
# there at the end, for a look afterwards: with RUST_LOG=p2p_net=debug each leecher's stderr
# names the source of every chunk it verified (`ChunkVerified { .., from: .. }`).
#
# Usage (as root; needs iproute2 with tc): bench/netns-swarm.sh [--no-build]
#   env: N=12 RATE_MBIT=32 DOWN_MBIT= SEED_MBIT= SIZE_MIB=16 PIECE=262144 RUNS=1 CC=cubic QUEUES=0
#        KEEP_DIR=
# Traffic stays inside the namespaces and the bridge this script creates and removes.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-12}; RATE_MBIT=${RATE_MBIT:-32}; SIZE_MIB=${SIZE_MIB:-16}; PIECE=${PIECE:-262144}; RUNS=${RUNS:-1}
CC=${CC:-cubic}; QUEUES=${QUEUES:-0}; DOWN_MBIT=${DOWN_MBIT:-}; SEED_MBIT=${SEED_MBIT:-}
KEEP_DIR=${KEEP_DIR:-}
[ "${1:-}" = --no-build ] || cargo build --release --quiet --bin p2p-node --bin p2p-sim
node="$PWD/target/release/p2p-node"
. bench/swarm-common.sh
tag=sw$$; net=10.215.$(( $$ % 200 )); bridge=br$tag
work=$(mktemp -d); chmod 755 "$work"; spaces=(); pids=()
cleanup() {
  trap - EXIT
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; stop_hosts; wait 2>/dev/null || true
  for s in "${spaces[@]}"; do ip netns del "$s" 2>/dev/null || true; done
  ip link del "$bridge" 2>/dev/null || true
  if [ -n "$KEEP_DIR" ]; then mkdir -p "$KEEP_DIR" && cp -r "$work"/. "$KEEP_DIR"/ || true; fi
  rm -rf "$work"
}
# A signal ends the script through its exit, so the cleanup runs then too.
trap cleanup EXIT; trap 'exit 130' INT; trap 'exit 143' TERM

# host I: namespace $tag-I with address $net.I on the bridge, its egress shaped by tbf (and
# with DOWN_MBIT its ingress, by a tbf on the bridge's port).
host() {
  local i=$1 space="$tag-$1" rate=$RATE_MBIT
  [ "$1" != 2 ] || rate=${SEED_MBIT:-$RATE_MBIT}
  ip netns add "$space"; spaces+=("$space")
  ip link add "v$tag$i" type veth peer name eth0 netns "$space"
  ip link set "v$tag$i" master "$bridge" up
  ip netns exec "$space" ip addr add "$net.$i/24" dev eth0
  ip netns exec "$space" ip link set eth0 up
  ip netns exec "$space" ip link set lo up
  ip netns exec "$space" ip route replace "$net.0/24" dev eth0 proto kernel scope link src "$net.$i" congctl "$CC"
  ip netns exec "$space" tc qdisc add dev eth0 root tbf rate "${rate}mbit" burst 32kb latency 100ms
  [ -z "$DOWN_MBIT" ] || tc qdisc add dev "v$tag$i" root tbf rate "${DOWN_MBIT}mbit" burst 32kb latency 100ms
}
# shaped I: "BYTES DROPPED", what host I's shaper has sent and dropped since it was made.
shaped() { ip netns exec "$tag-$1" tc -s qdisc show dev eth0 | awk '/ Sent /{ print $2, $7 + 0; exit }'; }
# shapers_dropped: packets dropped by every host's shaper since they were made.
shapers_dropped() { local i d=0; for i in $(seq 1 $((N + 2))); do d=$((d + $(shaped "$i" | cut -d' ' -f2))); done; echo $d; }
# backlog: bytes waiting in the root qdisc that `tc -s qdisc show` prints on stdin.
backlog() { awk '/backlog/ { b = $2; sub(/b$/, "", b); if (b ~ /K$/) { sub(/K$/, "", b); b *= 1024 } if (b ~ /M$/) { sub(/M$/, "", b); b *= 1048576 } print b + 0; exit }'; }
# sample_queues: every 100 ms (at most 600 times, until killed) a line "HOST BYTES" per sampled
# host (the seeder, 2, and the first three leechers) with its uplink shaper's backlog and, with
# DOWN_MBIT, a line "dHOST BYTES" per sampled leecher with its downlink shaper's.
sample_queues() {
  local k i
  for k in $(seq 600); do
    for i in 2 3 4 5; do
      echo "$i $(ip netns exec "$tag-$i" tc -s qdisc show dev eth0 | backlog)"
      [ -z "$DOWN_MBIT" ] || [ "$i" = 2 ] || echo "d$i $(tc -s qdisc show dev "v$tag$i" | backlog)"
    done
    sleep 0.1
  done
}
# in_host I CMD...: runs CMD in host I's namespace (exec, so a background `in_host` is CMD's PID).
in_host() { local i=$1; shift; exec ip netns exec "$tag-$i" "$@"; }
# stop_hosts: stops every process still running in the namespaces (by PID, from `ip netns pids`).
stop_hosts() {
  local s p
  for s in "${spaces[@]}"; do for p in $(ip netns pids "$s" 2>/dev/null); do kill "$p" 2>/dev/null || true; done; done
  sleep 0.3
  for s in "${spaces[@]}"; do for p in $(ip netns pids "$s" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done; done
}

ip link add "$bridge" type bridge; ip link set "$bridge" up
for i in $(seq 1 $((N + 2))); do host "$i"; done
# Every host knows every other's MAC address from the start. Left to ARP, a host's requests and
# replies queue behind data in the shapers' 100 ms tail-drop queues; with 50 leechers some are
# lost, the kernel gives the neighbour up (`No route to host`), and connections to it time out
# for seconds (the last leecher finished at 7.6 and 9.3 x T_min in two runs of three). Peers on
# the internet resolve only their router, on a link no shaper of theirs queues.
neigh="$work/neigh"
for i in $(seq 1 $((N + 2))); do
  echo "neigh replace $net.$i lladdr $(ip netns exec "$tag-$i" cat /sys/class/net/eth0/address) dev eth0 nud permanent"
done >"$neigh"
for i in $(seq 1 $((N + 2))); do ip -n "$tag-$i" -batch "$neigh"; done
head -c $((SIZE_MIB << 20)) /dev/urandom >"$work/payload.bin"
size=$((SIZE_MIB << 20)); up=$((RATE_MBIT * 1000000 / 8)); seed_up=$((${SEED_MBIT:-$RATE_MBIT} * 1000000 / 8))
tmin=$(kumar_ross "$size" "$up" "$N" "$((${DOWN_MBIT:-0} * 1000000 / 8))" "$seed_up")
case "$N/$RATE_MBIT/${DOWN_MBIT:-none}/${SEED_MBIT:-same}/$SIZE_MIB/$PIECE" in
  12/32/none/same/16/262144) predict scenarios/shaped-links.toml true ;;
  12/32/32/same/16/262144) predict scenarios/shaped-links-symmetric.toml true ;;
  12/32/32/160/16/262144) predict scenarios/shaped-links-fast-seeder.toml true ;;
  12/16/32/160/16/262144) predict scenarios/shaped-links-fast-seeder-16mbit.toml true ;;
  20/8/32/same/4/262144) predict scenarios/shaped-links-8mbit.toml true ;;
  20/8/8/80/4/262144) predict scenarios/shaped-links-fast-seeder-8mbit.toml true ;;
  20/2/8/same/1/262144) predict scenarios/shaped-links-2mbit-small-file.toml true ;;
esac

for run in $(seq 1 "$RUNS"); do
  r="$work/run$run"; mkdir -p "$r"
  # Fresh ports per run, so a run never waits for the last one's sockets to go.
  tport=$((7000 + run)); pport=$((7100 + run))
  in_host 1 "$node" tracker --listen "$net.1:$tport" --key "$r/tracker.key" >"$r/tracker.log" 2>"$r/tracker.err" & pids+=($!)
  wait_line "$r/tracker.log" "listening on"
  in_host 2 "$node" peer --tracker "$net.1:$tport" --listen "$net.2:$pport" --store "$r/seed" \
    --share "$work/payload.bin" --piece-size "$PIECE" >"$r/seed.log" 2>"$r/seed.err" & pids+=($!)
  wait_line "$r/seed.log" "^sharing"
  id=$(awk '/^sharing/{print $2; exit}' "$r/seed.log")
  read -r seed_sent seed_dropped < <(shaped 2); dropped=$(shapers_dropped)
  read -r cpu_b cpu_t < <(cpu_mark)
  start=$(date +%s.%N); leechers=()
  for i in $(seq 1 "$N"); do
    h=$((i + 2))
    ( ip netns exec "$tag-$h" "$node" peer --tracker "$net.1:$tport" --listen "$net.$h:$pport" --store "$r/l$i" \
        --get "$id" --out "$r/o$i" --exit-when-done >"$r/l$i.log" 2>"$r/l$i.err"
      echo "$? $(date +%s.%N)" >"$r/l$i.done" ) & leechers+=($!); pids+=($!)
  done
  [ "$QUEUES" = 1 ] && { sample_queues >"$r/queues" & pids+=($!); sampler=$!; }
  for p in "${leechers[@]}"; do wait "$p" || true; done
  host_busy=$(cpu_busy "$cpu_b" "$cpu_t")
  [ "$QUEUES" = 1 ] && { kill "$sampler" 2>/dev/null || true; }
  summarize "$r" "$N" "$start" "$work/payload.bin" "$tmin" "run $run: 1+$N peers, $RATE_MBIT Mbit/s uplinks${SEED_MBIT:+, the seeder $SEED_MBIT Mbit/s,}${DOWN_MBIT:+ and $DOWN_MBIT Mbit/s downlinks} ($CC), $SIZE_MIB MiB"
  echo "$host_busy"
  read -r sent_now dropped_now < <(shaped 2)
  awk -v b=$((sent_now - seed_sent)) -v f="$size" -v sd=$((dropped_now - seed_dropped)) -v d=$(($(shapers_dropped) - dropped)) \
    'BEGIN { printf "  shapers: the seeder sent %.2f F on the wire and dropped %d packets; every uplink together dropped %d\n", b / f, sd, d }'
  [ "$QUEUES" = 1 ] && awk -v rate=$up -v seed_rate=$seed_up -v down=$((${DOWN_MBIT:-0} * 125000)) '{
      n[$1]++; t[$1] += $2 / ($1 == 2 ? seed_rate : $1 ~ /^d/ ? down : rate) } END {
      printf "  shaper queues, mean while the leechers ran:"
      for (h = 2; h <= 5; h++) { printf " host %d %.1f ms,", h, t[h] / n[h] * 1000; all += t[h]; k += n[h] }
      printf " all %.1f ms\n", all / k * 1000
      if (n["d3"]) { printf "  downlink shaper queues:"; for (h = 3; h <= 5; h++) printf " host %d %.1f ms,", h, t["d" h] / n["d" h] * 1000; printf "\n" } }' "$r/queues"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; stop_hosts; wait 2>/dev/null || true; pids=()
done
