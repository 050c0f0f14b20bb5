#!/usr/bin/env bash
# tests/run.sh: installs what mlmpi needs (Debian packages), configures,
# builds and runs every test with ctest.
#   MLMPI_SANITIZE=address,undefined tests/run.sh   build and test with sanitizers
#   tests/run.sh -L unit                            extra arguments go to ctest
# Without MLMPI_SANITIZE, after the full suite the parsers of untrusted input
# (safetensors, shards, TFRecords, the service, tokenizer files) and the
# shared-memory all-reduce are built
# again with AddressSanitizer and UBSan and their unit tests run there too
# (MLMPI_SAN_PASS=0 skips that). Then the libFuzzer targets of tests/fuzz are
# built with clang (build-fuzz) and `ctest -L fuzz` replays each seed corpus
# and fuzzes each target a few seconds (MLMPI_FUZZ_PASS=0 skips that;
# `tests/run.sh -L fuzz` runs only those).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$root/launch/deps.sh"
mlmpi_install_deps
mlmpi_install_npm "$root/tests/reference"
mlmpi_install_npm "$root/tests/reference/wordpiece"

sanitize=${MLMPI_SANITIZE:-}
build="$root/build${sanitize:+-san}"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DMLMPI_SANITIZE="$sanitize" >/dev/null
cmake --build "$build" -j"$(nproc)"

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
if [ -n "$sanitize" ]; then
  # OpenMP's runtime keeps its thread pool alive at exit: not a leak of ours.
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
fi
cd "$build"
rc=0
fuzz_only=0
[ "$*" = "-L fuzz" ] && fuzz_only=1
[ $fuzz_only = 1 ] || ctest --output-on-failure "$@" || rc=$?

if [ -z "$sanitize" ] && [ "${MLMPI_SAN_PASS:-1}" != 0 ] && [ $# -eq 0 ]; then
  san="$root/build-san"
  echo "tests/run.sh: corruption and fuzz-style tests again under AddressSanitizer + UBSan"
  cmake -S "$root" -B "$san" -DCMAKE_BUILD_TYPE=Release -DMLMPI_SANITIZE=address,undefined >/dev/null
  cmake --build "$san" -j"$(nproc)" --target test_core test_shard test_tfexample test_service \
    test_spm test_wordpiece test_dataset test_comm_mpi mlmpi-data >/dev/null
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0} UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
  (cd "$san" && ctest --output-on-failure -L unit \
     -R '^(Crc32c|Philox|Rng|Safetensors|Status|Mem|ParamTable|ParamIo|TfRecord|Shard|TfExample|TfSource|TfDump|Service|Spm|Wordpiece|DataPermute|Dataset)') || rc=$?
  # The shared-memory all-reduce, every rank instrumented, under mpirun.
  (cd "$san" && ctest --output-on-failure -R '^comm\.mpi\.') || rc=$?
fi

if [ -z "$sanitize" ] && [ "${MLMPI_FUZZ_PASS:-1}" != 0 ] && { [ $# -eq 0 ] || [ $fuzz_only = 1 ]; }; then
  fz="$root/build-fuzz"
  echo "tests/run.sh: the fuzz targets (libFuzzer, ASan + UBSan): every seed corpus replayed, then fuzzed"
  CC=clang CXX=clang++ cmake -S "$root" -B "$fz" -DCMAKE_BUILD_TYPE=Release -DMLMPI_FUZZ=ON >/dev/null
  cmake --build "$fz" -j"$(nproc)" --target mlmpi_fuzz >/dev/null
  (cd "$fz" && ctest --output-on-failure -L fuzz -j"$(nproc)") || rc=$?
fi
exit $rc
