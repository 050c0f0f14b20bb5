/* kernels.h: the layer kernels of the BERT model, forward and backward, on
 * row-major fp32 arrays. Matrix products go to cblas_sgemm; the memory-bound
 * steps are fused per row. Every kernel runs its loop with OpenMP over rows
 * (or columns, where rows would race) and allocates nothing; per-thread
 * scratch is passed in. Private to trainer/ (and its tests). */
#ifndef MLMPI_KERNELS_H
#define MLMPI_KERNELS_H

#include "trainer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Dropout described by its key, so backward regenerates the mask instead of
 * storing it. Row n of an [N,C] array is token (n % T) of sequence
 * sample_base + n / T; element j of that row is number (n % T)*C + j of the
 * sequence's stream. p == 0 (or a NULL descriptor) means no dropout. */
typedef struct {
  float p;
  rng_key key; /* key.sample is overwritten per row */
  uint32_t sample_base;
  int T;
} dropout_desc;

/* Whether d drops anything (NULL or p == 0: no dropout). */
static inline bool k_dropout_on(const dropout_desc *d) { return d && d->p > 0.0f; }

/* y[N,out] = x[N,in] · W[out,in]^T (no bias: callers fuse it). */
void k_linear_fwd(float *y, const float *x, const float *W, int N, int in, int out);
/* dW[out,in] += dy^T x; db[out] += Σ_rows dy (db may be NULL);
 * dx[N,in] = dy W, or += when dx_acc (dx may be NULL). `ones` holds >= N
 * ones (for the bias sum as a matrix-vector product). */
void k_linear_bwd(float *dx, bool dx_acc, float *dW, float *db, const float *dy, const float *x,
                  const float *W, const float *ones, int N, int in, int out);

/* y[N,out] = x[N,in] · W[in,out]: W in Hugging Face Conv1D's layout (GPT-2),
 * the transpose of k_linear_fwd's; no bias. */
void k_linear_io_fwd(float *y, const float *x, const float *W, int N, int in, int out);
/* db[C] += Σ_rows dy[N,C] (a bias gradient); `ones` holds >= N ones. */
void k_bias_grad(float *db, const float *dy, const float *ones, int N, int C);

/* Row-wise y[n] += b (a bias without activation). */
void k_add_bias(float *y, const float *b, int N, int C);
/* pre[N,C] += b; out = tanh(pre) (out may be pre). */
void k_bias_tanh_fwd(float *pre, float *out, const float *b, int N, int C);
/* d[i] *= 1 - y[i]^2 for i < n: through tanh, given its output y. */
void k_tanh_bwd(float *d, const float *y, int n);

float k_act(act_kind a, float x);
float k_act_grad(act_kind a, float x); /* d act / dx */
/* pre[N,C] += b (kept for backward); act = activation(pre). */
void k_bias_act_fwd(float *pre, float *act, const float *b, int N, int C, act_kind a);
/* dpre = dact * act'(pre); may run in place (dpre == dact). */
void k_act_bwd(float *dpre, const float *dact, const float *pre, int N, int C, act_kind a);

/* Fused "dropout(x + bias) + resid, then LayerNorm" per row:
 *   s = drop(x + bias) + resid   (bias, drop, resid each optional)
 *   y = (s - mean) * rstd * gamma + beta,  rstd = 1/sqrt(var + eps)
 * matches torch.nn.LayerNorm (biased variance). s is stored in s_out. With
 * s_out NULL the LayerNorm is of x itself and bias, drop and resid must be
 * NULL. */
void k_add_ln_fwd(float *s_out, float *y, float *mean, float *rstd, const float *x,
                  const float *bias, const dropout_desc *drop, const float *resid,
                  const float *gamma, const float *beta, int N, int C, float eps);
/* Backward of k_add_ln_fwd: from dy computes ds (the gradient of s);
 * dresid = ds and dx = drop'(ds) are written where given; dgamma and dbeta
 * are added to, and dbias (which needs dx) is added Σ dx. `scratch` holds
 * nthreads * 3C floats. */
void k_add_ln_bwd(float *dx, float *dresid, float *dbias, float *dgamma, float *dbeta,
                  const float *dy, const float *s, const float *mean, const float *rstd,
                  const float *gamma, const dropout_desc *drop, int N, int C, float *scratch,
                  int nthreads);

/* Dropout in place on [N,C] (forward and backward are the same operation:
 * multiply by mask / (1 - p)). */
void k_dropout(float *x, const dropout_desc *drop, int N, int C);

/* Attention masks [B,T] over keys: bit K_ATTN_KEY marks a real key (without
 * it, padding: the score gets -10000); K_ATTN_CAUSAL, set on every key of a
 * sequence or on none (it is read from key 0), makes the attention causal:
 * key j is seen only by queries i >= j (its probability is exactly 0 for
 * earlier ones; GPT-2). BERT's 0/1 masks have no causal bit. */
