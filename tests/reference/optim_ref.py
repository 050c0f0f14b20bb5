"""Reference optimizers for the C program, written from their formulas.

LAMB in the form of apex FusedLAMB / TF Addons and AdamW, both with
clipping by the global gradient norm and a skipped step when that norm is
not finite.  The arithmetic is done in the dtype of the tensors given
(float64 for the reference; float32 only to emulate the program in the
self-test); norms are always summed in float64.

At step t (counted from 1, only over steps not skipped), with the global
norm G of all gradients and the clipped gradient g = g * min(1, c / G)
(c = max_grad_norm; no clipping when c <= 0):

    m = b1 m + (1 - b1) g          v = b2 v + (1 - b2) g^2
    mh = m / (1 - b1^t)            vh = v / (1 - b2^t)    (or m, v without
                                                           bias correction)
    u = mh / (sqrt(vh) + eps) + wd * w      (wd only on decayed tensors)

    LAMB:  r = |w| / |u| per tensor where the trust ratio applies (both
           norms > 0, else 1), clamped to [trust_min, trust_max] where those
           are > 0;   w = w - lr r u
    AdamW: w = w - lr u

Weight decay and the trust ratio apply to the 2-D weight matrices (word,
position and token-type embeddings included), never to biases, LayerNorm
parameters or cls.predictions.bias; adapt_all puts the trust ratio on every
tensor.
"""
import math

import numpy as np
import torch

# Variants that are deliberately wrong, for the negative checks.
VARIANTS = (None, "eps_inside_sqrt", "no_trust_ratio")


def f32(x):
    """x as the C program stores it (a float)."""
    return float(np.float32(x))


class OptimConfig:
    """Hyperparameters with the program's defaults."""

    def __init__(self, kind="lamb", lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-6,
                 weight_decay=0.01, bias_correction=True, adapt_all=False, trust_min=0.0,
                 trust_max=0.0, max_grad_norm=1.0, variant=None):
        if kind not in ("lamb", "adamw"):
            raise ValueError("unknown optimizer %r" % kind)
        if variant not in VARIANTS:
            raise ValueError("unknown variant %r" % variant)
        self.kind = kind
        self.lr = lr
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.weight_decay = weight_decay
        self.bias_correction = bias_correction
        self.adapt_all = adapt_all
        self.trust_min, self.trust_max = trust_min, trust_max
        self.max_grad_norm = max_grad_norm
        self.variant = variant

    def replace(self, **kw):
        d = dict(self.__dict__)
        d.update(kw)
        return OptimConfig(**d)

    def as_float32(self):
        """The same settings rounded to float as the program parses them."""
        return self.replace(lr=f32(self.lr), beta1=f32(self.beta1), beta2=f32(self.beta2),
                            eps=f32(self.eps), weight_decay=f32(self.weight_decay),
                            trust_min=f32(self.trust_min), trust_max=f32(self.trust_max),
                            max_grad_norm=f32(self.max_grad_norm))


def decays(name):
    """Weight decay (and the default trust ratio) apply to this tensor."""
    return not ("LayerNorm" in name or name.endswith("bias"))


class OptimState:
    """First and second moments per tensor, the count of steps taken and of
    steps skipped."""

    def __init__(self, params):
        self.m = {n: torch.zeros_like(p) for n, p in params.items()}
        self.v = {n: torch.zeros_like(p) for n, p in params.items()}
        self.t = 0
        self.skipped = 0


def global_norm(grads):
    total = 0.0
    for g in grads.values():
        total += float(torch.sum(g.to(torch.float64) ** 2))
    return math.sqrt(total)


def _norm(x):
    return float(torch.sqrt(torch.sum(x.to(torch.float64) ** 2)))


