/* kernels.c: forward and backward layer kernels of the BERT model (linear,
 * activation, fused dropout+residual+LayerNorm, attention, softmax
 * cross-entropy, gather/scatter). Reference semantics: torch.nn.functional
 * (linear, gelu, layer_norm, softmax, cross_entropy, dropout). */
#include "kernels.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

/* ---- Scalar maths that vectorise -------------------------------------------
 * libm's expf/erff are calls the compiler cannot vectorise; these are
 * branch-free and accurate to about 2 ulp, well inside what fp32 training
 * and the reference tolerances need. */

/* e^x: 2^n · e^r with n = round(x/ln2), |r| <= ln2/2, degree-7 Taylor for
 * e^r. Underflows to 0 below -87.3 (as expf does to denormals and 0). */
static inline float fast_expf(float x) {
  const float hi = 88.3f, lo = -87.3f;
  float xc = x > hi ? hi : (x < lo ? lo : x);
  float t = xc * 1.44269504088896341f + 12582912.0f; /* round to nearest */
  float n = t - 12582912.0f;
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  union {
    float f;
    int32_t i;
  } s;
  s.i = ((int32_t)n + 127) << 23;
  return x < lo ? 0.0f : p * s.f;
}

/* erfc(|z|) for z >= 0 by the Chebyshev-fitted form
 * erfc(z) = t·exp(-z² + P(t)), t = 1/(1 + z/2), fractional error < 1.2e-7
 * everywhere (Press et al., Numerical Recipes, §6.2). */
static inline float erfc_pos(float z) {
  float t = 1.0f / (1.0f + 0.5f * z);
  float p = 0.17087277f;
  p = p * t - 0.82215223f;
  p = p * t + 1.48851587f;
  p = p * t - 1.13520398f;
  p = p * t + 0.27886807f;
  p = p * t - 0.18628806f;
  p = p * t + 0.09678418f;
  p = p * t + 0.37409196f;
  p = p * t + 1.00002368f;
  p = p * t - 1.26551223f;
  return t * fast_expf(-z * z + p);
}

/* Φ(x), the standard normal CDF: gelu(x) = x Φ(x). */
static inline float norm_cdf(float x) {
  float z = fabsf(x) * 0.70710678118654752f;
  float h = 0.5f * erfc_pos(z);
  return x >= 0 ? 1.0f - h : h;
}

static inline float fast_tanhf(float x) {
  float xc = x > 15.0f ? 15.0f : (x < -15.0f ? -15.0f : x);
  float e = fast_expf(2.0f * xc);
  return (e - 1.0f) / (e + 1.0f);
}

#define SQRT_2_OVER_PI 0.79788456080286536f
#define INV_SQRT_2PI 0.39894228040143268f

static inline float act_fn(act_kind a, float x) {
  switch (a) {
    case ACT_GELU: return x * norm_cdf(x);
    case ACT_GELU_TANH: {
      float u = SQRT_2_OVER_PI * (x + 0.044715f * x * x * x);
      return 0.5f * x * (1.0f + fast_tanhf(u));
    }
    case ACT_RELU: return x > 0 ? x : 0.0f;
  }
  return 0.0f;
}

static inline float act_grad_fn(act_kind a, float x) {
  switch (a) {
    case ACT_GELU: return norm_cdf(x) + x * INV_SQRT_2PI * fast_expf(-0.5f * x * x);
    case ACT_GELU_TANH: {
      float u = SQRT_2_OVER_PI * (x + 0.044715f * x * x * x);
      float th = fast_tanhf(u);
      float du = SQRT_2_OVER_PI * (1.0f + 3.0f * 0.044715f * x * x);
      return 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du;
    }
    case ACT_RELU: return x > 0 ? 1.0f : 0.0f;
  }
  return 0.0f;
}

float k_act(act_kind a, float x) { return act_fn(a, x); }
float k_act_grad(act_kind a, float x) { return act_grad_fn(a, x); }

