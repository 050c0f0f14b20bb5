#!/usr/bin/python3
"""Compare one training step of the C program with the PyTorch reference.

    test_bert_step.py --bin PATH/mlmpi-train [--workdir DIR] [--seed N]
    test_bert_step.py --self-test

For each config below: draws float32 weights and a padded batch, writes
config.json / W.safetensors / B.safetensors, runs

    BIN step --model config.json --weights W.safetensors \
             --batch B.safetensors --out OUT.safetensors

and compares every tensor of OUT with a float64 reference computed by
bert_ref.py from the same float32 weights.  Then three malformed inputs are
fed to the binary, each of which must be rejected with a nonzero exit
status and a single stderr line naming the offending tensor.

--self-test runs the reference-side checks only (no binary): safetensors
round trip, finite-difference check of the reference gradients, explicit vs
torch.nn.functional paths, a float32 positive control, the negative check,
and the whole driver against an in-process float32 emulation of the binary.
"""
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

import bert_ref  # noqa: E402
import ref_cli  # noqa: E402
import st_io  # noqa: E402

# tolerances (see compare())
from ref_cli import GRAD_GLOBAL_FRAC, GRAD_RTOL, LOGIT_RTOL, SCALAR_RTOL  # noqa: E402,F401

# name, vocab, hidden, layers, heads, intermediate, act, type_vocab, T, B, P,
# max_pos, architectures ("pt" = BertForPreTraining, "mlm" = BertForMaskedLM,
# None = key absent), layer_norm_eps (None = key absent), weight mode
CONFIGS = [
    dict(name="h36_nh3_erf", V=97, H=36, L=1, nh=3, I=52, act="gelu", tv=2,
         T=7, B=2, P=2, max_pos=16, arch="pt", eps=1e-12, wmode="ones"),
    dict(name="h40_nh5_gelunew_noarch", V=131, H=40, L=2, nh=5, I=52, act="gelu_new", tv=3,
         T=13, B=3, P=4, max_pos=20, arch=None, eps=None, wmode="rand"),
    dict(name="h48_nh4_mlm_only", V=1009, H=48, L=3, nh=4, I=100, act="gelu", tv=2,
         T=33, B=4, P=6, max_pos=40, arch="mlm", eps=1e-12, wmode="ones"),
    dict(name="h32_nh8_eps1e-5", V=211, H=32, L=2, nh=8, I=37, act="gelu", tv=2,
         T=19, B=1, P=5, max_pos=64, arch="pt", eps=1e-5, wmode="rand"),
    dict(name="h24_nh1_relu_tv3", V=50, H=24, L=1, nh=1, I=64, act="relu", tv=3,
         T=10, B=4, P=3, max_pos=11, arch="pt", eps=1e-12, wmode="rand"),
    dict(name="h42_nh6_pttanh_mlm", V=257, H=42, L=2, nh=6, I=52, act="gelu_pytorch_tanh", tv=2,
         T=25, B=2, P=1, max_pos=512, arch="mlm", eps=1e-12, wmode="ones"),
    dict(name="h64_nh2_erf_l3", V=1009, H=64, L=3, nh=2, I=128, act="gelu", tv=2,
         T=16, B=3, P=6, max_pos=32, arch="pt", eps=1e-12, wmode="rand"),
    dict(name="h20_nh5_gelunew_l1", V=131, H=20, L=1, nh=5, I=52, act="gelu_new", tv=3,
         T=8, B=4, P=2, max_pos=9, arch="pt", eps=1e-12, wmode="ones"),
]


# ----------------------------------------------------------------------------
# data generation


