# Shared by bench/netns-swarm.sh and bench/capped-swarm.sh (sourced, not run): waiting for a
# node's line, the Kumar-Ross bound, the simulator's prediction, the summary of one run's
# leechers, and how busy the host's CPUs were meanwhile.

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

# cpu_mark: "BUSY TOTAL", the host's CPU time so far (user to steal, in clock ticks) and the part
# of it not idle, for cpu_busy.
cpu_mark() { awk '/^cpu / { t = 0; for (i = 2; i <= 9; i++) t += $i; print t - $5 - $6, t; exit }' /proc/stat; }

# cpu_busy BUSY TOTAL: prints how busy the host's CPUs were since that cpu_mark. Every node of a
# run shares this host: when it has no time to spare, the processes set the pace, not the
# links, and the run says nothing about the protocol or the simulator's twin.
cpu_busy() {
  local busy total
  read -r busy total < <(cpu_mark)
  awk -v b="$((busy - $1))" -v t="$((total - $2))" 'BEGIN { p = t > 0 ? 100 * b / t : 0
    note = (p > 80) ? " (over 80 %: the processes, not the links, may have set the pace)" : ""
    printf "  host: the CPUs %.0f %% busy while the leechers ran%s\n", p, note }'
}
