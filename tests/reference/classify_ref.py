"""Independent PyTorch reference of BertForSequenceClassification and
ElectraForSequenceClassification (Hugging Face), float64 through autograd.

Plain functional torch over a dict name -> tensor with the Hugging Face
parameter names.  The config is a BertConfig ("model_type": "bert",
"architectures": ["BertForSequenceClassification"]) or an ElectraConfig
("model_type": "electra", ["ElectraForSequenceClassification"]) with
"id2label" (num_labels = len(id2label)).

  embeddings  e = LayerNorm(word[ids] + position[t] + type[segment])  (width E;
              E = H for BERT, embedding_size for ELECTRA)
  ELECTRA     e = e W_p^T + b_p  (embeddings_project, only when E != H)
  encoder     post-LN BERT layers, additive key mask (1 - input_mask) * -10000
  BERT head   pooled = tanh(pooler.dense(h[:, 0])); logits = classifier(pooled)
  ELECTRA head (ElectraClassificationHead) logits =
              out_proj(gelu_erf(dense(h[:, 0])))   (erf GELU whatever hidden_act)
  loss        mean cross entropy over the rows whose label is >= 0; 0 when
              there is none

Dropout is not modelled: hidden, attention and classifier dropout must be 0
(classifier_dropout null falls back to hidden_dropout_prob, as in HF).

Batch: input_ids, input_mask, segment_ids [B, T]; labels [B] (integer).

Two evaluation paths, as in bert_ref.py: explicit formulas (the float64
reference) and torch.nn.functional kernels (`fast`, used in float32 to
emulate the program and, in float64, as a cross-check of the formulas).
The encoder's building blocks come from bert_ref.py; the embeddings
projection, both heads and the loss with ignored rows are written here.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

import bert_ref

MASK_NEG = -10000.0
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
ARCH = {"bert": "BertForSequenceClassification", "electra": "ElectraForSequenceClassification"}
BATCH_NAMES = ("input_ids", "input_mask", "segment_ids", "labels")

# Deliberately wrong models for the negative checks; APPLIES says on which
# configs each one changes the result (kind, hidden_act, ignored rows).
VARIANTS = (
    None,
    "head_tanh_gelu",              # ELECTRA head with the tanh approximation of GELU
    "head_uses_hidden_act",        # ELECTRA head with the encoder's hidden_act
    "pooler_without_tanh",         # BERT pooler without its tanh
    "loss_mean_over_all_rows",     # sum over labelled rows divided by B
    "ignored_label_wraps",         # label -1 read as the last class (negative index)
    "classifier_reads_last_token",  # h[:, T-1] instead of h[:, 0]
    "no_attention_mask",           # padding attended to
)


def variant_applies(variant, d, labels):
    """Whether the wrong model `variant` can differ from the right one on a
    config (Dims) and its labels (numpy [B])."""
    labels = np.asarray(labels)
    ignored = int(np.sum(labels < 0))
    labelled = int(np.sum(labels >= 0))
    if variant == "head_tanh_gelu":
        return d.kind == "electra"
    if variant == "head_uses_hidden_act":
        return d.kind == "electra" and d.act != "gelu"
    if variant == "pooler_without_tanh":
        return d.kind == "bert"
    if variant in ("loss_mean_over_all_rows", "ignored_label_wraps"):
        return ignored > 0 and labelled > 0
    if variant in ("classifier_reads_last_token", "no_attention_mask"):
        return True
    raise ValueError(variant)


def f32(x):
    return float(np.float32(x))


# ----------------------------------------------------------------------------
# configuration


class Dims:
    """Parsed classification config.  Raises ValueError naming the key for
    what the reference cannot or must not run (no id2label, wrong
    architecture, dropout)."""

    def __init__(self, cfg, require_no_dropout=True):
        kind = cfg.get("model_type")
        if kind not in ARCH:
            raise ValueError("model_type %r is not bert or electra" % (kind,))
        archs = cfg.get("architectures")
        if not isinstance(archs, list) or ARCH[kind] not in archs:
            raise ValueError("architectures must contain %s" % ARCH[kind])
        self.kind = kind
        self.prefix = kind + "."
        electra = kind == "electra"
        self.V = int(cfg.get("vocab_size", 30522))
        self.H = int(cfg.get("hidden_size", 256 if electra else 768))
        self.E = int(cfg.get("embedding_size", 128)) if electra else self.H
        self.L = int(cfg.get("num_hidden_layers", 12))
        self.nh = int(cfg.get("num_attention_heads", 4 if electra else 12))
        self.I = int(cfg.get("intermediate_size", 1024 if electra else 3072))
        self.act = str(cfg.get("hidden_act", "gelu"))
        self.max_pos = int(cfg.get("max_position_embeddings", 512))
        self.type_vocab = int(cfg.get("type_vocab_size", 2))
        # the program keeps layer_norm_eps as a float
        self.eps = f32(cfg.get("layer_norm_eps", 1e-12))
        if self.act not in ACTIVATIONS:
            raise ValueError("hidden_act %r is not supported" % self.act)
        if self.H % self.nh:
            raise ValueError("hidden_size %d not divisible by num_attention_heads %d"
                             % (self.H, self.nh))
        self.hd = self.H // self.nh
        id2label = cfg.get("id2label")
        if not isinstance(id2label, dict) or not id2label:
            raise ValueError("id2label is missing or empty")
        if sorted(int(k) for k in id2label) != list(range(len(id2label))):
            raise ValueError("id2label keys are not 0..%d" % (len(id2label) - 1))
        self.C = len(id2label)
        label2id = cfg.get("label2id")
        if label2id is not None and {int(v): k for k, v in label2id.items()} != \
                {int(k): v for k, v in id2label.items()}:
            raise ValueError("label2id is not the inverse of id2label")
        if require_no_dropout:
            hid = float(cfg.get("hidden_dropout_prob", 0.1))
            att = float(cfg.get("attention_probs_dropout_prob", 0.1))
            cls = cfg.get("classifier_dropout")
            cls = hid if cls is None else float(cls)
            for key, v in (("hidden_dropout_prob", hid), ("attention_probs_dropout_prob", att),
                           ("classifier_dropout", cls)):
                if v != 0.0:
                    raise ValueError("reference has no dropout: %s must be 0" % key)


def param_shapes(cfg):
    """Ordered (name, shape) of every parameter, as in the HF state dict."""
    d = cfg if isinstance(cfg, Dims) else Dims(cfg, require_no_dropout=False)
    P, E, H, C = d.prefix, d.E, d.H, d.C
    out = [(P + "embeddings.word_embeddings.weight", (d.V, E)),
           (P + "embeddings.position_embeddings.weight", (d.max_pos, E)),
           (P + "embeddings.token_type_embeddings.weight", (d.type_vocab, E)),
           (P + "embeddings.LayerNorm.weight", (E,)),
           (P + "embeddings.LayerNorm.bias", (E,))]
    if d.kind == "electra" and E != H:
        out += [(P + "embeddings_project.weight", (H, E)), (P + "embeddings_project.bias", (H,))]
    out += bert_ref.layer_shapes(P + "encoder.layer.", H, d.I, d.L)
    if d.kind == "bert":
        out += [("bert.pooler.dense.weight", (H, H)), ("bert.pooler.dense.bias", (H,)),
                ("classifier.weight", (C, H)), ("classifier.bias", (C,))]
    else:
        out += [("classifier.dense.weight", (H, H)), ("classifier.dense.bias", (H,)),
                ("classifier.out_proj.weight", (C, H)), ("classifier.out_proj.bias", (C,))]
    return out


def output_names(cfg):
    """Names the program's OUT must hold after one step, exactly."""
    return ["loss", "logits"] + ["grad." + n for n, _ in param_shapes(cfg)]


