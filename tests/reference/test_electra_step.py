#!/usr/bin/python3
"""Compare ELECTRA training steps of the C program with a float64 reference.

    test_electra_step.py --bin PATH/mlmpi-train [--workdir DIR] [--seed N]
    test_electra_step.py --self-test

For each config below: draws float32 weights and a padded batch, writes
config.json / W.safetensors / B.safetensors, runs

    BIN step --model config.json --weights W.safetensors \\
             --batch B.safetensors --out OUT.safetensors [--seed S]

and compares every tensor of OUT with electra_ref.py in float64, with the
bounds of the BERT reference test (loss, mlm_loss, disc_loss: 1e-5
relative; logits: 1e-4 x max|ref|; each gradient: 5e-4 x (max|ref| + 1e-3 x
the largest gradient)).  Where the batch has no sampled_ids the program
draws them: every draw must be the reference's Gumbel-max choice (same
Philox stream) up to near ties, and the reference then uses the program's
draws.

Then: 5 LAMB steps on one config against a float64 reference (optim_ref.py;
relative L2 1e-3 of each tensor's change, 1e-4 on losses and gradient
norms); negative checks (deliberately wrong references and optimizers must
be rejected by the same comparisons); malformed inputs, each rejected with a
nonzero exit and one stderr line naming the culprit.

--self-test runs the reference-side checks only: Philox known answers,
gradcheck of the reference, and the comparisons' power to reject the
wrong variants.
"""
import json
import os
import shutil
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

import electra_ref  # noqa: E402
import optim_ref  # noqa: E402
import ref_cli  # noqa: E402
import st_io  # noqa: E402

from ref_cli import (DELTA_RTOL, GRAD_GLOBAL_FRAC, GRAD_RTOL, LOGIT_RTOL,  # noqa: E402,F401
                     SCALAR_RTOL, STEP_SCALAR_RTOL, ZERO_GRAD_FRAC)
K_STEPS = 5

# gen / disc: (hidden, layers, heads, intermediate); gen None: the config has
# no "generator" object (a quarter of the discriminator); weights None: the
# keys are absent (1.0, 50.0); sampled: "given" (in the batch) or "drawn".
CONFIGS = [
    dict(name="e32_no_projection", V=97, E=32, gen=(32, 1, 2, 48), disc=(32, 2, 4, 64),
         act="gelu", tv=2, T=9, B=3, P=3, max_pos=16, weights=None, sampled="given"),
    dict(name="e24_projections_odd", V=131, E=24, gen=(12, 2, 3, 20), disc=(30, 2, 5, 52),
         act="gelu_new", tv=3, T=11, B=3, P=4, max_pos=13, weights=(0.7, 13.0), sampled="drawn"),
    dict(name="e40_eq_disc", V=211, E=40, gen=(16, 1, 4, 36), disc=(40, 2, 5, 72),
         act="gelu", tv=2, T=13, B=2, P=4, max_pos=20, weights=None, sampled="given"),
    dict(name="e20_eq_gen_relu", V=89, E=20, gen=(20, 2, 2, 28), disc=(36, 1, 3, 44),
         act="relu", tv=2, T=7, B=4, P=2, max_pos=7, weights=(1.0, 20.0), sampled="drawn"),
    dict(name="e18_pttanh_odd", V=257, E=18, gen=(10, 1, 1, 14), disc=(27, 2, 3, 40),
         act="gelu_pytorch_tanh", tv=2, T=17, B=2, P=5, max_pos=24, weights=None,
         sampled="given"),
    dict(name="e16_default_generator", V=61, E=16, gen=None, disc=(32, 1, 4, 48),
         act="gelu", tv=2, T=10, B=3, P=3, max_pos=10, weights=(2.0, 50.0), sampled="drawn"),
]
DRAW_SEED = 20240611

# foils: wrong references, and the configs on which each must be rejected
FOILS = {
    "gen_head_uses_hidden_act": ["e24_projections_odd", "e18_pttanh_odd"],
    "disc_loss_over_padding": None,        # every config (all have padding)
    "correct_sample_is_replaced": ["e32_no_projection", "e40_eq_disc", "e18_pttanh_odd"],
    "no_disc_grad_into_embeddings": None,
}


