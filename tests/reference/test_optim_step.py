#!/usr/bin/python3
"""Compare K optimizer steps of the C program with a float64 reference.

    test_optim_step.py --bin PATH/mlmpi-train [--workdir DIR] [--seed N]
    test_optim_step.py --self-test

For each case below: draws float32 weights and a padded batch for a small
BERT (the generators of test_bert_step.py), writes config.json,
W.safetensors and B.safetensors, and runs

    BIN step --model config.json --weights W.safetensors --batch B.safetensors
             --out OUT.safetensors --steps 5 [optimizer flags]

The reference repeats the five steps in float64: forward and backward with
bert_ref.py from its current weights, then the update of optim_ref.py.  For
every parameter the total change D = w_final - w_initial must satisfy
|D - Dref| / |Dref| <= 1e-3 (L2 norms over the tensor); tensors whose true
gradient is zero (the attention key biases: |grad| < 1e-12 of the largest
gradient) are only checked to be finite.  `losses` and `grad_norms` must
agree to a relative 1e-4.

Each case also names foils: references that are wrong in the way the case
is meant to catch (no clipping where clipping binds, bias correction where
it is off, ...).  A foil the comparison does not reject makes the case
fail, since the case would then not test its feature.  The variants with
eps inside the square root and without the trust ratio must be rejected on
at least one case.

The case `nonfinite_skip` puts 1e38 in a word-embedding row used by the
batch so that the float32 forward overflows: every step must be skipped,
the final weights must equal the initial ones bit for bit and every
grad_norms entry must be non-finite.

--self-test runs the checks of optim_ref.py alone and the whole driver
against an in-process float32 emulation of the program (a positive control:
a correct float32 implementation meets the bounds).
"""
import argparse
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
import optim_ref  # noqa: E402
import ref_cli  # noqa: E402
import st_io  # noqa: E402
from test_bert_step import make_batch, make_config, make_weights  # noqa: E402

K_STEPS = 5
DELTA_RTOL = 1e-3       # relative L2 error of each tensor's total change
SCALAR_RTOL = 1e-4      # losses and grad_norms
ZERO_GRAD_FRAC = 1e-12  # |grad| below this fraction of the largest: gradient is zero
POISON = 1e38

MODELS = {
    "pt": dict(V=97, H=32, L=2, nh=4, I=48, act="gelu", tv=2, T=12, B=3, P=3, max_pos=16,
               arch="pt", eps=1e-12, wmode="rand"),
    "mlm": dict(V=131, H=24, L=1, nh=2, I=40, act="gelu_new", tv=3, T=9, B=2, P=3, max_pos=12,
                arch="mlm", eps=1e-12, wmode="ones"),
}


# name, model, optimizer options (only those given are passed as flags; the
# rest are the program's defaults), tensors set to zero in W, foils
# (label, function (reference config, step-0 gradient norm) -> wrong config).
CASES = [
    dict(name="lamb_default", model="pt", opts={}),
    dict(name="lamb_adapt_all", model="pt",
         opts=dict(lr=1e-2, weight_decay=0.05, adapt_all=True),
         zero=["bert.embeddings.LayerNorm.bias"],
         foils=[("without adapt_all", lambda c, g: c.replace(adapt_all=False))]),
    dict(name="lamb_no_bias_correction", model="mlm",
         opts=dict(kind="lamb", lr=5e-3, bias_correction=False),
         foils=[("with bias correction", lambda c, g: c.replace(bias_correction=True))]),
    dict(name="lamb_trust_clamp", model="mlm",
         opts=dict(lr=1e-2, adapt_all=True, trust_min="auto", trust_max="auto"),
         foils=[("unclamped", lambda c, g: c.replace(trust_min=0.0, trust_max=0.0))]),
    dict(name="lamb_zero_norm_tensor", model="pt", opts=dict(lr=5e-3),
         zero=["bert.pooler.dense.weight"]),
    dict(name="lamb_clip_binds", model="pt", opts=dict(lr=5e-3, max_grad_norm=1e-3),
         foils=[("unclipped", lambda c, g: c.replace(max_grad_norm=0.0))]),
    dict(name="lamb_clip_off", model="mlm", opts=dict(lr=5e-3, beta1=0.8, max_grad_norm=0),
         foils=[("clipped at 1.0, the default", lambda c, g: c.replace(max_grad_norm=1.0))]),
    dict(name="adamw", model="pt",
         opts=dict(kind="adamw", lr=2e-3, weight_decay=0.1, beta2=0.99, eps=1e-7,
                   max_grad_norm=-1),
         foils=[("LAMB", lambda c, g: c.replace(kind="lamb")),
                ("without weight decay", lambda c, g: c.replace(weight_decay=0.0)),
                ("clipped at 1.0, the default", lambda c, g: c.replace(max_grad_norm=1.0))]),
    dict(name="adamw_clip_binds", model="mlm",
         opts=dict(kind="adamw", lr=1e-3, max_grad_norm=2e-4),
         foils=[("unclipped", lambda c, g: c.replace(max_grad_norm=0.0))]),
    dict(name="nonfinite_skip", model="pt", opts={}, poison=True),
]