# ----------------------------------------------------------------------------
# model


class _Ops:
    """The kernels of one evaluation path."""

    def __init__(self, d, fast):
        self.fast = fast
        if fast:
            self.lin = F.linear
            self.ln = lambda x, w, b: F.layer_norm(x, (x.shape[-1],), w, b, d.eps)
            self.smax = lambda x: torch.softmax(x, dim=-1)
            self.gelu_erf = F.gelu
            self.gelu_tanh = lambda x: F.gelu(x, approximate="tanh")
            self.act = bert_ref.activation_fast(d.act)
        else:
            self.lin = bert_ref.linear
            self.ln = lambda x, w, b: bert_ref.layer_norm_explicit(x, w, b, d.eps)
            self.smax = bert_ref.softmax_explicit
            self.gelu_erf = bert_ref.gelu_erf
            self.gelu_tanh = bert_ref.gelu_tanh
            self.act = bert_ref.activation_explicit(d.act)


def encode(d, p, batch, ops, variant=None):
    """Hidden states [B, T, H] of the encoder."""
    P = d.prefix
    ids, seg = batch["input_ids"], batch["segment_ids"]
    B, T = ids.shape
    if T > d.max_pos:
        raise ValueError("sequence length %d > max_position_embeddings %d" % (T, d.max_pos))
    x = p[P + "embeddings.word_embeddings.weight"][ids] + \
        p[P + "embeddings.position_embeddings.weight"][:T].unsqueeze(0) + \
        p[P + "embeddings.token_type_embeddings.weight"][seg]
    x = ops.ln(x, p[P + "embeddings.LayerNorm.weight"], p[P + "embeddings.LayerNorm.bias"])
    if d.kind == "electra" and d.E != d.H:
        x = ops.lin(x, p[P + "embeddings_project.weight"], p[P + "embeddings_project.bias"])
    mask = batch["input_mask"].to(x.dtype)
    if variant == "no_attention_mask":
        mask = torch.ones_like(mask)
    add_mask = ((1.0 - mask) * MASK_NEG).view(B, 1, 1, T)
    scale = 1.0 / math.sqrt(d.hd)
    for i in range(d.L):
        pre = "%sencoder.layer.%d." % (P, i)

        def lin(t, name):
            return ops.lin(t, p[pre + name + ".weight"], p[pre + name + ".bias"])

        def heads(t):
            return t.view(B, T, d.nh, d.hd).permute(0, 2, 1, 3)

        q = heads(lin(x, "attention.self.query"))
        k = heads(lin(x, "attention.self.key"))
        v = heads(lin(x, "attention.self.value"))
        probs = ops.smax(torch.matmul(q, k.transpose(-1, -2)) * scale + add_mask)
        ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).reshape(B, T, d.H)
        x = ops.ln(lin(ctx, "attention.output.dense") + x,
                   p[pre + "attention.output.LayerNorm.weight"],
                   p[pre + "attention.output.LayerNorm.bias"])
        h = lin(ops.act(lin(x, "intermediate.dense")), "output.dense")
        x = ops.ln(h + x, p[pre + "output.LayerNorm.weight"], p[pre + "output.LayerNorm.bias"])
    return x


