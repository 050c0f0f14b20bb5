#!/usr/bin/env bash
# launch/demo.sh: the one-command demo. Today it installs what is missing,
# builds mlmpi, and trains a small BERT on a synthetic masked-LM batch for a
# few steps with LAMB, printing the loss each step. (The corpus, tokenizer, dataset
# service and multi-rank ELECTRA run come with the launch issue.)
#   launch/demo.sh [--steps N] [any other `mlmpi-train demo` option]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$root/launch/deps.sh"
mlmpi_install_deps

build="$root/build"
if [ ! -x "$build/bin/mlmpi-train" ] || [ -n "$(find "$root/core" "$root/trainer" -newer "$build/bin/mlmpi-train" -name '*.[ch]' 2>/dev/null | head -1)" ]; then
  echo "demo: building mlmpi in $build"
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$build" -j"$(nproc)" --target mlmpi-train >/dev/null
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
exec "$build/bin/mlmpi-train" demo "$@"