/* ---- Linear ---------------------------------------------------------------- */
void k_linear_fwd(float *y, const float *x, const float *W, int N, int in, int out) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, out, in, 1.0f, x, in, W, in, 0.0f, y,
              out);
}

void k_linear_bwd(float *dx, bool dx_acc, float *dW, float *db, const float *dy, const float *x,
                  const float *W, const float *ones, int N, int in, int out) {
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, N, 1.0f, dy, out, x, in, 1.0f, dW,
              in);
  if (db) cblas_sgemv(CblasRowMajor, CblasTrans, N, out, 1.0f, dy, out, ones, 1, 1.0f, db, 1);
  if (dx)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, in, out, 1.0f, dy, out, W, in,
                dx_acc ? 1.0f : 0.0f, dx, in);
}

void k_linear_io_fwd(float *y, const float *x, const float *W, int N, int in, int out) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, out, in, 1.0f, x, in, W, out, 0.0f, y,
              out);
}

void k_bias_grad(float *db, const float *dy, const float *ones, int N, int C) {
  cblas_sgemv(CblasRowMajor, CblasTrans, N, C, 1.0f, dy, C, ones, 1, 1.0f, db, 1);
}

void k_add_bias(float *y, const float *b, int N, int C) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    float *r = y + (size_t)n * C;
#pragma omp simd
    for (int j = 0; j < C; j++) r[j] += b[j];
  }
}

void k_bias_tanh_fwd(float *pre, float *out, const float *b, int N, int C) {
  for (int i = 0; i < N * C; i++) out[i] = tanhf(pre[i] += b[i % C]);
}

void k_tanh_bwd(float *d, const float *y, int n) {
  for (int i = 0; i < n; i++) d[i] *= 1.0f - y[i] * y[i];
}

/* ---- Activation -------------------------------------------------------------
 * The switch on the activation sits outside each inner loop (and inside the
 * parallel region, where OpenMP's outlining cannot hide the constant), so
 * every inner loop calls one known function and vectorises. */
static inline float gelu_erf(float x) { return x * norm_cdf(x); }
static inline float gelu_erf_grad(float x) {
  return norm_cdf(x) + x * INV_SQRT_2PI * fast_expf(-0.5f * x * x);
}
static inline float gelu_tanh(float x) { return act_fn(ACT_GELU_TANH, x); }
static inline float gelu_tanh_grad(float x) { return act_grad_fn(ACT_GELU_TANH, x); }
static inline float relu(float x) { return x > 0 ? x : 0.0f; }
static inline float relu_grad(float x) { return x > 0 ? 1.0f : 0.0f; }

void k_bias_act_fwd(float *pre, float *act, const float *b, int N, int C, act_kind a) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    float *p = pre + (size_t)n * C, *o = act + (size_t)n * C;
#pragma omp simd
    for (int j = 0; j < C; j++) p[j] += b[j];
    switch (a) {
      case ACT_GELU:
#pragma omp simd
        for (int j = 0; j < C; j++) o[j] = gelu_erf(p[j]);
        break;
      case ACT_GELU_TANH:
#pragma omp simd
        for (int j = 0; j < C; j++) o[j] = gelu_tanh(p[j]);
        break;
      case ACT_RELU:
#pragma omp simd
        for (int j = 0; j < C; j++) o[j] = relu(p[j]);
        break;
    }
  }
}

void k_act_bwd(float *dpre, const float *dact, const float *pre, int N, int C, act_kind a) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    float *d = dpre + (size_t)n * C;
    const float *g = dact + (size_t)n * C, *p = pre + (size_t)n * C;
    switch (a) {
      case ACT_GELU:
#pragma omp simd
        for (int j = 0; j < C; j++) d[j] = g[j] * gelu_erf_grad(p[j]);
        break;
      case ACT_GELU_TANH:
#pragma omp simd
        for (int j = 0; j < C; j++) d[j] = g[j] * gelu_tanh_grad(p[j]);
        break;
      case ACT_RELU:
#pragma omp simd
        for (int j = 0; j < C; j++) d[j] = g[j] * relu_grad(p[j]);
        break;
    }
  }
}

