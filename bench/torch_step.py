#!/usr/bin/python3
"""PyTorch baseline: time forward + backward + optimizer step of
BertForPreTraining (tests/reference/bert_ref.py, torch.nn.functional path).

--precision fp32 (default) runs everything in float32; --precision bf16 runs
forward and loss under torch.autocast("cpu", dtype=torch.bfloat16), so the
matrix products take bf16 inputs (oneDNN) while the weights, their gradients
and the update stay float32, as mlmpi's model.precision = bf16 does; backward
runs outside autocast, as autocast's documentation asks.  LayerNorm runs in
float32 on a float32 copy of its input, as mlmpi's does: torch 1.13's CPU
autocast has no rule for layer_norm and refuses a bf16 input with float32
weights (the MLM head's transform, whose input comes straight from a linear).

Prints one JSON line: {"impl": "torch", "precision", "tokens_per_s", "step_ms",
"threads", config fields..., "matmul_dtype"}; tokens per step = batch * seq;
matmul_dtype is the dtype of the MLM logits (the largest product), which
shows what the products really ran in.
"""
import argparse
import json
import os
import sys
import time


def _tune_runtime(argv):
    """Runtime settings for a fair CPU baseline, applied before torch loads.

    Debian's torch uses the system OpenBLAS (own thread pool) inside
    OpenMP-parallel torch code; OpenMP threads spinning after each parallel
    region starve the OpenBLAS threads on a small core count (measured on 2
    cores at BERT-mini shape: about 1.5x slower), so spinning is turned off
    and OpenBLAS gets the same thread count as torch.  Variables already set
    in the environment are left alone; --no-tune skips all of this.
    """
    threads = "1"
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            threads = argv[i + 1]
        elif a.startswith("--threads="):
            threads = a.split("=", 1)[1]
    os.environ.setdefault("GOMP_SPINCOUNT", "0")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", threads)
    os.environ.setdefault("OMP_NUM_THREADS", threads)


if "--no-tune" not in sys.argv:
    _tune_runtime(sys.argv[1:])

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
import bert_ref  # noqa: E402


class _Fp32LayerNorm:
    """torch.nn.functional as bert_ref sees it under --precision bf16, with
    layer_norm taking its input in float32 (see the module docstring)."""

    def __getattr__(self, name):
        return getattr(F, name)

    @staticmethod
    def layer_norm(x, shape, weight=None, bias=None, eps=1e-5):
        return F.layer_norm(x.float(), shape, weight, bias, eps)


def build_params(cfg, gen):
    p = {}
    for name, shape in bert_ref.param_shapes(cfg):
        t = torch.empty(shape, dtype=torch.float32)
        if name.endswith("LayerNorm.weight"):
            t.fill_(1.0)
        elif name.endswith("bias"):
            t.zero_()
        else:
            # truncated normal, std 0.02, cut at two standard deviations
            t.normal_(0.0, 0.02, generator=gen)
            bad = t.abs() > 0.04
            while bool(bad.any()):
                t[bad] = torch.empty(int(bad.sum()), dtype=torch.float32).normal_(0.0, 0.02, generator=gen)
                bad = t.abs() > 0.04
        t.requires_grad_(True)
        p[name] = t
    return p


