#!/usr/bin/env bash
# Runs the issue-#6 baseline table: MTD and BSData x {fewshot-real, cutpaste, cutpaste-scar, draem}
# x 3 seeds, cpu protocol. Two queues (one per dataset) run side by side, one thread each
# (the small network runs faster single-threaded; see BENCHMARKS.md). Finished seeds are reused,
# so the script can be re-run after an interruption.
#   tools/eval/run_localisation_baselines.sh [BIN] [OUT]
set -euo pipefail
BIN=${1:-target/release/anodiff}
OUT=${2:-out/bench-localisation}
DATA=${ANODIFF_SHARED_DATA:-../shared/data}
SOURCES="fewshot-real cutpaste cutpaste-scar draem"
mkdir -p "$OUT"
queue() {
  local ds=$1
  for src in $SOURCES; do
    RAYON_NUM_THREADS=1 CANDLE_NUM_THREADS=1 "$BIN" bench localisation \
      --dataset "$DATA/$ds" --source "$src" --seeds 3 --protocol cpu --out "$OUT" \
      > "$OUT/$ds-$src.md" 2> "$OUT/$ds-$src.log"
  done
}
queue mtd & a=$!
queue bsdata & b=$!
wait $a; wait $b
cat "$OUT"/*.md