# option -> (flag, kind of value)
FLAGS = {
    "kind": ("--optim", str), "lr": ("--lr", float), "weight_decay": ("--weight-decay", float),
    "beta1": ("--beta1", float), "beta2": ("--beta2", float), "eps": ("--eps", float),
    "max_grad_norm": ("--max-grad-norm", float), "trust_min": ("--trust-min", float),
    "trust_max": ("--trust-max", float),
}


def flags_for(opts):
    """Command-line flags for the options (auto values already resolved)."""
    out = []
    for k, v in opts.items():
        if k == "adapt_all":
            out += ["--adapt-all"] if v else []
        elif k == "bias_correction":
            out += [] if v else ["--no-bias-correction"]
        else:
            flag, kind = FLAGS[k]
            out += [flag, v if kind is str else "%.9g" % v]
    return out


def config_for(opts):
    """The reference config for the options, with the program's float rounding."""
    return optim_ref.OptimConfig(**opts).as_float32()


# ----------------------------------------------------------------------------
# the reference run


def reference_run(cfg, weights, batch, ocfg, K, dtype=torch.float64, fast=False):
    """K steps from weights (dict of float32 arrays).  Returns dict with the
    final weights (arrays of dtype), losses [K], grad_norms [K], the step-0
    gradients and the per-step optimizer infos."""
    names = [n for n, _ in bert_ref.param_shapes(cfg)]
    params = {n: torch.from_numpy(np.array(weights[n], np.float64)).to(dtype) for n in names}
    state = optim_ref.OptimState(params)
    losses, norms, infos, grads0 = [], [], [], None
    for k in range(K):
        res = bert_ref.reference_step(cfg, {n: p.numpy() for n, p in params.items()}, batch,
                                      dtype=dtype, fast=fast)
        grads = {n: torch.from_numpy(res["grad." + n]) for n in names}
        if k == 0:
            grads0 = {n: g.numpy().copy() for n, g in grads.items()}
        losses.append(float(res["loss"]))
        info = optim_ref.step(params, grads, state, ocfg)
        norms.append(info["grad_norm"])
        infos.append(info)
    return {"weights": {n: p.numpy().copy() for n, p in params.items()},
            "losses": np.array(losses), "grad_norms": np.array(norms), "grads0": grads0,
            "infos": infos}


def zero_grad_tensors(grads0):
    gmax = max(float(np.max(np.abs(g))) for g in grads0.values())
    return {n for n, g in grads0.items() if float(np.max(np.abs(g))) < ZERO_GRAD_FRAC * gmax}


def compare(cfg, w0, ref, out, skip):
    """Returns (records, problems): records (name, rel err) per compared
    tensor or scalar series; problems one string per failure."""
    return optim_ref.compare_trajectory(bert_ref.param_shapes(cfg), w0, ref, out, skip,
                                        DELTA_RTOL, SCALAR_RTOL)


def worst(records):
    if not records:
        return "nothing compared"
    n, e = max(records, key=lambda r: r[1])
    return "worst %s %.2e" % (n, e)


# ----------------------------------------------------------------------------
# cases


def make_case(ci, c, seed):
    m = MODELS[c["model"]]
    rng = np.random.default_rng([seed, 7000 + ci])
    cfg = make_config(m)
    weights = make_weights(rng, cfg)
    batch = make_batch(rng, cfg, m["T"], m["B"], m["P"], m["wmode"])
    for n in c.get("zero", []):
        weights[n] = np.zeros_like(weights[n])
    if c.get("poison"):
        tok = int(batch["input_ids"][0, 1])
        weights["bert.embeddings.word_embeddings.weight"][tok, :] = POISON
    return cfg, weights, batch


