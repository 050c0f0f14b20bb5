#!/usr/bin/python3
"""PyTorch float32 baseline: time forward + backward + optimizer step of
BertForPreTraining (tests/reference/bert_ref.py, torch.nn.functional path).

Prints one JSON line: {"impl": "torch", "tokens_per_s", "step_ms", "threads",
config fields...}; tokens per step = batch * seq.
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

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
import bert_ref  # noqa: E402


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

    def step():
        for t in plist:
            t.grad = None
        out = bert_ref.forward(d, params, batch, fast=True)
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
    loss_val = float(loss.detach()) if loss is not None else float("nan")

    res = {
        "impl": "torch",
        "tokens_per_s": a.batch * a.seq * a.steps / dt if a.steps else 0.0,
        "step_ms": 1000.0 * dt / a.steps if a.steps else 0.0,
        "threads": a.threads,
        "layers": a.layers, "hidden": a.hidden, "heads": a.heads,
        "intermediate": a.intermediate, "vocab": a.vocab, "seq": a.seq,
        "batch": a.batch, "pred": pred, "optim": a.optim, "act": a.act,
        "nsp": not a.no_nsp, "steps": a.steps, "warmup": a.warmup,
        "dtype": "float32", "torch": torch.__version__, "final_loss": loss_val,
        "tuned_runtime": not a.no_tune,
    }
    print(json.dumps(res))


if __name__ == "__main__":
    main()