# ----------------------------------------------------------------------------
# data


def make_config(c):
    cfg = {"architectures": ["ElectraForPreTraining"], "model_type": "electra",
           "vocab_size": c["V"], "embedding_size": c["E"],
           "hidden_size": c["disc"][0], "num_hidden_layers": c["disc"][1],
           "num_attention_heads": c["disc"][2], "intermediate_size": c["disc"][3],
           "hidden_act": c["act"], "hidden_dropout_prob": 0.0,
           "attention_probs_dropout_prob": 0.0, "max_position_embeddings": c["max_pos"],
           "type_vocab_size": c["tv"], "layer_norm_eps": 1e-12, "initializer_range": 0.02,
           "pad_token_id": 0, "position_embedding_type": "absolute", "summary_type": "first"}
    if c["gen"] is not None:
        g = c["gen"]
        cfg["generator"] = {"hidden_size": g[0], "num_hidden_layers": g[1],
                            "num_attention_heads": g[2], "intermediate_size": g[3]}
    if c["weights"] is not None:
        cfg["gen_weight"], cfg["disc_weight"] = c["weights"]
    return cfg


def make_weights(rng, cfg):
    w = {}
    for name, shape in electra_ref.param_shapes(cfg):
        if name.endswith("LayerNorm.weight"):
            a = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name.endswith("bias"):
            a = 0.1 * rng.standard_normal(shape)
        else:
            std = float(np.clip(1.0 / np.sqrt(shape[1]), 0.05, 0.3))
            a = std * rng.standard_normal(shape)
        w[name] = a.astype(np.float32)
    return w


def make_batch(rng, cfg, c):
    """Padded rows (at least one), slots left unused, some samples equal to
    the original token (counted as not replaced)."""
    V, tv, T, B, P = cfg["vocab_size"], cfg["type_vocab_size"], c["T"], c["B"], c["P"]
    ids = np.zeros((B, T), np.int32)
    mask = np.zeros((B, T), np.int32)
    seg = np.zeros((B, T), np.int32)
    mpos = np.zeros((B, P), np.int32)
    mids = np.zeros((B, P), np.int32)
    mw = np.zeros((B, P), np.float32)
    samp = np.zeros((B, P), np.int32)
    lens = rng.integers(3, T + 1, size=B)
    lens[0] = rng.integers(3, T)
    if B > 1:
        lens[-1] = T
    for b in range(B):
        n = int(lens[b])
        ids[b, :n] = rng.integers(1, V, size=n)
        mask[b, :n] = 1
        split = int(rng.integers(1, n))
        seg[b, split:n] = int(rng.integers(1, tv)) if tv > 2 else 1
        k = int(rng.integers(1, min(P, n - 1) + 1))
        pos = np.sort(rng.choice(np.arange(1, n), size=k, replace=False))
        mpos[b, :k] = pos
        mids[b, :k] = ids[b, pos]
        ids[b, pos] = 1                       # the [MASK] token
        mw[b, :k] = rng.uniform(0.25, 1.5, size=k)
        samp[b, :k] = rng.integers(0, V, size=k)
        same = rng.random(k) < 0.35
        samp[b, :k][same] = mids[b, :k][same]
        if k < P:                             # an unused slot with junk, ignored
            samp[b, k:] = rng.integers(0, V, size=P - k)
    batch = {"input_ids": ids, "input_mask": mask, "segment_ids": seg,
             "masked_lm_positions": mpos, "masked_lm_ids": mids, "masked_lm_weights": mw}
    if c["sampled"] == "given":
        batch["sampled_ids"] = samp
    return batch


def make_case(c, seed, ci):
    rng = np.random.default_rng([seed, ci])
    cfg = make_config(c)
    return cfg, make_weights(rng, cfg), make_batch(rng, cfg, c)


