#!/bin/bash
# usage: .table.sh BIN OUTPREFIX
cd /work/wt/link
FILES="scenarios/efficiency/*.toml scenarios/shaped-links.toml scenarios/capped-uploads.toml scenarios/flash-crowd.toml scenarios/crowd-50.toml scenarios/tracker-gone.toml scenarios/one-of-two-trackers-gone.toml scenarios/liar-mixed.toml scenarios/slot-hog.toml scenarios/impersonator.toml scenarios/no-key.toml"
for s in 1 2 3; do $1 --seed $s --table $FILES > $2.$s.txt 2>&1; done