def head(d, p, h, ops, variant=None):
    """Logits [B, C] from the hidden states."""
    first = h[:, -1] if variant == "classifier_reads_last_token" else h[:, 0]
    if d.kind == "bert":
        z = ops.lin(first, p["bert.pooler.dense.weight"], p["bert.pooler.dense.bias"])
        pooled = z if variant == "pooler_without_tanh" else torch.tanh(z)
        return ops.lin(pooled, p["classifier.weight"], p["classifier.bias"])
    x = ops.lin(first, p["classifier.dense.weight"], p["classifier.dense.bias"])
    if variant == "head_tanh_gelu":
        x = ops.gelu_tanh(x)
    elif variant == "head_uses_hidden_act":
        x = ops.act(x)
    else:
        x = ops.gelu_erf(x)
    return ops.lin(x, p["classifier.out_proj.weight"], p["classifier.out_proj.bias"])


def loss_of(d, logits, labels, ops, variant=None):
    """Mean cross entropy over the rows with label >= 0 (0 when none)."""
    B = labels.shape[0]
    if variant == "ignored_label_wraps":
        labels = torch.where(labels < 0, labels + d.C, labels)
    valid = labels >= 0
    n = int(valid.sum())
    if ops.fast:
        if n == 0:
            return logits.sum() * 0.0
        ce = F.cross_entropy(logits, torch.where(valid, labels, torch.full_like(labels, -100)),
                             ignore_index=-100, reduction="sum")
    else:
        safe = torch.where(valid, labels, torch.zeros_like(labels))
        ce = (bert_ref.cross_entropy_explicit(logits, safe) * valid.to(logits.dtype)).sum()
    den = B if variant == "loss_mean_over_all_rows" else max(n, 1)
    return ce / den


def forward(d, p, batch, fast=False, variant=None):
    """Returns {"loss": scalar, "logits": [B, C]}."""
    if variant not in VARIANTS:
        raise ValueError("unknown variant %r" % variant)
    ops = _Ops(d, fast)
    h = encode(d, p, batch, ops, variant)
    logits = head(d, p, h, ops, variant)
    return {"loss": loss_of(d, logits, batch["labels"], ops, variant), "logits": logits}


_INT_BATCH = ("input_ids", "segment_ids", "labels")


def batch_to_torch(batch_np, dtype):
    out = {}
    for k, v in batch_np.items():
        t = torch.from_numpy(np.ascontiguousarray(v))
        out[k] = t.to(torch.int64) if k in _INT_BATCH else t.to(dtype)
    return out


