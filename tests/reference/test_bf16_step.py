#!/usr/bin/python3
"""The BERT, ELECTRA and GPT-2 reference step tests with the matrix products in bf16.

    test_bf16_step.py --model bert|electra|gpt2 --bin PATH/mlmpi-train [--workdir DIR] [--seed N]

Runs the cases of test_bert_step.py (or test_electra_step.py, test_gpt2_step.py) through

    BIN step --precision bf16 ...

and compares every output with the same float64 PyTorch reference, under bounds derived
from bf16's rounding (below). Three checks make the comparison mean something:
  * every config's output must FAIL the fp32 test's bounds: the bf16 path really ran;
  * wrong references (BERT: ReLU where the config says GELU; ELECTRA: the fp32 test's
    foils; GPT-2: the anti-causal mask) must still be rejected under the bf16 bounds;
  * the fp32 run of the binary on the same cases must pass the bf16 bounds with room
    (it is the same model, rounded less);
  * --precision fp32-onednn (the products in fp32 through oneDNN) must pass the fp32
    test's own bounds.

Derivation of the bounds. bf16 keeps 8 significant bits: unit roundoff u = 2^-8. The
backend rounds both inputs of every matrix product to bf16 and accumulates in fp32, so
one product's output element c = sum_k a_k b_k carries |dc| <= (2u + K u32) sum_k |a_k b_k|
with u32 = 2^-24 and K the reduction length (the fp32 accumulation term K u32 stays below
2^-13 for the K <= 2048 used here, small beside 2u, but it is kept). The error of a
tensor is the sum of such contributions along its path through S products in sequence;
rounding errors of different products are independent and of either sign, so they add
like a random walk, sqrt(S) times one product's. The products on the path:
  forward, per encoder layer: q/k/v, scores, probabilities x values, attention output,
  intermediate, output (6 in sequence), plus the head's (2; ELECTRA's embedding
  projection adds 1): S_fwd = 6 L + 3;
  a gradient retraces the forward and goes back through it: S_grad = 2 S_fwd.
The conditioning sum|a_k b_k| / |c| and the step from a relative to a max-normalised error
take a safety factor LAMBDA = 2. So, with m the reference tensor's largest magnitude:
  loss, logits:  LAMBDA sqrt(S_fwd) (2u + K u32) * m
  gradients:     LAMBDA sqrt(S_grad) (2u + K u32) * (m + FLOOR * gmax)
where gmax is the largest gradient of any tensor: a gradient whose exact value is
(nearly) zero (the attention key bias: softmax ignores a constant added to a row) still
carries rounding noise from the products it is summed from, whose scale is the model's
gradient scale; FLOOR = 1e-2 (2.5 u, one rounding of that scale).

Two things this analysis does not bound, and so are left out, with the fp32 tests covering
them: with ReLU, a pre-activation within rounding of 0 switches the derivative between 0
and 1, so for ReLU configs only the forward outputs (losses, logits) are compared; and
ELECTRA's foil "gen_head_uses_hidden_act" on tanh-GELU configs changes the outputs by about
1e-3 relative, below bf16's resolution.
"""
import math
import os
import shutil
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

import bert_ref  # noqa: E402
import electra_ref  # noqa: E402
import gpt2_ref  # noqa: E402
import ref_cli  # noqa: E402
import st_io  # noqa: E402
import test_bert_step as tbs  # noqa: E402
import test_electra_step as tes  # noqa: E402
import test_gpt2_step as tgs  # noqa: E402

U = 2.0 ** -8
U32 = 2.0 ** -24
LAMBDA = 2.0
FLOOR = 1e-2
SCALARS = ("loss", "mlm_loss", "nsp_loss", "disc_loss")


def rtols(layers, K):
    """(forward, gradient) relative bounds for a model whose longest encoder has `layers`
    layers and whose longest reduction has length K."""
    per = 2 * U + K * U32
    s_fwd = 6 * layers + 3
    return LAMBDA * math.sqrt(s_fwd) * per, LAMBDA * math.sqrt(2 * s_fwd) * per


def compare(names, ref, out, rt_fwd, rt_grad, forward_only=False):
    gmax = max(float(np.max(np.abs(v))) for k, v in ref.items() if k.startswith("grad."))
    records, problems = [], []
    for n in names:
        if n == "sampled_ids" or (forward_only and n.startswith("grad.")):
            continue
        if n not in out:
            problems.append("%s: missing from OUT" % n)
            continue
        r = np.asarray(ref[n], np.float64)
        o = np.asarray(out[n])
        if tuple(o.shape) != tuple(r.shape) or o.dtype.kind != "f" or not np.all(np.isfinite(o)):
            problems.append("%s: shape %s / dtype %s / non-finite" % (n, list(o.shape), o.dtype))
            continue
        m = float(np.max(np.abs(r))) if r.size else 0.0
        if n in SCALARS or n.endswith("_logits") or n == "logits":
            bound = rt_fwd * m
        else:
            bound = rt_grad * (m + FLOOR * gmax)
        err = float(np.max(np.abs(o.astype(np.float64) - r))) if r.size else 0.0
        records.append((n, err, bound))
        if not err <= bound:
            problems.append("%s: max abs err %.3e > bound %.3e (ratio %.2f)"
                            % (n, err, bound, err / bound if bound else float("inf")))
    return records, problems


