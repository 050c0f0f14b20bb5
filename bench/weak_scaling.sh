#!/usr/bin/env bash
# bench/weak_scaling.sh: data-parallel weak scaling of the trainer: tokens/s
# per rank at 2 ranks against 1 rank at the same per-rank batch (one thread
# per rank), and the share of the step spent in communication backward did
# not hide (exposed_comm_s / step_s), from metrics.jsonl medians; the 2-rank
# run with the gradients in shared memory (the default) and without
# (comm.shared_memory=false: MPI's non-blocking all-reduce); then both again
# with ZeRO-1 (optim.zero=1: in shared memory the all-reduce under backward,
# over MPI a reduce-scatter after it; then the parameter all-gather).
#   bench/weak_scaling.sh [--build DIR] [--shards DIR] [--preset bert-mini] [--steps N]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=$root/build shards="" preset=bert-mini steps=12 per_rank=16
while [ $# -gt 0 ]; do
  case $1 in
    --build) build=$2; shift 2 ;;
    --shards) shards=$2; shift 2 ;;
    --preset) preset=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    *) echo "weak_scaling: unknown option $1" >&2; exit 2 ;;
  esac
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -z "$shards" ]; then
  bible -f Gen1:1-Exo40:38 | sed -E 's/^[^ ]+ //' > "$work/verses.txt"
  awk 'NR % 12 == 0 { print "" } { print }' "$work/verses.txt" > "$work/docs.txt"
  spm_train --input="$work/verses.txt" --model_prefix="$work/kjv" --vocab_size=2000 \
    --user_defined_symbols='[CLS],[SEP],[MASK],[PAD]' --minloglevel=2 >/dev/null
  "$build/bin/mlmpi-data" shard --tokenizer "$work/kjv.model" --out "$work/shards" "$work/docs.txt" 2>/dev/null
  shards=$work/shards
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
run() { # ranks [shared_memory [zero]] -> prints "tokens_per_s_per_rank step_s exposed_s"
  local n=$1 shm=${2:-true} zero=${3:-0} dir=$work/run$1${2:-}${3:-}
  # One thread per rank: each rank on a core of its own while they fit (an
  # unbound rank here was sometimes ~10% slower for a whole run, and the other
  # waited for it in every all-reduce); more ranks than cores share them.
  local bind=core
  [ "$n" -le "$(nproc)" ] || bind="none --oversubscribe"
  mpirun -np "$n" --bind-to $bind --mca mpi_yield_when_idle 1 "$build/bin/mlmpi-train" \
    --set model.preset="$preset" --set data.path="$shards" --set data.seq_len=128 \
    --set train.global_batch=$((per_rank * n)) --set train.steps="$steps" --set train.threads=1 \
    --set comm.shared_memory="$shm" --set optim.zero="$zero" --set log.dir="$dir" >/dev/null 2>&1
  /usr/bin/python3 - "$dir/metrics.jsonl" "$n" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"step"' in l][2:]  # skip warm-up
med = lambda k: statistics.median(r[k] for r in rows)
print(med("tokens_per_s") / int(sys.argv[2]), med("step_s"), med("exposed_comm_s"))
PY
}
read -r t1 s1 e1 < <(run 1)
read -r t2 s2 e2 < <(run 2)
read -r t3 s3 e3 < <(run 2 false)
read -r t4 s4 e4 < <(run 2 true 1)
read -r t5 s5 e5 < <(run 2 false 1)
/usr/bin/python3 - "$t1" "$s1" "$e1" "$t2" "$s2" "$e2" "$t3" "$s3" "$e3" "$t4" "$s4" "$e4" \
  "$t5" "$s5" "$e5" "$preset" <<'PY'
import sys
t1, s1, e1, t2, s2, e2, t3, s3, e3, t4, s4, e4, t5, s5, e5 = map(float, sys.argv[1:16])
preset = sys.argv[16]
print(f"{preset}, 16 sequences of 128 per rank, 1 thread per rank")
print(f"1 rank : {t1:8.0f} tok/s per rank, step {s1*1e3:7.1f} ms, exposed comm {e1*1e3:6.1f} ms")
print(f"2 ranks: {t2:8.0f} tok/s per rank, step {s2*1e3:7.1f} ms, exposed comm {e2*1e3:6.1f} ms "
      f"({100*e2/s2:.1f}% of the step)")
print(f"2 ranks, comm.shared_memory=false: {t3:8.0f} tok/s per rank, step {s3*1e3:7.1f} ms, "
      f"exposed comm {e3*1e3:6.1f} ms ({100*e3/s3:.1f}% of the step)")
for what, t, s, e in (("ZeRO-1, shared memory", t4, s4, e4), ("ZeRO-1, comm.shared_memory=false", t5, s5, e5)):
    print(f"2 ranks, {what}: {t:8.0f} tok/s per rank, step {s*1e3:7.1f} ms, "
          f"exposed comm {e*1e3:6.1f} ms ({100*e/s:.1f}% of the step)")
print(f"weak-scaling efficiency (per-rank tokens/s, 2 ranks / 1 rank): {t2/t1:.2f} "
      f"(without shared memory {t3/t1:.2f})")
PY
