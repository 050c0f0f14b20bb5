#!/usr/bin/python3
"""Compare sequence-classification steps of the C program with PyTorch.

    test_classify_step.py --bin PATH/mlmpi-train [--workdir DIR] [--seed N]
    test_classify_step.py --self-test

For each config below (BertForSequenceClassification and
ElectraForSequenceClassification; 2 to 45 labels; ELECTRA with E != H and
E == H; hidden_act gelu, gelu_new and relu while the ELECTRA head stays erf
GELU; padded rows; rows labelled -1 or -100, which the loss ignores) the
test draws float32 weights and a batch, writes config.json, W.safetensors
and B.safetensors, runs

    BIN step --model config.json --weights W.safetensors \\
             --batch B.safetensors --out OUT.safetensors --threads 2 [--seed N]

and compares OUT (loss, logits, grad.<name> for every parameter, nothing
else) with classify_ref.py in float64, with the bounds of the BERT step
test: loss 1e-5 relative; logits 1e-4 x max|ref|; each gradient 5e-4 x
(max|ref| + 1e-3 x the largest gradient of the model).

Then 3 AdamW steps (--steps 3) on a BERT and an ELECTRA config against
optim_ref.py in float64 (relative L2 1e-3 of each tensor's change, 1e-4 on
`losses` and `grad_norms`; tensors whose true gradient is zero are checked
to be finite only), with clipping that binds.

Negative checks: deliberately wrong models (classify_ref.VARIANTS: tanh GELU
or hidden_act in the ELECTRA head, a pooler without tanh, the loss divided
by all rows, label -1 read as the last class, the classifier reading the
last token, no attention mask) must be rejected by the same comparison on
every config where they differ, and wrong optimizers or models by the step
comparison.  Malformed inputs (labels of the wrong shape, dtype or range,
labels missing, a masked_lm_positions or next_sentence_labels tensor, a
config without id2label, a missing or misshapen head weight) must each give
a nonzero exit status and one stderr line naming the culprit.

--self-test runs the reference-side checks only (no binary): the heads
against torch.nn, the encoders against bert_ref.py / electra_ref.py,
gradcheck, explicit vs functional paths, a float32 positive control, the
negative checks, and the whole driver against an in-process float32
emulation of the program.
"""
import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

import bert_ref  # noqa: E402
import classify_ref  # noqa: E402
import electra_ref  # noqa: E402
import optim_ref  # noqa: E402
import ref_cli  # noqa: E402
import st_io  # noqa: E402

from ref_cli import (DELTA_RTOL, GRAD_GLOBAL_FRAC, GRAD_RTOL, LOGIT_RTOL,  # noqa: E402,F401
                     SCALAR_RTOL, STEP_SCALAR_RTOL, ZERO_GRAD_FRAC)
K_STEPS = 3
CLIP_FRAC = 0.2  # max_grad_norm "auto": this fraction of the first gradient norm
THREADS = "2"

# kind, vocab, E (ELECTRA embedding_size), hidden, layers, heads,
# intermediate, act, type_vocab, T, B, labels C, max_pos, layer_norm_eps,
# classifier_dropout ("absent", None or 0.0), extra config keys, ignored rows
# ("some" or "all"), --seed passed (None: not passed).
CONFIGS = [
    dict(name="bert_c2_gelu", kind="bert", V=97, H=32, L=2, nh=4, I=48, act="gelu", tv=2,
         T=9, B=4, C=2, max_pos=16, eps=1e-12, cls_drop=None, ignored="some", seed=None),
    dict(name="bert_c45_relu_C>H", kind="bert", V=131, H=24, L=1, nh=3, I=40, act="relu", tv=3,
         T=12, B=7, C=45, max_pos=12, eps=1e-5, cls_drop="absent", ignored="some", seed=7),
    dict(name="bert_c5_gelunew", kind="bert", V=211, H=40, L=2, nh=5, I=52, act="gelu_new", tv=2,
         T=13, B=5, C=5, max_pos=20, eps=1e-12, cls_drop=0.0, ignored="some", seed=None,
         extra={"problem_type": "single_label_classification"}),
    dict(name="electra_e16_h32_c3_gelu", kind="electra", V=89, E=16, H=32, L=2, nh=4, I=48,
         act="gelu", tv=2, T=10, B=4, C=3, max_pos=12, eps=1e-12, cls_drop=None,
         ignored="some", seed=None),
    dict(name="electra_e24_h24_c45_relu", kind="electra", V=101, E=24, H=24, L=2, nh=2, I=36,
         act="relu", tv=2, T=8, B=8, C=45, max_pos=8, eps=1e-12, cls_drop=0.0, ignored="some",
         seed=11),
    dict(name="electra_e20_h36_c2_gelunew", kind="electra", V=61, E=20, H=36, L=1, nh=3, I=44,
         act="gelu_new", tv=3, T=11, B=3, C=2, max_pos=16, eps=1e-12, cls_drop="absent",
         ignored="some", seed=None,
         # what ElectraConfig() saves; ElectraForSequenceClassification ignores these
         extra={"summary_type": "first", "summary_use_proj": True, "summary_activation": "gelu",
                "summary_last_dropout": 0.1}),
    dict(name="electra_e32_h32_c4_pttanh", kind="electra", V=73, E=32, H=32, L=1, nh=4, I=40,
         act="gelu_pytorch_tanh", tv=2, T=7, B=4, C=4, max_pos=9, eps=1e-12, cls_drop=None,
         ignored="some", seed=None),
    dict(name="bert_all_rows_ignored", kind="bert", V=50, H=16, L=1, nh=2, I=24, act="gelu",
         tv=2, T=6, B=3, C=3, max_pos=8, eps=1e-12, cls_drop=None, ignored="all", seed=None),
]
CONFIG_BY_NAME = {c["name"]: c for c in CONFIGS}