def describe(c):
    g = "quarter" if c["gen"] is None else "H%d L%d A%d I%d" % c["gen"]
    return "V=%d E=%d gen %s disc H%d L%d A%d I%d %s T=%d B=%d P=%d %s" % (
        c["V"], c["E"], g, *c["disc"], c["act"], c["T"], c["B"], c["P"], c["sampled"])


# ----------------------------------------------------------------------------
# comparison


def compare(cfg, ref, out):
    expected = electra_ref.output_names(cfg)
    problems = ["%s: missing from OUT" % n for n in expected if n not in out]
    problems += ["%s: unexpected tensor in OUT" % n for n in sorted(set(out) - set(expected))]
    gmax = max(float(np.max(np.abs(v))) for k, v in ref.items() if k.startswith("grad."))
    records = []
    for n in expected:
        if n not in out:
            continue
        r = np.asarray(ref[n], np.float64)
        o = np.asarray(out[n])
        if tuple(o.shape) != tuple(r.shape):
            problems.append("%s: shape %s, expected %s" % (n, list(o.shape), list(r.shape)))
            continue
        if n == "sampled_ids":
            if o.dtype != np.int32 or not np.array_equal(o, r):
                problems.append("sampled_ids: differ from the samples used (%s vs %s)" % (o, r))
            continue
        if o.dtype.kind != "f" or not np.all(np.isfinite(o)):
            problems.append("%s: not finite floating point" % n)
            continue
        m = float(np.max(np.abs(r))) if r.size else 0.0
        if n in ("loss", "mlm_loss", "disc_loss"):
            bound = SCALAR_RTOL * abs(float(r))
        elif n.endswith("_logits"):
            bound = LOGIT_RTOL * m
        else:
            bound = GRAD_RTOL * (m + GRAD_GLOBAL_FRAC * gmax)
        diff = np.abs(o.astype(np.float64) - r)
        err = float(diff.max()) if diff.size else 0.0
        records.append((n, err, bound))
        if not err <= bound:
            idx = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.ndim else ()
            problems.append("%s: max abs err %.3e > bound %.3e at %s: out=%.9g ref=%.9g"
                            % (n, err, bound, tuple(int(i) for i in idx), float(o[idx]),
                               float(r[idx])))
    return records, problems


def worst(records):
    if not records:
        return "nothing compared"
    n, e, b = max(records, key=lambda r: r[1] / r[2] if r[2] > 0 else float("inf"))
    return "worst %s err=%.2e bound=%.2e ratio=%.3f" % (n, e, b, e / b if b > 0 else float("inf"))


def check_draws(cfg, weights, batch, drawn, seed, logit_rtol=LOGIT_RTOL):
    """The program's draws against the reference's Gumbel-max: equal, or a
    near tie (the program's choice scores within the logit tolerance of the
    best). Returns (problems, exact count, slots)."""
    ref, scores = electra_ref.draw_samples(cfg, weights, batch, seed)
    w = batch["masked_lm_weights"]
    problems, exact, slots = [], 0, 0
    logit_scale = float(np.max(np.abs(scores[np.isfinite(scores)]))) if np.any(np.isfinite(scores)) else 1.0
    for b, j in zip(*np.nonzero(w > 0)):
        slots += 1
        o = int(drawn[b, j])
        if o == int(ref[b, j]):
            exact += 1
        elif not (0 <= o < scores.shape[2] and scores[b, j, ref[b, j]] - scores[b, j, o]
                  <= 2 * logit_rtol * logit_scale):
            problems.append("sampled_ids[%d,%d] = %d, the Gumbel-max choice is %d"
                            % (b, j, o, int(ref[b, j])))
    for b, j in zip(*np.nonzero(w == 0)):
        if int(drawn[b, j]) != 0:
            problems.append("sampled_ids[%d,%d] = %d at an unused slot (expected 0)"
                            % (b, j, int(drawn[b, j])))
    return problems, exact, slots


# ----------------------------------------------------------------------------
# running the program


def run_bin(binary, args, timeout):
    return ref_cli.SubprocessRunner(binary, timeout)(args)


write_case = ref_cli.write_case


