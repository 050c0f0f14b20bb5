#!/usr/bin/python3
"""Time to accuracy, bf16 against fp32: pretrains the same model from the same seed on the
demo corpus (the King James Bible, as launch/demo.sh makes it) once per model.precision
for the same wall-clock budget, and draws held-out MLM accuracy against training time.

usage: bench/precision_curve.py [--minutes M] [--preset P] [--precisions fp32,bf16]
                                [--ranks R] [--threads N] [--build DIR] [--out DIR] [--quick]

  --minutes M     training budget per precision (default 6; train.time_limit_s)
  --preset P      model preset (default bert-mini)
  --precisions L  model.precision values to compare (default fp32,bf16)
  --ranks R       mpirun ranks (default 1), --threads N OpenMP threads per rank (default 2)
  --build DIR     where mlmpi-train and mlmpi-data are (default build/bin)
  --out DIR       where everything goes (default /tmp/mlmpi-precision)
  --quick         an end-to-end check: 0.5 minutes on Genesis-Exodus

Training time is the sum of the logged step times up to each evaluation (evaluation
itself is not counted). Writes OUT/curves.tsv, OUT/precision_curve.png and prints a
table: accuracy at equal training time, and when each run first reached the accuracy
the fp32 run ended with.
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def corpus(a, out):
    """KJV shards (one document per chapter, SentencePiece 8000), made once per OUT."""
    shards = os.path.join(out, "shards")
    if os.path.exists(os.path.join(shards, "train-00000.mlms")):
        return shards
    rng = "Gen1:1-Exo40:38" if a.quick else "Gen1:1-Rev22:21"
    lines = sh(["bible", "-f", rng]).stdout.splitlines()
    raw, docs = os.path.join(out, "verses.txt"), os.path.join(out, "docs.txt")
    chapter = None
    with open(raw, "w") as fr, open(docs, "w") as fd:
        for l in lines:
            if " " not in l:
                continue
            ref, verse = l.split(" ", 1)
            ch = ref.rsplit(":", 1)[0]
            if chapter is not None and ch != chapter:
                fd.write("\n")
            chapter = ch
            fr.write(verse + "\n")
            fd.write(verse + "\n")
    prefix = os.path.join(out, "kjv")
    sh(["spm_train", f"--input={raw}", f"--model_prefix={prefix}",
        f"--vocab_size={2000 if a.quick else 8000}",
        "--user_defined_symbols=[CLS],[SEP],[MASK],[PAD]", "--minloglevel=2"])
    sh([os.path.join(a.build, "mlmpi-data"), "shard", "--tokenizer", prefix + ".model", "--out",
        shards, "--holdout-docs", "40", docs])
    return shards


def train(a, shards, out, precision):
    run = os.path.join(out, precision)
    subprocess.run(["rm", "-rf", run], check=True)
    keys = {"model.preset": a.preset, "model.precision": precision, "data.path": shards,
            "data.seq_len": "128", "data.max_predictions": "20", "train.global_batch": "32",
            "train.steps": "100000", "train.time_limit_s": str(int(a.minutes * 60)),
            "train.eval_every": "50" if a.quick else "100", "train.eval_batches": "16",
            "train.seed": "7", "train.threads": str(a.threads), "optim.lr": "0.002",
            "optim.warmup": "100", "ckpt.dir": "", "log.dir": os.path.join(run, "log")}
    args = [x for k, v in keys.items() for x in ("--set", f"{k}={v}")]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    cmd = ["mpirun", "-np", str(a.ranks), "--oversubscribe", "--bind-to", "none",
           os.path.join(a.build, "mlmpi-train")] + args
    print(f"[precision-curve] {precision}: {a.minutes:g} min of {a.preset}", flush=True)
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"precision-curve: the {precision} run failed (exit {p.returncode}):\n"
                 + p.stderr[-1500:])
    rows = [json.loads(l) for l in open(os.path.join(run, "log", "metrics.jsonl"))]
    t, curve = 0.0, []
    for r in rows:
        if "step_s" in r:
            t += r["step_s"]
        elif "eval_mlm_acc" in r:
            curve.append((r["eval_step"], t, r["eval_mlm_acc"], r["eval_loss"]))
    return curve


def at_time(curve, t):
    """The accuracy of the last evaluation at or before training time t."""
    best = None
    for _, ti, acc, _ in curve:
        if ti <= t:
            best = acc
    return best


def plot(out, curves):
    tsv = os.path.join(out, "curves.tsv")
    with open(tsv, "w") as f:
        for i, (prec, c) in enumerate(curves.items()):
            if i:
                f.write("\n\n")
            f.write(f"# {prec}: step minutes eval_mlm_acc eval_loss\n")
            for st, t, acc, loss in c:
                f.write(f"{st}\t{t / 60:.4f}\t{acc:.5f}\t{loss:.5f}\n")
    png = os.path.join(out, "precision_curve.png")
    lines = ", ".join(f"'{tsv}' index {i} using 2:3 with linespoints title '{p}'"
                      for i, p in enumerate(curves))
    gp = (f"set terminal pngcairo size 900,540; set output '{png}';"
          f"set xlabel 'training time (minutes)'; set ylabel 'held-out MLM accuracy';"
          f"set key bottom right; set grid; plot {lines}")
    sh(["gnuplot", "-e", gp])
    return tsv, png


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=6.0)
    ap.add_argument("--preset", default="bert-mini")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--ranks", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--build", default=os.path.join(ROOT, "build", "bin"))
    ap.add_argument("--out", default="/tmp/mlmpi-precision")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.minutes = min(a.minutes, 0.5)
    if os.path.isdir(os.path.join(a.build, "bin")):
        a.build = os.path.join(a.build, "bin")
    for b in ("mlmpi-train", "mlmpi-data"):
        if not os.access(os.path.join(a.build, b), os.X_OK):
            sys.exit(f"precision-curve: no {a.build}/{b} (build first, or pass --build DIR)")
    os.makedirs(a.out, exist_ok=True)
    shards = corpus(a, a.out)
    precs = a.precisions.split(",")
    curves = {p: train(a, shards, a.out, p) for p in precs}
    tsv, png = plot(a.out, curves)
    ref = curves[precs[0]]
    if not ref:
        sys.exit("precision-curve: no evaluation in the first run (budget too short?)")
    goal = ref[-1][2]
    print(f"\n{a.preset}, {a.ranks} rank(s) x {a.threads} thread(s), {a.minutes:g} min each; "
          f"accuracy goal = {precs[0]}'s final {goal:.4f}")
    times = [t for t in (1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30) if t <= a.minutes] or [a.minutes]
    print("| precision | steps | " + " | ".join(f"acc @ {t:g} min" for t in times)
          + " | minutes to goal |")
    print("|---|---:|" + "---:|" * (len(times) + 1))
    for p, c in curves.items():
        accs = [at_time(c, t * 60) for t in times]
        reach = next((ti for _, ti, acc, _ in c if acc >= goal), None)
        print(f"| {p} | {c[-1][0] if c else 0} | "
              + " | ".join("-" if x is None else f"{x:.4f}" for x in accs)
              + f" | {'-' if reach is None else f'{reach / 60:.2f}'} |")
    print(f"\ncurves: {tsv}\nplot: {png}")


if __name__ == "__main__":
    main()
