#!/usr/bin/env bash
# bench/fuzz.sh: a fuzzing campaign over every libFuzzer target of tests/fuzz.
#   bench/fuzz.sh [--seconds N] [--targets a,b,...] [--fast]
# Builds build-fuzz (clang, MLMPI_FUZZ=ON) when needed, then runs each target
# for N seconds (default 60) on its seed corpus plus the campaign corpus kept
# in build-fuzz/campaign/<target> (it grows from run to run), and prints per
# target: executions, executions per second, coverage (libFuzzer's edges
# "cov" and features "ft"), corpus size, crashes, and the executions of every
# campaign so far (build-fuzz/campaign/ledger.tsv). Crashing inputs are kept
# in build-fuzz/campaign/artifacts. --fast builds a second tree
# (build-fuzz-fast) with only libFuzzer's coverage, no ASan/UBSan, for more
# executions per second; its new inputs are replayed under the sanitizers
# afterwards. Exits non-zero when any target crashed.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
seconds=60 targets="" fast=0
while [ $# -gt 0 ]; do
  case $1 in
    --seconds) seconds=$2; shift 2 ;;
    --targets) targets=$2; shift 2 ;;
    --fast) fast=1; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "bench/fuzz.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
fz="$root/build-fuzz"
build() { # dir, extra cmake args
  CC=clang CXX=clang++ cmake -S "$root" -B "$1" -DCMAKE_BUILD_TYPE=Release -DMLMPI_FUZZ=ON "${@:2}" >/dev/null
  cmake --build "$1" -j"$(nproc)" --target mlmpi_fuzz >/dev/null
}
build "$fz"
run="$fz"
if [ $fast = 1 ]; then
  run="$root/build-fuzz-fast"
  build "$run" -DMLMPI_FUZZ_SANITIZE=OFF
fi
camp="$fz/campaign"
mkdir -p "$camp/artifacts"
ledger="$camp/ledger.tsv"
[ -f "$ledger" ] || printf 'date\ttarget\tseconds\texecutions\tsanitizers\n' >"$ledger"
[ -n "$targets" ] || targets=$(cd "$run/fuzz" && ls | sed 's/^fuzz_//' | paste -sd, -)
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
printf '%-18s %12s %9s %7s %8s %7s %7s %14s\n' target executions exec/s cov ft corpus crashes "all campaigns"
bad=0
for t in ${targets//,/ }; do
  bin="$run/fuzz/fuzz_$t"
  [ -x "$bin" ] || { echo "bench/fuzz.sh: no target $t (have: $(ls "$fz/fuzz" | sed 's/^fuzz_//' | paste -sd' ' -))" >&2; exit 2; }
  mkdir -p "$camp/$t"
  dict=()
  [ -f "$root/tests/fuzz/dict/$t.dict" ] && dict=(-dict="$root/tests/fuzz/dict/$t.dict")
  # crash-, leak-, timeout-, oom- files are findings; slow-unit- ones (10 s on a
  # loaded machine) are not.
  findings() { ls "$camp/artifacts" | grep -cE "^$t-(crash|leak|timeout|oom)-" || true; }
  before=$(findings)
  log="$camp/$t.log"
  "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$camp/artifacts/$t-" "${dict[@]}" "$camp/$t" "$root/tests/fuzz/corpus/$t" \
    >"$log" 2>&1 || true
  if [ $fast = 1 ]; then # the new inputs, under ASan and UBSan
    "$fz/fuzz/fuzz_$t" -runs=0 -timeout=10 -artifact_prefix="$camp/artifacts/$t-" "$camp/$t" \
      >>"$log" 2>&1 || true
  fi
  crashes=$(( $(findings) - before ))
  execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | head -1 | awk '{print $2}')
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | head -1 | awk '{print $2}')
  last=$(grep -E '^#[0-9]+' "$log" | grep -o 'cov: [0-9]* ft: [0-9]*' | tail -1)
  cov=$(echo "$last" | awk '{print $2}') ft=$(echo "$last" | awk '{print $4}')
  corp=$(ls "$camp/$t" | wc -l)
  printf '%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$t" "$seconds" "${execs:-0}" \
    "$([ $fast = 1 ] && echo none || echo asan+ubsan)" >>"$ledger"
  total=$(awk -F'\t' -v t="$t" '$2 == t {s += $4} END {printf "%d", s}' "$ledger")
  printf '%-18s %12s %9s %7s %8s %7s %7s %14s\n' "$t" "${execs:-0}" "${rate:-0}" "${cov:--}" \
    "${ft:--}" "$corp" "$crashes" "$total"
  if [ "$crashes" -gt 0 ] || grep -q 'ERROR: libFuzzer\|ERROR: AddressSanitizer\|runtime error' "$log"; then
    echo "  $t: crashed; see $log and $camp/artifacts/$t-*" >&2
    bad=1
  fi
done
exit $bad