/* ---- Dropout ----------------------------------------------------------------- */
static inline float drop_scale(const dropout_desc *d) { return 1.0f / (1.0f - d->p); }

/* Multiplies row n of width C by its mask / (1 - p); u is C floats scratch. */
static void dropout_row(float *row, const dropout_desc *d, int n, int C, float *u) {
  rng_key k = d->key;
  k.sample = d->sample_base + (uint32_t)(n / d->T);
  rng_uniform(k, (uint32_t)(n % d->T) * (uint32_t)C, (size_t)C, u);
  float s = drop_scale(d), p = d->p;
#pragma omp simd
  for (int j = 0; j < C; j++) row[j] *= u[j] >= p ? s : 0.0f;
}

void k_dropout(float *x, const dropout_desc *drop, int N, int C) {
  if (!k_dropout_on(drop)) return;
#pragma omp parallel
  {
    float u[C];
#pragma omp for schedule(static)
    for (int n = 0; n < N; n++) dropout_row(x + (size_t)n * C, drop, n, C, u);
  }
}

/* ---- Residual + LayerNorm ---------------------------------------------------- */
void k_add_ln_fwd(float *s_out, float *y, float *mean, float *rstd, const float *x,
                  const float *bias, const dropout_desc *drop, const float *resid,
                  const float *gamma, const float *beta, int N, int C, float eps) {
  bool dr = k_dropout_on(drop);
#pragma omp parallel
  {
    float u[C];
#pragma omp for schedule(static)
    for (int n = 0; n < N; n++) {
      const float *xr = x + (size_t)n * C;
      float *s = s_out ? s_out + (size_t)n * C : (float *)xr;
      if (s_out) {
        if (bias)
          for (int j = 0; j < C; j++) s[j] = xr[j] + bias[j];
        else
          memcpy(s, xr, (size_t)C * sizeof *s);
        if (dr) dropout_row(s, drop, n, C, u);
        if (resid) {
          const float *r = resid + (size_t)n * C;
#pragma omp simd
          for (int j = 0; j < C; j++) s[j] += r[j];
        }
      }
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int j = 0; j < C; j++) sum += s[j];
      float mu = sum / (float)C, var = 0.0f;
#pragma omp simd reduction(+ : var)
      for (int j = 0; j < C; j++) var += (s[j] - mu) * (s[j] - mu);
      float rs = 1.0f / sqrtf(var / (float)C + eps);
      mean[n] = mu;
      rstd[n] = rs;
      float *yr = y + (size_t)n * C;
#pragma omp simd
      for (int j = 0; j < C; j++) yr[j] = (s[j] - mu) * rs * gamma[j] + beta[j];
    }
  }
}

void k_add_ln_bwd(float *dx, float *dresid, float *dbias, float *dgamma, float *dbeta,
                  const float *dy, const float *s, const float *mean, const float *rstd,
                  const float *gamma, const dropout_desc *drop, int N, int C, float *scratch,
                  int nthreads) {
  bool dr = k_dropout_on(drop);
  memset(scratch, 0, (size_t)nthreads * 3 * C * sizeof *scratch);
#pragma omp parallel num_threads(nthreads)
  {
    float *dg = scratch + (size_t)omp_get_thread_num() * 3 * C, *dbt = dg + C, *dbs = dbt + C;
    float u[C], ds[C];
#pragma omp for schedule(static)
    for (int n = 0; n < N; n++) {
      const float *sr = s + (size_t)n * C, *dyr = dy + (size_t)n * C;
      float mu = mean[n], rs = rstd[n], a = 0.0f, b = 0.0f;
#pragma omp simd reduction(+ : a, b)
      for (int j = 0; j < C; j++) {
        float xh = (sr[j] - mu) * rs, g = dyr[j] * gamma[j];
        dg[j] += dyr[j] * xh;
        dbt[j] += dyr[j];
        a += g;
        b += g * xh;
      }
      a /= (float)C;
      b /= (float)C;
#pragma omp simd
      for (int j = 0; j < C; j++) ds[j] = rs * (dyr[j] * gamma[j] - a - (sr[j] - mu) * rs * b);
      if (dresid) {
        float *r = dresid + (size_t)n * C;
#pragma omp simd
        for (int j = 0; j < C; j++) r[j] = ds[j];
      }
      if (dx) {
        float *o = dx + (size_t)n * C;
        memcpy(o, ds, (size_t)C * sizeof *o);
        if (dr) dropout_row(o, drop, n, C, u);
        if (dbias)
          for (int j = 0; j < C; j++) dbs[j] += o[j];
      }
    }
  }
  for (int t = 0; t < nthreads; t++) {
    const float *dg = scratch + (size_t)t * 3 * C;
    for (int j = 0; j < C; j++) {
      dgamma[j] += dg[j];
      dbeta[j] += dg[C + j];
      if (dbias) dbias[j] += dg[2 * C + j];
    }
  }
}

