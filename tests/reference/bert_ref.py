"""Independent PyTorch reference of BertForPreTraining / BertForMaskedLM.

Plain functional torch code over a dict name -> tensor, with the parameter
names of the Hugging Face checkpoint layout.  Two evaluation paths:

  * explicit (default): every operation written out from its formula
    (LayerNorm, softmax, GELU, cross entropy); used in float64 as the
    reference for the C program;
  * fast: torch.nn.functional kernels (linear, layer_norm, softmax, gelu,
    cross_entropy); used in float32 for benchmarks and as a cross-check of
    the explicit path.

Batch tensors (names as in the original BERT pretraining data):
  input_ids, input_mask, segment_ids            [B, T]   integer
  masked_lm_positions, masked_lm_ids            [B, P]   integer
  masked_lm_weights                             [B, P]   float
  next_sentence_labels                          [B, 1]   integer (NSP only)
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
MASK_NEG = -10000.0
LOSS_EPS = 1e-5


# ----------------------------------------------------------------------------
# configuration


class Dims:
    """Parsed Hugging Face BERT config."""

    def __init__(self, cfg, require_no_dropout=True):
        self.V = int(cfg["vocab_size"])
        self.H = int(cfg["hidden_size"])
        self.L = int(cfg["num_hidden_layers"])
        self.nh = int(cfg["num_attention_heads"])
        self.I = int(cfg["intermediate_size"])
        self.act = str(cfg.get("hidden_act", "gelu"))
        self.max_pos = int(cfg.get("max_position_embeddings", 512))
        self.type_vocab = int(cfg.get("type_vocab_size", 2))
        self.eps = float(cfg.get("layer_norm_eps", 1e-12))
        if self.H % self.nh != 0:
            raise ValueError("hidden_size %d not divisible by num_attention_heads %d"
                             % (self.H, self.nh))
        self.hd = self.H // self.nh
        if self.act not in ACTIVATIONS:
            raise ValueError("unsupported hidden_act %r" % self.act)
        archs = cfg.get("architectures")
        self.nsp = archs is None or "BertForPreTraining" in archs
        if require_no_dropout:
            assert float(cfg.get("hidden_dropout_prob", 0.0)) == 0.0, \
                "reference has no dropout: hidden_dropout_prob must be 0"
            assert float(cfg.get("attention_probs_dropout_prob", 0.0)) == 0.0, \
                "reference has no dropout: attention_probs_dropout_prob must be 0"


def has_nsp(cfg):
    archs = cfg.get("architectures")
    return archs is None or "BertForPreTraining" in archs


def layer_shapes(prefix, H, I, L):
    """(name, shape) of the L encoder layers' tensors under prefix ("bert.encoder.layer.")."""
    out = []
    for i in range(L):
        p = "%s%d." % (prefix, i)
        for qkv in ("query", "key", "value"):
            out.append((p + "attention.self.%s.weight" % qkv, (H, H)))
            out.append((p + "attention.self.%s.bias" % qkv, (H,)))
        out += [
            (p + "attention.output.dense.weight", (H, H)),
            (p + "attention.output.dense.bias", (H,)),
            (p + "attention.output.LayerNorm.weight", (H,)),
            (p + "attention.output.LayerNorm.bias", (H,)),
            (p + "intermediate.dense.weight", (I, H)),
            (p + "intermediate.dense.bias", (I,)),
            (p + "output.dense.weight", (H, I)),
            (p + "output.dense.bias", (H,)),
            (p + "output.LayerNorm.weight", (H,)),
            (p + "output.LayerNorm.bias", (H,)),
        ]
    return out


def param_shapes(cfg):
    """Ordered list of (name, shape) of every stored parameter."""
    d = cfg if isinstance(cfg, Dims) else Dims(cfg, require_no_dropout=False)
    H, I, V = d.H, d.I, d.V
    out = [
        ("bert.embeddings.word_embeddings.weight", (V, H)),
        ("bert.embeddings.position_embeddings.weight", (d.max_pos, H)),
        ("bert.embeddings.token_type_embeddings.weight", (d.type_vocab, H)),
        ("bert.embeddings.LayerNorm.weight", (H,)),
        ("bert.embeddings.LayerNorm.bias", (H,)),
    ]
    out += layer_shapes("bert.encoder.layer.", H, I, d.L)
    if d.nsp:
        out += [
            ("bert.pooler.dense.weight", (H, H)),
            ("bert.pooler.dense.bias", (H,)),
        ]
    out += [
        ("cls.predictions.transform.dense.weight", (H, H)),
        ("cls.predictions.transform.dense.bias", (H,)),
        ("cls.predictions.transform.LayerNorm.weight", (H,)),
        ("cls.predictions.transform.LayerNorm.bias", (H,)),
        ("cls.predictions.bias", (V,)),
    ]
    if d.nsp:
        out += [
            ("cls.seq_relationship.weight", (2, H)),
            ("cls.seq_relationship.bias", (2,)),
        ]
    return out