def make_config(c):
    cfg = {}
    if c["arch"] == "pt":
        cfg["architectures"] = ["BertForPreTraining"]
    elif c["arch"] == "mlm":
        cfg["architectures"] = ["BertForMaskedLM"]
    cfg.update({
        "model_type": "bert",
        "vocab_size": c["V"],
        "hidden_size": c["H"],
        "num_hidden_layers": c["L"],
        "num_attention_heads": c["nh"],
        "intermediate_size": c["I"],
        "hidden_act": c["act"],
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "max_position_embeddings": c["max_pos"],
        "type_vocab_size": c["tv"],
        "initializer_range": 0.02,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "use_cache": True,
        "classifier_dropout": None,
        "torch_dtype": "float32",
    })
    if c["eps"] is not None:
        cfg["layer_norm_eps"] = c["eps"]
    return cfg


def make_weights(rng, cfg):
    w = {}
    for name, shape in bert_ref.param_shapes(cfg):
        if name.endswith("LayerNorm.weight"):
            a = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name.endswith("bias"):
            a = 0.1 * rng.standard_normal(shape)
        else:
            # embeddings [rows, H] and linears [out, in]: unit-scale outputs
            fan_in = shape[1]
            std = float(np.clip(1.0 / np.sqrt(fan_in), 0.05, 0.2))
            a = std * rng.standard_normal(shape)
        w[name] = a.astype(np.float32)
    return w


def make_batch(rng, cfg, T, B, P, wmode):
    V = int(cfg["vocab_size"])
    tv = int(cfg.get("type_vocab_size", 2))
    ids = np.zeros((B, T), np.int32)
    mask = np.zeros((B, T), np.int32)
    seg = np.zeros((B, T), np.int32)
    mpos = np.zeros((B, P), np.int32)
    mids = np.zeros((B, P), np.int32)
    mw = np.zeros((B, P), np.float32)
    lens = rng.integers(2, T + 1, size=B)
    lens[0] = rng.integers(2, T)          # at least one padded row
    if B > 1:
        lens[-1] = T                       # and one full row
    counts = []
    for b in range(B):
        n = int(lens[b])
        ids[b, :n] = rng.integers(1, V, size=n)
        mask[b, :n] = 1
        split = int(rng.integers(1, n))    # segment A = [0, split), B = [split, n)
        seg[b, split:n] = int(rng.integers(1, tv)) if tv > 2 else 1
        k = int(rng.integers(0, min(P, n - 1) + 1))
        counts.append(k)
        if k:
            pos = np.sort(rng.choice(np.arange(1, n), size=k, replace=False))
            mpos[b, :k] = pos
            mids[b, :k] = rng.integers(0, V, size=k)
            if wmode == "ones":
                mw[b, :k] = 1.0
            else:
                mw[b, :k] = rng.uniform(0.25, 1.5, size=k)
    # at least one nonzero weight; at least one partly empty row when P > 1
    if sum(counts) == 0:
        b = B - 1
        mpos[b, 0] = 1
        mids[b, 0] = rng.integers(0, V)
        mw[b, 0] = 1.0
    batch = {"input_ids": ids, "input_mask": mask, "segment_ids": seg,
             "masked_lm_positions": mpos, "masked_lm_ids": mids,
             "masked_lm_weights": mw}
    if bert_ref.has_nsp(cfg):
        batch["next_sentence_labels"] = rng.integers(0, 2, size=(B, 1)).astype(np.int32)
    return batch


# ----------------------------------------------------------------------------
# comparison


def _bound_table(cfg, ref):
    gmax = max(float(np.max(np.abs(v))) for k, v in ref.items()
               if k.startswith("grad.") and v.size)
    bounds = {}
    for k, v in ref.items():
        m = float(np.max(np.abs(v))) if v.size else 0.0
        if k in ("loss", "mlm_loss", "nsp_loss"):
            bounds[k] = SCALAR_RTOL * abs(float(v))
        elif k in ("mlm_logits", "nsp_logits"):
            bounds[k] = LOGIT_RTOL * m
        else:
            bounds[k] = GRAD_RTOL * (m + GRAD_GLOBAL_FRAC * gmax)
    return bounds