def build_batch(cfg, B, T, P, rng):
    V = int(cfg["vocab_size"])
    ids = rng.integers(0, V, size=(B, T))
    seg = np.zeros((B, T), np.int64)
    seg[:, T // 2:] = 1
    pos = np.stack([np.sort(rng.choice(np.arange(1, T), size=P, replace=False)) for _ in range(B)])
    b = {
        "input_ids": ids,
        "input_mask": np.ones((B, T), np.float32),
        "segment_ids": seg,
        "masked_lm_positions": pos,
        "masked_lm_ids": rng.integers(0, V, size=(B, P)),
        "masked_lm_weights": np.ones((B, P), np.float32),
    }
    if bert_ref.has_nsp(cfg):
        b["next_sentence_labels"] = rng.integers(0, 2, size=(B, 1))
    return bert_ref.batch_to_torch(b, torch.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--pred", type=int, default=None,
                    help="masked positions per sequence (default round(0.15*seq))")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--optim", choices=("sgd", "adamw"), default="sgd")
    ap.add_argument("--act", default="gelu")
    ap.add_argument("--no-nsp", action="store_true", help="BertForMaskedLM (no NSP head)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="bf16: forward and loss under CPU autocast to bfloat16")
    ap.add_argument("--no-tune", action="store_true",
                    help="leave OpenMP/OpenBLAS runtime settings at their defaults")
    a = ap.parse_args()

    pred = a.pred if a.pred is not None else int(round(0.15 * a.seq))
    pred = max(1, min(pred, a.seq - 1))
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    cfg = {
        "architectures": ["BertForMaskedLM" if a.no_nsp else "BertForPreTraining"],
        "vocab_size": a.vocab, "hidden_size": a.hidden, "num_hidden_layers": a.layers,
        "num_attention_heads": a.heads, "intermediate_size": a.intermediate,
        "hidden_act": a.act, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
        "max_position_embeddings": max(512, a.seq), "type_vocab_size": 2,
        "layer_norm_eps": 1e-12, "initializer_range": 0.02,
    }
    d = bert_ref.Dims(cfg)
    gen = torch.Generator().manual_seed(a.seed)
    params = build_params(cfg, gen)
    plist = list(params.values())
    batch = build_batch(cfg, a.batch, a.seq, pred, np.random.default_rng(a.seed))

    if a.optim == "adamw":
        opt = torch.optim.AdamW(plist, lr=1e-4, weight_decay=0.01, foreach=True)

        def update():
            opt.step()
    else:
        def update():
            with torch.no_grad():
                for t in plist:
                    t.add_(t.grad, alpha=-1e-4)

    autocast_dtype = torch.bfloat16 if a.precision == "bf16" else None
    if autocast_dtype is not None:
        bert_ref.F = _Fp32LayerNorm()
    matmul_dtype = []

    def forward():
        if autocast_dtype is None:
            return bert_ref.forward(d, params, batch, fast=True)
        with torch.autocast("cpu", dtype=autocast_dtype):
            return bert_ref.forward(d, params, batch, fast=True)

    def step():
        for t in plist:
            t.grad = None
        out = forward()
        if not matmul_dtype:
            matmul_dtype.append(out["mlm_logits"].dtype)
        out["loss"].backward()
        update()
        return out["loss"]

    loss = None
    for _ in range(a.warmup):
        loss = step()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    dt = time.perf_counter() - t0
    # Autocast that silently did nothing would make bf16 an fp32 run.
    want = autocast_dtype or torch.float32
    if matmul_dtype and matmul_dtype[0] != want:
        sys.exit("torch_step: --precision %s ran its products in %s, not %s"
                 % (a.precision, matmul_dtype[0], want))
    loss_val = float(loss.detach()) if loss is not None else float("nan")

    res = {
        "impl": "torch",
        "precision": a.precision,
        "tokens_per_s": a.batch * a.seq * a.steps / dt if a.steps else 0.0,
        "step_ms": 1000.0 * dt / a.steps if a.steps else 0.0,
        "threads": a.threads,
        "layers": a.layers, "hidden": a.hidden, "heads": a.heads,
        "intermediate": a.intermediate, "vocab": a.vocab, "seq": a.seq,
        "batch": a.batch, "pred": pred, "optim": a.optim, "act": a.act,
        "nsp": not a.no_nsp, "steps": a.steps, "warmup": a.warmup,
        "dtype": "float32",
        "matmul_dtype": str(matmul_dtype[0]).replace("torch.", "") if matmul_dtype else None,
        "torch": torch.__version__, "final_loss": loss_val,
        "tuned_runtime": not a.no_tune,
    }
    print(json.dumps(res))


if __name__ == "__main__":
    main()