# optimizer runs: options (max_grad_norm "auto": CLIP_FRAC of the reference's
# first gradient norm, so that clipping binds on every step), model foils
# (wrong models whose trajectories must be rejected)
STEP_CASES = [
    dict(name="adamw3_bert", config="bert_c5_gelunew",
         opts=dict(kind="adamw", lr=2e-3, weight_decay=0.1, beta2=0.99, max_grad_norm="auto"),
         model_foils=["pooler_without_tanh", "loss_mean_over_all_rows"]),
    dict(name="adamw3_electra", config="electra_e16_h32_c3_gelu",
         opts=dict(kind="adamw", lr=2e-3, weight_decay=0.05, max_grad_norm="auto"),
         model_foils=["head_tanh_gelu", "ignored_label_wraps"]),
]
OPTIM_FLAGS = {"kind": "--optim", "lr": "--lr", "weight_decay": "--weight-decay",
               "beta1": "--beta1", "beta2": "--beta2", "eps": "--eps",
               "max_grad_norm": "--max-grad-norm"}


# ----------------------------------------------------------------------------
# data


def make_config(c):
    C = c["C"]
    if C == 2:
        names = ["LABEL_0", "LABEL_1"]
    else:
        names = ["class_%02d" % i for i in range(C)]
    kind = c["kind"]
    cfg = {"architectures": [classify_ref.ARCH[kind]], "model_type": kind,
           "vocab_size": c["V"]}
    if kind == "electra":
        cfg["embedding_size"] = c["E"]
    cfg.update({
        "hidden_size": c["H"], "num_hidden_layers": c["L"], "num_attention_heads": c["nh"],
        "intermediate_size": c["I"], "hidden_act": c["act"], "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0, "max_position_embeddings": c["max_pos"],
        "type_vocab_size": c["tv"], "initializer_range": 0.02, "layer_norm_eps": c["eps"],
        "pad_token_id": 0, "position_embedding_type": "absolute", "use_cache": True,
        "torch_dtype": "float32",
        "id2label": {str(i): n for i, n in enumerate(names)},
        "label2id": {n: i for i, n in enumerate(names)},
    })
    if c["cls_drop"] != "absent":
        cfg["classifier_dropout"] = c["cls_drop"]
    cfg.update(c.get("extra", {}))
    return cfg


def make_weights(rng, cfg):
    w = {}
    for name, shape in classify_ref.param_shapes(cfg):
        if name.endswith("LayerNorm.weight"):
            a = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name.endswith("bias"):
            a = 0.1 * rng.standard_normal(shape)
        else:
            std = float(np.clip(1.0 / np.sqrt(shape[1]), 0.05, 0.25))
            a = std * rng.standard_normal(shape)
        w[name] = a.astype(np.float32)
    return w


def make_batch(rng, cfg, c):
    """Row 0 padded and labelled; row 1 padded and ignored (label -1, when
    B >= 3); the last row full length with the last class; the rest random
    with about a third ignored (one of them -100, HF's ignore_index)."""
    V, tv, T, B, C = c["V"], c["tv"], c["T"], c["B"], c["C"]
    ids = np.zeros((B, T), np.int32)
    mask = np.zeros((B, T), np.int32)
    seg = np.zeros((B, T), np.int32)
    lens = rng.integers(2, T + 1, size=B)
    lens[0] = rng.integers(2, T)
    if B >= 3:
        lens[1] = rng.integers(2, T)
    lens[-1] = T
    labels = rng.integers(0, C, size=B).astype(np.int32)
    for b in range(B):
        n = int(lens[b])
        ids[b, :n] = rng.integers(1, V, size=n)
        mask[b, :n] = 1
        split = int(rng.integers(1, n))
        seg[b, split:n] = int(rng.integers(1, tv)) if tv > 2 else 1
    labels[-1] = C - 1
    if B >= 3:
        labels[1] = -1
    for b in range(2, B - 1):
        if rng.random() < 0.34:
            labels[b] = -100 if not np.any(labels == -100) else -1
    if c["ignored"] == "all":
        labels[:] = -1
        labels[0] = -100
    return {"input_ids": ids, "input_mask": mask, "segment_ids": seg, "labels": labels}


def make_case(ci, c, seed):
    rng = np.random.default_rng([seed, ci])
    cfg = make_config(c)
    return cfg, make_weights(rng, cfg), make_batch(rng, cfg, c)


def describe(c):
    e = ("E=%d " % c["E"]) if c["kind"] == "electra" else ""
    return ("%s V=%d %sH=%d L=%d nh=%d I=%d %s tv=%d T=%d B=%d C=%d"
            % (c["kind"], c["V"], e, c["H"], c["L"], c["nh"], c["I"], c["act"], c["tv"],
               c["T"], c["B"], c["C"]))


