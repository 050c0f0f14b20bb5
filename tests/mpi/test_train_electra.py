#!/usr/bin/python3
"""ELECTRA through the same data-parallel `mlmpi-train` as BERT.

On real text (Debian's bible-kjv: the corpus of test_train_mpi.py, and for
`learns` the whole book, so that the run sees each sequence at most once and
cannot pass by memorising), with a SentencePiece model and shards, and a
small ELECTRA config (model.config, "model_type": "electra"; data.masking
then defaults to electra):
  same-weights  2 ranks x 2 micro-batches == 1 rank with the whole batch in
                one micro-batch, after a few LAMB steps with dropout on:
                samples and dropout masks are keyed by the global sample
                index, the loss normalisers are the global batch's, and the
                backward's announcements drive the bucketed all-reduce;
  learns        a short run (300 steps of 32 x 64 tokens, AdamW, under one pass
                over the data): the generator's MLM loss falls, and over the
                last 100 steps the discriminator's log-loss (on each batch
                before its update) is below the entropy of the all-"original"
                prior at the batch's replaced fraction by more than 3 standard
                errors: it tells replaced tokens from original ones better
                than any constant guess. Its accuracy against the
                all-"original" baseline (1 - fraction replaced) is reported,
                not asserted: a discriminator this small and this early stays
                below 50% confidence on almost every token, so its accuracy
                equals the baseline (measured: after 2,500 steps on the whole
                book its held-out accuracy was within 0.0002 of the baseline
                while its log-loss was 0.007 nats below the prior's; on the
                small corpus it beats the baseline within 300 steps, but by
                memorising: held-out it is then worse). The generator is an
                eighth of the discriminator's width (a smaller generator
                makes the task easier early; ELECTRA paper, Fig. 3).
usage: test_train_electra.py --train BIN --data BIN --workdir DIR [--only NAME,...]
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from test_train_mpi import compare, fresh_runs, make_data, mpirun, weights  # noqa: E402
from test_train_mpi import np, st_io  # noqa: E402

failures = []


def check(ok, what):
    print(("PASS " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


def make_full_data(a):
    """Shards of the whole KJV (about 23,000 sequences of 64 tokens)."""
    work = os.path.join(a.workdir, "kjv_full")
    data = os.path.join(work, "shards")
    if os.path.exists(os.path.join(data, "train-00000.mlms")):
        return data
    os.makedirs(work, exist_ok=True)
    text = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True,
                          check=True).stdout.splitlines()
    verses = [line.split(" ", 1)[1] for line in text if " " in line]
    raw, docs = os.path.join(work, "verses.txt"), os.path.join(work, "docs.txt")
    with open(raw, "w") as f:
        f.write("\n".join(verses) + "\n")
    with open(docs, "w") as f:  # a document per 12 verses
        for i in range(0, len(verses), 12):
            f.write("\n".join(verses[i:i + 12]) + "\n\n")
    prefix = os.path.join(work, "kjv")
    subprocess.run(["spm_train", f"--input={raw}", f"--model_prefix={prefix}", "--vocab_size=1000",
                    "--user_defined_symbols=[CLS],[SEP],[MASK],[PAD]", "--minloglevel=2"],
                   check=True, capture_output=True)
    subprocess.run([a.data, "shard", "--tokenizer", prefix + ".model", "--out", data,
                    "--holdout-docs", "100", docs], check=True, capture_output=True)
    return data


def model_config(a, dropout, generator=(32, 2, 1, 64)):
    path = os.path.join(a.workdir, "electra_%s_g%d.json" % ("drop" if dropout else "nodrop",
                                                            generator[0]))
    cfg = {"architectures": ["ElectraForPreTraining"], "model_type": "electra",
           "vocab_size": 1000, "embedding_size": 64, "hidden_size": 128, "num_hidden_layers": 2,
           "num_attention_heads": 2, "intermediate_size": 256, "max_position_embeddings": 128,
           "hidden_dropout_prob": 0.1 if dropout else 0.0,
           "attention_probs_dropout_prob": 0.1 if dropout else 0.0,
           "generator": {"hidden_size": generator[0], "num_hidden_layers": generator[1],
                         "num_attention_heads": generator[2], "intermediate_size": generator[3]}}
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


def test_export(a, data):
    """The exported directories load into the reference model by name, with
    nothing missing or left over: the discriminator's tensors and the
    generator's, each with the shared embeddings."""
    sys.path.insert(0, os.path.join(HERE, "..", "reference"))
    import electra_ref
    model = model_config(a, dropout=False, generator=(64, 2, 1, 128))
    name = "electra_export"
    r = mpirun(1, args_for(a, data, name, model, **{"train.steps": "2"}), timeout=600)
    out = os.path.join(a.workdir, name, "hf")
    e = subprocess.run([a.train, "export", "--checkpoint", os.path.join(a.workdir, name, "ckpt", "step-2"),
                        "--out", out], capture_output=True, text=True)
    ok = r.returncode == 0 and e.returncode == 0
    if ok:
        full = dict(electra_ref.param_shapes(json.load(open(model))))
        ck = weights(a, name, 2)
        emb = "discriminator.electra.embeddings."
        for who in ("discriminator", "generator"):
            cfg = json.load(open(os.path.join(out, who, "config.json")))
            w = st_io.load(os.path.join(out, who, "model.safetensors"))
            want = {k[len(who) + 1:]: (k, v) for k, v in full.items() if k.startswith(who + ".")}
            want.update({k[len("discriminator."):]: (k, v) for k, v in full.items() if k.startswith(emb)})
            same_names = set(want) == set(w)
            same = same_names and all(tuple(w[n].shape) == tuple(want[n][1]) and
                                      np.array_equal(w[n], ck[want[n][0]]) for n in w)
            arch = "ElectraForPreTraining" if who == "discriminator" else "ElectraForMaskedLM"
            ok = ok and same and cfg["architectures"] == [arch] and cfg["model_type"] == "electra"
            if not same_names:
                print("  missing:", sorted(set(want) - set(w))[:5], "extra:", sorted(set(w) - set(want))[:5])
    check(ok, "electra export: discriminator/ and generator/ hold exactly the reference names, "
          "the checkpoint's values and their architectures" + ("" if e.returncode == 0 else ": " + e.stderr[-400:]))


