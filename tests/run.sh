#!/usr/bin/env bash
# tests/run.sh: installs what mlmpi needs (Debian packages), configures,
# builds and runs every test with ctest.
#   MLMPI_SANITIZE=address,undefined tests/run.sh   build and test with sanitizers
#   tests/run.sh -L unit                            extra arguments go to ctest
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
ctest --output-on-failure "$@"