def step(params, grads, state, cfg, lr=None):
    """One update of params (dict name -> tensor, modified in place) from
    grads (not modified).  Returns a dict: grad_norm, clip, skipped, and per
    tensor with a trust ratio `ratio_raw` (before clamping; None where both
    norms were not positive) and `ratio` (applied)."""
    lr = cfg.lr if lr is None else lr
    G = global_norm(grads)
    info = {"grad_norm": G, "clip": 0.0, "skipped": False, "ratio_raw": {}, "ratio": {}}
    if not math.isfinite(G):
        state.skipped += 1
        info["skipped"] = True
        return info
    clip = cfg.max_grad_norm / G if cfg.max_grad_norm > 0 and G > cfg.max_grad_norm else 1.0
    info["clip"] = clip
    state.t += 1
    t = state.t
    b1, b2 = cfg.beta1, cfg.beta2
    bc1 = 1.0 / (1.0 - b1 ** t) if cfg.bias_correction else 1.0
    bc2 = 1.0 / (1.0 - b2 ** t) if cfg.bias_correction else 1.0
    for name, w in params.items():
        g = grads[name] * clip
        m = state.m[name] = b1 * state.m[name] + (1.0 - b1) * g
        v = state.v[name] = b2 * state.v[name] + (1.0 - b2) * g * g
        mh, vh = m * bc1, v * bc2
        if cfg.variant == "eps_inside_sqrt":
            u = mh / torch.sqrt(vh + cfg.eps)
        else:
            u = mh / (torch.sqrt(vh) + cfg.eps)
        if decays(name):
            u = u + cfg.weight_decay * w
        r = 1.0
        if cfg.kind == "lamb" and (decays(name) or cfg.adapt_all):
            wn, un = _norm(w), _norm(u)
            raw = wn / un if wn > 0 and un > 0 else None
            r = 1.0 if raw is None else raw
            if cfg.trust_min > 0 and r < cfg.trust_min:
                r = cfg.trust_min
            if cfg.trust_max > 0 and r > cfg.trust_max:
                r = cfg.trust_max
            if cfg.variant == "no_trust_ratio":
                r = 1.0
            info["ratio_raw"][name] = raw
            info["ratio"][name] = r
        w.sub_(lr * r * u)
    return info


# ----------------------------------------------------------------------------
# checks of this module alone (run by the driver's --self-test and before the
# comparisons with the program)


