#!/usr/bin/python3
"""Fine-tuning (`mlmpi-train finetune`) under a real mpirun, on real text.

The labelled task is bench/downstream_data.py's: WordNet glosses (Debian's
wordnet-base) labelled with their lexicographer file, 45 supersense classes.
Every Nth line of its train and dev files is kept, so the subsets mix the
labels and are the same on every machine: `small` (train every 200th line,
470 examples: 15 steps of 32 an epoch, the last one part-filled; dev every
100th line whose label the training subset has, 119) and `mid` (every 40th
line of each: 2,349 and 296). The pretraining corpus is the script's
corpus.txt (training glosses only), tokenized by a SentencePiece model that
spm_train learns from every 10th line; the pretrained models are 40 LAMB
steps on 2 ranks of BERT-mini (model.preset) and of a small ELECTRA
(model.config, as test_train_electra.py builds one), kept with the data
until the mlmpi-train binary changes. Fine-tuning runs use seq_len 32,
AdamW at 3e-4 and dropout 0.1. Parts:
  same-weights  from each pretrained model: with optim.lr = 0 the encoder's
                tensors are model.init's bit for bit (an ELECTRA checkpoint's
                discriminator copy) and the head is fresh; 2 epochs (30
                steps): 2 ranks x 2 micro-batches of 8 == 1 rank with the
                global batch of 32 in one micro-batch, within the bound the
                pretraining same-weights tests use, and the epoch lines of
                metrics.jsonl (dev_accuracy, dev_macro_f1) identical;
  best          3 epochs, a checkpoint at each epoch's end: ckpt.dir/best is
                the first epoch with the highest dev accuracy: meta.json's
                task.dev_accuracy is that epoch's, its step that epoch's end,
                its weights bit-identical to that epoch's step-N;
  predict-export
                `predict` on the ckpt.dir writes a line per dev example, its
                label one of the task's, its probabilities summing to 1 and
                largest at the label, the same with --batch 7; their accuracy
                against the dev labels is best/'s dev_accuracy (to 1e-9);
                `export` writes Bert/ElectraForSequenceClassification with
                id2label and label2id of the sorted labels and best/'s tensors;
  control       on `mid`, 2 epochs of batches of 16 at 6e-4: fresh BERT-mini
                weights (no model.init, model.preset and data.tokenizer) and
                the pretrained BERT-mini, with the `best` and `predict` checks
                on both, and their dev accuracies printed. No margin is
                asserted: this little pretraining does not help (measured:
                fresh weights 0.18 then 0.29, from the 40-step checkpoint the
                majority class's 0.125 in both epochs, also after 40 AdamW
                steps instead; from 200 LAMB steps 0.32 after 4 epochs
                against 0.33 fresh);
  bad-input     each bad input ends the job at start-up (well inside a
                timeout) with a nonzero exit and one error message naming the
                problem: exactly one line run alone, the same message (at most
                one line a rank) under mpirun -np 2, where Open MPI's own
                MPI_ABORT notice may follow; no traceback, failed assertion or
                crash;
  resume        SIGTERM to the 2 ranks of a fine-tune in its second epoch:
                they checkpoint and exit 0; ckpt.resume = auto finishes it,
                with final weights, ckpt.dir/best and the epoch lines
                bit-identical to an uninterrupted run's.
usage: test_finetune.py --train BIN --data BIN --workdir DIR [--only NAME,...]
"""
import argparse
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
sys.path.insert(0, HERE)
from test_train_mpi import compare, fresh_runs, mpirun, rank_pids, weights  # noqa: E402
from test_train_mpi import np, st_io  # noqa: E402

ONE_BLAS = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
PRETRAIN_STEPS = 40
failures = []


