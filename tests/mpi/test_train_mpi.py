#!/usr/bin/python3
"""Data-parallel training under a real mpirun.

Builds a small real corpus (Genesis and Exodus from Debian's bible-kjv), a
SentencePiece model trained with spm_train and shards, then checks:
  zero           ZeRO-1 on 2 ranks == unsharded on 1, gradients all-reduced in
                 shared memory and reduce-scattered over MPI; its checkpoint
                 resumes on 4 ranks in 2 shared-memory groups;
  same-weights   1 rank x accumulation 4 == 2 ranks x 2 == 4 ranks x 1
                 (oversubscribed) after several LAMB steps, within 1e-5 of
                 each tensor's scale (attention key biases, whose true
                 gradient is zero, only within 1e-6 absolute);
  kill-resume    kill -9 of one rank mid-run ends the job (no hang), and
                 ckpt.resume = auto then finishes with weights bit-identical
                 to an uninterrupted run;
  kill-in-checkpoint
                 kill -9 of the writing rank while a checkpoint is being
                 written (its temporary directory exists): the previous
                 checkpoint stays intact, resume = auto starts from it,
                 removes the partial one and ends bit-identical to a run
                 never stopped;
  disk-full      ckpt.dir on a tmpfs that fills while a checkpoint is written
                 (in each of its files; with ZeRO-1 too): the ranks end together,
                 non-zero, rank 0 naming the path and the errno text; no partial
                 checkpoint is left, and the previous one resumes elsewhere
                 bit-identical to an uninterrupted run;
  signals        SIGUSR1 (to mpirun) and SIGTERM (to the ranks) make the ranks
                 checkpoint and exit 0;
  sources        training through the dataset service gives the in-process
                 weights bit for bit; BERT TFRecords train too;
  export         the Hugging Face directory loads into the reference model,
                 and config.json writes each float as the shortest decimal
                 that reads back as the model's float32 (0.1, 1e-12);
  mismatch       ranks started with different configs fail at start-up with
                 one line naming the differing rank and field;
  time-limit     under train.time_limit_s the log's progress lines show the
                 time used of the budget (not the step count the budget cuts
                 short); without it they are as they were;
  loss-falls     a short run's held-out MLM loss falls;
  stuck-rank     SIGSTOP of one of 3 ranks past comm.timeout_s: the job ends within
                 the deadline, the others' error lines naming step, collective and
                 the stopped rank; the stopped rank ends too;
  short-pause    SIGSTOP of one of 3 ranks for 2 s, then 5 s (under comm.timeout_s = 6):
                 the run ends bit-identical to an uninterrupted one;
  example        the example config in launch/examples trains on 2 ranks as
                 written (only the paths and the length overridden), with the
                 gradients summed in shared memory as its log says;
  gpt2           gpt2-tiny on causal-LM batches (data.objective = clm): 2 ranks
                 x accumulation 2 and ZeRO-1 == 1 rank x 4, checkpoint resume
                 bit-identical, held-out loss and perplexity logged and falling.
usage: test_train_mpi.py --train BIN --data BIN --workdir DIR [--only NAME,...]
"""
import argparse
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
import st_io  # noqa: E402

ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1", OMP_NUM_THREADS="1")
failures = []