def describe_batch(b):
    lab = b["labels"]
    return "%d/%d rows labelled, %d padded" % (int(np.sum(lab >= 0)), len(lab),
                                               int(np.sum(b["input_mask"].min(axis=1) == 0)))


# ----------------------------------------------------------------------------
# comparison of one step


def bounds_for(ref):
    grads = [v for k, v in ref.items() if k.startswith("grad.") and v.size]
    gmax = max(float(np.max(np.abs(v))) for v in grads) if grads else 0.0
    out = {}
    for k, v in ref.items():
        m = float(np.max(np.abs(v))) if v.size else 0.0
        if k == "loss":
            out[k] = SCALAR_RTOL * abs(float(v))
        elif k == "logits":
            out[k] = LOGIT_RTOL * m
        else:
            out[k] = GRAD_RTOL * (m + GRAD_GLOBAL_FRAC * gmax)
    return out


def compare(cfg, ref, out, extra_names=()):
    """(records, problems): records (name, err, bound) per compared tensor;
    problems one string per failure.  OUT must hold exactly the step's
    names plus extra_names (the --steps additions, compared elsewhere)."""
    expected = classify_ref.output_names(cfg)
    allowed = set(expected) | set(extra_names)
    problems = ["%s: missing from OUT" % n for n in expected if n not in out]
    problems += ["%s: missing from OUT" % n for n in extra_names if n not in out]
    problems += ["%s: unexpected tensor in OUT" % n for n in sorted(set(out) - allowed)]
    bounds = bounds_for(ref)
    records = []
    for n in expected:
        if n not in out:
            continue
        r = np.asarray(ref[n], np.float64)
        o = np.asarray(out[n])
        if o.dtype != np.float32:
            problems.append("%s: dtype %s, expected F32" % (n, o.dtype))
            continue
        if tuple(o.shape) != tuple(r.shape):
            problems.append("%s: shape %s, expected %s" % (n, list(o.shape), list(r.shape)))
            continue
        o = o.astype(np.float64)
        if not np.all(np.isfinite(o)):
            problems.append("%s: contains non-finite values" % n)
            continue
        diff = np.abs(o - r)
        err = float(diff.max()) if diff.size else 0.0
        bound = bounds[n]
        records.append((n, err, bound))
        if not err <= bound:
            idx = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.ndim else ()
            problems.append("%s: max abs err %.3e > bound %.3e (ratio %.2f) at %s: "
                            "out=%.9g ref=%.9g"
                            % (n, err, bound, err / bound if bound > 0 else float("inf"),
                               tuple(int(i) for i in idx), float(o[idx]), float(r[idx])))
    return records, problems


def worst(records):
    if not records:
        return "no tensors compared"
    n, e, b = max(records, key=lambda r: (r[1] / r[2]) if r[2] > 0 else
                  (float("inf") if r[1] > 0 else 0.0))
    if b == 0:
        return "worst %s err=%.2e bound 0 (exact)" % (n, e)
    return "worst %s err=%.2e bound=%.2e ratio=%.3f" % (n, e, b, e / b)


def applicable_variants(cfg, batch):
    d = classify_ref.Dims(cfg)
    return [v for v in classify_ref.VARIANTS[1:]
            if classify_ref.variant_applies(v, d, batch["labels"])]


def reject_variants(cfg, weights, batch, ref, hits):
    """The comparison must reject every wrong model that applies; records
    (config, rejected) per variant in hits and returns a short note."""
    notes = []
    for v in applicable_variants(cfg, batch):
        bad = classify_ref.reference_step(cfg, weights, batch, variant=v)
        bad = {k: a.astype(np.float32) for k, a in bad.items()}
        _, prob = compare(cfg, ref, bad)
        hits.setdefault(v, []).append((cfg.get("_name", "?"), bool(prob)))
        if not prob:
            notes.append("%s NOT rejected" % v)
    return notes


def check_foils(hits, log, ran):
    fails = 0
    for v in classify_ref.VARIANTS[1:]:
        got = hits.get(v, [])
        missed = [n for n, ok in got if not ok]
        if not got or missed:
            fails += 1
            log("FAIL negative check: wrong model %s not rejected on %s"
                % (v, ", ".join(missed) or "any config (applies to none)"))
        else:
            log("PASS negative check: wrong model %-28s rejected on all %d config(s) where it "
                "differs" % (v, len(got)))
    ran.append("negative checks: %d wrong models rejected by the step comparison"
               % (len(classify_ref.VARIANTS) - 1 - fails))
    return fails


# ----------------------------------------------------------------------------
# running the program


class EmulatorRunner:
    """The program emulated in-process in float32 (self-test only)."""

    def __call__(self, args):
        err = io.StringIO()
        rc = 0
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                emulate(args)
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else 1
        return rc, err.getvalue()


def write_case(d, cfg, weights, batch):
    """ref_cli.write_case without the config's private ("_") keys."""
    return ref_cli.write_case(d, {k: v for k, v in cfg.items() if not k.startswith("_")},
                              weights, batch)