def check(ok, what):
    print(("PASS " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


def run_mpi(n, args, timeout=600):
    return mpirun(n, args, env=ONE_BLAS, timeout=timeout)


def tail(r):
    return "" if r.returncode == 0 else ": " + r.stderr[-800:]


def sets(keys):
    out = []
    for k, v in keys.items():
        out += ["--set", f"{k}={v}"]
    return out


# ---- Data ------------------------------------------------------------------------------
def read_jsonl(path):
    return [json.loads(line) for line in open(path) if line.strip()]


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def make_task(a):
    """The WordNet task, its subsets, the tokenizers and the pretraining shards
    (kept between runs: they depend on nothing but the Debian packages)."""
    d = os.path.join(a.workdir, "data")
    done = os.path.join(d, "data.done")
    if os.path.exists(done):
        return d
    os.makedirs(d, exist_ok=True)
    wn = os.path.join(d, "wordnet")
    subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "bench", "downstream_data.py"),
                    "--out", wn], check=True, capture_output=True)
    train = open(os.path.join(wn, "task", "train.jsonl")).read().splitlines()
    dev = open(os.path.join(wn, "task", "dev.jsonl")).read().splitlines()
    for name, tr_every, dev_every in (("small", 200, 100), ("mid", 40, 40)):
        tr = [json.loads(x) for x in train[::tr_every]]
        labels = {x["label"] for x in tr}
        dv = [x for x in (json.loads(y) for y in dev[::dev_every]) if x["label"] in labels]
        write_jsonl(os.path.join(d, f"{name}_train.jsonl"), tr)
        write_jsonl(os.path.join(d, f"{name}_dev.jsonl"), dv)
    corpus = os.path.join(wn, "corpus.txt")
    lines = open(corpus).read().splitlines()
    for name, every, vocab in (("wn", 10, 1000), ("other", 40, 600)):
        raw = os.path.join(d, f"{name}_spm_input.txt")
        with open(raw, "w") as f:
            f.write("\n".join(x for x in lines[::every] if x.strip()) + "\n")
        subprocess.run(["spm_train", f"--input={raw}", f"--model_prefix={os.path.join(d, name)}",
                        f"--vocab_size={vocab}", "--user_defined_symbols=[CLS],[SEP],[MASK],[PAD]",
                        "--minloglevel=2"], check=True, capture_output=True)
    subprocess.run([a.data, "shard", "--tokenizer", os.path.join(d, "wn.model"), "--out",
                    os.path.join(d, "shards"), "--holdout-docs", "20", corpus],
                   check=True, capture_output=True)
    open(done, "w").write("ok\n")
    return d


def electra_config(d):
    path = os.path.join(d, "electra_small.json")
    cfg = {"architectures": ["ElectraForPreTraining"], "model_type": "electra",
           "vocab_size": 1000, "embedding_size": 64, "hidden_size": 128, "num_hidden_layers": 2,
           "num_attention_heads": 2, "intermediate_size": 256, "max_position_embeddings": 128,
           "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
           "generator": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 1,
                         "intermediate_size": 64}}
    with open(path, "w") as f:
        json.dump(cfg, f)
    return path


def pretrain(a, d):
    """The pretrained checkpoints {"bert": ckpt.dir, "electra": ckpt.dir},
    redone when the trainer binary changes (its size and time in a stamp)."""
    st = os.stat(a.train)
    stamp = f"{st.st_size} {st.st_mtime_ns} {PRETRAIN_STEPS}\n"
    stamp_path = os.path.join(d, "pretrained.stamp")
    out = {m: os.path.join(d, f"pre_{m}", "ckpt") for m in ("bert", "electra")}
    if os.path.exists(stamp_path) and open(stamp_path).read() == stamp:
        return out
    models = {"bert": {"model.preset": "bert-mini"}, "electra": {"model.config": electra_config(d)}}
    for m, keys in models.items():
        run = os.path.join(d, f"pre_{m}")
        subprocess.run(["rm", "-rf", run], check=True)
        t0 = time.time()
        r = run_mpi(2, [a.train] + sets({
            **keys, "data.path": os.path.join(d, "shards"), "data.seq_len": "64",
            "data.max_predictions": "10", "train.global_batch": "32",
            "train.steps": str(PRETRAIN_STEPS), "train.seed": "3", "train.threads": "1",
            "train.log_every": "10", "optim.lr": "0.004", "optim.warmup": "4",
            "ckpt.dir": out[m], "log.dir": os.path.join(run, "log")}))
        if r.returncode:
            sys.exit(f"pretraining {m} failed{tail(r)}")
        print(f"pretrained {m}: {PRETRAIN_STEPS} steps in {time.time() - t0:.1f} s", flush=True)
    open(stamp_path, "w").write(stamp)
    return out