def run_configs(binary, workdir, seed, timeout, log, foil_hits):
    fails = 0
    for ci, c in enumerate(CONFIGS):
        cfg, weights, batch = make_case(c, seed, ci)
        args = write_case(os.path.join(workdir, c["name"]), cfg, weights, batch)
        outp = args[-1]
        if c["sampled"] == "drawn":
            args += ["--seed", str(DRAW_SEED)]
        t0 = time.time()
        rc, err = run_bin(binary, args + ["--threads", "2"], timeout)
        dt = time.time() - t0
        if rc != 0:
            fails += 1
            log("FAIL %-24s [%s] exit status %s: %s" % (c["name"], describe(c), rc, err.strip()[-2000:]))
            continue
        out = st_io.load(outp)
        problems, note = [], ""
        if c["sampled"] == "drawn":
            drawn = out.get("sampled_ids")
            if drawn is None or drawn.shape != batch["masked_lm_ids"].shape:
                problems.append("sampled_ids missing or of the wrong shape")
                sampled = np.zeros_like(batch["masked_lm_ids"])
            else:
                dp, exact, slots = check_draws(cfg, weights, batch, drawn, DRAW_SEED)
                problems += dp
                sampled = drawn
                note = "; draws %d/%d exact" % (exact, slots)
        else:
            sampled = batch["sampled_ids"]
        ref = electra_ref.reference_step(cfg, weights, batch, sampled)
        records, cp = compare(cfg, ref, out)
        problems += cp
        labels = electra_ref.discriminator_input(
            electra_ref.batch_to_torch(batch, torch.float64), torch.from_numpy(np.asarray(sampled)))[1]
        nrep = int(labels.sum())
        log("%s %-24s [%s] %d tensors, %s%s; %d replaced (%.1fs)"
            % ("PASS" if not problems else "FAIL", c["name"], describe(c), len(records),
               worst(records), note, nrep, dt))
        for p in problems:
            log("    " + p)
        fails += bool(problems)
        # the same comparison must reject the wrong references
        for v, where in FOILS.items():
            if where is not None and c["name"] not in where:
                continue
            bad = electra_ref.reference_step(cfg, weights, batch, sampled, variant=v)
            _, fp = compare(cfg, ref, bad)
            foil_hits.setdefault(v, []).append((c["name"], bool(fp)))
    return fails


def check_foils(foil_hits, log):
    fails = 0
    for v in electra_ref.VARIANTS[1:]:
        hits = foil_hits.get(v, [])
        missed = [n for n, rejected in hits if not rejected]
        if not hits or missed:
            fails += 1
            log("FAIL negative check: reference variant %s not rejected on %s"
                % (v, ", ".join(missed) or "any config"))
        else:
            log("PASS negative check: reference variant %s rejected on all %d config(s)"
                % (v, len(hits)))
    return fails


# ----------------------------------------------------------------------------
# LAMB steps


def reference_run(cfg, weights, batch, ocfg, K):
    names = [n for n, _ in electra_ref.param_shapes(cfg)]
    params = {n: torch.from_numpy(np.array(weights[n], np.float64)) for n in names}
    state = optim_ref.OptimState(params)
    losses, norms, grads0 = [], [], None
    for k in range(K):
        res = electra_ref.reference_step(cfg, {n: p.numpy() for n, p in params.items()}, batch,
                                         batch["sampled_ids"])
        grads = {n: torch.from_numpy(res["grad." + n]) for n in names}
        if k == 0:
            grads0 = {n: g.numpy().copy() for n, g in grads.items()}
        losses.append(float(res["loss"]))
        norms.append(optim_ref.step(params, grads, state, ocfg)["grad_norm"])
    return {"weights": {n: p.numpy().copy() for n, p in params.items()},
            "losses": np.array(losses), "grad_norms": np.array(norms), "grads0": grads0}


def compare_steps(cfg, w0, ref, out, skip):
    return optim_ref.compare_trajectory(electra_ref.param_shapes(cfg), w0, ref, out, skip,
                                        DELTA_RTOL, STEP_SCALAR_RTOL)