/* ---- Attention ---------------------------------------------------------------
 * One (sequence, head) pair per task; the BLAS calls inside run single
 * threaded because they are made from inside an OpenMP region. */
static void attn_dropout_probs(float *out, const float *P, const dropout_desc *d, int b, int h,
                               int T) {
  rng_key k = d->key;
  k.sample = d->sample_base + (uint32_t)b;
  size_t n = (size_t)T * T;
  rng_uniform(k, (uint32_t)((size_t)h * n), n, out);
  float s = drop_scale(d), p = d->p;
#pragma omp simd
  for (size_t i = 0; i < n; i++) out[i] = out[i] >= p ? P[i] * s : 0.0f;
}

/* One head's scores in place: + the key mask's -10000, softmax per row;
 * causal (the mask's causal bit, kernels.h): row i ends at key i, the keys
 * after it get -inf (exp gives exactly 0), outside the loop BERT runs. */
static inline void attn_softmax(float *P, const int32_t *mask, int T) {
  const bool causal = T > 0 && (mask[0] & K_ATTN_CAUSAL);
  for (int i = 0; i < T; i++) {
    float *row = P + (size_t)i * T, mx = -INFINITY, sum = 0.0f;
    const int n = causal ? i + 1 : T;
    for (int j = 0; j < n; j++) {
      row[j] += (mask[j] & K_ATTN_KEY) ? 0.0f : -10000.0f;
      mx = row[j] > mx ? row[j] : mx;
    }
    for (int j = n; j < T; j++) row[j] = -INFINITY;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < T; j++) {
      row[j] = fast_expf(row[j] - mx);
      sum += row[j];
    }
    float inv = 1.0f / sum;
#pragma omp simd
    for (int j = 0; j < T; j++) row[j] *= inv;
  }
}

/* dP (the gradient of one head's dropped probabilities Pd) into that of its
 * scores, through the dropout mask (when dr) and the softmax P. causal: row
 * i reads only keys 0..i of dP (the rest may be unwritten) and gets zeros
 * after them. */
static inline void attn_softmax_bwd(float *dP, const float *P, const float *Pd, bool dr, float ds,
                                    int T, bool causal) {
  for (int i = 0; i < T; i++) {
    const float *pr = P + (size_t)i * T, *pd = Pd + (size_t)i * T;
    float *g = dP + (size_t)i * T, dot = 0.0f;
    const int n = causal ? i + 1 : T;
    if (dr)
      for (int j = 0; j < n; j++) g[j] = pd[j] != 0.0f ? g[j] * ds : 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int j = 0; j < n; j++) dot += g[j] * pr[j];
#pragma omp simd
    for (int j = 0; j < n; j++) g[j] = pr[j] * (g[j] - dot);
    for (int j = n; j < T; j++) g[j] = 0.0f;
  }
}