# ---- Runs --------------------------------------------------------------------------------
class Env:
    def __init__(self, a, d, pre):
        self.a, self.d, self.pre = a, d, pre
        self.runs = argparse.Namespace(**vars(a))  # for weights(): runs live in workdir/runs
        self.runs.workdir = os.path.join(a.workdir, "runs")
        os.makedirs(self.runs.workdir, exist_ok=True)

    def task(self, name, split):
        return os.path.join(self.d, f"{name}_{split}.jsonl")

    def run_dir(self, name):
        return os.path.join(self.runs.workdir, name)

    def ft_args(self, name, model="bert", task="small", **over):
        keys = {"model.init": self.pre[model], "task.train": self.task(task, "train"),
                "task.dev": self.task(task, "dev"), "data.seq_len": "32",
                "train.global_batch": "32", "train.epochs": "2", "train.seed": "3",
                "train.threads": "1", "train.log_every": "5", "optim.lr": "3e-4",
                "ckpt.dir": os.path.join(self.run_dir(name), "ckpt"),
                "log.dir": os.path.join(self.run_dir(name), "log")}
        keys.update(over)
        keys = {k: v for k, v in keys.items() if v is not None}
        return [self.a.train, "finetune"] + sets(keys)

    def finetune(self, n, name, timeout=600, **kw):
        return run_mpi(n, self.ft_args(name, **kw), timeout=timeout)

    def epochs(self, name):
        path = os.path.join(self.run_dir(name), "log", "metrics.jsonl")
        if not os.path.exists(path):
            return []
        return [r for r in read_jsonl(path) if "epoch" in r]

    def meta(self, name, which):
        return json.load(open(os.path.join(self.run_dir(name), "ckpt", which, "meta.json")))

    def pre_weights(self, model):
        step = max(glob.glob(os.path.join(self.pre[model], "step-*")),
                   key=lambda p: int(p.rsplit("-", 1)[1]))
        return st_io.load(os.path.join(step, "model.safetensors"))

    def best_weights(self, name):
        return st_io.load(os.path.join(self.run_dir(name), "ckpt", "best", "model.safetensors"))


def same_tensors(w1, w2):
    return set(w1) == set(w2) and all(w1[k].shape == w2[k].shape and np.array_equal(w1[k], w2[k])
                                      for k in w1)


def epoch_steps(e, task, batch=32):
    n = len(read_jsonl(e.task(task, "train")))
    return (n + batch - 1) // batch


# ---- Parts ---------------------------------------------------------------------------------
def check_init(e, model, spe):
    """With optim.lr = 0 the weights stay as loaded: model.init's tensors by
    name (an ELECTRA checkpoint's discriminator copy), the head fresh."""
    name = f"init_{model}"
    r = e.finetune(2, name, model=model, **{"train.epochs": "1", "optim.lr": "0"})
    check(r.returncode == 0, f"same-weights: {name}: 1 epoch with optim.lr = 0 ran" + tail(r))
    if r.returncode:
        return
    w = weights(e.runs, name, spe)
    pre = e.pre_weights(model)
    head = [k for k in w if k.startswith(("classifier.", "bert.pooler."))]
    body = [k for k in w if k not in head]
    same = all(np.array_equal(w[k], pre.get(k, pre.get("discriminator." + k))) for k in body
               if k in pre or "discriminator." + k in pre)
    known = all(k in pre or "discriminator." + k in pre for k in body)
    fresh = head and all(np.abs(w[k]).max() > 0 for k in head if k.endswith("weight"))
    check(same and known and fresh and len(body) > 20,
          f"same-weights: {name}: the {len(body)} encoder tensors are model.init's, the "
          f"{len(head)} head tensors fresh ({', '.join(head)})")