def run_lamb(binary, workdir, seed, timeout, log):
    ci = 2
    c = CONFIGS[ci]
    cfg, weights, batch = make_case(c, seed + 1, ci)
    args = write_case(os.path.join(workdir, "lamb_" + c["name"]), cfg, weights, batch)
    t0 = time.time()
    rc, err = run_bin(binary, args + ["--steps", str(K_STEPS), "--threads", "2"], timeout)
    if rc != 0:
        log("FAIL lamb %s: exit status %s: %s" % (c["name"], rc, err.strip()[-2000:]))
        return 1
    dt = time.time() - t0
    out = st_io.load(args[-1])
    ocfg = optim_ref.OptimConfig().as_float32()
    ref = reference_run(cfg, weights, batch, ocfg, K_STEPS)
    gmax = max(float(np.max(np.abs(g))) for g in ref["grads0"].values())
    skip = {n for n, g in ref["grads0"].items() if float(np.max(np.abs(g))) < ZERO_GRAD_FRAC * gmax}
    records, problems = compare_steps(cfg, weights, ref, out, skip)
    notes = []
    for v in optim_ref.VARIANTS[1:]:
        fref = reference_run(cfg, weights, batch, ocfg.replace(variant=v), K_STEPS)
        _, fp = compare_steps(cfg, weights, ref, dict(fref["weights"], losses=fref["losses"],
                                                     grad_norms=fref["grad_norms"]), skip)
        notes.append("%s %s" % (v, "rejected" if fp else "NOT rejected"))
        if not fp:
            problems.append("negative check: LAMB variant %s is not rejected" % v)
    worst_rec = max(records, key=lambda r: r[1]) if records else ("-", 0.0)
    log("%s lamb %d steps %-18s %d tensors (+%d zero-gradient), worst %s %.2e; loss %.4f -> %.4f; "
        "%s (%.1fs)" % ("PASS" if not problems else "FAIL", K_STEPS, c["name"], len(records) - 2,
                        len(skip), worst_rec[0], worst_rec[1], ref["losses"][0], ref["losses"][-1],
                        "; ".join(notes), dt))
    for p in problems:
        log("    " + p)
    return 1 if problems else 0


# ----------------------------------------------------------------------------
# malformed inputs


def run_bad_inputs(binary, workdir, seed, timeout, log):
    c = CONFIGS[0]
    cases = []

    def fresh():
        return make_case(c, seed, 1000)

    cfg, w, b = fresh()
    b["sampled_ids"] = b["sampled_ids"][:, :-1].copy()
    cases.append(("sampled_ids_shape", "sampled_ids", cfg, w, b))
    cfg, w, b = fresh()
    b["sampled_ids"][0, 0] = cfg["vocab_size"]
    cases.append(("sampled_ids_range", "sampled_ids", cfg, w, b))
    cfg, w, b = fresh()
    del w["generator.generator_lm_head.bias"]
    cases.append(("weights_missing", "generator.generator_lm_head.bias", cfg, w, b))
    cfg, w, b = fresh()
    w["generator.electra.embeddings.word_embeddings.weight"] = \
        w[electra_ref.EMB + "word_embeddings.weight"]
    cases.append(("embeddings_stored_twice", "generator.electra.embeddings.word_embeddings.weight",
                  cfg, w, b))
    cfg, w, b = fresh()
    b["next_sentence_labels"] = np.zeros((c["B"], 1), np.int32)
    cases.append(("nsp_labels", "next_sentence_labels", cfg, w, b))
    cfg, w, b = fresh()
    b["masked_lm_positions"][-1, 1] = b["masked_lm_positions"][-1, 0]
    b["masked_lm_weights"][-1, :2] = 1.0
    cases.append(("repeated_position", "masked_lm_positions", cfg, w, b))
    cfg, w, b = fresh()
    cfg["generator"]["num_attention_heads"] = 3
    cases.append(("generator_heads", "generator.num_attention_heads", cfg, w, b))
    cfg, w, b = fresh()
    cfg["generator"]["embedding_size"] = cfg["embedding_size"] + 1
    cases.append(("generator_embedding_size", "generator.embedding_size", cfg, w, b))
    fails = 0
    for name, culprit, cfg, w, b in cases:
        args = write_case(os.path.join(workdir, "bad_" + name), cfg, w, b)
        rc, err = run_bin(binary, args, timeout)
        fails += ref_cli.bad_input_verdict(name, culprit, rc, err, 26)
    return fails, len(cases)