def run_configs(runner, workdir, seed, log, hits, ran):
    fails = 0
    for ci, c in enumerate(CONFIGS):
        cfg, weights, batch = make_case(ci, c, seed)
        cfg["_name"] = c["name"]
        args = write_case(os.path.join(workdir, c["name"]), cfg, weights, batch)
        if c["seed"] is not None:
            args += ["--seed", str(c["seed"])]
        t0 = time.time()
        rc, err = runner(args + ["--threads", THREADS])
        dt = time.time() - t0
        ref = classify_ref.reference_step(cfg, weights, batch)
        notes = reject_variants(cfg, weights, batch, ref, hits)
        if rc != 0:
            fails += 1
            log("FAIL %-28s [%s] exit status %s; stderr: %s"
                % (c["name"], describe(c), rc, err.strip()[-2000:]))
            continue
        try:
            out = st_io.load(args[args.index("--out") + 1])
        except Exception as e:  # noqa: BLE001
            fails += 1
            log("FAIL %-28s [%s] cannot read OUT: %s" % (c["name"], describe(c), e))
            continue
        records, problems = compare(cfg, ref, out)
        log("%s %-28s [%s; %s] %d tensors, loss %.5f, %s (%.1fs)"
            % ("PASS" if not problems else "FAIL", c["name"], describe(c), describe_batch(batch),
               len(records), float(ref["loss"]), worst(records), dt))
        for p in problems + notes:
            log("    " + p)
        fails += bool(problems)
    ran.append("one step on %d configs: loss, logits and every gradient against float64"
               % len(CONFIGS))
    return fails


# ----------------------------------------------------------------------------
# optimizer steps


def flags_for(opts):
    out = []
    for k, v in opts.items():
        out += [OPTIM_FLAGS[k], v if isinstance(v, str) else "%.9g" % v]
    return out


def optim_config(opts):
    o = dict(opts)
    return optim_ref.OptimConfig(**o).as_float32()


def reference_run(cfg, weights, batch, ocfg, K, dtype=torch.float64, fast=False, variant=None):
    """K steps from weights; returns final weights, losses, grad_norms, the
    step-0 outputs and the optimizer infos."""
    names = [n for n, _ in classify_ref.param_shapes(cfg)]
    params = {n: torch.from_numpy(np.array(weights[n], np.float64)).to(dtype) for n in names}
    state = optim_ref.OptimState(params)
    losses, norms, infos, step0 = [], [], [], None
    for k in range(K):
        res = classify_ref.reference_step(cfg, {n: p.numpy() for n, p in params.items()}, batch,
                                          dtype=dtype, fast=fast, variant=variant)
        if k == 0:
            step0 = res
        grads = {n: torch.from_numpy(res["grad." + n]) for n in names}
        losses.append(float(res["loss"]))
        info = optim_ref.step(params, grads, state, ocfg)
        norms.append(info["grad_norm"])
        infos.append(info)
    return {"weights": {n: p.numpy().copy() for n, p in params.items()},
            "losses": np.array(losses), "grad_norms": np.array(norms), "step0": step0,
            "infos": infos}


def as_out(run):
    """What the program would write for a reference run (float32)."""
    out = {k: np.asarray(v, np.float32) for k, v in run["step0"].items()}
    out.update({n: np.asarray(v, np.float32) for n, v in run["weights"].items()})
    out["losses"] = run["losses"].astype(np.float32)
    out["grad_norms"] = run["grad_norms"].astype(np.float32)
    return out


def compare_steps(cfg, w0, ref, out, skip):
    """Final weights (relative L2 of the change), losses and grad_norms."""
    return optim_ref.compare_trajectory(classify_ref.param_shapes(cfg), w0, ref, out, skip,
                                        DELTA_RTOL, STEP_SCALAR_RTOL)


def step_names(cfg):
    return [n for n, _ in classify_ref.param_shapes(cfg)] + ["losses", "grad_norms"]


def check_step_out(cfg, weights, ref, out, skip):
    """Step-0 outputs, exact set of names, and the trajectory."""
    rec0, prob = compare(cfg, ref["step0"], out, extra_names=step_names(cfg))
    rec, prob2 = compare_steps(cfg, weights, ref, out, skip)
    return rec0, rec, prob + prob2


def resolve_opts(case, cfg, weights, batch):
    opts = dict(case["opts"])
    if opts.get("max_grad_norm") == "auto":
        g0 = reference_run(cfg, weights, batch,
                           optim_config(dict(opts, max_grad_norm=0.0)), 1)["grad_norms"][0]
        opts["max_grad_norm"] = float("%.4g" % (CLIP_FRAC * g0))
    return opts


