#!/usr/bin/env bash
# launch/demo.sh: the whole system from one command, on a fresh Debian 12
# machine: installs what is missing, builds, extracts the King James Bible
# (Debian's bible-kjv), trains a SentencePiece model with spm_train, writes
# shards with a held-out split, starts the dataset service, pretrains a model
# on 2 ranks under mpirun for a bounded time with a progress line, evaluates
# on the held-out split (ELECTRA-small by default: generator + discriminator),
# exports the model in the Hugging Face layout and
# draws the loss and accuracy curves to a PNG. Every step whose output is
# already there is skipped, so a second run goes straight to training (and
# continues from the newest checkpoint).
#
#   launch/demo.sh [--minutes N] [--ranks N] [--model PRESET] [--out DIR]
#     --minutes N   training time (default 10)
#     --ranks N     MPI ranks (default 2)
#     --model P     model preset (default electra-small; bert-mini, bert-base, ...)
#     --out DIR     where everything goes (default out/demo)
#     --quick       a one-minute run on a small corpus (for tests)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
minutes=10 ranks=2 model=electra-small out="$root/out/demo" quick=0
while [ $# -gt 0 ]; do
  case $1 in
    --minutes) minutes=$2; shift 2 ;;
    --ranks) ranks=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --quick) quick=1; minutes=1; shift ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

. "$root/launch/deps.sh"
mlmpi_install_deps gnuplot-nox

build="$root/build"
echo "demo: building mlmpi in $build"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j"$(nproc)" --target mlmpi-train mlmpi-data >/dev/null
bin="$build/bin"
mkdir -p "$out"

# 1. The corpus: one document per chapter, one verse per line.
if [ ! -s "$out/kjv_docs.txt" ]; then
  echo "demo: extracting the King James Bible (bible-kjv)"
  range="Gen1:1-Rev22:21"
  [ "$quick" = 1 ] && range="Gen1:1-Exo40:38"
  bible -f "$range" > "$out/kjv_raw.txt"
  sed -E 's/^[^ ]+ //' "$out/kjv_raw.txt" > "$out/kjv_verses.txt"
  awk '{ split($1, a, ":"); if (a[1] != last && NR > 1) print ""; last = a[1];
         sub(/^[^ ]+ /, ""); print }' "$out/kjv_raw.txt" > "$out/kjv_docs.txt.tmp"
  mv "$out/kjv_docs.txt.tmp" "$out/kjv_docs.txt"
fi

# 2. The tokenizer.
if [ ! -s "$out/kjv.model" ]; then
  echo "demo: training a SentencePiece model (spm_train)"
  vocab=8000
  [ "$quick" = 1 ] && vocab=2000
  spm_train --input="$out/kjv_verses.txt" --model_prefix="$out/kjv" --vocab_size=$vocab \
    --user_defined_symbols='[CLS],[SEP],[MASK],[PAD]' --minloglevel=2 >/dev/null
fi

# 3. Shards with a held-out split.
if [ ! -s "$out/shards/train-00000.mlms" ]; then
  echo "demo: writing shards"
  rm -rf "$out/shards"
  "$bin/mlmpi-data" shard --tokenizer "$out/kjv.model" --out "$out/shards" --holdout-docs 40 \
    "$out/kjv_docs.txt"
fi

# 4. The dataset service, on loopback, for the length of the run.
eval_every=50
[ "$quick" = 1 ] && eval_every=10
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin/mlmpi-data" serve --data "$out/shards" --port "$port" > "$out/service.log" 2>&1 &
svc=$!
trap 'kill $svc 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q listening "$out/service.log" && break; sleep 0.1; done
grep -q listening "$out/service.log" || { echo "demo: the dataset service did not start:" >&2; cat "$out/service.log" >&2; exit 1; }
echo "demo: dataset service on 127.0.0.1:$port"

# 5. Pretraining on $ranks ranks for $minutes minutes (one thread each on
# this machine's cores), resuming from the newest checkpoint if there is one.
cat > "$out/run.ini" <<EOF
[model]
preset = $model
[data]
path = $out/shards
service = 127.0.0.1:$port
seq_len = 128
max_predictions = 20
[train]
global_batch = 32
steps = 1000000
seed = 1
eval_every = $eval_every
eval_batches = 4
log_every = 10
time_limit_s = $((minutes * 60))
[optim]
name = lamb
lr = 0.002
schedule = constant
warmup = 50
[ckpt]
dir = $out/ckpt
every_steps = 100
keep = 2
resume = auto
[log]
dir = $out/log
EOF
threads=$(( $(nproc) / ranks )); [ "$threads" -ge 1 ] || threads=1
echo "demo: pretraining $model on $ranks ranks for $minutes minute(s) (config: $out/run.ini)"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun -np "$ranks" --oversubscribe --bind-to none --mca mpi_yield_when_idle 1 \
  "$bin/mlmpi-train" --config "$out/run.ini" --set train.threads=$threads

# 6. Export the newest checkpoint in the Hugging Face layout, with the tokenizer.
latest=$(ls -d "$out"/ckpt/step-* | sort -t- -k2 -n | tail -1)
"$bin/mlmpi-train" export --checkpoint "$latest" --out "$out/hf"
if [ -d "$out/hf/discriminator" ]; then
  for d in "$out/hf/discriminator" "$out/hf/generator"; do cp "$out/kjv.model" "$d/spiece.model"; done
else
  cp "$out/kjv.model" "$out/hf/spiece.model"
fi

# 7. Curves.
metrics="$out/log/metrics.jsonl"
sed -n 's/.*"step":\([0-9]*\),"loss":\([0-9.eE+-]*\),.*"mlm_acc":\([0-9.eE+-]*\),.*/\1 \2 \3/p' "$metrics" > "$out/train.dat"
sed -n 's/.*"eval_step":\([0-9]*\),"eval_loss":\([0-9.eE+-]*\),"eval_mlm_acc":\([0-9.eE+-]*\).*/\1 \2 \3/p' "$metrics" > "$out/eval.dat"
gnuplot <<EOF
set terminal pngcairo size 1000,700
set output "$out/curves.png"
set multiplot layout 2,1 title "mlmpi: $model on the King James Bible, $ranks ranks"
set xlabel "step"; set ylabel "loss"; set grid
plot "$out/train.dat" using 1:2 with lines title "training loss", \
     "$out/eval.dat" using 1:2 with linespoints title "held-out loss"
set ylabel "MLM accuracy (generator's for ELECTRA)"
plot "$out/train.dat" using 1:3 with lines title "training", \
     "$out/eval.dat" using 1:3 with linespoints title "held-out"
unset multiplot
EOF
echo "demo: held-out evaluations (step, loss, MLM accuracy):"
sed 's/^/  /' "$out/eval.dat" | tail -5
echo "demo: model exported to $out/hf"
echo "demo: curves drawn to $out/curves.png"