def compare(cfg, ref, out):
    """Returns (records, problems) (ref_cli.compare_outputs) under _bound_table's bounds."""
    return ref_cli.compare_outputs(bert_ref.output_names(cfg), ref, out, _bound_table(cfg, ref))


def describe(c):
    arch = {"pt": "pretraining", "mlm": "maskedlm", None: "no-arch(nsp)"}[c["arch"]]
    return ("V=%d H=%d L=%d nh=%d I=%d act=%s tv=%d T=%d B=%d P=%d maxpos=%d %s"
            % (c["V"], c["H"], c["L"], c["nh"], c["I"], c["act"], c["tv"], c["T"],
               c["B"], c["P"], c["max_pos"], arch))


worst = ref_cli.worst


# ----------------------------------------------------------------------------
# running the program under test


class SubprocessRunner:
    def __init__(self, binary, timeout):
        self.binary = binary
        self.timeout = timeout

    def __call__(self, args):
        try:
            p = subprocess.run([self.binary] + args, capture_output=True, text=True,
                               timeout=self.timeout)
        except subprocess.TimeoutExpired:
            return None, "", "timed out after %ds" % self.timeout
        return p.returncode, p.stdout, p.stderr


class EmulatorRunner:
    """In-process float32 emulation of the binary (for --self-test)."""

    def __call__(self, args):
        err = io.StringIO()
        outs = io.StringIO()
        rc = 0
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(outs):
            try:
                emulate(args)
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else 1
        return rc, outs.getvalue(), err.getvalue()


def step_args(d):
    return ["step", "--model", os.path.join(d, "config.json"),
            "--weights", os.path.join(d, "W.safetensors"),
            "--batch", os.path.join(d, "B.safetensors"),
            "--out", os.path.join(d, "OUT.safetensors")]


write_case = ref_cli.write_case


def run_configs(runner, workdir, seed, log):
    failures = 0
    for ci, c in enumerate(CONFIGS):
        rng = np.random.default_rng([seed, ci])
        cfg = make_config(c)
        weights = make_weights(rng, cfg)
        batch = make_batch(rng, cfg, c["T"], c["B"], c["P"], c["wmode"])
        d = os.path.join(workdir, c["name"])
        write_case(d, cfg, weights, batch)
        t0 = time.time()
        rc, so, se = runner(step_args(d))
        dt = time.time() - t0
        if rc != 0:
            failures += 1
            log("FAIL %-24s [%s] binary exit status %s; stderr: %s"
                % (c["name"], describe(c), rc, se.strip()[-2000:]))
            continue
        try:
            out = st_io.load(os.path.join(d, "OUT.safetensors"))
        except Exception as e:  # noqa: BLE001
            failures += 1
            log("FAIL %-24s [%s] cannot read OUT.safetensors: %s" % (c["name"], describe(c), e))
            continue
        ref = bert_ref.reference_step(cfg, weights, batch, dtype=torch.float64)
        records, problems = compare(cfg, ref, out)
        status = "PASS" if not problems else "FAIL"
        log("%s %-24s [%s] %d tensors, %s (%.1fs)"
            % (status, c["name"], describe(c), len(records), worst(records), dt))
        for p in problems:
            log("    " + p)
        if problems:
            failures += 1
    return failures


