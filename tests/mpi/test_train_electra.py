#!/usr/bin/python3
"""ELECTRA through the same data-parallel `mlmpi-train` as BERT.

On the real corpus of test_train_mpi.py (Genesis and Exodus, a SentencePiece
model, shards), with a small ELECTRA config (model.config, "model_type":
"electra"; data.masking then defaults to electra):
  same-weights  2 ranks x 2 micro-batches == 1 rank with the whole batch in
                one micro-batch, after a few LAMB steps with dropout on:
                samples and dropout masks are keyed by the global sample
                index, the loss normalisers are the global batch's, and the
                backward's announcements drive the bucketed all-reduce;
  learns        a short run: the discriminator's held-out accuracy is above
                the all-"original" baseline (1 - fraction replaced) and the
                generator's MLM loss falls.
usage: test_train_electra.py --train BIN --data BIN --workdir DIR [--only NAME,...]
"""
import argparse
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from test_train_mpi import compare, make_data, mpirun, weights  # noqa: E402

failures = []


def check(ok, what):
    print(("PASS " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


def model_config(a, dropout):
    path = os.path.join(a.workdir, "electra%s.json" % ("_drop" if dropout else ""))
    cfg = {"architectures": ["ElectraForPreTraining"], "model_type": "electra",
           "vocab_size": 1000, "embedding_size": 64, "hidden_size": 128, "num_hidden_layers": 2,
           "num_attention_heads": 2, "intermediate_size": 256, "max_position_embeddings": 128,
           "hidden_dropout_prob": 0.1 if dropout else 0.0,
           "attention_probs_dropout_prob": 0.1 if dropout else 0.0,
           "generator": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 1,
                         "intermediate_size": 64}}
    with open(path, "w") as f:
        json.dump(cfg, f)
    return path


def args_for(a, data, name, model, **over):
    keys = {"model.config": model, "data.path": data, "data.seq_len": "64",
            "data.max_predictions": "10", "train.global_batch": "8", "train.steps": "4",
            "train.seed": "3", "train.threads": "1", "optim.lr": "0.004", "optim.warmup": "2",
            "ckpt.dir": os.path.join(a.workdir, name, "ckpt"),
            "log.dir": os.path.join(a.workdir, name, "log")}
    keys.update(over)
    out = [a.train]
    for k, v in keys.items():
        out += ["--set", f"{k}={v}"]
    return out


def metrics(a, name):
    path = os.path.join(a.workdir, name, "log", "metrics.jsonl")
    if not os.path.exists(path):
        return [], []
    rows = [json.loads(line) for line in open(path)]
    return [r for r in rows if "step" in r], [r for r in rows if "eval_step" in r]


def test_same_weights(a, data):
    model = model_config(a, dropout=True)
    runs = {}
    for n, micro in ((1, 8), (2, 2)):
        name = f"electra_same_{n}"
        r = mpirun(n, args_for(a, data, name, model, **{"train.micro_batch": str(micro)}),
                   timeout=600)
        check(r.returncode == 0, f"electra same-weights: {n} rank(s) x micro-batch {micro} ran"
              + ("" if r.returncode == 0 else ": " + r.stderr[-800:]))
        if r.returncode == 0:
            runs[n] = weights(a, name, 4)
            if n == 1:
                check("data.masking = electra" in r.stderr,
                      "electra same-weights: data.masking defaults to electra for an ELECTRA model")
    if len(runs) == 2:
        worst, k = compare(runs[1], runs[2])
        check(worst <= 1.0 and any(k.startswith("generator.") for k in runs[1]) and
              "discriminator.electra.embeddings.word_embeddings.weight" in runs[1],
              f"electra same-weights: 2 ranks x 2 micro-batches vs 1 rank x 1 (worst {k} at "
              f"{worst:.3f} of the bound)")


def test_learns(a, data):
    model = model_config(a, dropout=False)
    name = "electra_learns"
    steps = int(a.steps)
    r = mpirun(1, args_for(a, data, name, model, **{
        "train.steps": str(steps), "train.global_batch": "32", "train.threads": "2",
        "optim.name": "adamw", "optim.lr": "0.001", "optim.warmup": str(steps // 20),
        "train.eval_every": str(steps), "train.eval_batches": "8", "train.log_every": "50",
        "ckpt.dir": ""}), timeout=1800)
    train, evals = metrics(a, name)
    check(r.returncode == 0 and len(train) == steps and len(evals) == 1,
          f"electra learns: {steps} steps ran" + ("" if r.returncode == 0 else ": " + r.stderr[-800:]))
    if len(train) < 40 or not evals:
        return
    first = statistics.mean(x["mlm_loss"] for x in train[:20])
    last = statistics.mean(x["mlm_loss"] for x in train[-20:])
    check(last < first - 0.5, f"electra learns: generator MLM loss falls {first:.3f} -> {last:.3f}")
    e = evals[-1]
    baseline = 1.0 - e["eval_replaced_frac"]
    tail = train[-20:]
    check(e["eval_disc_acc"] > baseline + 0.005,
          f"electra learns: held-out discriminator accuracy {e['eval_disc_acc']:.4f} above the "
          f"all-original baseline {baseline:.4f} (last 20 training steps: precision "
          f"{statistics.mean(x['disc_precision'] for x in tail):.3f}, recall "
          f"{statistics.mean(x['disc_recall'] for x in tail):.3f})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--only", default="")
    ap.add_argument("--steps", default="1500", help="length of the `learns` run")
    a = ap.parse_args()
    data = make_data(a)
    tests = {"same-weights": test_same_weights, "learns": test_learns}
    only = [x for x in a.only.split(",") if x]
    for name, fn in tests.items():
        if not only or name in only:
            fn(a, data)
    print(f"{len(failures)} failed" if failures else "all passed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