def run_steps(runner, workdir, seed, log, ran):
    fails = 0
    for si, case in enumerate(STEP_CASES):
        c = CONFIG_BY_NAME[case["config"]]
        cfg, weights, batch = make_case(5000 + si, c, seed)
        args = write_case(os.path.join(workdir, case["name"]), cfg, weights, batch)
        opts = resolve_opts(case, cfg, weights, batch)
        label = "%-16s on %s (%s)" % (case["name"], c["name"], " ".join(flags_for(opts)))
        t0 = time.time()
        rc, err = runner(args + ["--steps", str(K_STEPS), "--threads", THREADS] + flags_for(opts))
        dt = time.time() - t0
        if rc != 0:
            fails += 1
            log("FAIL %s: exit status %s; stderr: %s" % (label, rc, err.strip()[-2000:]))
            continue
        try:
            out = st_io.load(args[args.index("--out") + 1])
        except Exception as e:  # noqa: BLE001
            fails += 1
            log("FAIL %s: cannot read OUT: %s" % (label, e))
            continue
        ocfg = optim_config(opts)
        ref = reference_run(cfg, weights, batch, ocfg, K_STEPS)
        g0 = ref["step0"]
        gmax = max(float(np.max(np.abs(v))) for k, v in g0.items() if k.startswith("grad."))
        skip = {k[5:] for k, v in g0.items()
                if k.startswith("grad.") and float(np.max(np.abs(v))) < ZERO_GRAD_FRAC * gmax}
        rec0, rec, problems = check_step_out(cfg, weights, ref, out, skip)
        if not all(i["clip"] < 1.0 for i in ref["infos"]):
            problems.append("clipping did not bind on every reference step: the case is weak")
        # foils: wrong optimizers and wrong models must be rejected
        foils = [("LAMB", ocfg.replace(kind="lamb"), None),
                 ("no weight decay", ocfg.replace(weight_decay=0.0), None),
                 ("unclipped", ocfg.replace(max_grad_norm=0.0), None),
                 ("eps inside sqrt", ocfg.replace(variant="eps_inside_sqrt"), None)]
        foils += [("model " + v, ocfg, v) for v in case["model_foils"]]
        notes = []
        for lbl, fcfg, variant in foils:
            fref = reference_run(cfg, weights, batch, fcfg, K_STEPS, variant=variant)
            _, _, fprob = check_step_out(cfg, weights, ref, as_out(fref), skip)
            notes.append("%s %s" % (lbl, "rejected" if fprob else "NOT rejected"))
            if not fprob:
                problems.append("foil '%s' is not rejected: the case does not test it" % lbl)
        wn = max(rec, key=lambda r: r[1]) if rec else ("-", 0.0)
        log("%s %s: %d steps, %d tensors (+%d zero-gradient, finite only), worst %s %.2e, step 0 "
            "%s; loss %.4f -> %.4f, G0 %.3g (%.1fs)"
            % ("PASS" if not problems else "FAIL", label, K_STEPS, len(rec) - 2, len(skip), wn[0],
               wn[1], worst(rec0), ref["losses"][0], ref["losses"][-1], ref["grad_norms"][0], dt))
        log("     foils: " + "; ".join(notes))
        for p in problems:
            log("     " + p)
        fails += bool(problems)
    ran.append("%d-step AdamW runs (clipping binds) on %d configs against optim_ref, with %s"
               % (K_STEPS, len(STEP_CASES), "optimizer and model foils"))
    return fails


# ----------------------------------------------------------------------------
# malformed inputs


def bad_cases(seed):
    """(name, culprit, cfg, weights, batch) of inputs the program must refuse."""
    cases = []

    def fresh(cname):
        ci = [c["name"] for c in CONFIGS].index(cname)
        return make_case(ci, CONFIGS[ci], seed + 1)

    bert, electra, many = "bert_c2_gelu", "electra_e16_h32_c3_gelu", "electra_e24_h24_c45_relu"
    cfg, w, b = fresh(bert)
    b["labels"] = b["labels"].reshape(-1, 1).copy()
    cases.append(("labels_shape_Bx1", "labels", cfg, w, b))
    cfg, w, b = fresh(bert)
    b["labels"] = b["labels"].astype(np.int64)
    cases.append(("labels_dtype_I64", "labels", cfg, w, b))
    cfg, w, b = fresh(bert)
    b["labels"][0] = len(cfg["id2label"])
    cases.append(("label_eq_num_labels_bert", "labels", cfg, w, b))
    cfg, w, b = fresh(many)
    b["labels"][2] = len(cfg["id2label"])
    cases.append(("label_eq_num_labels_c45", "labels", cfg, w, b))
    cfg, w, b = fresh(bert)
    del b["labels"]
    cases.append(("labels_missing", "labels", cfg, w, b))
    cfg, w, b = fresh(bert)
    b["masked_lm_positions"] = np.zeros((b["input_ids"].shape[0], 2), np.int32)
    cases.append(("masked_lm_positions_present", "masked_lm_positions", cfg, w, b))
    cfg, w, b = fresh(electra)
    b["masked_lm_positions"] = np.ones((b["input_ids"].shape[0], 1), np.int32)
    cases.append(("masked_lm_positions_electra", "masked_lm_positions", cfg, w, b))
    cfg, w, b = fresh(bert)
    b["next_sentence_labels"] = np.zeros((b["input_ids"].shape[0], 1), np.int32)
    cases.append(("next_sentence_labels_present", "next_sentence_labels", cfg, w, b))
    cfg, w, b = fresh(bert)
    del cfg["id2label"]
    cases.append(("config_no_id2label_bert", "id2label", cfg, w, b))
    cfg, w, b = fresh(electra)
    del cfg["id2label"]
    cases.append(("config_no_id2label_electra", "id2label", cfg, w, b))
    cfg, w, b = fresh(bert)
    del w["classifier.weight"]
    cases.append(("weights_missing_classifier", "classifier.weight", cfg, w, b))
    cfg, w, b = fresh(electra)
    C, H = w["classifier.out_proj.weight"].shape
    w["classifier.out_proj.weight"] = np.zeros((C + 1, H), np.float32)
    cases.append(("out_proj_shape_C+1", "classifier.out_proj.weight", cfg, w, b))
    return cases