def test_same_weights(e):
    keep = ("epoch", "eval_step", "dev_accuracy", "dev_macro_f1")
    spe = epoch_steps(e, "small")
    for model in ("bert", "electra"):
        check_init(e, model, spe)
        runs, ep = {}, {}
        for n, micro in ((1, 32), (2, 8)):
            name = f"same_{model}_{n}"
            r = e.finetune(n, name, model=model, **{"train.micro_batch": str(micro)})
            check(r.returncode == 0, f"same-weights: {model}, {n} rank(s) x micro-batch {micro} ran"
                  + tail(r))
            if r.returncode == 0:
                runs[n] = weights(e.runs, name, 2 * spe)
                ep[n] = e.epochs(name)
        if len(runs) < 2:
            continue
        worst, k = compare(runs[1], runs[2])
        head = [k for k in runs[1] if k.startswith("classifier")]
        check(worst <= 1.0 and head and set(runs[1]) == set(runs[2]),
              f"same-weights: {model}: 2 ranks x 2 micro-batches vs 1 rank x 1 after {2 * spe} "
              f"steps (worst {k} at {worst:.3f} of the bound)")
        rows = [[{x: r.get(x) for x in keep} for r in ep[n]] for n in (1, 2)]
        check(len(rows[0]) == 2 and rows[0] == rows[1],
              f"same-weights: {model}: epoch lines identical: {rows[0]} vs {rows[1]}")
        loss = [[r["dev_loss"] for r in ep[n]] for n in (1, 2)]
        check(len(loss[0]) == 2 and all(abs(x - y) <= 1e-4 * abs(x) for x, y in zip(*loss)),
              f"same-weights: {model}: dev_loss {loss[0]} vs {loss[1]}")


def best_epoch(rows):
    """(epoch, eval_step, accuracy) of the first epoch with the highest accuracy."""
    top = max(r["dev_accuracy"] for r in rows)
    r = next(r for r in rows if r["dev_accuracy"] == top)
    return r["epoch"], r["eval_step"], top


def check_best(e, part, name, spe, epochs):
    """ckpt.dir/best against metrics.jsonl, for a run with ckpt.every_steps =
    the steps of an epoch (so that each epoch's end has its step-N)."""
    rows = e.epochs(name)
    if len(rows) != epochs:
        check(False, f"{part}: {name}: {len(rows)} epoch lines in metrics.jsonl, not {epochs}")
        return
    ep, step, acc = best_epoch(rows)
    meta = e.meta(name, "best")
    task = meta.get("task", {})
    # metrics.jsonl rounds to 5 decimals; meta.json keeps the double.
    check(abs(task.get("dev_accuracy", -1) - acc) <= 5e-6 and task.get("epoch") == ep
          and meta["step"] == step == ep * spe,
          f"{part}: {name}: epochs {[x['dev_accuracy'] for x in rows]}; best/ holds epoch "
          f"{task.get('epoch')} at step {meta['step']} with dev_accuracy "
          f"{task.get('dev_accuracy')} (want epoch {ep}, step {step})")
    at = os.path.join(e.run_dir(name), "ckpt", f"step-{step}", "model.safetensors")
    check(os.path.exists(at) and same_tensors(e.best_weights(name), st_io.load(at)),
          f"{part}: {name}: best/model.safetensors is bit-identical to step-{step}'s")