void k_attn_softmax(float *P, const int32_t *mask, int T) { attn_softmax(P, mask, T); }

bool k_attn_dropout(float *out, const float *P, const dropout_desc *d, int b, int h, int T) {
  if (!k_dropout_on(d)) return false;
  attn_dropout_probs(out, P, d, b, h, T);
  return true;
}

void k_attn_softmax_bwd(float *dP, const float *P, const float *Pd, const dropout_desc *d, int T) {
  bool dr = k_dropout_on(d);
  attn_softmax_bwd(dP, P, Pd, dr, dr ? drop_scale(d) : 1.0f, T, false);
}

/* Causal attention's query (and key) block: scores and products beyond a
 * block's last query are skipped. One block of all T when not causal. */
enum { ATTN_QB = 64 };
static inline int attn_block_step(bool causal, int T) { return causal ? ATTN_QB : T; }
static inline int attn_block_end(bool causal, int i0, int T) {
  return causal && i0 + ATTN_QB < T ? i0 + ATTN_QB : T;
}

void k_attention_fwd(float *ctx, float *probs, const float *qkv, const int32_t *input_mask, int B,
                     int T, int NH, int D, const dropout_desc *drop, float *scratch, int nthreads) {
  const int H = NH * D, H3 = 3 * H;
  const float scale = 1.0f / sqrtf((float)D);
  bool dr = k_dropout_on(drop);
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
  for (int bh = 0; bh < B * NH; bh++) {
    int b = bh / NH, h = bh % NH;
    const float *q = qkv + (size_t)b * T * H3 + (size_t)h * D, *k = q + H, *v = q + 2 * H;
    float *P = probs + (size_t)bh * T * T;
    const int32_t *mask = input_mask + (size_t)b * T;
    float *c = ctx + (size_t)b * T * H + (size_t)h * D;
    const bool causal = T > 0 && (mask[0] & K_ATTN_CAUSAL);
    /* Causal: query block [i0, i1) needs keys [0, i1) only; the scores after
     * them are left unwritten (the softmax gives them 0). */
    for (int i0 = 0; i0 < T; i0 += attn_block_step(causal, T)) {
      int i1 = attn_block_end(causal, i0, T);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, i1 - i0, causal ? i1 : T, D, scale,
                  q + (size_t)i0 * H3, H3, k, H3, 0.0f, P + (size_t)i0 * T, T);
    }
    attn_softmax(P, mask, T);
    const float *Pd = P;
    if (dr) {
      float *tmp = scratch + (size_t)omp_get_thread_num() * T * T;
      attn_dropout_probs(tmp, P, drop, b, h, T);
      Pd = tmp;
    }
    for (int i0 = 0; i0 < T; i0 += attn_block_step(causal, T)) {
      int i1 = attn_block_end(causal, i0, T);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, i1 - i0, D, causal ? i1 : T, 1.0f,
                  Pd + (size_t)i0 * T, T, v, H3, 0.0f, c + (size_t)i0 * H, H);
    }
  }
}