def run_bad_inputs(runner, workdir, seed, log, ran):
    cases = bad_cases(seed)
    fails = 0
    for name, culprit, cfg, w, b in cases:
        args = write_case(os.path.join(workdir, "bad_" + name), cfg, w, b)
        rc, err = runner(args + ["--threads", THREADS])
        fails += ref_cli.bad_input_verdict(name, culprit, rc, err, 30)
    ran.append("%d malformed inputs refused (nonzero exit, one stderr line naming the culprit)"
               % len(cases))
    return fails, len(cases)


# ----------------------------------------------------------------------------
# emulation of the program (self-test only)


def _die(msg):
    sys.stderr.write("mlmpi-train-emulator step: " + msg + "\n")
    raise SystemExit(1)


def emulate(args):
    ap = argparse.ArgumentParser(prog="step", add_help=False)
    for f in ("--model", "--weights", "--batch", "--out", "--optim", "--seed", "--threads"):
        ap.add_argument(f)
    ap.add_argument("--steps", type=int, default=0)
    for k, flag in OPTIM_FLAGS.items():
        if k != "kind":
            ap.add_argument(flag, dest=k, type=float)
    a = ap.parse_args(args[1:])
    with open(a.model) as f:
        cfg = json.load(f)
    try:
        d = classify_ref.Dims(cfg)
    except ValueError as e:
        _die("%s: %s" % (a.model, e))
    b = st_io.load(a.batch)
    for n in b:
        if n not in classify_ref.BATCH_NAMES:
            _die("%s: tensor '%s' is not a batch field of this model" % (a.batch, n))
    for n in classify_ref.BATCH_NAMES:
        if n not in b:
            _die("%s: tensor '%s' is missing" % (a.batch, n))
    B, T = b["input_ids"].shape
    for n in classify_ref.BATCH_NAMES:
        want = (B,) if n == "labels" else (B, T)
        if b[n].dtype != np.int32 or b[n].shape != want:
            _die("%s: tensor '%s' must be I32 %s" % (a.batch, n, list(want)))
    if np.any(b["labels"] >= d.C):
        _die("%s: tensor 'labels' has a value >= num_labels %d" % (a.batch, d.C))
    w = st_io.load(a.weights)
    shapes = dict(classify_ref.param_shapes(d))
    for n, s in shapes.items():
        if n not in w:
            _die("%s: tensor '%s' is missing" % (a.weights, n))
        if tuple(w[n].shape) != s:
            _die("%s: tensor '%s' has shape %s, expected %s" % (a.weights, n, list(w[n].shape),
                                                                 list(s)))
    for n in w:
        if n not in shapes:
            _die("%s: tensor '%s' is not a parameter of this model" % (a.weights, n))
    if a.steps:
        opts = {k: getattr(a, k) for k in OPTIM_FLAGS if k != "kind" and getattr(a, k) is not None}
        if a.optim:
            opts["kind"] = a.optim
        run = reference_run(cfg, w, b, optim_config(opts), a.steps, dtype=torch.float32, fast=True)
        st_io.save(a.out, as_out(run))
    else:
        res = classify_ref.reference_step(cfg, w, b, dtype=torch.float32, fast=True)
        st_io.save(a.out, {k: v.astype(np.float32) for k, v in res.items()})


# ----------------------------------------------------------------------------
# self-test


def _to_bert_pretraining(cfg, w, b, rng):
    """The same BERT as a BertForPreTraining whose NSP head is the classifier
    and whose MLM loss is 0 (one slot, weight 0): its loss is the mean
    cross entropy over all rows, so with every row labelled it must equal
    the classification loss, gradients included."""
    pcfg = {k: v for k, v in cfg.items() if k not in ("id2label", "label2id", "_name")}
    pcfg["architectures"] = ["BertForPreTraining"]
    pw = {k: v for k, v in w.items() if not k.startswith("classifier.")}
    pw["cls.seq_relationship.weight"] = w["classifier.weight"]
    pw["cls.seq_relationship.bias"] = w["classifier.bias"]
    for n, s in bert_ref.param_shapes(pcfg):
        if n not in pw:
            pw[n] = (0.1 * rng.standard_normal(s)).astype(np.float32)
    B = b["input_ids"].shape[0]
    pb = {k: v for k, v in b.items() if k != "labels"}
    pb.update(masked_lm_positions=np.ones((B, 1), np.int32),
              masked_lm_ids=np.ones((B, 1), np.int32),
              masked_lm_weights=np.zeros((B, 1), np.float32),
              next_sentence_labels=b["labels"].reshape(B, 1).astype(np.int32))
    return pcfg, pw, pb