def _toy(seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    params = {
        "enc.dense.weight": torch.randn(6, 5, generator=gen, dtype=dtype) * 0.3,
        "enc.dense.bias": torch.randn(6, generator=gen, dtype=dtype) * 0.1,
        "enc.LayerNorm.weight": 1.0 + 0.1 * torch.randn(6, generator=gen, dtype=dtype),
        "enc.LayerNorm.bias": torch.zeros(6, dtype=dtype),
    }
    grads = [{n: torch.randn(p.shape, generator=gen, dtype=dtype) * 0.05 for n, p in params.items()}
             for _ in range(4)]
    return params, grads


def _clone(d):
    return {n: t.clone() for n, t in d.items()}


def check_against_torch_adamw(log):
    """AdamW here against torch.optim.AdamW (float64, no clipping)."""
    params, grads = _toy(1)
    cfg = OptimConfig(kind="adamw", lr=3e-3, weight_decay=0.1, max_grad_norm=0.0, eps=1e-6)
    mine = _clone(params)
    st = OptimState(mine)
    for g in grads:
        step(mine, g, st, cfg)
    theirs = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    groups = [{"params": [p for n, p in theirs.items() if decays(n)],
               "weight_decay": cfg.weight_decay},
              {"params": [p for n, p in theirs.items() if not decays(n)], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    for g in grads:
        for n, p in theirs.items():
            p.grad = g[n].clone()
        opt.step()
    err = max(float(torch.max(torch.abs(mine[n] - theirs[n].detach()))) for n in mine)
    assert err < 1e-14, ("AdamW differs from torch.optim.AdamW", err)
    log("PASS self-test optim_ref AdamW == torch.optim.AdamW (float64, 4 steps, max err %.1e)"
        % err)


def check_lamb_by_hand(log):
    """Two LAMB steps of a 2-element tensor against scalar arithmetic."""
    cfg = OptimConfig(lr=0.1, beta1=0.8, beta2=0.9, eps=1e-3, weight_decay=0.5,
                      max_grad_norm=0.0)
    w = [0.3, -0.4]
    gs = [[0.2, -0.1], [0.05, 0.3]]
    p = {"x.weight": torch.tensor(w, dtype=torch.float64)}
    st = OptimState(p)
    m, v = [0.0, 0.0], [0.0, 0.0]
    for t, g in enumerate(gs, 1):
        step(p, {"x.weight": torch.tensor(g, dtype=torch.float64)}, st, cfg)
        u = []
        for i in range(2):
            m[i] = 0.8 * m[i] + 0.2 * g[i]
            v[i] = 0.9 * v[i] + 0.1 * g[i] ** 2
            mh, vh = m[i] / (1 - 0.8 ** t), v[i] / (1 - 0.9 ** t)
            u.append(mh / (math.sqrt(vh) + 1e-3) + 0.5 * w[i])
        r = math.hypot(*w) / math.hypot(*u)
        w = [w[i] - 0.1 * r * u[i] for i in range(2)]
    err = max(abs(float(p["x.weight"][i]) - w[i]) for i in range(2))
    assert err < 1e-15, ("LAMB differs from the scalar computation", err)
    log("PASS self-test optim_ref LAMB == scalar arithmetic (2 steps, max err %.1e)" % err)


def check_lamb_rules(log):
    """Flags, zero-norm tensors, clamping, clipping and the skipped step."""
    params, grads = _toy(2)
    base = OptimConfig(lr=1e-2, max_grad_norm=0.0)
    # trust ratio only on the matrix by default; on all with adapt_all
    p = _clone(params)
    info = step(p, grads[0], OptimState(p), base)
    assert set(info["ratio"]) == {"enc.dense.weight"}, info["ratio"]
    p = _clone(params)
    info = step(p, grads[0], OptimState(p), base.replace(adapt_all=True))
    assert set(info["ratio"]) == set(params)
    # the zero LayerNorm bias has ratio 1 and moves by lr * u
    assert info["ratio_raw"]["enc.LayerNorm.bias"] is None
    assert info["ratio"]["enc.LayerNorm.bias"] == 1.0
    g = grads[0]["enc.LayerNorm.bias"]
    want = -1e-2 * g / (torch.abs(g) + 1e-6)
    assert float(torch.max(torch.abs(p["enc.LayerNorm.bias"] - want))) < 1e-15
    # clamping: both ends bind
    p = _clone(params)
    info = step(p, grads[0], OptimState(p), base.replace(adapt_all=True))
    raws = sorted(r for r in info["ratio_raw"].values() if r is not None)
    lo, hi = raws[0] * 1.01, raws[-1] * 0.99
    p = _clone(params)
    info = step(p, grads[0], OptimState(p),
                base.replace(adapt_all=True, trust_min=lo, trust_max=hi))
    assert min(info["ratio"].values()) == lo and max(info["ratio"].values()) == hi
    # clipping: the factor, and with bias correction the first step is then
    # a function of g / (|g| + eps / clip)
    G = global_norm(grads[0])
    p = _clone(params)
    info = step(p, grads[0], OptimState(p), base.replace(max_grad_norm=G / 4))
    assert abs(info["clip"] - 0.25) < 1e-14, info["clip"]
    for mgn in (0.0, -1.0, 2 * G):
        p = _clone(params)
        assert step(p, grads[0], OptimState(p), base.replace(max_grad_norm=mgn))["clip"] == 1.0
    # a non-finite gradient: nothing moves, t does not advance; the next
    # finite step is step 1
    for bad in (float("inf"), float("nan")):
        p = _clone(params)
        st = OptimState(p)
        step(p, grads[0], st, base)
        p1, m1, v1 = _clone(p), _clone(st.m), _clone(st.v)
        gb = _clone(grads[1])
        gb["enc.dense.bias"][2] = bad
        info = step(p, gb, st, base)
        assert info["skipped"] and st.t == 1 and st.skipped == 1
        for n in p:
            assert torch.equal(p[n], p1[n]) and torch.equal(st.m[n], m1[n]) \
                and torch.equal(st.v[n], v1[n])
        q = _clone(params)
        sq = OptimState(q)
        step(q, gb, sq, base)
        step(q, grads[0], sq, base)
        r = _clone(params)
        step(r, grads[0], OptimState(r), base)
        assert sq.t == 1 and all(torch.equal(q[n], r[n]) for n in q)
    # bias correction off: the first step is (1-b1) g / (sqrt(1-b2) |g| + eps)
    p = _clone(params)
    cfg = base.replace(kind="adamw", bias_correction=False, weight_decay=0.0)
    step(p, grads[0], OptimState(p), cfg)
    g = grads[0]["enc.dense.bias"]
    want = params["enc.dense.bias"] - 1e-2 * 0.1 * g / (math.sqrt(0.001) * torch.abs(g) + 1e-6)
    assert float(torch.max(torch.abs(p["enc.dense.bias"] - want))) < 1e-15
    # the deliberately wrong variants do differ
    for var in VARIANTS[1:]:
        a, b = _clone(params), _clone(params)
        step(a, grads[0], OptimState(a), base)
        step(b, grads[0], OptimState(b), base.replace(variant=var))
        assert not torch.equal(a["enc.dense.weight"], b["enc.dense.weight"]), var
    log("PASS self-test optim_ref rules: flags, zero norm -> ratio 1, clamping, clip factor, "
        "inf/NaN skip, no bias correction, variants differ")


def self_check(log):
    check_against_torch_adamw(log)
    check_lamb_by_hand(log)
    check_lamb_rules(log)


def rel_l2(a, b):
    """|a - b| / |b|, with 0/0 = 0."""
    num, den = float(np.linalg.norm((a - b).ravel())), float(np.linalg.norm(b.ravel()))
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


def compare_trajectory(shapes, w0, ref, out, skip, delta_rtol, scalar_rtol):
    """The final weights of `mlmpi-train step --steps K` (OUT, F32, every (name, shape) of
    shapes) against ref["weights"] by the relative L2 error of their change from w0 (tensors
    in skip: only present, shaped and finite), and OUT's losses and grad_norms against ref's
    by relative error. Returns (records, problems): (name, error) per comparison, one string
    per failure."""
    problems, records = [], []
    for n, shape in shapes:
        o = out.get(n)
        if o is None:
            problems.append("%s: final weights missing from OUT" % n)
            continue
        if tuple(o.shape) != tuple(shape) or o.dtype != np.float32:
            problems.append("%s: final weights %s %s, expected F32 %s"
                            % (n, o.dtype, list(o.shape), list(shape)))
            continue
        if not np.all(np.isfinite(o)):
            problems.append("%s: final weights not finite" % n)
            continue
        if n in skip:
            continue
        w = np.asarray(w0[n], np.float64)
        err = rel_l2(o.astype(np.float64) - w, ref["weights"][n].astype(np.float64) - w)
        records.append((n, err))
        if not err <= delta_rtol:
            problems.append("%s: change differs, relative L2 error %.3e > %.0e"
                            % (n, err, delta_rtol))
    for key in ("losses", "grad_norms"):
        if key not in out:
            problems.append("%s: missing from OUT" % key)
            continue
        o, r = np.asarray(out[key], np.float64), np.asarray(ref[key], np.float64)
        if o.shape != r.shape:
            problems.append("%s: shape %s, expected %s" % (key, list(o.shape), list(r.shape)))
            continue
        err = float(np.max(np.abs(o - r) / np.abs(r))) if np.all(np.isfinite(o)) else float("inf")
        records.append((key, err))
        if not err <= scalar_rtol:
            problems.append("%s: relative error %.3e > %.0e (out %s, ref %s)"
                            % (key, err, scalar_rtol, np.array2string(o, precision=7),
                               np.array2string(r, precision=7)))
    return records, problems
