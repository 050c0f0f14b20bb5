#!/usr/bin/env bash
# bench/gen_bench.sh: `mlmpi-train generate` throughput (new tokens per second
# after the prompt, greedy) with the key/value cache and with --no-cache
# (the whole prefix recomputed for every token), at the gpt2-tiny and gpt2
# (124M) shapes with random weights (vocabulary 50257), a 16-token prompt and
# 128 new tokens. Both runs must print the same tokens.
#   bench/gen_bench.sh [--build DIR] [--threads N] [--new N] [--shapes "gpt2-tiny gpt2"]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=$root/build threads=$(nproc) new=128 shapes="gpt2-tiny gpt2"
while [ $# -gt 0 ]; do
  case $1 in
    --build) build=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --new) new=$2; shift 2 ;;
    --shapes) shapes=$2; shift 2 ;;
    *) echo "usage: $0 [--build DIR] [--threads N] [--new N] [--shapes LIST]" >&2; exit 2 ;;
  esac
done
bin=$build/bin/mlmpi-train
[ -x "$bin" ] || { echo "gen_bench: $bin not built (cmake --build $build)" >&2; exit 1; }
work=$build/gen_bench
mkdir -p "$work"
echo "OpenBLAS: $(OPENBLAS_VERBOSE=2 "$bin" generate --help 2>&1 >/dev/null | grep -i -m1 core || echo '(no kernel line)')"
prompt=$(seq 101 116 | tr '\n' ' ')
for shape in $shapes; do
  dir=$work/$shape
  if [ ! -s "$dir/model.safetensors" ]; then
    ROOT=$root /usr/bin/python3 - "$dir" "$shape" <<'PY'
import json, os, sys
import numpy as np
sys.path.insert(0, os.path.join(os.environ.get("ROOT", "."), "tests", "reference"))
import gpt2_ref, st_io
d, shape = sys.argv[1], sys.argv[2]
E, L, nh, P = {"gpt2-tiny": (128, 2, 2, 256), "gpt2": (768, 12, 12, 1024)}[shape]
cfg = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 50257,
       "n_embd": E, "n_layer": L, "n_head": nh, "n_positions": P, "n_inner": None,
       "activation_function": "gelu_new", "resid_pdrop": 0.0, "embd_pdrop": 0.0,
       "attn_pdrop": 0.0}
os.makedirs(d, exist_ok=True)
rng = np.random.default_rng(1)
w = {k: (0.02 * rng.standard_normal(s, dtype=np.float32) if len(s) == 2 else
         (np.ones(s, np.float32) if ".ln_" in k and k.endswith("weight") else
          np.zeros(s, np.float32))) for k, s in gpt2_ref.param_shapes(cfg).items()}
st_io.save(os.path.join(d, "model.safetensors"), w, {"format": "pt"})
with open(os.path.join(d, "config.json"), "w") as f:
    json.dump(cfg, f)
PY
  fi
  for mode in cache no-cache; do
    flag=(); [ $mode = no-cache ] && flag=(--no-cache)
    OMP_NUM_THREADS=$threads "$bin" generate --checkpoint "$dir" --prompt-ids "$prompt" \
      --max-tokens "$new" --temperature 0 --print-ids --threads "$threads" "${flag[@]}" \
      > "$work/$shape.$mode.ids" 2> "$work/$shape.$mode.log"
    rate=$(grep -o '[0-9.]* tokens/s' "$work/$shape.$mode.log" | tail -1)
    printf '%-10s %-9s prompt 16, %d new tokens, %d threads: %s\n' "$shape" "$mode" "$new" \
      "$threads" "$rate"
  done
  cmp -s "$work/$shape.cache.ids" "$work/$shape.no-cache.ids" ||
    { echo "gen_bench: $shape: the cache changes the tokens" >&2; exit 1; }
done