def worst(records):
    n, e, b = max(records, key=lambda r: r[1] / r[2] if r[2] > 0 else float("inf"))
    return "worst %s err=%.2e bound=%.2e ratio=%.3f" % (n, e, b, e / b if b > 0 else float("inf"))


# ---- the two models' cases ------------------------------------------------------------


class Bert:
    configs = tbs.CONFIGS

    @staticmethod
    def case(c, seed, ci):
        rng = np.random.default_rng([seed, ci])
        cfg = tbs.make_config(c)
        w = tbs.make_weights(rng, cfg)
        return cfg, w, tbs.make_batch(rng, cfg, c["T"], c["B"], c["P"], c["wmode"])

    @staticmethod
    def bounds(c):
        return rtols(c["L"], max(c["H"], c["I"], c["V"], c["B"] * c["T"]))

    @staticmethod
    def reference(c, cfg, w, b, out, log):
        return bert_ref.reference_step(cfg, w, b, dtype=torch.float64), [], ""

    @staticmethod
    def names(cfg):
        return bert_ref.output_names(cfg)

    @staticmethod
    def fp32_compare(cfg, ref, out):
        return tbs.compare(cfg, ref, out)[1]

    @staticmethod
    def foils(c, cfg, w, b, out):
        """Wrong references the bf16 bounds must still reject."""
        if c["act"] != "gelu":
            return {}
        return {"relu_for_gelu": bert_ref.reference_step(cfg, w, b, dtype=torch.float64,
                                                         act_override="relu")}

    extra_args = staticmethod(lambda c: [])