def test_learns(a, _):
    data = make_full_data(a)
    model = model_config(a, dropout=False, generator=(16, 1, 1, 32))
    name = "electra_learns"
    steps = int(a.steps)
    r = mpirun(1, args_for(a, data, name, model, **{
        "train.steps": str(steps), "train.global_batch": "32", "train.threads": "2",
        "optim.name": "adamw", "optim.lr": "0.001", "optim.warmup": "25",
        "train.eval_every": str(steps), "train.eval_batches": "8", "train.log_every": "50",
        "ckpt.dir": ""}), timeout=1800)
    train, evals = metrics(a, name)
    check(r.returncode == 0 and len(train) == steps and len(evals) == 1,
          f"electra learns: {steps} steps ran" + ("" if r.returncode == 0 else ": " + r.stderr[-800:]))
    if len(train) < 200 or not evals:
        return
    first = statistics.mean(x["mlm_loss"] for x in train[:20])
    last = statistics.mean(x["mlm_loss"] for x in train[-20:])
    check(last < first - 0.5, f"electra learns: generator MLM loss falls {first:.3f} -> {last:.3f}")
    tail = train[-100:]
    gap = [prior_entropy(x["replaced_frac"]) - x["disc_loss"] for x in tail]
    mean, se = statistics.mean(gap), statistics.stdev(gap) / len(gap) ** 0.5
    acc_gain = statistics.mean(x["disc_acc"] - (1.0 - x["replaced_frac"]) for x in tail)
    e = evals[-1]
    check(mean > 3 * se,
          f"electra learns: discriminator log-loss below the all-original prior's entropy by "
          f"{mean:.4f} nats (standard error {se:.4f}) over the last 100 steps; accuracy minus "
          f"the all-original baseline {acc_gain:+.5f} (precision "
          f"{statistics.mean(x['disc_precision'] for x in tail):.3f}, recall "
          f"{statistics.mean(x['disc_recall'] for x in tail):.4f}); held-out accuracy "
          f"{e['eval_disc_acc']:.4f} vs baseline {1 - e['eval_replaced_frac']:.4f}")


def prior_entropy(p):
    """Log-loss of the best constant guess when a fraction p is replaced."""
    return -(p * math.log(p) + (1 - p) * math.log(1 - p)) if 0 < p < 1 else 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--only", default="")
    ap.add_argument("--steps", default="300", help="length of the `learns` run")
    a = ap.parse_args()
    data = make_data(a)
    fresh_runs(a)
    tests = {"same-weights": test_same_weights, "export": test_export, "learns": test_learns}
    only = [x for x in a.only.split(",") if x]
    for name, fn in tests.items():
        if not only or name in only:
            fn(a, data)
    print(f"{len(failures)} failed" if failures else "all passed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