def run_bad_inputs(runner, workdir, seed, log):
    """Three malformed inputs; each must give exit status != 0 (not a crash)
    and exactly one stderr line naming the offending tensor."""
    c = CONFIGS[0]
    failures = 0
    cases = []

    def fresh():
        rng = np.random.default_rng([seed, 1000])
        cfg = make_config(c)
        return cfg, make_weights(rng, cfg), make_batch(rng, cfg, c["T"], c["B"], c["P"], c["wmode"])

    cfg, w, b = fresh()
    del b["masked_lm_ids"]
    cases.append(("batch_missing_masked_lm_ids", "masked_lm_ids", cfg, w, b))
    cfg, w, b = fresh()
    b["input_mask"] = b["input_mask"][:, :-1].copy()
    cases.append(("batch_bad_input_mask_shape", "input_mask", cfg, w, b))
    cfg, w, b = fresh()
    victim = "bert.encoder.layer.0.intermediate.dense.weight"
    del w[victim]
    cases.append(("weights_missing_tensor", victim, cfg, w, b))

    for name, culprit, cfg, w, b in cases:
        d = os.path.join(workdir, "bad_" + name)
        write_case(d, cfg, w, b)
        rc, so, se = runner(step_args(d))
        failures += ref_cli.bad_input_verdict(name, culprit, rc, se, 28)
    return failures


# ----------------------------------------------------------------------------
# negative check: the comparison must reject a subtly wrong model


def negative_check(seed, log):
    """Reference with tanh GELU against the erf reference for an erf config:
    the comparison must reject it."""
    ok = True
    for ci, c in enumerate(CONFIGS):
        if c["act"] != "gelu":
            continue
        rng = np.random.default_rng([seed, ci])
        cfg = make_config(c)
        weights = make_weights(rng, cfg)
        batch = make_batch(rng, cfg, c["T"], c["B"], c["P"], c["wmode"])
        ref = bert_ref.reference_step(cfg, weights, batch, dtype=torch.float64)
        bad = bert_ref.reference_step(cfg, weights, batch, dtype=torch.float64,
                                      act_override="gelu_new")
        records, problems = compare(cfg, ref, bad)
        if problems:
            log("PASS negative-check %-24s tanh-GELU rejected: %d tensors out of bound, %s"
                % (c["name"], len(problems), worst(records)))
        else:
            ok = False
            log("FAIL negative-check %-24s tanh-GELU NOT rejected (%s)" % (c["name"], worst(records)))
    return ok


# ----------------------------------------------------------------------------
# emulation of the binary (self-test only)


def _die(msg):
    sys.stderr.write("mlmpi-train-emulator: " + msg + "\n")
    raise SystemExit(2)


def emulate(args):
    if len(args) != 9 or args[0] != "step":
        _die("usage: step --model C --weights W --batch B --out O")
    kv = dict(zip(args[1::2], args[2::2]))
    with open(kv["--model"]) as f:
        cfg = json.load(f)
    w = st_io.load(kv["--weights"])
    b = st_io.load(kv["--batch"])
    for n, shape in bert_ref.param_shapes(cfg):
        if n not in w:
            _die("weights: missing tensor %s" % n)
        if tuple(w[n].shape) != tuple(shape):
            _die("weights: tensor %s has shape %s, expected %s" % (n, list(w[n].shape), list(shape)))
    for n in bert_ref.batch_names(cfg):
        if n not in b:
            _die("batch: missing tensor %s" % n)
    B, T = b["input_ids"].shape
    P = b["masked_lm_positions"].shape[1]
    want = {"input_mask": (B, T), "segment_ids": (B, T), "masked_lm_ids": (B, P),
            "masked_lm_weights": (B, P), "next_sentence_labels": (B, 1)}
    for n, s in want.items():
        if n in b and tuple(b[n].shape) != s:
            _die("batch: tensor %s has shape %s, expected %s" % (n, list(b[n].shape), list(s)))
    res = bert_ref.reference_step(cfg, w, b, dtype=torch.float32, fast=True)
    st_io.save(kv["--out"], {k: v.astype(np.float32) for k, v in res.items()})


# ----------------------------------------------------------------------------
# self-test