# ----------------------------------------------------------------------------
# self-test (reference side only)


def self_test(seed, log):
    t0 = time.time()
    electra_ref.self_check(log)
    # gradcheck of the whole reference on a tiny case with projections
    c = dict(name="tiny", V=13, E=6, gen=(4, 1, 2, 6), disc=(8, 1, 2, 10), act="gelu_new", tv=2,
             T=5, B=2, P=2, max_pos=6, weights=(0.8, 3.0), sampled="given")
    cfg, w, b = make_case(c, seed, 77)
    d = electra_ref.Dims(cfg)
    names = [n for n, _ in electra_ref.param_shapes(cfg)]
    p = electra_ref.params_to_torch(cfg, w, torch.float64)
    bt = electra_ref.batch_to_torch({k: v for k, v in b.items() if k != "sampled_ids"}, torch.float64)
    samp = torch.from_numpy(b["sampled_ids"])

    def f(*ts):
        return electra_ref.forward(d, dict(zip(names, ts)), bt, samp)["loss"]

    # fast mode: checks random projections of the Jacobian, every input at once
    assert torch.autograd.gradcheck(f, tuple(p[n] for n in names), eps=1e-6, atol=1e-6, rtol=1e-5,
                                    fast_mode=True)
    log("PASS self-test gradcheck (fast mode, float64) of the reference (%d tensors)" % len(names))
    # the comparison's power: every variant rejected where FOILS says
    hits = {}
    for ci, cc in enumerate(CONFIGS):
        cfg, w, b = make_case(cc, seed, ci)
        samp = b["sampled_ids"] if "sampled_ids" in b else \
            electra_ref.draw_samples(cfg, w, b, DRAW_SEED)[0]
        ref = electra_ref.reference_step(cfg, w, b, samp)
        f32 = {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in ref.items()}
        _, pr = compare(cfg, ref, f32)
        assert not pr, (cc["name"], pr)
        for v, where in FOILS.items():
            if where is None or cc["name"] in where:
                _, fp = compare(cfg, ref, electra_ref.reference_step(cfg, w, b, samp, variant=v))
                hits.setdefault(v, []).append((cc["name"], bool(fp)))
    fails = check_foils(hits, log)
    log("SELF-TEST %s (%.1fs)" % ("FAILED" if fails else "PASSED", time.time() - t0))
    return 1 if fails else 0


def main():
    r = ref_cli.start(__doc__, 2718, 300, self_test, "electra_step_")
    if isinstance(r, int):
        return r
    a, workdir = r
    log = ref_cli.log
    t0 = time.time()
    electra_ref.self_check(log)
    binary = os.path.abspath(a.bin)
    hits = {}
    nconf = run_configs(binary, workdir, a.seed, a.timeout, log, hits)
    nfoil = check_foils(hits, log)
    nlamb = run_lamb(binary, workdir, a.seed, a.timeout, log)
    nbad, nbad_cases = run_bad_inputs(binary, workdir, a.seed, a.timeout, log)
    fails = nconf + nfoil + nlamb + nbad
    log("SUMMARY: %d/%d configs, LAMB %s, %d/%d negative checks, %d/%d bad inputs passed (%.1fs)%s"
        % (len(CONFIGS) - nconf, len(CONFIGS), "passed" if not nlamb else "FAILED",
           len(electra_ref.VARIANTS) - 1 - nfoil, len(electra_ref.VARIANTS) - 1,
           nbad_cases - nbad, nbad_cases, time.time() - t0,
           "" if not fails else "; files kept in " + workdir))
    if not fails and not a.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