def batch_names(cfg):
    names = ["input_ids", "input_mask", "segment_ids", "masked_lm_positions",
             "masked_lm_ids", "masked_lm_weights"]
    if has_nsp(cfg):
        names.append("next_sentence_labels")
    return names


def output_names(cfg):
    """Names the C program's OUT file must contain, exactly."""
    names = ["loss", "mlm_loss", "mlm_logits"]
    if has_nsp(cfg):
        names += ["nsp_loss", "nsp_logits"]
    names += ["grad." + n for n, _ in param_shapes(cfg)]
    return names


# ----------------------------------------------------------------------------
# explicit building blocks (reference path)


def linear(x, w, b):
    # y = x W^T + b, W stored [out, in]
    return torch.matmul(x, w.transpose(0, 1)) + b


def layer_norm_explicit(x, w, b, eps):
    mean = x.mean(dim=-1, keepdim=True)
    xc = x - mean
    var = (xc * xc).mean(dim=-1, keepdim=True)  # biased variance
    return xc / torch.sqrt(var + eps) * w + b


def gelu_erf(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def gelu_tanh(x):
    c = math.sqrt(2.0 / math.pi)
    return 0.5 * x * (1.0 + torch.tanh(c * (x + 0.044715 * x * x * x)))


def relu(x):
    return torch.clamp(x, min=0.0)


def activation_explicit(name):
    if name == "gelu":
        return gelu_erf
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return gelu_tanh
    if name == "relu":
        return relu
    raise ValueError(name)


def softmax_explicit(x):
    m = x.max(dim=-1, keepdim=True).values.detach()
    e = torch.exp(x - m)
    return e / e.sum(dim=-1, keepdim=True)


def cross_entropy_explicit(logits, labels):
    """Per-row CE: logsumexp(logits) - logits[label]."""
    m = logits.max(dim=-1, keepdim=True).values.detach()
    lse = torch.log(torch.exp(logits - m).sum(dim=-1)) + m.squeeze(-1)
    picked = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)
    return lse - picked


# ----------------------------------------------------------------------------
# fast building blocks (torch.nn.functional)


def activation_fast(name):
    if name == "gelu":
        return F.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    raise ValueError(name)


# ----------------------------------------------------------------------------
# model