def resolve_opts(c, cfg, weights, batch):
    """Replaces `auto` trust bounds by values that bind: quantiles of the
    unclamped first-step ratios of the reference."""
    opts = dict(c["opts"])
    if opts.get("trust_min") != "auto":
        return opts
    probe = {k: v for k, v in opts.items() if k not in ("trust_min", "trust_max")}
    info = reference_run(cfg, weights, batch, config_for(probe), 1)["infos"][0]
    raws = sorted(r for r in info["ratio_raw"].values() if r is not None)
    opts["trust_min"] = float("%.4g" % raws[len(raws) // 3])
    opts["trust_max"] = float("%.4g" % raws[2 * len(raws) // 3])
    return opts


def check_features(c, ref, ocfg):
    """What the case claims to exercise did happen in the reference."""
    infos = ref["infos"]
    why = []
    if c.get("zero") and ocfg.kind == "lamb":
        for n in c["zero"]:
            if not (optim_ref.decays(n) or ocfg.adapt_all):
                continue
            if infos[0]["ratio_raw"].get(n, 0) is not None or infos[0]["ratio"][n] != 1.0:
                why.append("zero tensor %s did not get ratio 1 on step 1" % n)
    if ocfg.trust_min > 0 or ocfg.trust_max > 0:
        raws = [r for i in infos for r in i["ratio_raw"].values() if r is not None]
        lo = sum(1 for r in raws if r < ocfg.trust_min)
        hi = sum(1 for r in raws if r > ocfg.trust_max)
        if not (lo and hi):
            why.append("trust clamp did not bind at both ends (%d below, %d above)" % (lo, hi))
    if ocfg.max_grad_norm > 0 and c["opts"].get("max_grad_norm") is not None:
        if not all(i["clip"] < 1.0 for i in infos):
            why.append("clipping did not bind on every step")
    return why


def describe_opts(opts):
    return " ".join(flags_for(opts)) or "(defaults)"


def run_case(ci, c, runner, workdir, seed, log, variant_hits):
    cfg, weights, batch = make_case(ci, c, seed)
    d = os.path.join(workdir, c["name"])
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    st_io.save(os.path.join(d, "W.safetensors"), weights)
    st_io.save(os.path.join(d, "B.safetensors"), batch)
    outp = os.path.join(d, "OUT.safetensors")
    if os.path.exists(outp):
        os.remove(outp)
    opts = resolve_opts(c, cfg, weights, batch)
    args = ["step", "--model", os.path.join(d, "config.json"),
            "--weights", os.path.join(d, "W.safetensors"),
            "--batch", os.path.join(d, "B.safetensors"), "--out", outp,
            "--steps", str(K_STEPS)] + flags_for(opts)
    t0 = time.time()
    rc, err = runner(args)
    dt = time.time() - t0
    label = "%-24s %-5s %s" % (c["name"], c["model"], describe_opts(opts))
    if rc != 0:
        log("FAIL %s: binary exit status %s; stderr: %s" % (label, rc, err.strip()[-2000:]))
        return False
    try:
        out = st_io.load(outp)
    except Exception as e:  # noqa: BLE001
        log("FAIL %s: cannot read OUT: %s" % (label, e))
        return False
    if c.get("poison"):
        return check_skip(label, cfg, weights, out, config_for(opts), log, dt)

    t1 = time.time()
    ocfg = config_for(opts)
    ref = reference_run(cfg, weights, batch, ocfg, K_STEPS)
    skip = zero_grad_tensors(ref["grads0"])
    records, problems = compare(cfg, weights, ref, out, skip)
    problems += check_features(c, ref, ocfg)
    # foils: the case's own, and the two wrong variants on LAMB cases
    g0 = float(ref["grad_norms"][0])
    foils = [(lbl, f(ocfg, g0), None) for lbl, f in c.get("foils", [])]
    if ocfg.kind == "lamb":
        foils += [(v, ocfg.replace(variant=v), v) for v in optim_ref.VARIANTS[1:]]
    notes = []
    for lbl, fcfg, variant in foils:
        fref = reference_run(cfg, weights, batch, fcfg, K_STEPS)
        fout = dict(fref["weights"], losses=fref["losses"], grad_norms=fref["grad_norms"])
        frec, fprob = compare(cfg, weights, ref, fout, skip)
        rejected = bool(fprob)
        if variant:
            variant_hits[variant] = variant_hits.get(variant, 0) + rejected
            notes.append("%s %s" % (lbl, "rejected" if rejected else "passed"))
        else:
            notes.append("foil '%s' %s (%s)" % (lbl, "rejected" if rejected else "NOT rejected",
                                                worst(frec)))
            if not rejected:
                problems.append("foil '%s' is not rejected: the case does not test its feature"
                                % lbl)
    ok = not problems
    log("%s %s: %d tensors (+%d zero-gradient, finite only), %s; G0 %.3g, loss %.4f -> %.4f "
        "(%.1fs binary, %.1fs reference)"
        % ("PASS" if ok else "FAIL", label, len(records) - 2, len(skip), worst(records), g0,
           ref["losses"][0], ref["losses"][-1], dt, time.time() - t1))
    log("     " + "; ".join(notes))
    for p in problems:
        log("     " + p)
    return ok


def check_skip(label, cfg, weights, out, ocfg, log, dt):
    problems = []
    for n, _ in bert_ref.param_shapes(cfg):
        if n not in out:
            problems.append("%s: missing from OUT" % n)
        elif out[n].dtype != np.float32 or out[n].shape != weights[n].shape \
                or out[n].tobytes() != weights[n].tobytes():
            problems.append("%s: changed although every step had a non-finite gradient" % n)
    gn = out.get("grad_norms")
    if gn is None or gn.shape != (K_STEPS,) or np.any(np.isfinite(gn)):
        problems.append("grad_norms should be %d non-finite values, got %r" % (K_STEPS, gn))
    # the reference, fed the program's own step-0 gradients, skips as well
    names = [n for n, _ in bert_ref.param_shapes(cfg)]
    grads = {n: torch.from_numpy(np.asarray(out["grad." + n], np.float64)) for n in names
             if "grad." + n in out}
    if len(grads) == len(names):
        p = {n: torch.from_numpy(np.array(weights[n], np.float64)) for n in names}
        st = optim_ref.OptimState(p)
        if not optim_ref.step(p, grads, st, ocfg)["skipped"] or st.t != 0:
            problems.append("the step-0 gradients are finite: the poisoned row did not overflow")
    else:
        problems.append("step-0 gradients missing from OUT")
    ok = not problems
    log("%s %s: all %d steps skipped, weights bitwise unchanged, grad_norms %s (%.1fs binary)"
        % ("PASS" if ok else "FAIL", label, K_STEPS,
           np.array2string(np.asarray(gn), precision=3) if gn is not None else "missing", dt))
    for p in problems:
        log("     " + p)
    return ok


def run_cases(runner, workdir, seed, log):
    """Returns (failed cases, failed negative checks)."""
    fails = 0
    hits = {}
    for ci, c in enumerate(CASES):
        if not run_case(ci, c, runner, workdir, seed, log, hits):
            fails += 1
    neg = 0
    for v in optim_ref.VARIANTS[1:]:
        if hits.get(v, 0) == 0:
            neg += 1
            log("FAIL negative check: the variant %s was not rejected on any case" % v)
        else:
            log("PASS negative check: the variant %s was rejected on %d case(s)" % (v, hits[v]))
    return fails, neg


# ----------------------------------------------------------------------------
# running the program


class EmulatorRunner:
    """The program's `step --steps K` emulated in float32 in-process: the
    functional float32 model and optim_ref's update in float32."""

    def __call__(self, args):
        ap = argparse.ArgumentParser(prog="step")
        for f in ("--model", "--weights", "--batch", "--out", "--optim"):
            ap.add_argument(f)
        ap.add_argument("--steps", type=int, default=0)
        for opt, (flag, kind) in FLAGS.items():
            if kind is float:
                ap.add_argument(flag, dest=opt, type=float)
        ap.add_argument("--adapt-all", action="store_true")
        ap.add_argument("--no-bias-correction", action="store_true")
        a = ap.parse_args(args[1:])
        opts = {k: getattr(a, k) for k, (_, kind) in FLAGS.items()
                if kind is float and getattr(a, k) is not None}
        if a.optim:
            opts["kind"] = a.optim
        opts["adapt_all"] = a.adapt_all
        opts["bias_correction"] = not a.no_bias_correction
        with open(a.model) as f:
            cfg = json.load(f)
        w = st_io.load(a.weights)
        b = st_io.load(a.batch)
        r = reference_run(cfg, w, b, config_for(opts), a.steps, dtype=torch.float32, fast=True)
        out = dict(r["weights"])
        out.update({"grad." + n: g for n, g in r["grads0"].items()})
        out["losses"] = r["losses"].astype(np.float32)
        out["grad_norms"] = r["grad_norms"].astype(np.float32)
        st_io.save(a.out, out)
        return 0, ""


def self_test(seed, log):
    t0 = time.time()
    optim_ref.self_check(log)
    tmp = tempfile.mkdtemp(prefix="optim_step_selftest_")
    try:
        log("-- driver against the in-process float32 emulator --")
        fails = sum(run_cases(EmulatorRunner(), tmp, seed, log))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if fails:
        log("SELF-TEST FAILED (%d)" % fails)
        return 1
    log("SELF-TEST PASSED (%.1fs)" % (time.time() - t0))
    return 0


def main():
    r = ref_cli.start(__doc__, 4321, 300, self_test, "optim_step_")
    if isinstance(r, int):
        return r
    a, workdir = r
    log = ref_cli.log
    t0 = time.time()
    optim_ref.self_check(log)
    nfail, nneg = run_cases(ref_cli.SubprocessRunner(os.path.abspath(a.bin), a.timeout), workdir,
                            a.seed, log)
    fails = nfail + nneg
    log("SUMMARY: %d/%d cases passed, %d/%d negative checks passed (%.1fs)%s"
        % (len(CASES) - nfail, len(CASES), len(optim_ref.VARIANTS) - 1 - nneg,
           len(optim_ref.VARIANTS) - 1, time.time() - t0,
           "" if not fails else "; files kept in " + workdir))
    if not fails and not a.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
