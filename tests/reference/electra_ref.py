"""Independent PyTorch reference of ELECTRA pretraining (float64).

The generator is Hugging Face's ElectraForMaskedLM and the discriminator its
ElectraForPreTraining; both read one embeddings block (word, position and
token-type embeddings and their LayerNorm, width embedding_size), stored once
under the discriminator's names.  Everything is written out from formulas
over a dict name -> tensor:

  embeddings   e = LayerNorm(word[ids] + position[t] + type[segment])
  each network h0 = e W_p^T + b_p  (embeddings_project, only when its
               hidden_size differs from embedding_size), then post-LN BERT
               layers
  generator    at the masked slots: LayerNorm(gelu_erf(h W^T + b)) (width E),
               logits = that · word^T + generator_lm_head.bias
               mlm_loss = sum(w * CE) / (sum(w) + 1e-5)
  sampling     Gumbel-max at each weighted slot (temperature 1), no gradient;
               or the batch's sampled_ids
  discriminator input: input_ids with the samples at the weighted slots;
               label 1 where a sample differs from masked_lm_ids
               z = dense_prediction(act(dense(h)))   (one logit per token)
               disc_loss = mean over input_mask == 1 of the sigmoid CE
  loss = gen_weight * mlm_loss + disc_weight * disc_loss

The config is the discriminator's ElectraConfig with a nested "generator"
object (hidden_size, num_hidden_layers, num_attention_heads,
intermediate_size; absent: a quarter of the discriminator) and gen_weight,
disc_weight (defaults 1.0 and 50.0).

Gumbel noise comes from Philox4x32-10 (implemented here from the paper,
Salmon et al. SC'11), element t*V + v of the stream keyed by (seed, step,
sample, STREAM_SAMPLE), so that samples drawn by the program can be checked.
"""
import math

import numpy as np
import torch

import bert_ref

MASK_NEG = -10000.0
LOSS_EPS = 1e-5
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
EMB = "discriminator.electra.embeddings."
STREAM_SAMPLE = 8192 * 16  # rng_stream(8192, 0)

# Deliberately wrong models for the negative checks.
VARIANTS = (None, "gen_head_uses_hidden_act", "disc_loss_over_padding", "correct_sample_is_replaced",
            "no_disc_grad_into_embeddings")


def f32(x):
    return float(np.float32(x))


# ----------------------------------------------------------------------------
# configuration


class Net:
    def __init__(self, H, L, nh, I):
        self.H, self.L, self.nh, self.I = int(H), int(L), int(nh), int(I)
        if self.H % self.nh:
            raise ValueError("hidden_size %d not divisible by num_attention_heads %d" % (H, nh))
        self.hd = self.H // self.nh