def predict(e, name, task, *extra):
    out = os.path.join(e.run_dir(name), "predictions%s.jsonl" % "".join(extra).replace("-", "_"))
    p = subprocess.run([e.a.train, "predict", "--checkpoint", os.path.join(e.run_dir(name), "ckpt"),
                        "--input", e.task(task, "dev"), "--out", out, *extra],
                       capture_output=True, text=True, timeout=300, env=dict(os.environ, **ONE_BLAS))
    return p, (read_jsonl(out) if p.returncode == 0 and os.path.exists(out) else [])


def check_predict(e, part, name, task):
    """`predict` on the ckpt.dir (its best/): a well-formed line per dev
    example whose accuracy is best/'s dev_accuracy; the labels do not depend
    on how the inputs are batched."""
    dev = read_jsonl(e.task(task, "dev"))
    labels = sorted({x["label"] for x in read_jsonl(e.task(task, "train"))})
    p, rows = predict(e, name, task)
    well = len(rows) == len(dev) and all(
        x["label"] in labels and set(x["probabilities"]) == set(labels)
        and abs(sum(x["probabilities"].values()) - 1) <= 1e-5
        and max(x["probabilities"], key=x["probabilities"].get) == x["label"] for x in rows)
    check(p.returncode == 0 and well,
          f"{part}: {name}: predict wrote {len(rows)} lines for {len(dev)} dev examples, labels "
          f"of the task, probabilities summing to 1"
          + ("" if p.returncode == 0 else ": " + p.stderr[-600:]))
    if not rows:
        return
    acc = sum(x["label"] == y["label"] for x, y in zip(rows, dev)) / len(dev)
    best = e.meta(name, "best")["task"]["dev_accuracy"]
    check(abs(acc - best) <= 1e-9,
          f"{part}: {name}: accuracy of the predictions {acc!r} == best/'s dev_accuracy {best!r} "
          f"({len({x['label'] for x in rows})} distinct labels predicted)")
    p7, rows7 = predict(e, name, task, "--batch", "7")
    same = len(rows7) == len(rows) and all(
        x["label"] == y["label"] and all(abs(x["probabilities"][k] - y["probabilities"][k]) <= 1e-5
                                         for k in labels) for x, y in zip(rows, rows7))
    check(p7.returncode == 0 and same, f"{part}: {name}: predict --batch 7 gives the same labels "
          f"and probabilities as --batch 32" + ("" if p7.returncode == 0 else ": " + p7.stderr[-400:]))
    # bf16 products: the same predictions within bf16's precision (a label may flip where two
    # classes are within rounding of each other).
    pb, rowsb = predict(e, name, task, "--precision", "bf16")
    if "needs a CPU with AVX512-BF16" in pb.stderr:
        print(f"SKIP {part}: {name}: predict --precision bf16: this CPU has no bf16 instructions")
        return
    dp = max((abs(x["probabilities"][k] - y["probabilities"][k]) for x, y in zip(rows, rowsb)
              for k in labels), default=1.0) if len(rowsb) == len(rows) else 1.0
    agree = sum(x["label"] == y["label"] for x, y in zip(rows, rowsb)) / max(len(rows), 1)
    check(pb.returncode == 0 and 0 < dp <= 0.05 and agree >= 0.9,
          f"{part}: {name}: predict --precision bf16: probabilities within {dp:.2e} of fp32's "
          f"(> 0: bf16 ran; <= 0.05), {agree:.1%} of the labels the same"
          + ("" if pb.returncode == 0 else ": " + pb.stderr[-400:]))


def test_best(e):
    spe = epoch_steps(e, "small")
    for model in ("bert", "electra"):
        name = f"best_{model}"
        r = e.finetune(2, name, model=model, **{"train.epochs": "3",
                                                "ckpt.every_steps": str(spe), "ckpt.keep": "10"})
        check(r.returncode == 0, f"best: {name}: 3 epochs on 2 ranks ran" + tail(r))
        if r.returncode == 0:
            check_best(e, "best", name, spe, 3)