def selftest_cross(seed, log, ran):
    """The encoders and the BERT head against the project's other references."""
    c = dict(CONFIG_BY_NAME["bert_c2_gelu"], B=5)
    cfg, w, b = make_case(900, c, seed)
    b["labels"] = np.array([0, 1, 1, 0, 1], np.int32)
    rng = np.random.default_rng([seed, 901])
    pcfg, pw, pb = _to_bert_pretraining(cfg, w, b, rng)
    want = bert_ref.reference_step(pcfg, pw, pb)
    got = classify_ref.reference_step(cfg, w, b)
    pairs = [("loss", "loss"), ("logits", "nsp_logits")]
    pairs += [("grad." + n, "grad." + n) for n, _ in classify_ref.param_shapes(cfg)
              if not n.startswith("classifier.")]
    pairs += [("grad.classifier.weight", "grad.cls.seq_relationship.weight"),
              ("grad.classifier.bias", "grad.cls.seq_relationship.bias")]
    err = max(float(np.max(np.abs(got[a] - want[bb]))) / (1.0 + float(np.max(np.abs(want[bb]))))
              for a, bb in pairs)
    assert err < 1e-10, ("BERT classifier differs from bert_ref's NSP path", err)
    log("PASS self-test BERT (C=2, all rows labelled) == bert_ref BertForPreTraining NSP path with "
        "the MLM loss weighted 0: loss, logits, %d gradients (max rel err %.1e)"
        % (len(pairs) - 2, err))
    worst_e = 0.0
    for name in ("electra_e16_h32_c3_gelu", "electra_e24_h24_c45_relu"):
        c = CONFIG_BY_NAME[name]
        cfg, w, b = make_case(902, c, seed)
        d = classify_ref.Dims(cfg)
        ecfg = {k: v for k, v in cfg.items() if k not in ("id2label", "label2id")}
        ecfg["generator"] = {"hidden_size": c["H"], "num_hidden_layers": 1,
                             "num_attention_heads": c["nh"], "intermediate_size": 8}
        ed = electra_ref.Dims(ecfg)
        p = classify_ref.params_to_torch(cfg, w, torch.float64, requires_grad=False)
        ep = {}
        for n, t in p.items():
            if n.startswith("electra.embeddings."):
                ep[electra_ref.EMB + n[len("electra.embeddings."):]] = t
            elif n.startswith("electra."):
                ep["discriminator." + n] = t
        bt = classify_ref.batch_to_torch(b, torch.float64)
        h_want = electra_ref.network(ed, ep, "discriminator", ed.disc, bt["input_ids"],
                                     bt["segment_ids"], bt["input_mask"])
        h_got = classify_ref.encode(d, p, bt, classify_ref._Ops(d, False))
        e = float((h_got - h_want).abs().max())
        worst_e = max(worst_e, e)
        assert e < 1e-12, ("ELECTRA encoder differs from electra_ref", name, e)
    log("PASS self-test ELECTRA encoder (E != H and E == H) == electra_ref discriminator network "
        "(max err %.1e)" % worst_e)
    ran.append("reference cross-checks: heads vs torch.nn, BERT vs bert_ref NSP path, ELECTRA "
               "encoder vs electra_ref")


def selftest_gradcheck(seed, log, ran):
    tiny = [dict(name="tiny_bert", kind="bert", V=11, H=8, L=2, nh=2, I=12, act="gelu", tv=3,
                 T=5, B=4, C=3, max_pos=7, eps=1e-12, cls_drop=None, ignored="some", seed=None),
            dict(name="tiny_electra", kind="electra", V=13, E=6, H=8, L=1, nh=2, I=10,
                 act="gelu_new", tv=2, T=5, B=4, C=4, max_pos=6, eps=1e-12, cls_drop=None,
                 ignored="some", seed=None)]
    for i, c in enumerate(tiny):
        cfg, w, b = make_case(800 + i, c, seed)
        d = classify_ref.Dims(cfg)
        names = [n for n, _ in classify_ref.param_shapes(cfg)]
        p = classify_ref.params_to_torch(cfg, w, torch.float64)
        bt = classify_ref.batch_to_torch(b, torch.float64)
        assert int((bt["labels"] < 0).sum()) > 0 and int((bt["input_mask"] == 0).sum()) > 0

        def f(*ts):
            return classify_ref.forward(d, dict(zip(names, ts)), bt)["loss"]

        t0 = time.time()
        assert torch.autograd.gradcheck(f, tuple(p[n] for n in names), eps=1e-6, atol=1e-7,
                                        rtol=1e-5)
        log("PASS self-test gradcheck (central differences, float64) %s: %d tensors, %d params, "
            "%s (%.1fs)" % (c["name"], len(names), sum(p[n].numel() for n in names),
                            describe_batch(b), time.time() - t0))
    ran.append("gradcheck of the reference (BERT; ELECTRA with E != H) with padding and "
               "ignored rows")


def selftest_configs(seed, log, ran):
    """Per config: explicit == functional in float64; no gradient that is
    (nearly) zero but for the key biases (a weak test otherwise); the float32
    functional path passes the bounds (positive control); every applicable
    wrong model is rejected."""
    hits = {}
    for ci, c in enumerate(CONFIGS):
        cfg, w, b = make_case(ci, c, seed)
        cfg["_name"] = c["name"]
        ref = classify_ref.reference_step(cfg, w, b)
        fast = classify_ref.reference_step(cfg, w, b, fast=True)
        for k in ref:
            e = float(np.max(np.abs(ref[k] - fast[k]))) if ref[k].size else 0.0
            assert e <= 1e-10 * (1.0 + float(np.max(np.abs(ref[k])))), (c["name"], k, e)
        grads = {k: float(np.max(np.abs(v))) for k, v in ref.items() if k.startswith("grad.")}
        gmax = max(grads.values())
        if c["ignored"] == "all":
            assert float(ref["loss"]) == 0.0 and gmax == 0.0, (c["name"], float(ref["loss"]), gmax)
        else:
            tiny = [k for k, m in grads.items()
                    if not k.endswith("attention.self.key.bias") and m < 1e-4 * gmax]
            assert not tiny, ("gradient (nearly) zero, the test would be weak", c["name"], tiny)
            assert 0 < int(np.sum(b["labels"] < 0)) < len(b["labels"])
            assert int(np.max(b["labels"])) == c["C"] - 1
        assert int(np.sum(b["input_mask"] == 0)) > 0
        f32 = classify_ref.reference_step(cfg, w, b, dtype=torch.float32, fast=True)
        records, problems = compare(cfg, ref, {k: v.astype(np.float32) for k, v in f32.items()})
        if problems:
            for pr in problems:
                log("    " + pr)
            raise AssertionError("float32 positive control failed for " + c["name"])
        notes = reject_variants(cfg, w, b, ref, hits)
        log("PASS self-test %-28s explicit==functional (f64); f32 control %s; %d wrong models "
            "apply%s" % (c["name"], worst(records), len(applicable_variants(cfg, b)),
                         "; " + "; ".join(notes) if notes else ""))
    ran.append("per-config reference checks on %d configs: explicit == functional, no weak "
               "gradients, float32 positive control" % len(CONFIGS))
    return check_foils(hits, log, ran)