void k_attention_bwd(float *dqkv, const float *dctx, const float *probs, const float *qkv,
                     const int32_t *input_mask, int B, int T, int NH, int D,
                     const dropout_desc *drop, float *scratch, int nthreads) {
  const int H = NH * D, H3 = 3 * H;
  const float scale = 1.0f / sqrtf((float)D);
  bool dr = k_dropout_on(drop);
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
  for (int bh = 0; bh < B * NH; bh++) {
    int b = bh / NH, h = bh % NH;
    size_t ro = (size_t)b * T * H3 + (size_t)h * D;
    const float *q = qkv + ro, *k = q + H, *v = q + 2 * H;
    float *dq = dqkv + ro, *dk = dq + H, *dv = dq + 2 * H;
    const float *P = probs + (size_t)bh * T * T;
    const float *dc = dctx + (size_t)b * T * H + (size_t)h * D;
    float *Pd = scratch + (size_t)omp_get_thread_num() * 2 * T * T, *dP = Pd + (size_t)T * T;
    if (dr) attn_dropout_probs(Pd, P, drop, b, h, T);
    const float *Pu = dr ? Pd : P;
    const bool causal = T > 0 && (input_mask[(size_t)b * T] & K_ATTN_CAUSAL);
    /* Causal, in blocks of ATTN_QB: query rows [i0, i1) of dP, dS and dQ
     * involve keys [0, i1); key rows [i0, i1) of dV and dK involve queries
     * [i0, T) (the probabilities above the diagonal are 0). */
    for (int i0 = 0; i0 < T; i0 += attn_block_step(causal, T)) {
      int i1 = attn_block_end(causal, i0, T), m = i1 - i0, r = causal ? T - i0 : T;
      const size_t o = causal ? (size_t)i0 : 0; /* first query row a key block meets */
      /* dV = dropout(P)^T dctx; dP = dctx V^T (through dropout's mask). */
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, m, D, r, 1.0f, Pu + o * T + i0, T,
                  dc + o * H, H, 0.0f, dv + (size_t)i0 * H3, H3);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, causal ? i1 : T, D, 1.0f,
                  dc + (size_t)i0 * H, H, v, H3, 0.0f, dP + (size_t)i0 * T, T);
    }
    attn_softmax_bwd(dP, P, Pd, dr, dr ? drop_scale(drop) : 1.0f, T, causal);
    /* dQ = scale · dS K; dK = scale · dS^T Q. */
    for (int i0 = 0; i0 < T; i0 += attn_block_step(causal, T)) {
      int i1 = attn_block_end(causal, i0, T), m = i1 - i0, r = causal ? T - i0 : T;
      const size_t o = causal ? (size_t)i0 : 0;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, D, causal ? i1 : T, scale,
                  dP + (size_t)i0 * T, T, k, H3, 0.0f, dq + (size_t)i0 * H3, H3);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, m, D, r, scale, dP + o * T + i0, T,
                  q + o * H3, H3, 0.0f, dk + (size_t)i0 * H3, H3);
    }
  }
}

/* ---- Cross-entropy ----------------------------------------------------------- */
double k_softmax_xent(float *logits, float *dlogits, const float *bias, const int32_t *ids,
                      const float *w, float coef, int M, int V, double *correct) {
  double total = 0.0, good = 0.0;
#pragma omp parallel for schedule(static) reduction(+ : total, good)
  for (int r = 0; r < M; r++) {
    float *x = logits + (size_t)r * V, *g = dlogits + (size_t)r * V, mx = -INFINITY;
    if (bias) {
#pragma omp simd
      for (int j = 0; j < V; j++) x[j] += bias[j];
    }
    /* The maximum in vector lanes (NaNs never win a comparison), then the
     * first column holding it: the row is still in cache. */
#pragma omp simd reduction(max : mx)
    for (int j = 0; j < V; j++) mx = x[j] > mx ? x[j] : mx;
    int arg = 0;
    while (arg < V && !(x[arg] == mx)) arg++;
    if (arg == V) arg = 0; /* every entry NaN */
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < V; j++) {
      g[j] = fast_expf(x[j] - mx);
      sum += g[j];
    }
    float wr = w ? w[r] : 1.0f;
    double lse = (double)mx + log((double)sum);
    total += (double)wr * (lse - (double)x[ids[r]]);
    good += arg == ids[r] ? wr : 0.0;
    float f = wr * coef / sum;
#pragma omp simd
    for (int j = 0; j < V; j++) g[j] *= f;
    g[ids[r]] -= wr * coef;
  }
  if (correct) *correct += good;
  return total;
}

/* ---- Embeddings ---------------------------------------------------------------- */
void k_embed_fwd(float *out, const float *we, const float *pe, const float *te, const int32_t *ids,
                 const int32_t *seg, int N, int T, int C) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    const float *x = we + (size_t)ids[n] * C, *y = pe + (size_t)(n % T) * C,
                *z = te + (size_t)seg[n] * C;
    float *o = out + (size_t)n * C;