class Electra:
    configs = tes.CONFIGS

    @staticmethod
    def case(c, seed, ci):
        return tes.make_case(c, seed, ci)

    @staticmethod
    def bounds(c):
        g = c["gen"] or (c["disc"][0] // 4, c["disc"][1], 1, c["disc"][3] // 4)
        L = max(g[1], c["disc"][1])
        return rtols(L, max(c["disc"][0], c["disc"][3], c["V"], c["B"] * c["T"]))

    @staticmethod
    def reference(c, cfg, w, b, out, log):
        problems, note = [], ""
        if c["sampled"] == "drawn":
            sampled = out.get("sampled_ids")
            if sampled is None or sampled.shape != b["masked_lm_ids"].shape:
                return None, ["sampled_ids missing or of the wrong shape"], ""
            # A bf16 generator may break a near tie the other way: a draw counts when its
            # Gumbel score is within the bf16 logit bound of the best.
            dp, exact, slots = tes.check_draws(cfg, w, b, sampled, tes.DRAW_SEED,
                                               logit_rtol=Electra.bounds(c)[0])
            problems += dp
            note = "; draws %d/%d exact" % (exact, slots)
        else:
            sampled = b["sampled_ids"]
        Electra.sampled = sampled
        return electra_ref.reference_step(cfg, w, b, sampled), problems, note

    @staticmethod
    def names(cfg):
        return electra_ref.output_names(cfg)

    @staticmethod
    def fp32_compare(cfg, ref, out):
        return tes.compare(cfg, ref, out)[1]

    @staticmethod
    def foils(c, cfg, w, b, out):
        return {v: electra_ref.reference_step(cfg, w, b, Electra.sampled, variant=v)
                for v, where in tes.FOILS.items()
                if (where is None or c["name"] in where) and v != "gen_head_uses_hidden_act"}

    extra_args = staticmethod(lambda c: ["--seed", str(tes.DRAW_SEED)]
                              if c["sampled"] == "drawn" else [])


class Gpt2:
    configs = tgs.CONFIGS
    case = staticmethod(tgs.make_case)
    write_case = staticmethod(tgs.write_case)

    @staticmethod
    def bounds(c):
        E = c["nh"] * c["hd"]
        return rtols(c["L"], max(E, c["I"] or 4 * E, c["V"], c["B"] * c["T"]))

    @staticmethod
    def reference(c, cfg, w, b, out, log):
        return gpt2_ref.reference_step(cfg, w, b), [], ""

    @staticmethod
    def names(cfg):
        return gpt2_ref.output_names(cfg)

    @staticmethod
    def fp32_compare(cfg, ref, out):
        return tgs.compare(cfg, ref, out)[1]

    @staticmethod
    def foils(c, cfg, w, b, out):
        return {"anti_causal": gpt2_ref.reference_step(cfg, w, b, variant="anti_causal")}

    extra_args = staticmethod(lambda c: [])


class NoBf16(Exception):
    """This CPU has no bf16 matrix instructions (the binary said which it has)."""


SKIP = 77  # ctest's SKIP_RETURN_CODE


def run(model, binary, workdir, seed, timeout, log):
    fails, foil_hits = 0, {}
    runner = ref_cli.SubprocessRunner(binary, timeout)
    for ci, c in enumerate(model.configs):
        cfg, w, b = model.case(c, seed, ci)
        write = getattr(model, "write_case", tes.write_case)
        args = write(os.path.join(workdir, c["name"]), cfg, w, b) + model.extra_args(c)
        rt_fwd, rt_grad = model.bounds(c)
        outs = {}
        for prec in ("bf16", "fp32", "fp32-onednn"):
            rc, err = runner(args + ["--threads", "2", "--precision", prec])
            if rc != 0 and "needs a CPU with" in err:
                raise NoBf16(err.strip())
            if rc != 0:
                log("FAIL %-24s --precision %s: exit status %s: %s"
                    % (c["name"], prec, rc, err.strip()[-2000:]))
                break
            outs[prec] = st_io.load(args[args.index("--out") + 1])
        if len(outs) < 3:
            fails += 1
            continue
        ref, problems, note = model.reference(c, cfg, w, b, outs["bf16"], log)
        if ref is None:
            fails += 1
            log("FAIL %-24s %s" % (c["name"], problems))
            continue
        names = model.names(cfg)
        fwd_only = c["act"] == "relu"
        records, cp = compare(names, ref, outs["bf16"], rt_fwd, rt_grad, fwd_only)
        problems += cp
        # The bf16 output must be out of the fp32 test's reach (the bf16 path ran) ...
        if not model.fp32_compare(cfg, ref, outs["bf16"]):
            problems.append("the bf16 output passes the fp32 bounds: bf16 did not run")
        # ... and fp32's well inside the bf16 bounds (a drawn sample may differ in fp32,
        # so only configs with given samples).
        if "sampled_ids" not in names or c.get("sampled") == "given":
            f32p = compare(names, ref, outs["fp32"], rt_fwd / 10, rt_grad / 10)[1]
            problems += ["fp32 run: " + p for p in f32p]
        # fp32 products in oneDNN: the fp32 test's bounds.
        if "sampled_ids" not in names or c.get("sampled") == "given":
            problems += ["fp32-onednn run: " + p for p in model.fp32_compare(cfg, ref,
                                                                              outs["fp32-onednn"])]
        log("%s %-24s rtol fwd %.3f grad %.3f, %d tensors%s, %s%s"
            % ("PASS" if not problems else "FAIL", c["name"], rt_fwd, rt_grad, len(records),
               " (ReLU: forward outputs only)" if fwd_only else "", worst(records), note))
        for p in problems:
            log("    " + p)
        fails += bool(problems)
        # (Foils are tried where gradients are compared: some change only gradients.)
        for v, bad in (model.foils(c, cfg, w, b, outs["bf16"]) if not fwd_only else {}).items():
            rejected = bool(compare(names, ref, bad, rt_fwd, rt_grad, fwd_only)[1])
            foil_hits.setdefault(v, []).append((c["name"], rejected))
    if not foil_hits:
        fails += 1
        log("FAIL negative check: no wrong reference was tried")
    for v, hits in foil_hits.items():
        missed = [n for n, rejected in hits if not rejected]
        fails += bool(missed)
        log("%s negative check: wrong reference %s rejected on %d/%d config(s)%s"
            % ("FAIL" if missed else "PASS", v, len(hits) - len(missed), len(hits),
               "; missed " + ", ".join(missed) if missed else ""))
    return fails


def main():
    argv = sys.argv[1:]
    if "--model" not in argv or argv.index("--model") + 1 >= len(argv):
        print("usage: test_bf16_step.py --model bert|electra|gpt2 --bin PATH [--workdir DIR]")
        return 2
    i = argv.index("--model")
    which = argv[i + 1]
    del sys.argv[i + 1:i + 3]
    model = {"bert": Bert, "electra": Electra, "gpt2": Gpt2}.get(which)
    if model is None:
        print("test_bf16_step.py: --model is bert, electra or gpt2, not %r" % which)
        return 2
    r = ref_cli.start(__doc__, 1234 if which == "bert" else 2718, 300,
                      lambda seed, log: 0, "bf16_step_")
    if isinstance(r, int):
        return r
    a, workdir = r
    t0 = time.time()
    try:
        fails = run(model, os.path.abspath(a.bin), workdir, a.seed, a.timeout, ref_cli.log)
    except NoBf16 as e:
        ref_cli.log("SKIP: this CPU cannot run model.precision = bf16: %s" % e)
        return SKIP
    ref_cli.log("SUMMARY: %s bf16 step %s (%.1fs)%s"
                % (which, "passed" if not fails else "FAILED (%d)" % fails, time.time() - t0,
                   "" if not fails else "; files kept in " + workdir))
    if not fails and not a.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