def selftest_corrupt(tmp, seed, log, ran):
    """The comparison must notice a wrong OUT: a tensor dropped, one added,
    the loss off by 1e-4, logits of the wrong shape, F64 logits."""
    c = CONFIGS[0]
    cfg, w, b = make_case(0, c, seed)
    out = st_io.load(os.path.join(tmp, c["name"], "OUT.safetensors"))
    ref = classify_ref.reference_step(cfg, w, b)
    bad = dict(out)
    del bad["grad.classifier.bias"]
    bad["grad.bert.pooler.dense.extra"] = np.zeros(3, np.float32)
    bad["loss"] = bad["loss"] * np.float32(1 + 1e-4)
    bad["logits"] = bad["logits"][:, :-1].copy()
    bad["grad.classifier.weight"] = bad["grad.classifier.weight"].astype(np.float64)
    _, problems = compare(cfg, ref, bad)
    want = ["grad.classifier.bias: missing", "grad.bert.pooler.dense.extra: unexpected",
            "loss: max abs err", "logits: shape", "grad.classifier.weight: dtype"]
    fails = 0
    for wnt in want:
        if not any(p.startswith(wnt) for p in problems):
            log("FAIL self-test: corrupted OUT not reported: %s" % wnt)
            fails += 1
    if not fails:
        log("PASS self-test corrupted OUT detected (%d problems)" % len(problems))
        ran.append("corrupted-OUT detection")
    return fails


def self_test(seed, log):
    t0 = time.time()
    ran = []
    optim_ref.check_against_torch_adamw(log)
    classify_ref.self_check(log)
    ran.append("optim_ref AdamW == torch.optim.AdamW; classify_ref GELU/head/loss self-checks")
    selftest_cross(seed, log, ran)
    selftest_gradcheck(seed, log, ran)
    fails = selftest_configs(seed, log, ran)
    tmp = tempfile.mkdtemp(prefix="classify_step_selftest_")
    try:
        log("-- driver against the in-process float32 emulator --")
        hits = {}
        sub = []
        fails += run_configs(EmulatorRunner(), tmp, seed, log, hits, sub)
        fails += check_foils(hits, log, [])
        fails += run_steps(EmulatorRunner(), tmp, seed, log, sub)
        nbad, nbad_cases = run_bad_inputs(EmulatorRunner(), tmp, seed, log, sub)
        fails += nbad
        fails += selftest_corrupt(tmp, seed, log, ran)
        ran += ["driver vs float32 emulator: " + s for s in sub]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log("CHECKS RUN (self-test, no binary):")
    for r in ran:
        log("  - " + r)
    log("NOT RUN: the comparisons against mlmpi-train (needs --bin)")
    if fails:
        log("SELF-TEST FAILED (%d)" % fails)
        return 1
    log("SELF-TEST PASSED (%.1fs)" % (time.time() - t0))
    return 0


# ----------------------------------------------------------------------------


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--emulate":
        emulate(sys.argv[2:])
        return 0
    r = ref_cli.start(__doc__, 3141, 300, self_test, "classify_step_")
    if isinstance(r, int):
        return r
    a, workdir = r
    log = ref_cli.log
    t0 = time.time()
    ran = []
    classify_ref.self_check(log)
    ran.append("classify_ref GELU/head/loss self-checks")
    runner = ref_cli.SubprocessRunner(os.path.abspath(a.bin), a.timeout)
    hits = {}
    nconf = run_configs(runner, workdir, a.seed, log, hits, ran)
    nfoil = check_foils(hits, log, ran)
    nsteps = run_steps(runner, workdir, a.seed, log, ran)
    nbad, nbad_cases = run_bad_inputs(runner, workdir, a.seed, log, ran)
    fails = nconf + nfoil + nsteps + nbad
    nvar = len(classify_ref.VARIANTS) - 1
    log("SUMMARY: %d/%d configs, %d/%d AdamW step runs, %d/%d negative checks, %d/%d bad inputs "
        "passed (%.1fs)%s"
        % (len(CONFIGS) - nconf, len(CONFIGS), len(STEP_CASES) - nsteps, len(STEP_CASES),
           nvar - nfoil, nvar, nbad_cases - nbad, nbad_cases, time.time() - t0,
           "" if not fails else "; files kept in " + workdir))
    log("CHECKS RUN:")
    for r in ran:
        log("  - " + r)
    if not fails and not a.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
