#!/usr/bin/env bash
# bench/same_bits.sh OLD_BIN NEW_BIN [WORKDIR]: trains a 2-rank BERT-mini and
# a 2-rank ELECTRA-small job of 30 LAMB steps on shards of the demo corpus
# with the mlmpi-train of two builds (e.g. the commit before a refactoring,
# built in a git worktree, and the work tree), and compares the checkpoints'
# model.safetensors (and optimizer.safetensors) byte for byte and the
# metrics lines (timings aside).
# Not a ctest: the hashes depend on the CPU's BLAS kernels.
set -euo pipefail
old=${1:?usage: same_bits.sh OLD_BIN_DIR NEW_BIN_DIR [WORKDIR]}
new=${2:?usage: same_bits.sh OLD_BIN_DIR NEW_BIN_DIR [WORKDIR]}
work=${3:-/tmp/mlmpi_same_bits}
mkdir -p "$work"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
if [ ! -s "$work/shards/train-00000.mlms" ]; then
  bible -f "Gen1:1-Exo40:38" > "$work/kjv_raw.txt"
  sed -E 's/^[^ ]+ //' "$work/kjv_raw.txt" > "$work/kjv_verses.txt"
  awk '{ split($1, a, ":"); if (a[1] != last && NR > 1) print ""; last = a[1];
         sub(/^[^ ]+ /, ""); print }' "$work/kjv_raw.txt" > "$work/kjv_docs.txt"
  spm_train --input="$work/kjv_verses.txt" --model_prefix="$work/kjv" --vocab_size=2000 \
    --user_defined_symbols='[CLS],[SEP],[MASK],[PAD]' --minloglevel=2 >/dev/null
  "$new/mlmpi-data" shard --tokenizer "$work/kjv.model" --out "$work/shards" --holdout-docs 20 \
    "$work/kjv_docs.txt" >/dev/null
fi
rc=0
for preset in bert-mini electra-small; do
  for side in old new; do
    bin=$old; [ "$side" = new ] && bin=$new
    d="$work/$preset-$side"
    rm -rf "$d"
    mpirun -np 2 --oversubscribe --bind-to none "$bin/mlmpi-train" \
      --set model.preset=$preset --set data.path="$work/shards" --set data.seq_len=64 \
      --set data.max_predictions=10 --set train.global_batch=16 --set train.steps=30 \
      --set train.seed=7 --set train.threads=1 --set train.eval_every=15 --set train.eval_batches=2 \
      --set optim.name=lamb --set optim.lr=0.002 --set optim.warmup=5 \
      --set ckpt.dir="$d/ckpt" --set log.dir="$d/log" > "$d.out" 2>&1 || { echo "$preset $side failed:"; tail -5 "$d.out"; rc=1; }
  done
  a=$(sha256sum "$work/$preset-old/ckpt/step-30/model.safetensors" | cut -d' ' -f1)
  b=$(sha256sum "$work/$preset-new/ckpt/step-30/model.safetensors" | cut -d' ' -f1)
  echo "$preset model.safetensors: old $a"
  echo "$preset model.safetensors: new $b"
  oa=$(sha256sum "$work/$preset-old/ckpt/step-30/optimizer.safetensors" | cut -d' ' -f1)
  ob=$(sha256sum "$work/$preset-new/ckpt/step-30/optimizer.safetensors" | cut -d' ' -f1)
  echo "$preset optimizer.safetensors: $([ "$oa" = "$ob" ] && echo identical || echo DIFFERENT) ($oa)"
  [ "$oa" = "$ob" ] || rc=1
  # Every value of the old build's lines, timings aside, must be in the new
  # build's lines unchanged (keys the new build adds are allowed).
  if [ "$a" = "$b" ] && /usr/bin/python3 - "$work/$preset-old/log/metrics.jsonl" \
      "$work/$preset-new/log/metrics.jsonl" <<'PY'
import json, sys
timing = {"tokens_per_s", "step_s", "data_s", "compute_s", "exposed_comm_s", "peak_rss_mb"}
old = [json.loads(l) for l in open(sys.argv[1])]
new = [json.loads(l) for l in open(sys.argv[2])]
bad = [(i, k) for i, (o, n) in enumerate(zip(old, new)) for k in o
       if k not in timing and n.get(k) != o[k]]
if len(old) != len(new) or bad:
    print("metrics differ:", len(old), "vs", len(new), "lines;", bad[:5])
    sys.exit(1)
PY
  then
    echo "$preset: identical weights and metrics"
  else
    echo "$preset: DIFFERENT"; rc=1
  fi
done
exit $rc