def selftest_st_io(tmp, log):
    rng = np.random.default_rng(0)
    t = {
        "a": rng.standard_normal((3, 5)).astype(np.float32),
        "b": rng.standard_normal((2, 1, 4)),
        "c": rng.integers(-5, 5, (7,)).astype(np.int32),
        "d": rng.integers(-5, 5, (2, 2)).astype(np.int64),
        "scalar": np.array(3.25, np.float32),
        "empty": np.zeros((0, 3), np.float32),
        "u8": np.arange(5, dtype=np.uint8),
    }
    path = os.path.join(tmp, "rt.safetensors")
    st_io.save(path, t, metadata={"format": "pt"})
    back, meta = st_io.load(path, with_metadata=True)
    assert set(back) == set(t), (set(back), set(t))
    for k in t:
        assert back[k].dtype == t[k].dtype, (k, back[k].dtype, t[k].dtype)
        assert back[k].shape == t[k].shape, (k, back[k].shape)
        assert np.array_equal(back[k], t[k]), k
    assert meta == {"format": "pt"}
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    assert n % 8 == 0
    hdr = json.loads(raw[8:8 + n])
    assert hdr["scalar"]["shape"] == [] and hdr["scalar"]["dtype"] == "F32"
    spans = sorted(v["data_offsets"] for k, v in hdr.items() if k != "__metadata__")
    assert spans[0][0] == 0 and spans[-1][1] == len(raw) - 8 - n
    for (b0, e0), (b1, e1) in zip(spans, spans[1:]):
        assert e0 == b1
    assert np.frombuffer(raw[8 + n + hdr["a"]["data_offsets"][0]:][:60], "<f4").reshape(3, 5).tolist() \
        == t["a"].tolist()
    log("PASS self-test safetensors round trip (%d tensors, header %d bytes)" % (len(t), n))


def tiny_case(arch, act, seed):
    c = dict(name="tiny", V=11, H=8, L=2, nh=2, I=12, act=act, tv=3, T=5, B=2, P=3,
             max_pos=7, arch=arch, eps=1e-12, wmode="rand")
    rng = np.random.default_rng(seed)
    cfg = make_config(c)
    w = make_weights(rng, cfg)
    b = make_batch(rng, cfg, c["T"], c["B"], c["P"], c["wmode"])
    return cfg, w, b


def selftest_gradcheck(log):
    for arch, act in (("pt", "gelu"), ("mlm", "gelu_new")):
        cfg, w, b = tiny_case(arch, act, 7)
        d = bert_ref.Dims(cfg)
        names = [n for n, _ in bert_ref.param_shapes(cfg)]
        p = bert_ref.params_to_torch(cfg, w, torch.float64)
        bt = bert_ref.batch_to_torch(b, torch.float64)

        def f(*ts):
            return bert_ref.forward(d, dict(zip(names, ts)), bt)["loss"]

        t0 = time.time()
        ok = torch.autograd.gradcheck(f, tuple(p[n] for n in names), eps=1e-6,
                                      atol=1e-7, rtol=1e-5)
        assert ok
        nparam = sum(p[n].numel() for n in names)
        log("PASS self-test gradcheck (central differences, float64) %s/%s: %d params (%.1fs)"
            % (arch, act, nparam, time.time() - t0))


def selftest_paths(seed, log):
    """Explicit formulas vs torch.nn.functional, both float64; then the
    float32 functional path must pass the comparison bounds (positive
    control: a correct float32 implementation can meet them)."""
    for ci, c in enumerate(CONFIGS):
        rng = np.random.default_rng([seed, ci])
        cfg = make_config(c)
        weights = make_weights(rng, cfg)
        batch = make_batch(rng, cfg, c["T"], c["B"], c["P"], c["wmode"])
        ref = bert_ref.reference_step(cfg, weights, batch, dtype=torch.float64)
        fast64 = bert_ref.reference_step(cfg, weights, batch, dtype=torch.float64, fast=True)
        for k in ref:
            e = float(np.max(np.abs(ref[k] - fast64[k]))) if ref[k].size else 0.0
            s = float(np.max(np.abs(ref[k]))) if ref[k].size else 0.0
            assert e <= 1e-10 * (1.0 + s), (c["name"], k, e)
        gmax = max(float(np.max(np.abs(v))) for k, v in ref.items() if k.startswith("grad."))
        # the key bias gradient is identically zero (softmax is invariant to
        # adding q.b_k to every score of a query row); skip it here
        tiny = [k for k, v in ref.items() if k.startswith("grad.")
                and not k.endswith("attention.self.key.bias")
                and float(np.max(np.abs(v))) < 1e-4 * gmax]
        assert not tiny, ("gradient (nearly) zero, test would be weak", c["name"], tiny)
        f32 = bert_ref.reference_step(cfg, weights, batch, dtype=torch.float32, fast=True)
        records, problems = compare(cfg, ref, f32)
        if problems:
            for pr in problems:
                log("    " + pr)
            raise AssertionError("float32 positive control failed for " + c["name"])
        log("PASS self-test %-24s explicit==functional (f64); f32 control %s"
            % (c["name"], worst(records)))