enum { K_ATTN_KEY = 1, K_ATTN_CAUSAL = 2 };

/* Multi-head self-attention core for one batch, on qkv [B*T, 3H] laid out
 * as [q | k | v] per row:
 *   probs[b,h] = softmax(q k^T / sqrt(D) + (1 - mask) * -10000)  (B,NH,T,T)
 *   (mask as above: with K_ATTN_CAUSAL, key j > query i gets probability 0)
 *   ctx[b*T+t, h*D..] = dropout(probs) v
 * The dropout mask of probability (i, j) of head h in sequence b is element
 * h*T*T + i*T + j of sample drop->sample_base + b (drop->T is not used).
 * scratch: nthreads * T*T floats. */
void k_attention_fwd(float *ctx, float *probs, const float *qkv, const int32_t *input_mask, int B,
                     int T, int NH, int D, const dropout_desc *drop, float *scratch, int nthreads);
/* dqkv [B*T,3H] (written) from dctx [B*T,H]; scratch: nthreads * 2*T*T. */
void k_attention_bwd(float *dqkv, const float *dctx, const float *probs, const float *qkv,
                     const int32_t *input_mask, int B, int T, int NH, int D,
                     const dropout_desc *drop, float *scratch, int nthreads);

/* The per-head steps of attention around its products, for backends that
 * run the products themselves. k_attn_softmax: one head's scores [T,T] in
 * place, + (1 - mask) * -10000 (and the causal bit, as above) and softmax
 * per row. k_attn_dropout: out =
 * dropout(P) of head h in sequence b as k_attention_fwd draws it; false
 * (out untouched) without dropout. k_attn_softmax_bwd: dP, the gradient of
 * dropout(P) (Pd, as k_attn_dropout wrote it; any pointer without
 * dropout), in place into the gradient of the scores. */
void k_attn_softmax(float *P, const int32_t *mask, int T);
bool k_attn_dropout(float *out, const float *P, const dropout_desc *d, int b, int h, int T);
void k_attn_softmax_bwd(float *dP, const float *P, const float *Pd, const dropout_desc *d, int T);

/* Adds bias (if not NULL) to logits [M,V] in place, then softmax
 * cross-entropy against ids with per-row weights w (NULL: all 1): returns
 * Σ w·ce (double); dlogits = (softmax - onehot) * w * coef. Rows with w == 0
 * get zero gradient. correct accumulates Σ w where argmax == id. */
double k_softmax_xent(float *logits, float *dlogits, const float *bias, const int32_t *ids,
                      const float *w, float coef, int M, int V, double *correct);

/* Embedding sum: out[n] = we[ids[n]] + pe[n % T] + te[seg[n]], rows of C. */
void k_embed_fwd(float *out, const float *we, const float *pe, const float *te, const int32_t *ids,
                 const int32_t *seg, int N, int T, int C);
/* Its backward: dout[n] is added to rows ids[n], n % T and seg[n] of the
 * three gradients; columns split across threads so repeated ids never race. */
void k_embed_bwd(float *gw, float *gp, float *gt, const float *dout, const int32_t *ids,
                 const int32_t *seg, int N, int T, int C);

/* Gumbel-max draws from softmax(logits / tau) [M,V]: for each row i with
 * w[i] > 0, out[i] = the first v maximising logits[i,v] / tau - log(-log
 * u_v), u the uniforms of key with key.sample = sample_base + i / P at
 * offset t * V, t = rows[i] - (i / P) * T the row's position in its
 * sequence; other rows are left alone. scratch: nthreads * V floats. */
void k_gumbel_max(int32_t *out, const float *logits, const float *w, const int32_t *rows,
                  rng_key key, uint32_t sample_base, int M, int P, int T, int V, float tau,
                  float *scratch, int nthreads);

/* Sigmoid cross-entropy of logits z against labels y in {0,1} over the rows
 * with mask[n] (ELECTRA's discriminator): sums of the loss (stable form,
 * double), of correct and predicted/actual positives; dz = (sigmoid(z) - y)
 * * coef there and 0 elsewhere. */
typedef struct {
  double loss, correct, replaced, predicted, true_positive;
} k_bce_sums;
k_bce_sums k_sigmoid_bce(float *dz, const float *z, const float *y, const int32_t *mask,
                         double coef, int N);

/* Gathers rows: out[i] = x[rows[i]] for i < M, rows are indices into x. */
void k_gather_rows(float *out, const float *x, const int32_t *rows, int M, int C);
/* Scatter-add: dx[rows[i]] += dout[i]; columns split across threads so
 * repeated rows never race. */
void k_scatter_add_rows(float *dx, const float *dout, const int32_t *rows, int M, int C);

#ifdef __cplusplus
}
#endif
#endif