def test_predict_export(e):
    labels = sorted({x["label"] for x in read_jsonl(e.task("small", "train"))})
    arch = {"bert": "BertForSequenceClassification", "electra": "ElectraForSequenceClassification"}
    for model in ("bert", "electra"):
        name = f"predict_{model}"
        r = e.finetune(2, name, model=model)
        check(r.returncode == 0, f"predict-export: {name}: fine-tuned" + tail(r))
        if r.returncode:
            continue
        check_predict(e, "predict-export", name, "small")
        hf = os.path.join(e.run_dir(name), "hf")
        x = subprocess.run([e.a.train, "export", "--checkpoint", os.path.join(e.run_dir(name), "ckpt"),
                            "--out", hf], capture_output=True, text=True, timeout=300)
        ok = x.returncode == 0
        if ok:
            cfg = json.load(open(os.path.join(hf, "config.json")))
            w = st_io.load(os.path.join(hf, "model.safetensors"))
            id2 = cfg.get("id2label", {})
            ok = (cfg.get("architectures") == [arch[model]]
                  and id2 == {str(i): lab for i, lab in enumerate(labels)}
                  and cfg.get("label2id") == {lab: i for i, lab in enumerate(labels)}
                  and same_tensors(w, e.best_weights(name)))
            if not ok:
                print(f"  architectures {cfg.get('architectures')}, {len(id2)} labels, tensors "
                      f"{sorted(w)[:3]}... vs {sorted(e.best_weights(name))[:3]}...")
        check(ok, f"predict-export: {name}: export writes {arch[model]}, id2label/label2id of the "
              f"{len(labels)} sorted labels and best/'s tensors"
              + ("" if x.returncode == 0 else ": " + x.stderr[-600:]))


def test_control(e):
    spe = epoch_steps(e, "mid", 16)
    over = {"train.epochs": "2", "train.global_batch": "16", "optim.lr": "6e-4",
            "train.log_every": "50", "ckpt.every_steps": str(spe), "ckpt.keep": "10"}
    runs = (("control", "fresh BERT-mini (no model.init)",
             {"model.init": None, "model.preset": "bert-mini",
              "data.tokenizer": os.path.join(e.d, "wn.model")}),
            ("from_pretrained", f"BERT-mini pretrained {PRETRAIN_STEPS} steps", {}))
    res = {}
    for name, what, keys in runs:
        t0 = time.time()
        r = e.finetune(2, name, task="mid", timeout=900, **over, **keys)
        check(r.returncode == 0, f"control: {name}: {what}: 2 epochs of {spe} steps on 2 ranks "
              f"in {time.time() - t0:.0f} s" + tail(r))
        if r.returncode == 0:
            res[what] = [x["dev_accuracy"] for x in e.epochs(name)]
            check_best(e, "control", name, spe, 2)
            check_predict(e, "control", name, "mid")
    dev = read_jsonl(e.task("mid", "dev"))
    counts = {}
    for x in read_jsonl(e.task("mid", "train")):
        counts[x["label"]] = counts.get(x["label"], 0) + 1
    major = max(counts, key=counts.get)
    base = sum(x["label"] == major for x in dev) / len(dev)
    for what, accs in res.items():
        print(f"  {what}: dev accuracy by epoch {accs} (the majority class {major}: {base:.4f})",
              flush=True)