#pragma omp simd
    for (int j = 0; j < C; j++) o[j] = x[j] + y[j] + z[j];
  }
}

void k_embed_bwd(float *gw, float *gp, float *gt, const float *dout, const int32_t *ids,
                 const int32_t *seg, int N, int T, int C) {
#pragma omp parallel
  {
    int nt = omp_get_num_threads(), t = omp_get_thread_num();
    int c0 = (int)((long)C * t / nt), c1 = (int)((long)C * (t + 1) / nt);
    for (int n = 0; n < N; n++) {
      const float *g = dout + (size_t)n * C;
      float *x = gw + (size_t)ids[n] * C, *y = gp + (size_t)(n % T) * C,
            *z = gt + (size_t)seg[n] * C;
      for (int j = c0; j < c1; j++) {
        x[j] += g[j];
        y[j] += g[j];
        z[j] += g[j];
      }
    }
  }
}

/* ---- ELECTRA's sampling and discriminator loss ----------------------------------- */
void k_gumbel_max(int32_t *out, const float *logits, const float *w, const int32_t *rows,
                  rng_key key, uint32_t sample_base, int M, int P, int T, int V, float tau,
                  float *scratch, int nthreads) {
#pragma omp parallel num_threads(nthreads)
  {
    float *u = scratch + (size_t)omp_get_thread_num() * V;
#pragma omp for schedule(static)
    for (int i = 0; i < M; i++) {
      if (!(w[i] > 0)) continue;
      rng_key k = key;
      k.sample = sample_base + (uint32_t)(i / P);
      uint32_t t = (uint32_t)(rows[i] - (i / P) * T);
      rng_uniform(k, t * (uint32_t)V, (size_t)V, u);
      const float *x = logits + (size_t)i * V;
      float best = -INFINITY;
      int arg = 0;
      for (int v = 0; v < V; v++) {
        float s = x[v] / tau - logf(-logf(u[v]));
        if (s > best) {
          best = s;
          arg = v;
        }
      }
      out[i] = arg;
    }
  }
}

k_bce_sums k_sigmoid_bce(float *dz, const float *z, const float *y, const int32_t *mask,
                         double coef, int N) {
  double total = 0, correct = 0, replaced = 0, predicted = 0, tp = 0;
#pragma omp parallel for schedule(static) reduction(+ : total, correct, replaced, predicted, tp)
  for (int n = 0; n < N; n++) {
    if (!mask[n]) {
      dz[n] = 0.0f;
      continue;
    }
    double zn = z[n], yn = y[n];
    total += fmax(zn, 0.0) - zn * yn + log1p(exp(-fabs(zn)));
    dz[n] = (float)((1.0 / (1.0 + exp(-zn)) - yn) * coef);
    bool pred = zn > 0, rep = yn > 0;
    correct += pred == rep;
    replaced += rep;
    predicted += pred;
    tp += pred && rep;
  }
  return (k_bce_sums){total, correct, replaced, predicted, tp};
}

/* ---- Gather / scatter -------------------------------------------------------- */
void k_gather_rows(float *out, const float *x, const int32_t *rows, int M, int C) {
#pragma omp parallel for schedule(static)
  for (int i = 0; i < M; i++)
    memcpy(out + (size_t)i * C, x + (size_t)rows[i] * C, (size_t)C * sizeof *out);
}

void k_scatter_add_rows(float *dx, const float *dout, const int32_t *rows, int M, int C) {
#pragma omp parallel
  {
    int nt = omp_get_num_threads(), t = omp_get_thread_num();
    int c0 = (int)((long)C * t / nt), c1 = (int)((long)C * (t + 1) / nt);
    for (int i = 0; i < M; i++) {
      float *d = dx + (size_t)rows[i] * C;
      const float *s = dout + (size_t)i * C;
      for (int j = c0; j < c1; j++) d[j] += s[j];
    }
  }
}
