# Shared by bench/netns-swarm.sh and bench/capped-swarm.sh (sourced, not run): waiting for a
# node's line, the Kumar-Ross bound, the simulator's prediction, and the summary of one run's
# leechers.

# wait_line FILE PATTERN: waits (at most 60 s) until FILE has a line matching PATTERN; on a
# timeout shows the node's stderr (FILE with .err for .log) and exits.
wait_line() {
  for _ in $(seq 600); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timeout waiting for '$2' in $1:" >&2; cat "${1%.log}.err" >&2; exit 1
}

# kumar_ross F U N [D [US]]: T_min = max(F/u_s, F/d, N*F/(u_s + N*u)) with every leecher's upload
# U, every download D (unshaped downlinks when D is missing or 0) and the seeder's upload US
# (U when missing).
kumar_ross() {
  awk -v f="$1" -v u="$2" -v n="$3" -v d="${4:-0}" -v us="${5:-$2}" 'BEGIN { a = f / us; b = n * f / (us + n * u); c = d > 0 ? f / d : 0
    t = a > b ? a : b; printf "%.3f", (t > c ? t : c) }'
}

# predict SCENARIO DEFAULTS: the simulator's last completion over T_min for SCENARIO (its twin of
# this script's setup) over seeds 1-3, when DEFAULTS is true (the script runs that setup) and
# target/release/p2p-sim exists.
predict() {
  [ "$2" = true ] && [ -x target/release/p2p-sim ] || return 0
  local seed ratios=()
  for seed in 1 2 3; do
    ratios+=("$(target/release/p2p-sim --seed "$seed" "$1" | awk '/T\/T_min: last/ && !seen { print $3; seen = 1 }')")
  done
  echo "simulator's prediction ($1, seeds 1-3): last ${ratios[*]} x T_min"
}

# summarize DIR N START PAYLOAD TMIN LABEL: reads each leecher's DIR/lI.done ("EXIT_CODE END_TIME")
# and copy DIR/oI/payload.bin, and prints the identical copies, the last and the median
# completion against TMIN.
summarize() {
  local dir=$1 n=$2 start=$3 payload=$4 tmin=$5 label=$6 ok=0 times=() code end sorted last median
  for i in $(seq 1 "$n"); do
    read -r code end <"$dir/l$i.done"
    times+=("$(awk -v e="$end" -v s="$start" 'BEGIN { printf "%.3f", e - s }')")
    [ "$code" = 0 ] && cmp -s "$payload" "$dir/o$i/payload.bin" && ok=$((ok + 1))
  done
  sorted=$(printf '%s\n' "${times[@]}" | sort -n)
  last=$(echo "$sorted" | tail -1)
  median=$(echo "$sorted" | awk '{ a[NR] = $1 } END { print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }')
  awk -v label="$label" -v n="$n" -v ok=$ok -v last="$last" -v med="$median" -v tmin="$tmin" \
    'BEGIN { printf "%s: %d/%d identical, last %.2f s (%.2fx T_min), median %.2f s (%.2fx), T_min %.2f s\n", label, ok, n, last, last / tmin, med, med / tmin, tmin }'
}