def check(ok, what):
    print(("PASS " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


def mpirun(n, args, env=None, **kw):
    cmd = ["mpirun", "-np", str(n), "--oversubscribe", "--bind-to", "none"] + args
    return subprocess.run(cmd, env=dict(ENV, **(env or {})), capture_output=True, text=True, **kw)


def make_data(a):
    data = os.path.join(a.workdir, "shards")
    if os.path.exists(os.path.join(data, "train-00000.mlms")):
        return data
    os.makedirs(a.workdir, exist_ok=True)
    text = subprocess.run(["bible", "-f", "Gen1:1-Exo40:38"], capture_output=True, text=True,
                          check=True).stdout.splitlines()
    verses = [l.split(" ", 1)[1] for l in text if " " in l]
    raw = os.path.join(a.workdir, "verses.txt")
    with open(raw, "w") as f:
        f.write("\n".join(verses) + "\n")
    docs = os.path.join(a.workdir, "docs.txt")
    with open(docs, "w") as f:  # a document per 12 verses
        for i in range(0, len(verses), 12):
            f.write("\n".join(verses[i:i + 12]) + "\n\n")
    prefix = os.path.join(a.workdir, "kjv")
    subprocess.run(["spm_train", f"--input={raw}", f"--model_prefix={prefix}", "--vocab_size=1000",
                    "--user_defined_symbols=[CLS],[SEP],[MASK],[PAD]", "--minloglevel=2"],
                   check=True, capture_output=True)
    subprocess.run([a.data, "shard", "--tokenizer", prefix + ".model", "--out", data,
                    "--holdout-docs", "20", docs], check=True, capture_output=True)
    return data


def fresh_runs(a):
    """Removes the run directories an earlier invocation left (checkpoints,
    metrics) so that no run resumes or reads another's; keeps the corpora."""
    for d in os.listdir(a.workdir):
        path = os.path.join(a.workdir, d)
        if os.path.isdir(path) and d not in ("shards", "kjv_full"):
            shutil.rmtree(path)


def config(a, data, name, **over):
    keys = {
        "model.preset": "bert-tiny", "data.path": data, "data.seq_len": "64",
        "data.max_predictions": "10", "train.global_batch": "8", "train.steps": "6",
        "train.seed": "3", "train.threads": "1", "optim.lr": "0.004", "optim.warmup": "2",
        "ckpt.dir": os.path.join(a.workdir, name, "ckpt"),
        "log.dir": os.path.join(a.workdir, name, "log"),
    }
    keys.update(over)
    args = []
    for k, v in keys.items():
        args += ["--set", f"{k}={v}"]
    return args


def rank_pids(name):
    """The mlmpi-train rank processes whose command line mentions name."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            comm = open(f"/proc/{d}/comm").read().strip()
            cmd = open(f"/proc/{d}/cmdline").read()
        except OSError:
            continue
        if comm == "mlmpi-train" and name in cmd:
            pids.append(int(d))
    return pids


def wait_for(path, p, limit):
    t0 = time.time()
    while not os.path.exists(path) and time.time() - t0 < limit and p.poll() is None:
        time.sleep(0.02)
    return os.path.exists(path)


def weights(a, name, step):
    return st_io.load(os.path.join(a.workdir, name, "ckpt", f"step-{step}", "model.safetensors"))


def compare(w1, w2):
    worst, worst_name = 0.0, ""
    for k in w1:
        d = float(np.abs(w1[k] - w2[k]).max())
        if "attention.self.key.bias" in k:
            rel = d / 1e-6  # zero true gradient: rounding noise, bounded absolutely
        else:
            rel = d / (float(np.abs(w1[k]).max()) * 1e-5 + 1e-30)
        if rel > worst:
            worst, worst_name = rel, k
    return worst, worst_name


def test_same_weights(a, data):
    runs = {}
    for n, micro in ((1, 2), (2, 2), (4, 2)):
        name = f"same_{n}"
        r = mpirun(n, [a.train] + config(a, data, name, **{"train.micro_batch": str(micro)}),
                   timeout=600)
        check(r.returncode == 0, f"same-weights: {n} rank(s) x micro-batch {micro} ran"
              + ("" if r.returncode == 0 else ": " + r.stderr[-800:]))
        if r.returncode == 0:
            runs[n] = weights(a, name, 6)
    for n in (2, 4):
        if 1 in runs and n in runs:
            worst, k = compare(runs[1], runs[n])
            check(worst <= 1.0, f"same-weights: {n} ranks vs 1 rank with accumulation "
                  f"(worst {k} at {worst:.3f} of the bound)")


def test_zero(a, data):
    """ZeRO-1 equals the unsharded run, with the gradients all-reduced in
    shared memory (the default) and reduce-scattered over MPI; a ZeRO
    checkpoint resumes on another number of ranks (state gathered and
    re-sliced)."""
    base = mpirun(1, [a.train] + config(a, data, "zero_ref", **{"train.micro_batch": "2"}), timeout=600)
    check(base.returncode == 0, "zero: the unsharded 1-rank run finished"
          + ("" if base.returncode == 0 else ": " + base.stderr[-800:]))
    paths = (("zero_2", {}, "gradient all-reduce: in shared memory"),
             ("zero_2mpi", {"comm.shared_memory": "false"}, "gradient reduce-scatter: MPI"))
    for name, over, line in paths:
        z = mpirun(2, [a.train] + config(a, data, name, **{"optim.zero": "1", "ckpt.every_steps": "3", **over}),
                   timeout=600)
        check(z.returncode == 0 and line in z.stderr, f"zero: {name} ran, its log saying '{line}'"
              + ("" if z.returncode == 0 else ": " + z.stderr[-800:]))
        if base.returncode == 0 and z.returncode == 0:
            worst, k = compare(weights(a, "zero_ref", 6), weights(a, name, 6))
            check(worst <= 1.0, f"zero: 2 ranks with ZeRO-1 ({line}) vs 1 rank unsharded "
                  f"(worst {k} at {worst:.3f} of the bound)")
    if base.returncode or not os.path.isdir(os.path.join(a.workdir, "zero_2", "ckpt", "step-6")):
        return
    shutil.rmtree(os.path.join(a.workdir, "zero_2", "ckpt", "step-6"))
    # Resumed as 2 "nodes" of 2 ranks: the shared-memory sum on each, MPI between.
    r = mpirun(4, [a.train] + config(a, data, "zero_2", **{"optim.zero": "1", "ckpt.resume": "auto",
                                                          "train.micro_batch": "2"}), timeout=600,
               env={"MLMPI_COMM_GROUP": "2"})
    check(r.returncode == 0 and "resuming from" in r.stderr and "step 3" in r.stderr
          and "in shared memory on each node, MPI across nodes" in r.stderr,
          "zero: a 2-rank checkpoint resumed on 4 ranks (2 groups of 2 sharing memory)"
          + ("" if r.returncode == 0 else ": " + r.stderr[-800:]))
    if r.returncode == 0:
        worst, k = compare(weights(a, "zero_ref", 6), weights(a, "zero_2", 6))
        check(worst <= 1.0, f"zero: resumed on 4 ranks vs 1 rank (worst {k} at {worst:.3f} of the bound)")


def test_kill_resume(a, data):
    over = {"train.steps": "120", "ckpt.every_steps": "10", "comm.timeout_s": "20"}
    ref = mpirun(2, [a.train] + config(a, data, "uninterrupted", **over), timeout=900)
    check(ref.returncode == 0, "kill-resume: the uninterrupted run finished")
    name = "killed"
    ck = os.path.join(a.workdir, name, "ckpt")
    args = ["mpirun", "-np", "2", "--oversubscribe", "--bind-to", "none", a.train] + \
        config(a, data, name, **over)
    p = subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(os.path.join(ck, "step-20"), p, 300)
    ranks = rank_pids(name)
    t0 = time.time()
    if ranks:
        os.kill(ranks[-1], signal.SIGKILL)
    try:
        p.communicate(timeout=60)
        ended = True
    except subprocess.TimeoutExpired:
        p.kill()
        ended = False
    done = os.path.exists(os.path.join(ck, "step-120"))
    check(len(ranks) == 2 and ended and p.returncode != 0 and not done,
          f"kill-resume: kill -9 of one of {len(ranks)} ranks ended the job in "
          f"{time.time() - t0:.1f} s with exit {p.returncode}")
    r = mpirun(2, [a.train] + config(a, data, name, **over, **{"ckpt.resume": "auto"}), timeout=900)
    check(r.returncode == 0 and "resuming from" in r.stderr, "kill-resume: ckpt.resume = auto resumed"
          + ("" if r.returncode == 0 else ": " + r.stderr[-800:]))
    if r.returncode == 0 and ref.returncode == 0:
        w1, w2 = weights(a, "uninterrupted", 120), weights(a, name, 120)
        same = all(np.array_equal(w1[k], w2[k]) for k in w1)
        check(same, "kill-resume: weights after resuming are bit-identical to the uninterrupted run")


def test_kill_in_checkpoint(a, data):
    # BERT-mini: a checkpoint large enough that writing it takes a while.
    over = {"model.preset": "bert-mini", "train.steps": "80", "ckpt.every_steps": "10",
            "comm.timeout_s": "20"}
    ref = mpirun(2, [a.train] + config(a, data, "ckpt_uninterrupted", **over), timeout=900)
    check(ref.returncode == 0, "kill-in-checkpoint: the uninterrupted run finished"
          + ("" if ref.returncode == 0 else ": " + ref.stderr[-600:]))
    name = "ckpt_killed"
    ck = os.path.join(a.workdir, name, "ckpt")
    args = ["mpirun", "-np", "2", "--oversubscribe", "--bind-to", "none", a.train] + \
        config(a, data, name, **over)
    p = subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(os.path.join(ck, "step-10"), p, 300)
    killed, t0 = None, time.time()
    # The writer's temporary directory is .step-N.tmp<its pid>: kill it there.
    while killed is None and p.poll() is None and time.time() - t0 < 300:
        for e in os.listdir(ck) if os.path.isdir(ck) else []:
            m = re.match(r"\.step-(\d+)\.tmp(\d+)$", e)
            if m and int(m.group(1)) > 10:
                try:
                    os.kill(int(m.group(2)), signal.SIGKILL)
                    killed = int(m.group(1))
                except ProcessLookupError:
                    pass
                break
        time.sleep(0.0005)
    try:
        p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
    before = sorted(int(e[5:]) for e in os.listdir(ck) if re.match(r"step-\d+$", e))
    partial = [e for e in os.listdir(ck) if ".tmp" in e]
    check(killed is not None and p.returncode != 0 and before and before[-1] == killed - 10
          and partial,
          f"kill-in-checkpoint: writer killed while writing step {killed} (exit {p.returncode}); "
          f"complete checkpoints left {before}, partial {partial}")
    r = mpirun(2, [a.train] + config(a, data, name, **over, **{"ckpt.resume": "auto"}),
               timeout=900)
    resumed = re.search(r"resuming from \S*step-(\d+)", r.stderr)
    check(r.returncode == 0 and resumed and killed and int(resumed.group(1)) == killed - 10
          and not [e for e in os.listdir(ck) if ".tmp" in e],
          f"kill-in-checkpoint: resumed from step {resumed.group(1) if resumed else None}, "
          f"the partial checkpoint removed" + ("" if r.returncode == 0 else ": " + r.stderr[-800:]))
    if r.returncode == 0 and ref.returncode == 0:
        w1, w2 = weights(a, "ckpt_uninterrupted", 80), weights(a, name, 80)
        same = all(np.array_equal(w1[k], w2[k]) for k in w1)
        check(same, "kill-in-checkpoint: weights at the end are bit-identical to the "
              "uninterrupted run")


def test_signals(a, data):
    """SIGUSR1 to mpirun (which forwards it) and SIGTERM to each rank (as
    srun and Slurm deliver it): the ranks checkpoint and exit 0."""
    for sig, target in ((signal.SIGUSR1, "mpirun"), (signal.SIGTERM, "ranks")):
        name = f"signal_{sig.name}"
        args = ["mpirun", "-np", "2", "--oversubscribe", "--bind-to", "none", a.train] + \
            config(a, data, name, **{"train.steps": "100000", "ckpt.every_steps": "0"})
        p = subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        log = os.path.join(a.workdir, name, "log", "metrics.jsonl")
        t0 = time.time()
        while time.time() - t0 < 120 and p.poll() is None:
            if os.path.exists(log) and os.path.getsize(log) > 0:
                break
            time.sleep(0.05)
        if target == "mpirun":
            p.send_signal(sig)
        else:
            for pid in rank_pids(name):
                os.kill(pid, sig)
        try:
            out, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        ck = glob.glob(os.path.join(a.workdir, name, "ckpt", "step-*"))
        check(p.returncode == 0 and len(ck) == 1 and "on a signal" in err,
              f"signals: {sig.name} to the {target}: exit {p.returncode}, checkpoints "
              f"{[os.path.basename(c) for c in ck]}" + ("" if p.returncode == 0 else ": " + err[-600:]))


def test_sources(a, data):
    """The service gives the in-process batches (so the same weights, bit for
    bit); BERT TFRecords exported by mlmpi train through the same trainer."""
    import socket
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    srv = subprocess.Popen([a.data, "serve", "--data", data, "--port", str(port), "--workers", "2"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ref = mpirun(2, [a.train] + config(a, data, "src_local"), timeout=600)
        via = mpirun(2, [a.train] + config(a, data, "src_service", **{
            "data.service": f"127.0.0.1:{port}"}), timeout=600)
    finally:
        srv.terminate()
        srv.wait(timeout=30)
    check(ref.returncode == 0 and via.returncode == 0, "sources: in-process and service runs finished"
          + ("" if via.returncode == 0 else ": " + via.stderr[-800:]))
    if ref.returncode == 0 and via.returncode == 0:
        w1, w2 = weights(a, "src_local", 6), weights(a, "src_service", 6)
        check(all(np.array_equal(w1[k], w2[k]) for k in w1),
              "sources: training through the service gives bit-identical weights")
    tfr = os.path.join(a.workdir, "export.tfrecord")
    subprocess.run([a.data, "tfrecord-export", "--data", data, "--out", tfr, "--seq-len", "64",
                    "--max-predictions", "10", "--instances", "nsp", "--count", "64"],
                   check=True, capture_output=True)
    cfgp = os.path.join(a.workdir, "bert_tiny_config.json")
    with open(cfgp, "w") as f:
        json.dump({"architectures": ["BertForPreTraining"], "vocab_size": 1000, "hidden_size": 128,
                   "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 512,
                   "max_position_embeddings": 128, "hidden_dropout_prob": 0.1,
                   "attention_probs_dropout_prob": 0.1}, f)
    r = mpirun(2, [a.train] + config(a, tfr, "src_tfrecord", **{"model.config": cfgp}), timeout=600)
    losses = []
    log = os.path.join(a.workdir, "src_tfrecord", "log", "metrics.jsonl")
    if os.path.exists(log):
        losses = [json.loads(l)["nsp_loss"] for l in open(log) if '"loss"' in l]
    check(r.returncode == 0 and len(losses) == 6 and all(x > 0 for x in losses),
          "sources: 2 ranks train from BERT TFRecords (with NSP) exported by mlmpi-data"
          + ("" if r.returncode == 0 else ": " + r.stderr[-800:]))


def test_export(a, data):
    """A checkpoint exported in the Hugging Face layout loads into the
    independent reference model by name, nothing missing or left over."""
    import bert_ref
    name = "export"
    r = mpirun(1, [a.train] + config(a, data, name, **{"train.steps": "2"}), timeout=600)
    out = os.path.join(a.workdir, name, "hf")
    e = subprocess.run([a.train, "export", "--checkpoint", os.path.join(a.workdir, name, "ckpt", "step-2"),
                        "--out", out], capture_output=True, text=True)
    ok = r.returncode == 0 and e.returncode == 0
    if ok:
        cfg = json.load(open(os.path.join(out, "config.json")))
        w = st_io.load(os.path.join(out, "model.safetensors"))
        want = dict(bert_ref.param_shapes(cfg))
        ok = set(want) == set(w) and all(tuple(w[k].shape) == tuple(v) for k, v in want.items())
        ck = weights(a, name, 2)
        ok = ok and all(np.array_equal(ck[k], w[k]) for k in w)
    check(ok, "export: the Hugging Face directory matches the reference model's names and shapes"
          + ("" if e.returncode == 0 else ": " + e.stderr[-400:]))
    if e.returncode == 0:
        check_config_floats(os.path.join(out, "config.json"))
        # The tokenizer the data were made with goes along, as Hugging Face names it.
        spm = os.path.join(out, "spiece.model")
        same = os.path.exists(spm) and open(spm, "rb").read() == open(
            os.path.join(a.workdir, "kjv.model"), "rb").read()
        check(same, "export: the SentencePiece model the shards were made with is spiece.model")


def shortest_float32(token):
    """The shortest decimal (%.Pg, P = 1..9) that reads back as float32(token)."""
    f = np.float32(token)
    return next(t for t in ("%.*g" % (p, f) for p in range(1, 10)) if np.float32(t) == f)


def check_config_floats(path):
    """config.json's floats as Hugging Face writes them: bert-tiny's 0.1 and
    1e-12 literally, and every float the shortest decimal of a float32 that
    is the preset's value (not 0.10000000149011612, float32(0.1) through double)."""
    text = open(path).read()
    raw = {k: v for k, v in json.loads(text, parse_float=str).items() if isinstance(v, str)
           and re.fullmatch(r"-?[0-9.]+([eE][-+]?[0-9]+)?", v)}
    want = {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
            "layer_norm_eps": 1e-12, "initializer_range": 0.02}
    literal = all(re.search(rf'"{k}":\s*{re.escape(v)}\s*[,}}]', text)
                  for k, v in (("hidden_dropout_prob", "0.1"), ("layer_norm_eps", "1e-12")))
    exact = set(raw) == set(want) and all(
        float(v) == float(shortest_float32(v)) and np.float32(v) == np.float32(want[k])
        for k, v in raw.items())
    check(literal and exact, f"export: config.json's floats are the shortest decimals of the "
          f"preset's float32 values: {raw}")


def test_mismatch(a, data):
    c1 = config(a, data, "mismatch")
    c2 = config(a, data, "mismatch", **{"optim.lr": "0.01"})
    cmd = ["mpirun", "--oversubscribe", "-np", "1", a.train] + c1 + [":", "-np", "1", a.train] + c2
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
    lines = [l for l in r.stderr.splitlines() if "differs" in l]
    check(r.returncode != 0 and len(lines) == 1 and "rank 1" in lines[0] and "config" in lines[0],
          f"mismatch: exit {r.returncode}, message {lines}")


def test_time_limit(a, data):
    """The log's progress lines under train.time_limit_s: `step N time U/B s`,
    with no /1000000 from the steps the budget cuts short; with steps that
    end first `step N/STEPS time U/B s`; without a limit `step N/STEPS` only."""
    cases = (("time_budget", {"train.steps": "1000000", "train.time_limit_s": "3"},
              r"step (\d+) time ([0-9.]+)/3 s loss "),
             ("time_steps", {"train.steps": "4", "train.time_limit_s": "600"},
              r"step (\d+)/4 time ([0-9.]+)/600 s loss "),
             ("time_none", {"train.steps": "4"}, r"step (\d+)/4 loss "))
    for name, over, pattern in cases:
        r = mpirun(1, [a.train] + config(a, data, name, **{"train.log_every": "1", **over}),
                   timeout=300)
        lines = [l for l in r.stderr.splitlines() if re.search(r"\bstep \d+\S* .*tok/s", l)]
        got = [re.search(pattern, l) for l in lines]
        steps = [int(m.group(1)) for m in got if m]
        used = [float(m.group(2)) for m in got if m and m.lastindex == 2]
        ok = (r.returncode == 0 and lines and all(got) and steps == list(range(1, len(lines) + 1))
              and used == sorted(used))
        if name == "time_budget":
            ok = ok and len(steps) > 1 and 3 <= used[-1] < 10 and "on a time limit" in r.stderr
        check(ok, f"time-limit: {name}: {len(lines)} progress lines like "
              f"{lines[-1].split('] ')[-1][:60] if lines else None!r} match {pattern!r}"
              + ("" if r.returncode == 0 else ": " + r.stderr[-600:]))


def test_example(a, data):
    ini = os.path.join(HERE, "..", "..", "launch", "examples", "kjv-bert-mini.ini")
    run = os.path.join(a.workdir, "example")
    over = {"data.path": data, "train.steps": "3", "train.threads": "1",
            "ckpt.dir": os.path.join(run, "ckpt"), "log.dir": os.path.join(run, "log")}
    args = [x for k, v in over.items() for x in ("--set", f"{k}={v}")]
    r = mpirun(2, [a.train, "--config", ini] + args, timeout=600)
    rows = []
    path = os.path.join(run, "log", "metrics.jsonl")
    if os.path.exists(path):
        rows = [json.loads(l) for l in open(path) if '"step_s"' in l]
    shared = "gradient all-reduce: in shared memory on each node" in r.stderr
    check(r.returncode == 0 and len(rows) == 3 and shared,
          f"example: {os.path.basename(ini)} on 2 ranks: exit {r.returncode}, {len(rows)} steps logged, "
          f"shared-memory all-reduce {'logged' if shared else 'NOT logged'}"
          + ("" if r.returncode == 0 else ": " + r.stderr[-600:]))


def test_loss_falls(a, data):
    name = "falls"
    r = mpirun(2, [a.train] + config(a, data, name, **{
        "train.steps": "90", "train.eval_every": "30", "train.eval_batches": "2",
        "train.global_batch": "16", "optim.lr": "0.01", "optim.warmup": "6", "ckpt.dir": ""}),
        timeout=900)
    evals = []
    log = os.path.join(a.workdir, name, "log", "metrics.jsonl")
    if os.path.exists(log):
        evals = [json.loads(l)["eval_loss"] for l in open(log) if "eval_loss" in l]
    falling = len(evals) == 3 and evals[0] > evals[1] > evals[2] and evals[2] < evals[0] - 0.3
    # The TensorBoard event file, read independently, holds the same curve.
    import tfevents
    ev = glob.glob(os.path.join(a.workdir, name, "log", "events.out.tfevents.*"))
    if ev:
        version, events = tfevents.read_events(ev[0])
        train = [(st, d["train/loss"]) for st, d in events if "train/loss" in d]
        jl = [json.loads(l) for l in open(log) if '"loss"' in l]
        same = len(train) == len(jl) and all(
            st == j["step"] and abs(v - j["loss"]) < 1e-4 * abs(j["loss"]) for (st, v), j in zip(train, jl))
        check(version == "brain.Event:2" and same and
              sum("eval/loss" in d for _, d in events) == 3,
              f"loss-falls: TensorBoard events ({len(train)} train scalars) match metrics.jsonl")
    else:
        check(False, "loss-falls: no TensorBoard event file")
    check(r.returncode == 0 and falling,
          f"loss-falls: held-out loss {['%.3f' % e for e in evals]}"
          + ("" if r.returncode == 0 else ": " + r.stderr[-600:]))


def test_gpt2(a, data):
    """GPT-2 (gpt2-tiny) on causal-LM batches of the same shards
    (data.objective = clm): 2 ranks x accumulation 2 and 2 ranks with ZeRO-1
    equal 1 rank x accumulation 4; a checkpoint resumes bit-identically;
    held-out loss and perplexity are logged and the loss falls."""
    gpt = {"model.preset": "gpt2-tiny", "data.objective": "clm", "train.micro_batch": "2"}
    runs = {}
    for name, n, over in (("gpt2_1", 1, {}), ("gpt2_2", 2, {"ckpt.every_steps": "3"}),
                          ("gpt2_zero", 2, {"optim.zero": "1"})):
        r = mpirun(n, [a.train] + config(a, data, name, **gpt, **over), timeout=600)
        check(r.returncode == 0, f"gpt2: {name} ({n} rank(s)) ran"
              + ("" if r.returncode == 0 else ": " + r.stderr[-800:]))
        if r.returncode == 0:
            runs[name] = weights(a, name, 6)
    for name in ("gpt2_2", "gpt2_zero"):
        if "gpt2_1" in runs and name in runs:
            worst, k = compare(runs["gpt2_1"], runs[name])
            check(worst <= 1.0, f"gpt2: {name} vs 1 rank with accumulation 4 after 6 LAMB steps "
                  f"(worst {k} at {worst:.3f} of the bound)")
    if "gpt2_2" in runs:
        shutil.rmtree(os.path.join(a.workdir, "gpt2_2", "ckpt", "step-6"))
        r = mpirun(2, [a.train] + config(a, data, "gpt2_2", **gpt, **{
            "ckpt.every_steps": "3", "ckpt.resume": "auto"}), timeout=600)
        same = r.returncode == 0 and all(
            np.array_equal(runs["gpt2_2"][k], w) for k, w in weights(a, "gpt2_2", 6).items())
        check(same and "resuming from" in r.stderr,
              "gpt2: resumed from the step-3 checkpoint, weights at step 6 bit-identical"
              + ("" if r.returncode == 0 else ": " + r.stderr[-800:]))
    name = "gpt2_falls"
    r = mpirun(2, [a.train] + config(a, data, name, **gpt, **{
        "train.steps": "90", "train.eval_every": "30", "train.eval_batches": "2",
        "train.global_batch": "16", "optim.lr": "0.01", "optim.warmup": "6", "ckpt.dir": ""}),
        timeout=900)
    log = os.path.join(a.workdir, name, "log", "metrics.jsonl")
    evals = [json.loads(l) for l in open(log) if "eval_loss" in l] if os.path.exists(log) else []
    losses = [e["eval_loss"] for e in evals]
    ppl_ok = len(evals) == 3 and all(abs(e["eval_ppl"] - float(np.exp(e["eval_loss"]))) <= 1e-3 * e["eval_ppl"]
                                     for e in evals)
    falling = len(losses) == 3 and losses[0] > losses[1] > losses[2] and losses[2] < losses[0] - 0.3
    # The loss is the mean cross-entropy per target of the global batch (the
    # normaliser Σ target_weights): a fresh model's is near ln(vocabulary).
    ln_v = float(np.log(sum(1 for _ in open(os.path.join(a.workdir, "kjv.vocab")))))
    first = [json.loads(l)["loss"] for l in open(log) if '"loss"' in l][:1] if os.path.exists(log) else []
    check(len(first) == 1 and abs(first[0] - ln_v) < 0.5,
          f"gpt2: step-1 loss {first[0] if first else None} is a per-target mean, near ln V = {ln_v:.3f}")
    check(r.returncode == 0 and falling and ppl_ok,
          f"gpt2: held-out loss {['%.3f' % x for x in losses]}, perplexity "
          f"{['%.1f' % e['eval_ppl'] for e in evals]} over 90 steps on 2 ranks"
          + ("" if r.returncode == 0 else ": " + r.stderr[-600:]))


def test_corrupt_resume(a, data):
    """Fault: a byte flipped in the newest checkpoint (model weights, then optimizer state).
    ckpt.resume = auto must name the damaged file, skip to the newest good checkpoint, and
    end bit-identical to the uninterrupted run."""
    over = {"train.steps": "9", "ckpt.every_steps": "3", "ckpt.keep": "3"}
    name = "corrupt"
    ck = os.path.join(a.workdir, name, "ckpt")
    r = mpirun(2, [a.train] + config(a, data, name, **over), timeout=600)
    check(r.returncode == 0, "corrupt-resume: the uninterrupted 9-step run finished"
          + ("" if r.returncode == 0 else ": " + r.stderr[-800:]))
    if r.returncode != 0:
        return
    ref = weights(a, name, 9)
    saved = os.path.join(a.workdir, name, "step-6.good")
    shutil.copytree(os.path.join(ck, "step-6"), saved)
    for victim in ("model.safetensors", "optimizer.safetensors"):
        shutil.rmtree(os.path.join(ck, "step-9"))
        shutil.rmtree(os.path.join(ck, "step-6"))
        shutil.copytree(saved, os.path.join(ck, "step-6"))
        path = os.path.join(ck, "step-6", victim)
        with open(path, "r+b") as f:  # one bit, in the tensor data past the header
            size = os.path.getsize(path)
            f.seek(size - size // 3)
            b = f.read(1)
            f.seek(size - size // 3)
            f.write(bytes([b[0] ^ 0x10]))
        r = mpirun(2, [a.train] + config(a, data, name, **over, **{"ckpt.resume": "auto"}),
                   timeout=600)
        named = f"step-6: {victim} is damaged" in r.stderr
        resumed = "resuming from" in r.stderr and "step-3" in r.stderr
        same = r.returncode == 0 and all(np.array_equal(ref[k], v)
                                         for k, v in weights(a, name, 9).items())
        check(named and resumed and same,
              f"corrupt-resume: injected one flipped bit in step-6/{victim}; checked that the "
              f"resume names it ({named}), restarts from step-3 ({resumed}) and ends "
              f"bit-identical at step 9 ({same})" + ("" if r.returncode == 0 else ": " + r.stderr[-800:]))


def test_nonfinite(a, data):
    """Fault: a NaN written into rank 1's gradient during step 4's backward (before the
    all-reduce; MLMPI_FAULT_NONFINITE=1:4). Every rank must skip step 4 identically (the
    weights after it equal those before it), count it in metrics.jsonl, and go on."""
    name = "nonfinite"
    over = {"train.steps": "6", "ckpt.every_steps": "1", "ckpt.keep": "6"}
    r = mpirun(2, [a.train] + config(a, data, name, **over), timeout=600,
               env={"MLMPI_FAULT_NONFINITE": "1:4"})
    injected = "fault injected (MLMPI_FAULT_NONFINITE)" in r.stderr
    log = os.path.join(a.workdir, name, "log", "metrics.jsonl")
    rows = [json.loads(l) for l in open(log) if '"step_s"' in l] if os.path.exists(log) else []
    skipped = [j["step"] for j in rows if j.get("skipped")]
    w3, w4, w6 = (weights(a, name, k) for k in (3, 4, 6)) if r.returncode == 0 else ({}, {}, {})
    held = bool(w3) and all(np.array_equal(w3[k], w4[k]) for k in w3)
    moved = bool(w3) and any(not np.array_equal(w4[k], w6[k]) for k in w4)
    finite = bool(w6) and all(np.all(np.isfinite(v)) for v in w6.values())
    check(r.returncode == 0 and injected and skipped == [4] and held and moved and finite,
          f"nonfinite: injected a NaN into rank 1's gradient at step 4; checked: the run ended "
          f"(exit {r.returncode}), skipped steps {skipped} (want [4]), weights unchanged by "
          f"step 4 ({held}), training went on ({moved}), final weights finite ({finite})"
          + ("" if r.returncode == 0 else ": " + r.stderr[-600:]))


def run_bounded(args, limit):
    """mpirun ARGS in its own session; past `limit` seconds the whole group (mpirun and
    its ranks) is killed. Returns (exit code or None when it hung, stderr, seconds)."""
    p = subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    t0 = time.time()
    try:
        _, err = p.communicate(timeout=limit)
        return p.returncode, err, time.time() - t0
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        _, err = p.communicate()
        return None, err, time.time() - t0


def test_disk_full(a, data):
    """Fault: ckpt.dir on a tmpfs too small for a second checkpoint (the first fits), sized
    so the second runs out of space in model.safetensors, in optimizer.safetensors or in
    meta.json; with ZeRO-1 too, where rank 1 waits while rank 0 writes the gathered state.
    The job must end non-zero in bounded time with every rank ending together (no abort,
    no hang), rank 0 saying once which path failed and why (the errno text), no partial
    checkpoint left, the previous checkpoint intact; resumed elsewhere (ckpt.dir copied
    to the ordinary disk) the run ends bit-identical to an uninterrupted one."""
    # The job must end well inside comm.timeout_s: a rank left waiting out a collective's
    # deadline (never told of the failed write) counts as hung.
    over = {"train.steps": "9", "ckpt.every_steps": "3", "ckpt.keep": "1", "comm.timeout_s": "90"}
    page = 4096
    pages = lambda path: -(-os.path.getsize(path) // page)
    cases = (("model", {}, "model.safetensors"), ("optimizer", {}, "optimizer.safetensors"),
             ("meta", {}, "meta.json"), ("zero-optimizer", {"optim.zero": "1"}, "optimizer.safetensors"))
    refs = {}
    for zero in ("0", "1"):  # uninterrupted runs on the ordinary disk; they also give the sizes
        name = f"diskfull_ref{zero}"
        r = mpirun(2, [a.train] + config(a, data, name, **over, **{"optim.zero": zero}), timeout=600)
        check(r.returncode == 0, f"disk-full: the uninterrupted run (optim.zero = {zero}) finished"
              + ("" if r.returncode == 0 else ": " + r.stderr[-600:]))
        if r.returncode:
            return
        refs[zero] = os.path.join(a.workdir, name, "ckpt", "step-9")
    for case, extra, victim in cases:
        zero = extra.get("optim.zero", "0")
        size = {f: pages(os.path.join(refs[zero], f))
                for f in ("model.safetensors", "optimizer.safetensors", "meta.json")}
        total = sum(size.values())
        free = {"model": size["model.safetensors"] // 2,
                "optimizer": size["model.safetensors"] + size["optimizer.safetensors"] // 2,
                "meta": total - 1}[case.split("-")[-1]]
        name = f"diskfull_{case}"
        mnt = os.path.join(a.workdir, name, "mnt")
        os.makedirs(mnt)
        ck = os.path.join(mnt, "ckpt")
        m = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={(total + free) * page // 1024}k",
                            "tmpfs", mnt], capture_output=True, text=True)
        if m.returncode:
            print(f"SKIP disk-full: cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): "
                  f"{m.stderr.strip()}")
            return
        moved = os.path.join(a.workdir, name, "ckpt")
        try:
            args = ["mpirun", "-np", "2", "--oversubscribe", "--bind-to", "none", a.train] + \
                config(a, data, name, **over, **extra, **{"ckpt.dir": ck})
            rc, err, took = run_bounded(args, 120)
            lines = [l for l in err.splitlines() if "No space left on device" in l]
            named = len(lines) == 1 and f"{ck}/step-6" in lines[0] and victim in lines[0]
            together = "aborting the job" not in err and "MPI_ABORT" not in err
            left = sorted(os.listdir(ck)) if os.path.isdir(ck) else []
            check(rc not in (None, 0) and took < 45 and named and together and left == ["step-3"],
                  f"disk-full: {case}: tmpfs of {total + free} pages (a checkpoint takes {total}) "
                  f"filled while writing step-6's {victim}; checked: the job ended in {took:.1f} s "
                  f"with exit {rc} (want non-zero, within 45 s), every rank ending together "
                  f"({together}), one line naming the path and errno ({named}: {lines}), "
                  f"ckpt.dir holding only the previous checkpoint ({left})"
                  + ("" if named and together else ": " + err[-800:]))
            if os.path.isdir(ck):
                shutil.copytree(ck, moved)
        finally:
            subprocess.run(["umount", mnt], check=False)
        if not os.path.isdir(moved):
            continue
        r = mpirun(2, [a.train] + config(a, data, name, **over, **extra,
                                         **{"ckpt.dir": moved, "ckpt.resume": "auto"}), timeout=600)
        resumed = re.search(r"resuming from \S*step-(\d+)", r.stderr)
        w1 = st_io.load(os.path.join(refs[zero], "model.safetensors"))
        w2 = weights(a, name, 9) if r.returncode == 0 else {}
        same = w1.keys() == w2.keys() and all(np.array_equal(w1[k], w2[k]) for k in w1)
        check(r.returncode == 0 and resumed and resumed.group(1) == "3" and same,
              f"disk-full: {case}: the previous checkpoint, copied to the ordinary disk, resumed "
              f"from step {resumed.group(1) if resumed else None} (want 3) and ended bit-identical "
              f"to the uninterrupted run ({same})" + ("" if r.returncode == 0 else ": " + r.stderr[-600:]))


def test_bf16(a, data):
    """model.precision = bf16 through the trainer: 2 ranks equal 1 rank with accumulation
    (the all-reduce is fp32, so the same bound as fp32), a resume is bit-identical, the
    run is not the fp32 run, and a CPU without bf16 instructions is refused in one line."""
    bf = {"model.precision": "bf16", "train.micro_batch": "2", "ckpt.every_steps": "1",
          "ckpt.keep": "6"}
    runs = {}
    for n in (1, 2):
        name = f"bf16_{n}"
        r = mpirun(n, [a.train] + config(a, data, name, **bf), timeout=600)
        if "needs a CPU with AVX512-BF16" in r.stderr:
            print("SKIP bf16: this CPU has no bf16 matrix instructions: " + r.stderr.strip()[-300:])
            return
        check(r.returncode == 0, f"bf16: {n} rank(s) x micro-batch 2 ran"
              + ("" if r.returncode == 0 else ": " + r.stderr[-800:]))
        if r.returncode == 0:
            runs[n] = weights(a, name, 6)
    if len(runs) == 2:
        # After one step the runs differ only by the order of fp32 sums (micro-batches
        # accumulated on one rank, or pairs all-reduced): the fp32 bound holds.
        worst, k = compare(weights(a, "bf16_1", 1), weights(a, "bf16_2", 1))
        check(worst <= 1.0, f"bf16: 2 ranks vs 1 rank with accumulation after 1 step (worst "
              f"{k} at {worst:.3f} of the fp32 bound)")
        # Later, a master weight within 1e-7 of a bf16 rounding boundary may round to the
        # neighbouring bf16 value in one run and not the other, a 2^-8 step in that
        # weight's products: the runs drift apart faster than in fp32, bounded at 100x the
        # fp32 bound (1e-3 of a tensor's largest weight; a lost micro-batch moves weights
        # by about lr = 4e-3 of their size per step).
        worst, k = compare(runs[1], runs[2])
        check(worst <= 100.0, f"bf16: 2 ranks vs 1 rank with accumulation after 6 steps (worst "
              f"{k} at {worst / 100:.3f} of 100x the fp32 bound)")
    f = mpirun(1, [a.train] + config(a, data, "bf16_fp32", **dict(bf, **{"model.precision": "fp32"})),
               timeout=600)
    if 1 in runs and f.returncode == 0:
        w32 = weights(a, "bf16_fp32", 6)
        differ = [k for k in w32 if not np.array_equal(w32[k], runs[1][k])]
        check(len(differ) > len(w32) // 2, f"bf16: the bf16 run differs from the fp32 run "
              f"({len(differ)} of {len(w32)} tensors)")
    # Resume: drop the last checkpoints of the 2-rank run and run again from step 3.
    last = os.path.join(a.workdir, "bf16_2", "ckpt", "step-6")
    if 2 in runs and os.path.isdir(last):
        for st in (4, 5, 6):
            shutil.rmtree(os.path.join(a.workdir, "bf16_2", "ckpt", f"step-{st}"))
        r = mpirun(2, [a.train] + config(a, data, "bf16_2", **dict(bf, **{"ckpt.resume": "auto"})),
                   timeout=600)
        ok = r.returncode == 0 and "resuming from" in r.stderr
        same = ok and all(np.array_equal(runs[2][k], v) for k, v in weights(a, "bf16_2", 6).items())
        check(same and "step 3" in r.stderr,
              "bf16: resumed from step 3, the weights at step 6 are bit-identical"
              + ("" if r.returncode == 0 else ": " + r.stderr[-800:]))
    # oneDNN told to dispatch no further than AVX-512 without BF16: refused, said once.
    r = mpirun(2, [a.train] + config(a, data, "bf16_noisa", **bf), timeout=300,
               env={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"})
    lines = [l for l in r.stderr.splitlines() if "needs a CPU with AVX512-BF16 or AMX" in l]
    check(r.returncode != 0 and len(lines) == 1,
          f"bf16: without AVX512-BF16 the run stops (exit {r.returncode}) with one line: "
          + (lines[0].strip() if lines else r.stderr[-400:]))


def test_bf16_equivalence(a, data):
    """BERT-mini from the same seed in fp32 and bf16 for 300 steps: the held-out MLM loss of
    bf16 within 1% of fp32's at the same steps."""
    over = {"model.preset": "bert-mini", "data.seq_len": "64", "data.max_predictions": "10",
            "train.global_batch": "16", "train.steps": "300", "train.eval_every": "100",
            "train.eval_batches": "8", "train.threads": "2", "optim.lr": "0.002",
            "optim.warmup": "30", "ckpt.dir": ""}
    evals = {}
    for prec in ("fp32", "bf16"):
        name = f"equiv_{prec}"
        r = mpirun(1, [a.train] + config(a, data, name, **dict(over, **{"model.precision": prec})),
                   timeout=900)
        if "needs a CPU with AVX512-BF16" in r.stderr:
            print("SKIP bf16-equivalence: this CPU has no bf16 matrix instructions")
            return
        log = os.path.join(a.workdir, name, "log", "metrics.jsonl")
        rows = [json.loads(l) for l in open(log)] if os.path.exists(log) else []
        evals[prec] = {j["eval_step"]: j["eval_loss"] for j in rows if "eval_loss" in j}
        check(r.returncode == 0 and len(evals[prec]) == 3,
              f"bf16-equivalence: {prec} ran, held-out loss {evals[prec]}"
              + ("" if r.returncode == 0 else ": " + r.stderr[-600:]))
    e32, e16 = evals["fp32"], evals["bf16"]
    if len(e32) == 3 and e32.keys() == e16.keys():
        rel = {s: abs(e16[s] - e32[s]) / e32[s] for s in e32}
        falls = e32[300] < e32[100] - 0.1
        check(falls and max(rel.values()) <= 0.01,
              f"bf16-equivalence: held-out MLM loss bf16 vs fp32 within 1% at every evaluation "
              + ", ".join(f"step {s}: {e16[s]:.4f} vs {e32[s]:.4f} ({rel[s] * 100:.2f}%)"
                          for s in sorted(rel)) + ("" if falls else "; fp32 did not learn"))


def rank_of(pid):
    """The MPI rank of a rank process (from its environment), or None."""
    try:
        env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    except OSError:
        return None
    for kv in env:
        if kv.startswith(b"OMPI_COMM_WORLD_RANK="):
            return int(kv.split(b"=", 1)[1])
    return None


def alive(pid):
    """Whether pid is a process that has not ended (a zombie has)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def steps_logged(a, name):
    path = os.path.join(a.workdir, name, "log", "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    lines = [l for l in open(path) if '"step_s"' in l]
    return json.loads(lines[-1])["step"] if lines else 0


def wait_step(a, name, p, step, limit=300):
    t0 = time.time()
    while steps_logged(a, name) < step and p.poll() is None and time.time() - t0 < limit:
        time.sleep(0.02)
    return steps_logged(a, name) >= step


def test_stuck_rank(a, data):
    """Fault: SIGSTOP of rank 1 of 3 mid-run, left stopped past comm.timeout_s. Every other
    rank must end within the deadline (plus a margin for mpirun), the job non-zero, and the
    error lines (one a rank that gave up; Open MPI may drop the output of a rank it kills
    first) must name the step, the collective and rank 1 as the rank waited for; the
    stopped rank must end too (mpirun ends it, or continued it gives up itself)."""
    timeout, victim_rank, name = 6, 1, "stuck"
    over = {"train.global_batch": "6", "train.steps": "100000", "ckpt.every_steps": "0",
            "comm.timeout_s": str(timeout)}
    args = ["mpirun", "-np", "3", "--oversubscribe", "--bind-to", "none", a.train] + \
        config(a, data, name, **over)
    p = subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_step(a, name, p, 20)
    ranks = {rank_of(pid): pid for pid in rank_pids(name + "/")}
    victim = ranks.get(victim_rank)
    others = [pid for r, pid in ranks.items() if r != victim_rank]
    t0 = time.time()
    if victim:
        os.kill(victim, signal.SIGSTOP)
    try:
        _, err = p.communicate(timeout=timeout + 30)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
    took = time.time() - t0
    others_ended = not any(alive(pid) for pid in others)
    # The stopped rank: mpirun ends it; if it is still there, continue it: it must give up.
    how, t1 = "ended by mpirun", time.time()
    while victim and alive(victim) and time.time() - t1 < 5:
        time.sleep(0.05)
    if victim and alive(victim):
        os.kill(victim, signal.SIGCONT)
        how, t1 = "continued, then ended on its own", time.time()
        while alive(victim) and time.time() - t1 < timeout + 10:
            time.sleep(0.05)
    victim_ended = victim is not None and not alive(victim)
    if victim and alive(victim):
        how = "still running"
        os.kill(victim, signal.SIGKILL)
        os.kill(victim, signal.SIGCONT)
    lines = [(int(m.group(1)), m.group(2)) for m in
             re.finditer(r"\[mlmpi r(\d+) trainer\] error: (.*)", err)]
    said = [(r, l) for r, l in lines if r != victim_rank]
    pattern = (r"step \d+ [^:]+: (allreduce|reduce_scatter|allgather|broadcast|barrier) did not "
               rf"complete within {timeout} s; waiting for rank {victim_rank} \(")
    named = bool(said) and all(re.search(pattern, l) for _, l in said)
    wrong = [l for _, l in said if re.search(r"ranks? (?!%d \()\d" % victim_rank, l)]
    check(len(ranks) == 3 and victim and p.returncode not in (0, None) and took < timeout + 8
          and others_ended and named and not wrong and victim_ended,
          f"stuck-rank: SIGSTOP of rank {victim_rank} (of {len(ranks)}) past comm.timeout_s = "
          f"{timeout}; checked: the job ended in {took:.1f} s (want < {timeout + 8}) with exit "
          f"{p.returncode}, the other ranks ended ({others_ended}), ranks "
          f"{sorted(r for r, _ in said)} said whom they waited for naming step, collective and "
          f"rank {victim_rank} ({named}; wrong ranks named: {wrong}), the stopped rank "
          f"{how}: " + (said[0][1] if said else err[-800:]))


def test_short_pause(a, data):
    """Fault: SIGSTOP of rank 1 of 3 for 2 s, then later for 5 s (comm.timeout_s = 6: inside
    the last 1.5 s, when the waiting ranks ask the others where they are), then SIGCONT:
    the run finishes (exit 0) with the weights bit-identical to an uninterrupted run."""
    timeout, steps = 6, 700
    over = {"train.global_batch": "6", "train.steps": str(steps), "ckpt.every_steps": "0",
            "comm.timeout_s": str(timeout)}
    ref = mpirun(3, [a.train] + config(a, data, "pause_ref", **over), timeout=600)
    check(ref.returncode == 0, "short-pause: the uninterrupted 3-rank run finished"
          + ("" if ref.returncode == 0 else ": " + ref.stderr[-600:]))
    name = "paused"
    args = ["mpirun", "-np", "3", "--oversubscribe", "--bind-to", "none", a.train] + \
        config(a, data, name, **over)
    p = subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    paused = []
    for at, pause in ((50, 2.0), (250, 5.0)):
        if not wait_step(a, name, p, at):
            break
        ranks = {rank_of(pid): pid for pid in rank_pids(name + "/")}
        if 1 not in ranks:
            break
        os.kill(ranks[1], signal.SIGSTOP)
        time.sleep(pause)
        os.kill(ranks[1], signal.SIGCONT)
        paused.append((steps_logged(a, name), pause))
    try:
        _, err = p.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
    asked = "asking the other ranks where they are" in err
    same = False
    if p.returncode == 0 and ref.returncode == 0:
        w1, w2 = weights(a, "pause_ref", steps), weights(a, name, steps)
        same = w1.keys() == w2.keys() and all(np.array_equal(w1[k], w2[k]) for k in w1)
    check(p.returncode == 0 and len(paused) == 2 and asked and same,
          f"short-pause: SIGSTOP of rank 1 for {[s for _, s in paused]} s (at steps "
          f"{[st for st, _ in paused]}) under comm.timeout_s = {timeout}; checked: exit "
          f"{p.returncode} (want 0), the 5 s pause reached the question round ({asked}), the "
          f"weights at step {steps} bit-identical to the uninterrupted run ({same})"
          + ("" if p.returncode == 0 else ": " + err[-800:]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    data = make_data(a)
    fresh_runs(a)
    tests = {"same-weights": test_same_weights, "zero": test_zero, "kill-resume": test_kill_resume,
             "kill-in-checkpoint": test_kill_in_checkpoint,
             "signals": test_signals, "sources": test_sources, "export": test_export, "mismatch": test_mismatch, "time-limit": test_time_limit,
             "loss-falls": test_loss_falls,
             "bf16": test_bf16, "bf16-equivalence": test_bf16_equivalence,
             "corrupt-resume": test_corrupt_resume, "nonfinite": test_nonfinite,
             "disk-full": test_disk_full,
             "stuck-rank": test_stuck_rank, "short-pause": test_short_pause,
             "example": test_example, "gpt2": test_gpt2}
    only = [x for x in a.only.split(",") if x]
    for name, fn in tests.items():
        if not only or name in only:
            fn(a, data)
    print(f"{len(failures)} failed" if failures else "all passed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
