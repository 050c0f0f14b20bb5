#!/usr/bin/env bash
# bench/loop_overhead.sh OLD_BIN NEW_BIN [ROUNDS] [SHARDS]: the step time of
# two mlmpi-train builds on the same job, alternated ROUNDS times (one rank,
# every core, BERT-mini, 40 LAMB steps of 32 x 128 tokens), as the median
# step_s of steps 6..40 from metrics.jsonl; prints each build's median of
# medians and the ratio new/old. For refactorings that must not slow the
# loop. SHARDS: a shard directory (default: the one bench/same_bits.sh makes).
set -euo pipefail
old=${1:?usage: loop_overhead.sh OLD_BIN_DIR NEW_BIN_DIR [ROUNDS] [SHARDS]}
new=${2:?usage: loop_overhead.sh OLD_BIN_DIR NEW_BIN_DIR [ROUNDS] [SHARDS]}
rounds=${3:-3}
shards=${4:-/tmp/mlmpi_same_bits/shards}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "OpenBLAS core: $(OPENBLAS_VERBOSE=2 "$new/mlmpi-train" demo --steps 1 --batch 2 --seq-len 8 2>&1 | grep -o 'Core: [A-Za-z]*' | head -1)"
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
for r in $(seq "$rounds"); do
  for side in old new; do
    bin=$old; [ "$side" = new ] && bin=$new
    "$bin/mlmpi-train" --set model.preset=bert-mini --set data.path="$shards" --set data.seq_len=128 \
      --set train.global_batch=32 --set train.steps=40 --set train.seed=3 \
      --set log.dir="$work/$side$r" > "$work/$side$r.out" 2>&1
    grep '"step"' "$work/$side$r/metrics.jsonl" | sed -n '6,40p' |
      sed -E 's/.*"step_s":([0-9.e+-]*).*/\1/' | median >> "$work/$side.med"
  done
done
o=$(median < "$work/old.med") n=$(median < "$work/new.med")
echo "old: median step $o s   new: median step $n s   new/old: $(awk -v a="$n" -v b="$o" 'BEGIN {printf "%.3f", a / b}')"