class Dims:
    def __init__(self, cfg, require_no_dropout=True):
        self.V = int(cfg.get("vocab_size", 30522))
        self.E = int(cfg.get("embedding_size", 128))
        self.max_pos = int(cfg.get("max_position_embeddings", 512))
        self.type_vocab = int(cfg.get("type_vocab_size", 2))
        self.eps = float(np.float32(cfg.get("layer_norm_eps", 1e-12)))
        self.act = str(cfg.get("hidden_act", "gelu"))
        if self.act not in ACTIVATIONS:
            raise ValueError("unsupported hidden_act %r" % self.act)
        dH = int(cfg.get("hidden_size", 256))
        dL = int(cfg.get("num_hidden_layers", 12))
        dnh = int(cfg.get("num_attention_heads", 4))
        dI = int(cfg.get("intermediate_size", 1024))
        self.disc = Net(dH, dL, dnh, dI)
        g = cfg.get("generator") or {}
        self.gen = Net(g.get("hidden_size", dH // 4), g.get("num_hidden_layers", dL),
                       g.get("num_attention_heads", dnh // 4 if dnh >= 4 else 1),
                       g.get("intermediate_size", dI // 4))
        # the program keeps these as floats
        self.gen_weight = f32(cfg.get("gen_weight", 1.0))
        self.disc_weight = f32(cfg.get("disc_weight", 50.0))
        if require_no_dropout:
            assert float(cfg.get("hidden_dropout_prob", 0.0)) == 0.0, "reference has no dropout"
            assert float(cfg.get("attention_probs_dropout_prob", 0.0)) == 0.0, \
                "reference has no dropout"


def _layer_shapes(prefix, n):
    return bert_ref.layer_shapes(prefix + ".electra.encoder.layer.", n.H, n.I, n.L)


def param_shapes(cfg):
    """Ordered (name, shape) of every stored parameter."""
    d = cfg if isinstance(cfg, Dims) else Dims(cfg, require_no_dropout=False)
    E, V = d.E, d.V
    out = [(EMB + "word_embeddings.weight", (V, E)),
           (EMB + "position_embeddings.weight", (d.max_pos, E)),
           (EMB + "token_type_embeddings.weight", (d.type_vocab, E)),
           (EMB + "LayerNorm.weight", (E,)),
           (EMB + "LayerNorm.bias", (E,))]
    for who, n in (("generator", d.gen), ("discriminator", d.disc)):
        if n.H != E:
            out += [(who + ".electra.embeddings_project.weight", (n.H, E)),
                    (who + ".electra.embeddings_project.bias", (n.H,))]
        out += _layer_shapes(who, n)
        if who == "generator":
            out += [("generator.generator_predictions.dense.weight", (E, n.H)),
                    ("generator.generator_predictions.dense.bias", (E,)),
                    ("generator.generator_predictions.LayerNorm.weight", (E,)),
                    ("generator.generator_predictions.LayerNorm.bias", (E,)),
                    ("generator.generator_lm_head.bias", (V,))]
        else:
            out += [("discriminator.discriminator_predictions.dense.weight", (n.H, n.H)),
                    ("discriminator.discriminator_predictions.dense.bias", (n.H,)),
                    ("discriminator.discriminator_predictions.dense_prediction.weight", (1, n.H)),
                    ("discriminator.discriminator_predictions.dense_prediction.bias", (1,))]
    return out


BATCH_NAMES = ("input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids",
               "masked_lm_weights")


def output_names(cfg):
    names = ["loss", "mlm_loss", "disc_loss", "generator_logits", "discriminator_logits",
             "sampled_ids"]
    return names + ["grad." + n for n, _ in param_shapes(cfg)]


# ----------------------------------------------------------------------------
# Philox4x32-10 and the Gumbel-max sampler

_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_LO = np.uint64(0xFFFFFFFF)


def philox4x32_10(ctr, key):
    """ctr: 4 arrays (or ints) of 32-bit counters; key: 2 ints. Returns 4
    uint64 arrays holding the 32-bit output words."""
    c = [np.asarray(x, np.uint64) & _LO for x in ctr]
    k0, k1 = int(key[0]) & 0xFFFFFFFF, int(key[1]) & 0xFFFFFFFF
    for r in range(10):
        if r:
            k0 = (k0 + _W0) & 0xFFFFFFFF
            k1 = (k1 + _W1) & 0xFFFFFFFF
        p0 = _M0 * c[0]
        p1 = _M1 * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ np.uint64(k0), p1 & _LO,
             (p0 >> np.uint64(32)) ^ c[3] ^ np.uint64(k1), p0 & _LO]
    return c


def uniforms(seed, step, sample, stream, first, n):
    """Elements first..first+n of the keyed stream as float64 values of the
    program's 24-bit floats: element e is word e % 4 of Philox(counter
    {e / 4, stream, sample, step}, key {seed low, seed high})."""
    e = np.arange(first, first + n, dtype=np.uint64)
    words = philox4x32_10([e >> np.uint64(2), np.full_like(e, stream), np.full_like(e, sample),
                           np.full_like(e, step)], [seed & 0xFFFFFFFF, seed >> 32])
    sel = (e & np.uint64(3)).astype(np.int64)
    w = np.choose(sel, words)
    return (w >> np.uint64(8)).astype(np.float64) / 16777216.0


def gumbel_scores(logits, positions, weights, seed, step=0, sample_base=0):
    """logits [B,P,V] (numpy float64) -> scores logit - log(-log u), with
    -inf at unused slots (weight 0)."""
    B, P, V = logits.shape
    out = np.full(logits.shape, -np.inf)
    with np.errstate(divide="ignore"):
        for b in range(B):
            for j in range(P):
                if not weights[b, j] > 0:
                    continue
                u = uniforms(seed, step, sample_base + b, STREAM_SAMPLE, int(positions[b, j]) * V, V)
                out[b, j] = logits[b, j] - np.log(-np.log(u))
    return out


# ----------------------------------------------------------------------------
# building blocks


def linear(x, w, b):
    return torch.matmul(x, w.transpose(0, 1)) + b


def layer_norm(x, w, b, eps):
    mean = x.mean(dim=-1, keepdim=True)
    xc = x - mean
    var = (xc * xc).mean(dim=-1, keepdim=True)
    return xc / torch.sqrt(var + eps) * w + b


def gelu_erf(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def gelu_tanh(x):
    c = math.sqrt(2.0 / math.pi)
    return 0.5 * x * (1.0 + torch.tanh(c * (x + 0.044715 * x * x * x)))


def activation(name):
    if name == "gelu":
        return gelu_erf
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return gelu_tanh
    if name == "relu":
        return lambda x: torch.clamp(x, min=0.0)
    raise ValueError(name)


def softmax(x):
    m = x.max(dim=-1, keepdim=True).values.detach()
    e = torch.exp(x - m)
    return e / e.sum(dim=-1, keepdim=True)


def cross_entropy(logits, labels):
    m = logits.max(dim=-1, keepdim=True).values.detach()
    lse = torch.log(torch.exp(logits - m).sum(dim=-1)) + m.squeeze(-1)
    return lse - torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)


def sigmoid_xent(z, y):
    """Stable log(1 + e^-z) for y = 1 and log(1 + e^z) for y = 0."""
    return torch.clamp(z, min=0.0) - z * y + torch.log1p(torch.exp(-torch.abs(z)))


# ----------------------------------------------------------------------------
# model


def embeddings(d, p, ids, seg, detach=False):
    T = ids.shape[1]
    g = (lambda t: t.detach()) if detach else (lambda t: t)
    x = g(p[EMB + "word_embeddings.weight"])[ids] + \
        g(p[EMB + "position_embeddings.weight"])[:T].unsqueeze(0) + \
        g(p[EMB + "token_type_embeddings.weight"])[seg]
    return layer_norm(x, g(p[EMB + "LayerNorm.weight"]), g(p[EMB + "LayerNorm.bias"]), d.eps)


def encoder(d, p, who, n, x, mask):
    B, T, _ = x.shape
    add_mask = ((1.0 - mask.to(x.dtype)) * MASK_NEG).view(B, 1, 1, T)
    act = activation(d.act)
    for i in range(n.L):
        pre = "%s.electra.encoder.layer.%d." % (who, i)

        def heads(t):
            return t.view(B, T, n.nh, n.hd).permute(0, 2, 1, 3)

        def lin(t, name):
            return linear(t, p[pre + name + ".weight"], p[pre + name + ".bias"])

        q = heads(lin(x, "attention.self.query"))
        k = heads(lin(x, "attention.self.key"))
        v = heads(lin(x, "attention.self.value"))
        probs = softmax(torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(n.hd) + add_mask)
        ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).reshape(B, T, n.H)
        x = layer_norm(lin(ctx, "attention.output.dense") + x,
                       p[pre + "attention.output.LayerNorm.weight"],
                       p[pre + "attention.output.LayerNorm.bias"], d.eps)
        h = lin(act(lin(x, "intermediate.dense")), "output.dense")
        x = layer_norm(h + x, p[pre + "output.LayerNorm.weight"], p[pre + "output.LayerNorm.bias"],
                       d.eps)
    return x


def network(d, p, who, n, ids, seg, mask, detach_emb=False):
    x = embeddings(d, p, ids, seg, detach=detach_emb)
    if n.H != d.E:
        x = linear(x, p[who + ".electra.embeddings_project.weight"],
                   p[who + ".electra.embeddings_project.bias"])
    return encoder(d, p, who, n, x, mask)


def generator(d, p, batch, variant=None):
    """Generator logits [B,P,V] and the MLM loss."""
    ids, pos = batch["input_ids"], batch["masked_lm_positions"]
    B, P = pos.shape
    h = network(d, p, "generator", d.gen, ids, batch["segment_ids"], batch["input_mask"])
    g = h[torch.arange(B).unsqueeze(1).expand(B, P), pos]
    act = activation(d.act) if variant == "gen_head_uses_hidden_act" else gelu_erf
    t = act(linear(g, p["generator.generator_predictions.dense.weight"],
                   p["generator.generator_predictions.dense.bias"]))
    t = layer_norm(t, p["generator.generator_predictions.LayerNorm.weight"],
                   p["generator.generator_predictions.LayerNorm.bias"], d.eps)
    logits = linear(t, p[EMB + "word_embeddings.weight"], p["generator.generator_lm_head.bias"])
    w = batch["masked_lm_weights"]
    mlm = (w * cross_entropy(logits, batch["masked_lm_ids"])).sum() / (w.sum() + LOSS_EPS)
    return logits, mlm


def discriminator_input(batch, sampled, variant=None):
    """input_ids with the samples at the weighted slots, and the labels."""
    ids = batch["input_ids"].clone()
    labels = torch.zeros(ids.shape, dtype=batch["masked_lm_weights"].dtype)
    pos, w, orig = batch["masked_lm_positions"], batch["masked_lm_weights"], batch["masked_lm_ids"]
    B, P = pos.shape
    for b in range(B):
        for j in range(P):
            if w[b, j] > 0:
                t = int(pos[b, j])
                ids[b, t] = int(sampled[b, j])
                replaced = variant == "correct_sample_is_replaced" or int(sampled[b, j]) != int(orig[b, j])
                labels[b, t] = 1.0 if replaced else 0.0
    return ids, labels


def discriminator(d, p, batch, dids, labels, variant=None):
    mask = batch["input_mask"]
    h = network(d, p, "discriminator", d.disc, dids, batch["segment_ids"], mask,
                detach_emb=variant == "no_disc_grad_into_embeddings")
    pre = "discriminator.discriminator_predictions."
    u = activation(d.act)(linear(h, p[pre + "dense.weight"], p[pre + "dense.bias"]))
    z = linear(u, p[pre + "dense_prediction.weight"], p[pre + "dense_prediction.bias"])[..., 0]
    ce = sigmoid_xent(z, labels)
    m = torch.ones_like(ce) if variant == "disc_loss_over_padding" else mask.to(ce.dtype)
    return z, (ce * m).sum() / m.sum()


def forward(d, p, batch, sampled, variant=None):
    logits, mlm = generator(d, p, batch, variant)
    dids, labels = discriminator_input(batch, sampled, variant)
    z, disc = discriminator(d, p, batch, dids, labels, variant)
    return {"loss": d.gen_weight * mlm + d.disc_weight * disc, "mlm_loss": mlm, "disc_loss": disc,
            "generator_logits": logits, "discriminator_logits": z}


_INT_BATCH = ("input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids",
              "sampled_ids")


def batch_to_torch(batch_np, dtype):
    out = {}
    for k, v in batch_np.items():
        t = torch.from_numpy(np.ascontiguousarray(v))
        out[k] = t.to(torch.int64) if k in _INT_BATCH else t.to(dtype)
    return out


def params_to_torch(cfg, weights_np, dtype):
    p = {}
    for name, shape in param_shapes(cfg):
        a = np.asarray(weights_np[name])
        if tuple(a.shape) != tuple(shape):
            raise ValueError("%s has shape %s, expected %s" % (name, list(a.shape), list(shape)))
        p[name] = torch.from_numpy(np.ascontiguousarray(a)).to(dtype).clone().requires_grad_(True)
    return p


def draw_samples(cfg, weights_np, batch_np, seed, step=0, sample_base=0):
    """The reference's own Gumbel-max samples: (sampled [B,P], scores
    [B,P,V]) from its float64 generator logits."""
    d = Dims(cfg)
    p = params_to_torch(cfg, weights_np, torch.float64)
    b = batch_to_torch(batch_np, torch.float64)
    with torch.no_grad():
        logits, _ = generator(d, p, b)
    scores = gumbel_scores(logits.numpy(), batch_np["masked_lm_positions"],
                           batch_np["masked_lm_weights"], seed, step, sample_base)
    sampled = np.where(np.asarray(batch_np["masked_lm_weights"]) > 0, scores.argmax(-1), 0)
    return sampled.astype(np.int32), scores


def reference_step(cfg, weights_np, batch_np, sampled, dtype=torch.float64, variant=None):
    """One forward + backward with the given samples [B,P]; returns dict
    name -> np.ndarray with the names the program writes."""
    d = Dims(cfg)
    p = params_to_torch(cfg, weights_np, dtype)
    b = batch_to_torch({k: v for k, v in batch_np.items() if k != "sampled_ids"}, dtype)
    out = forward(d, p, b, torch.from_numpy(np.asarray(sampled)), variant)
    names = [n for n, _ in param_shapes(d)]
    grads = torch.autograd.grad(out["loss"], [p[n] for n in names], allow_unused=True)
    res = {k: v.detach().numpy().copy() for k, v in out.items()}
    res["sampled_ids"] = np.asarray(sampled, np.int32) * np.asarray(
        np.asarray(batch_np["masked_lm_weights"]) > 0, np.int32)
    for n, g in zip(names, grads):
        res["grad." + n] = (g if g is not None else torch.zeros_like(p[n])).detach().numpy().copy()
    return res


# ----------------------------------------------------------------------------
# checks of this module alone


def self_check(log):
    kat = [((0, 0, 0, 0), (0, 0), (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)),
           ((0xffffffff,) * 4, (0xffffffff,) * 2, (0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd)),
           ((0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), (0xa4093822, 0x299f31d0),
            (0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1))]
    for ctr, key, want in kat:
        got = tuple(int(w) for w in philox4x32_10(ctr, key))
        assert got == want, ("Philox known-answer test", [hex(x) for x in got])
    # Gumbel-max draws follow the softmax: 3 tokens, many independent keys
    logits = np.log(np.array([0.6, 0.3, 0.1]))
    n = 6000
    counts = np.zeros(3)
    for s in range(n):
        u = uniforms(99, 0, s, STREAM_SAMPLE, 0, 3)
        counts[int(np.argmax(logits - np.log(-np.log(u))))] += 1
    freq = counts / n
    assert np.all(np.abs(freq - np.exp(logits)) < 4 * np.sqrt(0.25 / n)), freq
    log("PASS self-test electra_ref Philox known answers; Gumbel-max frequencies %s ~ [0.6 0.3 0.1]"
        % np.array2string(freq, precision=3))