# Bad inputs: (name, keys over a good fine-tune, pretraining instead?, pattern of the message).
def bad_cases(e):
    d = os.path.join(e.runs.workdir, "bad_inputs")
    os.makedirs(d, exist_ok=True)
    train = e.task("small", "train")
    lines = open(train).read().splitlines()
    notjson = os.path.join(d, "notjson.jsonl")
    with open(notjson, "w") as f:
        f.write("\n".join(lines[:4] + ['{"text": "a gloss", "label": noun.act}'] + lines[4:8]) + "\n")
    dev = os.path.join(d, "dev_unknown_label.jsonl")
    rows = read_jsonl(e.task("small", "dev"))[:5]
    rows.insert(2, {"text": "a gloss with a made-up label", "label": "noun.imaginary"})
    write_jsonl(dev, rows)
    notckpt = os.path.join(d, "not_a_checkpoint")
    os.makedirs(notckpt, exist_ok=True)
    open(os.path.join(notckpt, "notes.txt"), "w").write("nothing here\n")
    missing = os.path.join(d, "no_such_file.jsonl")
    return [
        ("task.train missing", {"task.train": missing}, False,
         re.escape(missing) + r".*No such file"),
        ("a line that is not JSON", {"task.train": notjson}, False,
         re.escape(notjson) + r":5: not JSON"),
        ("a dev label not in the training labels", {"task.dev": dev}, False,
         re.escape(dev) + r":3: label 'noun\.imaginary' is not one of the \d+ labels"),
        ("data.tokenizer not the checkpoint's", {"data.tokenizer": os.path.join(e.d, "other.model")},
         False, r"data\.tokenizer .*other\.model is not the tokenizer model\.init .* was "
         r"pretrained with \(fingerprint"),
        ("model.init not a checkpoint", {"model.init": notckpt}, False,
         r"model\.init: " + re.escape(notckpt) + r" is not a checkpoint"),
        ("unknown key task.foo", {"task.foo": "1"}, False, r"unknown config key 'task\.foo'"),
        ("pretraining given task.train", {"task.train": train}, True,
         r"'task\.train' is a fine-tuning key"),
    ]


NOISE = re.compile(r"Traceback|Assertion|assert|core dumped|Segmentation|backtrace|"
                   r"SIG(SEGV|ABRT|BUS)|signal \d|terminate called", re.I)


def error_lines(stderr):
    """The program's error messages: (rank or None, message without the prefix)."""
    out = []
    for line in stderr.splitlines():
        m = re.match(r"\[mlmpi(?: r(\d+))? \w+\] error: (.*?)(?:; aborting the job)?$", line)
        if m:
            out.append((m.group(1), m.group(2)))
        elif line.startswith("mlmpi-train"):
            out.append((None, line.split(": ", 1)[-1]))
    return out


def test_bad_input(e):
    for what, over, pretraining, pattern in bad_cases(e):
        name = "bad_" + re.sub(r"\W+", "_", what)
        if pretraining:
            args = [e.a.train] + sets({"data.path": os.path.join(e.d, "shards"),
                                       "train.steps": "2", "train.threads": "1", **over,
                                       "ckpt.dir": "", "log.dir": ""})
        else:
            args = e.ft_args(name, **over)
        for n in (0, 2):
            t0 = time.time()
            try:
                if n:
                    r = run_mpi(n, args, timeout=120)
                else:
                    r = subprocess.run(args, capture_output=True, text=True, timeout=120,
                                       env=dict(os.environ, **ONE_BLAS))
                rc, err = r.returncode, r.stderr
            except subprocess.TimeoutExpired as x:
                rc, err = None, (x.stderr or b"").decode(errors="replace")
            took = time.time() - t0
            errs = error_lines(err)
            msgs = {m for _, m in errs}
            ranks = [k for k, _ in errs]
            one = len(msgs) == 1 and len(ranks) == len(set(ranks)) and (n or len(errs) == 1)
            named = one and re.search(pattern, next(iter(msgs)))
            noise = NOISE.search(err)
            where = f"mpirun -np {n}" if n else "alone"
            check(rc not in (0, None) and one and named and not noise and took < 60,
                  f"bad-input: {what} ({where}): exit {rc} in {took:.1f} s, "
                  f"{len(errs)} error line(s): {sorted(msgs)}" + (f"; noise: {noise.group(0)!r}"
                                                                   if noise else ""))
            if not named:
                print("  stderr:", err[-1200:])