def self_test(seed, log):
    t0 = time.time()
    tmp = tempfile.mkdtemp(prefix="bert_step_selftest_")
    try:
        selftest_st_io(tmp, log)
        selftest_gradcheck(log)
        selftest_paths(seed, log)
        if not negative_check(seed, log):
            return 1
        log("-- driver against the in-process float32 emulator --")
        fails = run_configs(EmulatorRunner(), tmp, seed, log)
        fails += run_bad_inputs(EmulatorRunner(), tmp, seed, log)
        # the driver must also notice a wrong OUT: drop a tensor, add one, perturb one
        c = CONFIGS[0]
        cfg = make_config(c)
        out = st_io.load(os.path.join(tmp, c["name"], "OUT.safetensors"))
        rng = np.random.default_rng([seed, 0])
        weights = make_weights(rng, cfg)
        batch = make_batch(rng, cfg, c["T"], c["B"], c["P"], c["wmode"])
        ref = bert_ref.reference_step(cfg, weights, batch)
        bad = dict(out)
        del bad["grad.cls.predictions.bias"]
        bad["grad.cls.predictions.decoder.weight"] = np.zeros((c["V"], c["H"]), np.float32)
        bad["loss"] = bad["loss"] * np.float32(1 + 1e-4)
        bad["mlm_logits"] = bad["mlm_logits"][..., :-1]
        _, problems = compare(cfg, ref, bad)
        want = ["grad.cls.predictions.bias: missing", "grad.cls.predictions.decoder.weight: unexpected",
                "loss: max abs err", "mlm_logits: shape"]
        for wnt in want:
            if not any(p.startswith(wnt) for p in problems):
                log("FAIL self-test: corrupted OUT not reported: %s" % wnt)
                fails += 1
        if fails:
            log("SELF-TEST FAILED (%d)" % fails)
            return 1
        log("PASS self-test corrupted OUT detected (%d problems)" % len(problems))
        log("SELF-TEST PASSED (%.1fs)" % (time.time() - t0))
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--emulate":
        emulate(sys.argv[2:])
        return 0
    r = ref_cli.start(__doc__, 1234, 600, self_test, "bert_step_")
    if isinstance(r, int):
        return r
    a, workdir = r
    log = ref_cli.log
    t0 = time.time()
    runner = SubprocessRunner(os.path.abspath(a.bin), a.timeout)
    fails = 0
    if not negative_check(a.seed, log):
        fails += 1
    nconf = run_configs(runner, workdir, a.seed, log)
    nbad = run_bad_inputs(runner, workdir, a.seed, log)
    fails += nconf + nbad
    log("SUMMARY: %d/%d configs passed, %d/3 bad-input cases passed, negative check %s (%.1fs)%s"
        % (len(CONFIGS) - nconf, len(CONFIGS), 3 - nbad, "ok" if fails == nconf + nbad else "FAILED",
           time.time() - t0, "" if not fails else "; files kept in " + workdir))
    if not fails and not a.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