def forward(d, p, batch, fast=False, act_override=None):
    """Forward pass and loss.

    d: Dims; p: dict name -> tensor (float); batch: dict name -> tensor
    (integer tensors as int64, input_mask / masked_lm_weights floating).
    Returns dict with loss, mlm_loss, mlm_logits and (NSP) nsp_loss,
    nsp_logits.
    """
    act_name = act_override or d.act
    if fast:
        act = activation_fast(act_name)
        lin = F.linear

        def ln(x, pre):
            return F.layer_norm(x, (d.H,), p[pre + ".weight"], p[pre + ".bias"], d.eps)

        def smax(x):
            return torch.softmax(x, dim=-1)
    else:
        act = activation_explicit(act_name)
        lin = linear

        def ln(x, pre):
            return layer_norm_explicit(x, p[pre + ".weight"], p[pre + ".bias"], d.eps)

        smax = softmax_explicit

    ids = batch["input_ids"]
    B, T = ids.shape
    H, nh, hd = d.H, d.nh, d.hd
    if T > d.max_pos:
        raise ValueError("sequence length %d > max_position_embeddings %d" % (T, d.max_pos))
    dtype = p["bert.embeddings.word_embeddings.weight"].dtype

    # embeddings
    we = p["bert.embeddings.word_embeddings.weight"]
    te = p["bert.embeddings.token_type_embeddings.weight"]
    pe = p["bert.embeddings.position_embeddings.weight"][:T].unsqueeze(0)
    if fast:
        x = F.embedding(ids, we) + pe + F.embedding(batch["segment_ids"], te)
    else:
        x = we[ids] + pe + te[batch["segment_ids"]]
    x = ln(x, "bert.embeddings.LayerNorm")

    # additive attention mask over key positions: [B, 1, 1, T]
    mask = batch["input_mask"].to(dtype)
    add_mask = ((1.0 - mask) * MASK_NEG).view(B, 1, 1, T)
    scale = 1.0 / math.sqrt(hd)

    for i in range(d.L):
        pre = "bert.encoder.layer.%d." % i

        def heads(t):
            return t.view(B, T, nh, hd).permute(0, 2, 1, 3)  # [B, nh, T, hd]

        q = heads(lin(x, p[pre + "attention.self.query.weight"], p[pre + "attention.self.query.bias"]))
        k = heads(lin(x, p[pre + "attention.self.key.weight"], p[pre + "attention.self.key.bias"]))
        v = heads(lin(x, p[pre + "attention.self.value.weight"], p[pre + "attention.self.value.bias"]))
        scores = torch.matmul(q, k.transpose(-1, -2)) * scale + add_mask
        probs = smax(scores)
        ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).reshape(B, T, H)
        a = lin(ctx, p[pre + "attention.output.dense.weight"], p[pre + "attention.output.dense.bias"])
        x = ln(a + x, pre + "attention.output.LayerNorm")
        h = act(lin(x, p[pre + "intermediate.dense.weight"], p[pre + "intermediate.dense.bias"]))
        o = lin(h, p[pre + "output.dense.weight"], p[pre + "output.dense.bias"])
        x = ln(o + x, pre + "output.LayerNorm")

    out = {}
    # masked LM head at the masked positions only
    pos = batch["masked_lm_positions"]
    P = pos.shape[1]
    bidx = torch.arange(B, device=pos.device).unsqueeze(1).expand(B, P)
    g = x[bidx, pos]  # [B, P, H]
    t = act(lin(g, p["cls.predictions.transform.dense.weight"], p["cls.predictions.transform.dense.bias"]))
    t = ln(t, "cls.predictions.transform.LayerNorm")
    logits = lin(t, we, p["cls.predictions.bias"])  # tied decoder
    out["mlm_logits"] = logits
    w = batch["masked_lm_weights"].to(dtype)
    labels = batch["masked_lm_ids"]
    if fast:
        ce = F.cross_entropy(logits.reshape(B * P, d.V), labels.reshape(B * P),
                             reduction="none").view(B, P)
    else:
        ce = cross_entropy_explicit(logits, labels)
    mlm_loss = (w * ce).sum() / (w.sum() + LOSS_EPS)
    out["mlm_loss"] = mlm_loss
    loss = mlm_loss

    if d.nsp:
        pooled = torch.tanh(lin(x[:, 0], p["bert.pooler.dense.weight"], p["bert.pooler.dense.bias"]))
        nsp_logits = lin(pooled, p["cls.seq_relationship.weight"], p["cls.seq_relationship.bias"])
        nl = batch["next_sentence_labels"][:, 0]
        if fast:
            nsp_loss = F.cross_entropy(nsp_logits, nl)
        else:
            nsp_loss = cross_entropy_explicit(nsp_logits, nl).mean()
        out["nsp_logits"] = nsp_logits
        out["nsp_loss"] = nsp_loss
        loss = loss + nsp_loss
    out["loss"] = loss
    return out


_INT_BATCH = ("input_ids", "segment_ids", "masked_lm_positions", "masked_lm_ids",
              "next_sentence_labels")


def batch_to_torch(batch_np, dtype):
    bt = {}
    for k, v in batch_np.items():
        t = torch.from_numpy(np.ascontiguousarray(v))
        if k in _INT_BATCH:
            bt[k] = t.to(torch.int64)
        else:
            bt[k] = t.to(dtype)
    return bt


def weights_to_torch(shapes, weights_np, dtype, requires_grad=True):
    """The weights named in shapes [(name, shape)] as torch tensors, shapes checked."""
    p = {}
    for name, shape in shapes:
        if name not in weights_np:
            raise KeyError("missing parameter %s" % name)
        a = np.asarray(weights_np[name])
        if tuple(a.shape) != tuple(shape):
            raise ValueError("parameter %s has shape %s, expected %s"
                             % (name, list(a.shape), list(shape)))
        t = torch.from_numpy(np.ascontiguousarray(a)).to(dtype).clone()
        p[name] = t.requires_grad_(requires_grad)
    return p


def params_to_torch(cfg, weights_np, dtype, requires_grad=True):
    return weights_to_torch(param_shapes(cfg), weights_np, dtype, requires_grad)


def reference_step(cfg, weights_np, batch_np, dtype=torch.float64, fast=False,
                   act_override=None):
    """One forward + backward; returns dict name -> np.ndarray with the same
    names the C program writes (loss, mlm_loss, mlm_logits, [nsp_loss,
    nsp_logits,] grad.<param>)."""
    d = Dims(cfg)
    p = params_to_torch(cfg, weights_np, dtype)
    b = batch_to_torch(batch_np, dtype)
    out = forward(d, p, b, fast=fast, act_override=act_override)
    names = [n for n, _ in param_shapes(d)]
    grads = torch.autograd.grad(out["loss"], [p[n] for n in names])
    res = {k: v.detach().numpy().copy() for k, v in out.items()}
    for n, g in zip(names, grads):
        res["grad." + n] = g.detach().numpy().copy()
    return res
