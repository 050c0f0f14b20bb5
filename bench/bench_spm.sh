#!/usr/bin/env bash
# bench/bench_spm.sh: SentencePiece encoding throughput, `mlmpi-data encode`
# on one thread and on every core against Debian's spm_encode (sentencepiece
# 0.1.97, single-threaded), for a unigram and a BPE model of 8000 pieces that
# spm_train makes from the King James Bible, on that Bible repeated to at
# least 10 MB. Every program writes one line of ids per input line to a file;
# the outputs must be identical. Times are wall clock of the whole command
# (model loading included), best of --rounds.
#   bench/bench_spm.sh [--build DIR] [--rounds N] [--threads N]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=$root/build rounds=3 threads=$(nproc)
while [ $# -gt 0 ]; do
  case $1 in
    --build) build=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    *) echo "usage: $0 [--build DIR] [--rounds N] [--threads N]" >&2; exit 2 ;;
  esac
done
bin=$build/bin/mlmpi-data
[ -x "$bin" ] || { echo "bench_spm: $bin not built (cmake --build $build)" >&2; exit 1; }
for tool in spm_train spm_encode bible bc; do
  command -v "$tool" > /dev/null || { echo "bench_spm: $tool not found" >&2; exit 1; }
done

work=$build/bench_spm
mkdir -p "$work"
corpus=$work/corpus.txt
if [ ! -s "$corpus" ]; then
  bible -f Gen1:1-Rev22:21 > "$work/kjv.txt"
  : > "$corpus"
  while [ "$(stat -c %s "$corpus")" -lt 10000000 ]; do cat "$work/kjv.txt" >> "$corpus"; done
fi
bytes=$(stat -c %s "$corpus")
for type in unigram bpe; do
  [ -s "$work/$type.model" ] && continue
  spm_train --input="$work/kjv.txt" --model_prefix="$work/$type" --model_type=$type \
    --vocab_size=8000 --input_sentence_size=40000 --random_seed=1 --num_threads="$(nproc)" \
    --minloglevel=2
done

now() { date +%s.%N; }
# best_of N CMD...: the shortest wall time of N runs of CMD.
best_of() {
  local n=$1 best= t0 t
  shift
  for ((i = 0; i < n; i++)); do
    t0=$(now)
    "$@"
    t=$(echo "$(now) - $t0" | bc -l)
    if [ -z "$best" ] || [ "$(echo "$t < $best" | bc -l)" = 1 ]; then best=$t; fi
  done
  echo "$best"
}
mbs() { echo "scale=2; $bytes / $1 / 1000000" | bc -l; }
ratio() { echo "scale=2; $1 / $2" | bc -l; }

printf 'SentencePiece encode: %s (%.1f MB), %s cores\n' "$(basename "$corpus")" \
  "$(echo "$bytes / 1000000" | bc -l)" "$(nproc)"
status=0
for type in unigram bpe; do
  model=$work/$type.model
  ref() { spm_encode --model "$model" --output_format=id < "$corpus" > "$work/out.ref"; }
  c1() { "$bin" encode --threads 1 --tokenizer "$model" < "$corpus" > "$work/out.c1"; }
  cn() { "$bin" encode --threads "$threads" --tokenizer "$model" < "$corpus" > "$work/out.cn"; }
  t_ref=$(best_of "$rounds" ref)
  t_c1=$(best_of "$rounds" c1)
  t_cn=$(best_of "$rounds" cn)
  same=identical
  if ! cmp -s "$work/out.c1" "$work/out.ref" || ! cmp -s "$work/out.cn" "$work/out.ref"; then
    same=DIFFERENT
    status=1
  fi
  printf '%s, 8000 pieces: outputs %s\n' "$type" "$same"
  printf '  %-40s %8s %10s %16s\n' program seconds MB/s 'vs spm_encode'
  printf '  %-40s %8.3f %10s %16s\n' "mlmpi-data encode --threads 1" "$t_c1" "$(mbs "$t_c1")" \
    "$(ratio "$t_ref" "$t_c1")x"
  printf '  %-40s %8.3f %10s %16s\n' "mlmpi-data encode --threads $threads" "$t_cn" \
    "$(mbs "$t_cn")" "$(ratio "$t_ref" "$t_cn")x"
  printf '  %-40s %8.3f %10s %16s\n' "spm_encode (sentencepiece $(dpkg-query -W -f '${Version}' \
    sentencepiece 2> /dev/null || echo '?'))" "$t_ref" "$(mbs "$t_ref")" 1.00x
done
rm -f "$work"/out.*
exit $status