def params_to_torch(cfg, weights_np, dtype, requires_grad=True):
    return bert_ref.weights_to_torch(param_shapes(cfg), weights_np, dtype, requires_grad)


def reference_step(cfg, weights_np, batch_np, dtype=torch.float64, fast=False, variant=None):
    """One forward and backward; dict name -> np.ndarray with the names the
    program writes (loss, logits, grad.<param>)."""
    d = Dims(cfg)
    p = params_to_torch(cfg, weights_np, dtype)
    b = batch_to_torch(batch_np, dtype)
    out = forward(d, p, b, fast=fast, variant=variant)
    names = [n for n, _ in param_shapes(d)]
    grads = torch.autograd.grad(out["loss"], [p[n] for n in names], allow_unused=True)
    res = {k: v.detach().numpy().copy() for k, v in out.items()}
    for n, g in zip(names, grads):
        res["grad." + n] = (g if g is not None else torch.zeros_like(p[n])).detach().numpy().copy()
    return res


# ----------------------------------------------------------------------------
# checks of this module alone


def _check_heads_against_nn(log):
    """Both heads and the loss against torch.nn modules wired as in HF's
    BertPooler + classifier, ElectraClassificationHead and CrossEntropyLoss
    (ignore_index -100), on random hidden states."""
    gen = torch.Generator().manual_seed(5)
    B, T, H, C = 5, 4, 6, 3
    h = torch.randn(B, T, H, generator=gen, dtype=torch.float64)
    labels = torch.tensor([2, -100, 0, 1, -100])
    worst = 0.0
    for kind in ("bert", "electra"):
        cfg = {"model_type": kind, "architectures": [ARCH[kind]], "hidden_size": H,
               "num_attention_heads": 2, "embedding_size": H, "hidden_act": "relu",
               "id2label": {str(i): "c%d" % i for i in range(C)},
               "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
        d = Dims(cfg)
        dense = torch.nn.Linear(H, H).double()
        out = torch.nn.Linear(H, C).double()
        with torch.no_grad():
            for m in (dense, out):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen, dtype=torch.float64))
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen, dtype=torch.float64))
        if kind == "bert":
            want = out(torch.nn.Tanh()(dense(h[:, 0])))
            p = {"bert.pooler.dense.weight": dense.weight, "bert.pooler.dense.bias": dense.bias,
                 "classifier.weight": out.weight, "classifier.bias": out.bias}
        else:
            want = out(torch.nn.GELU()(dense(h[:, 0])))
            p = {"classifier.dense.weight": dense.weight, "classifier.dense.bias": dense.bias,
                 "classifier.out_proj.weight": out.weight, "classifier.out_proj.bias": out.bias}
        for fast in (False, True):
            ops = _Ops(d, fast)
            got = head(d, p, h, ops)
            worst = max(worst, float((got - want).abs().max()))
            want_loss = torch.nn.CrossEntropyLoss(ignore_index=-100)(want, labels)
            got_loss = loss_of(d, got, labels, ops)
            worst = max(worst, abs(float(got_loss - want_loss)))
            # no labelled row: loss 0 with a zero gradient, not NaN
            z = loss_of(d, got, torch.full((B,), -1), ops)
            gz = torch.autograd.grad(z, [out.weight])[0]
            assert float(z) == 0.0 and float(gz.abs().max()) == 0.0, (kind, fast)
    assert worst < 1e-12, ("heads differ from torch.nn", worst)
    log("PASS self-test classify_ref heads and loss == torch.nn (Tanh pooler, nn.GELU head, "
        "CrossEntropyLoss ignore_index; both paths; max err %.1e); no labelled row -> 0, grad 0"
        % worst)


def _check_gelus(log):
    """The ELECTRA head's GELU is erf (torch.nn.GELU()); the tanh form differs
    by up to about 5e-4, which the logit bound must see."""
    x = torch.linspace(-6, 6, 2001, dtype=torch.float64)
    e1 = float((bert_ref.gelu_erf(x) - torch.nn.GELU()(x)).abs().max())
    e2 = float((bert_ref.gelu_tanh(x) - torch.nn.GELU(approximate="tanh")(x)).abs().max())
    gap = float((bert_ref.gelu_erf(x) - bert_ref.gelu_tanh(x)).abs().max())
    assert e1 < 1e-15 and e2 < 1e-15 and gap > 1e-4, (e1, e2, gap)
    log("PASS self-test classify_ref GELU erf/tanh == torch.nn.GELU (max |erf - tanh| %.2e)" % gap)


def self_check(log):
    _check_gelus(log)
    _check_heads_against_nn(log)