def test_resume(e):
    over = {"train.epochs": "2"}
    spe = epoch_steps(e, "small")
    last = 2 * spe
    t0 = time.time()
    ref = e.finetune(2, "resume_ref", **over)
    check(ref.returncode == 0, f"resume: the uninterrupted run finished in {time.time() - t0:.1f} s"
          + tail(ref))
    name = "resume_stopped"
    p = subprocess.Popen(["mpirun", "-np", "2", "--oversubscribe", "--bind-to", "none"]
                         + e.ft_args(name, **over), env=dict(os.environ, **{
                             "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                             **ONE_BLAS}), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    log = os.path.join(e.run_dir(name), "log", "metrics.jsonl")
    while time.time() - t0 < 300 and p.poll() is None and not (  # into the second epoch
            os.path.exists(log) and any(r.get("step", 0) > spe for r in read_jsonl(log))):
        time.sleep(0.02)
    ranks = rank_pids(os.path.join(name, "ckpt"))
    for pid in ranks:
        os.kill(pid, signal.SIGTERM)
    t0 = time.time()
    try:
        _, err = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
    ck = os.path.join(e.run_dir(name), "ckpt")
    steps = sorted(int(x.rsplit("-", 1)[1]) for x in glob.glob(os.path.join(ck, "step-*")))
    mid = len(steps) == 1 and spe < steps[0] < last
    best = os.path.isdir(os.path.join(ck, "best"))
    check(len(ranks) == 2 and p.returncode == 0 and "on a signal" in err and mid and best,
          f"resume: SIGTERM to {len(ranks)} ranks: exit {p.returncode} {time.time() - t0:.1f} s "
          f"later, checkpoints at steps {steps} of {last} (epochs of {spe}), best/ "
          f"{'kept' if best else 'missing'}" + ("" if p.returncode == 0 else ": " + err[-600:]))
    if not mid:
        return
    t0 = time.time()
    r = e.finetune(2, name, **over, **{"ckpt.resume": "auto"})
    check(r.returncode == 0 and f"step-{steps[0]}" in r.stderr and "resuming from" in r.stderr,
          f"resume: ckpt.resume = auto went on from step-{steps[0]} and finished in "
          f"{time.time() - t0:.1f} s" + tail(r))
    if r.returncode or ref.returncode:
        return
    same = same_tensors(weights(e.runs, "resume_ref", last), weights(e.runs, name, last))
    check(same, f"resume: the weights at step {last} are bit-identical to the uninterrupted run's")
    b1, b2 = e.meta("resume_ref", "best"), e.meta(name, "best")
    check(b1["step"] == b2["step"] and b1["task"] == b2["task"]
          and same_tensors(e.best_weights("resume_ref"), e.best_weights(name)),
          f"resume: best/ is the uninterrupted run's (epoch {b1['task'].get('epoch')} vs "
          f"{b2['task'].get('epoch')}, dev_accuracy {b1['task'].get('dev_accuracy')} vs "
          f"{b2['task'].get('dev_accuracy')})")
    check(e.epochs("resume_ref") == e.epochs(name),
          f"resume: metrics.jsonl's epoch lines equal the uninterrupted run's: "
          f"{e.epochs(name)}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    t0 = time.time()
    d = make_task(a)
    pre = pretrain(a, d)
    e = Env(a, d, pre)
    fresh_runs(e.runs)
    tests = {"same-weights": test_same_weights, "best": test_best,
             "predict-export": test_predict_export, "control": test_control,
             "bad-input": test_bad_input, "resume": test_resume}
    only = [x for x in a.only.split(",") if x]
    for name, fn in tests.items():
        if not only or name in only:
            t1 = time.time()
            fn(e)
            print(f"[{name}: {time.time() - t1:.1f} s]", flush=True)
    print(f"{len(failures)} failed" if failures else "all passed",
          f"in {time.time() - t0:.0f} s")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
