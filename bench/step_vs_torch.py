#!/usr/bin/python3
"""Training-step benchmark: mlmpi against PyTorch on the same model, threads and batch.

Runs build/bin/bench_step and bench/torch_step.py alternately (so drift in the
machine's speed hits both) at BERT-mini and BERT-base shapes and prints both
tokens/s, their ratio, and mlmpi's GFLOP/s as a fraction of cblas_sgemm's own,
measured in the same run.

usage: bench/step_vs_torch.py [--bin build/bin/bench_step] [--threads N] [--steps N]
                              [--rounds N] [--shapes mini,base]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPES = {
    "mini": dict(layers=4, hidden=256, heads=4, intermediate=1024, vocab=8192, seq=128, batch=32),
    "base": dict(layers=12, hidden=768, heads=12, intermediate=3072, vocab=30522, seq=128, batch=8),
}


def run_json(cmd, env):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(HERE, "..", "build", "bin", "bench_step"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--shapes", default="mini,base")
    a = ap.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    print(f"threads={a.threads} steps={a.steps} rounds={a.rounds} (median of rounds)")
    print(f"{'shape':6} {'mlmpi tok/s':>12} {'torch tok/s':>12} {'ratio':>7} "
          f"{'GFLOP/s':>8} {'sgemm GFLOP/s':>14} {'of sgemm':>9}")
    for name in a.shapes.split(","):
        s = SHAPES[name]
        args = []
        for k, v in s.items():
            args += [f"--{k}", str(v)]
        common = args + ["--threads", str(a.threads), "--steps", str(a.steps), "--warmup", "1"]
        ours, theirs = [], []
        for _ in range(a.rounds):
            ours.append(run_json([a.bin] + common, env))
            theirs.append(run_json([sys.executable, os.path.join(HERE, "torch_step.py")] + common
                                   + ["--optim", "sgd"], env))
        med = lambda rs, k: statistics.median(r[k] for r in rs)
        o, t = med(ours, "tokens_per_s"), med(theirs, "tokens_per_s")
        print(f"{name:6} {o:12.0f} {t:12.0f} {o / t:7.2f} {med(ours, 'gflops'):8.1f} "
              f"{med(ours, 'sgemm_gflops'):14.1f} {med(ours, 'blas_fraction'):9.2f}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
