/* encoder.c: the embeddings block and the post-LN encoder layer stack that
 * BERT and ELECTRA share (Hugging Face BertEmbeddings and BertLayer),
 * forward and backward on the layer kernels. */
#include "encoder.h"

#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

dropout_desc enc_dropout(const enc_ctx *c, uint32_t layer, uint32_t site, float p) {
  dropout_desc d = {.p = c->train ? p : 0.0f, .sample_base = c->sample_base, .T = c->T};
  d.key = (rng_key){.seed = c->seed, .step = c->step, .stream = rng_stream(layer, site)};
  return d;
}

void enc_announce(const enc_ctx *c, int first, int last) {
  if (!c->ready) return;
  for (int i = last; i >= first; i--) c->ready(c->ready_ctx, i);
}

int enc_add_param(param_table *t, int64_t d0, int64_t d1, const char *fmt, ...) {
  char name[PARAM_NAME_MAX];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(name, sizeof name, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= sizeof name) {
    status_set(STATUS_ARG, "parameter name too long");
    return -1;
  }
  int64_t shape[2] = {d0, d1};
  bool matrix = d1 > 0;
  /* Weight decay and LAMB adaptation: every matrix, no bias, no LayerNorm. */
  return param_table_add(t, name, matrix ? 2 : 1, shape, matrix, matrix);
}

void enc_init_weights(const param_table *t, float *params, float std, uint64_t seed) {
  for (int i = 0; i < t->n; i++) {
    const param_info *p = &t->p[i];
    float *w = params + p->offset;
    if (p->ndim == 1) {
      bool gamma = strstr(p->name, "LayerNorm.weight") != NULL;
      for (size_t e = 0; e < p->numel; e++) w[e] = gamma ? 1.0f : 0.0f;
      continue;
    }
    /* Truncated normal at ±2 std: element e draws pairs (u1, u2) at counter
     * 2e of attempt a (key.sample) until Box-Muller gives |z| <= 2. */
#pragma omp parallel for schedule(static)
    for (size_t e = 0; e < p->numel; e++) {
      float z = 0.0f;
      for (uint32_t a = 0;; a++) {
        rng_key k = {.seed = seed, .step = 0xFFFFFFFFu, .sample = a, .stream = (uint32_t)i};
        float u[2];
        rng_uniform(k, (uint32_t)(2 * e), 2, u);
        z = sqrtf(-2.0f * logf(1.0f - u[0])) * cosf(6.28318530717958648f * u[1]);
        if (fabsf(z) <= 2.0f) break;
      }
      w[e] = z * std;
    }
  }
}

status_t enc_check_range(const char *what, const int32_t *x, size_t n, int lo, int hi, int cols) {
  for (size_t i = 0; i < n; i++)
    if (x[i] < lo || x[i] >= hi)
      return status_set(STATUS_ARG, "batch tensor '%s' has value %d at [%zu,%zu], outside [%d,%d)",
                        what, x[i], i / (size_t)cols, i % (size_t)cols, lo, hi);
  return STATUS_OK;
}

static inline float *P_(const enc_ctx *c, int idx) { return c->params + c->table->p[idx].offset; }
static inline float *G_(const enc_ctx *c, int idx) { return c->grads + c->table->p[idx].offset; }

/* ---- Embeddings --------------------------------------------------------------- */
status_t emb_add_params(emb_block *e, param_table *t, const char *prefix, int vocab, int max_pos,
                        int type_vocab) {
  const int64_t C = e->C;
  int bad = 0;
  bad |= (e->we = enc_add_param(t, vocab, C, "%s.word_embeddings.weight", prefix)) < 0;
  bad |= (e->pe = enc_add_param(t, max_pos, C, "%s.position_embeddings.weight", prefix)) < 0;
  bad |= (e->te = enc_add_param(t, type_vocab, C, "%s.token_type_embeddings.weight", prefix)) < 0;
  bad |= (e->ln_g = enc_add_param(t, C, 0, "%s.LayerNorm.weight", prefix)) < 0;
  bad |= (e->ln_b = enc_add_param(t, C, 0, "%s.LayerNorm.bias", prefix)) < 0;
  return bad ? STATUS_NOMEM : STATUS_OK;
}

void emb_carve(emb_acts *a, const emb_block *e, float *base, size_t *used, size_t N) {
  a->sum = arena_carve(base, used, N * (size_t)e->C);
  a->mean = arena_carve(base, used, N);
  a->rstd = arena_carve(base, used, N);
}

void emb_forward(const enc_ctx *c, const emb_block *e, emb_acts *a, const int32_t *ids,
                 const int32_t *seg, float *out) {
  const int C = e->C, T = c->T, N = c->B * T;
  k_embed_fwd(a->sum, P_(c, e->we), P_(c, e->pe), P_(c, e->te), ids, seg, N, T, C);
  k_add_ln_fwd(NULL, out, a->mean, a->rstd, a->sum, NULL, NULL, NULL, P_(c, e->ln_g),
               P_(c, e->ln_b), N, C, e->eps);
  dropout_desc d = enc_dropout(c, e->layer, SITE_EMB, e->dropout);
  k_dropout(out, &d, N, C);
}

void emb_backward(const enc_ctx *c, const emb_block *e, const emb_acts *a, const int32_t *ids,
                  const int32_t *seg, float *dout, float *dtmp) {
  const int C = e->C, T = c->T, N = c->B * T;
  dropout_desc d = enc_dropout(c, e->layer, SITE_EMB, e->dropout);
  k_dropout(dout, &d, N, C);
  k_add_ln_bwd(dtmp, NULL, NULL, G_(c, e->ln_g), G_(c, e->ln_b), dout, a->sum, a->mean, a->rstd,
               P_(c, e->ln_g), NULL, N, C, c->scratch, c->nthreads);
  k_embed_bwd(G_(c, e->we), G_(c, e->pe), G_(c, e->te), dtmp, ids, seg, N, T, C);
}

/* ---- Encoder layers ----------------------------------------------------------- */
status_t encoder_init(encoder *e, int H, int I, int NH, int L, act_kind act, float hidden_dropout,
                      float attn_dropout, float eps, uint32_t layer0) {
  *e = (encoder){.H = H,
                 .I = I,
                 .NH = NH,
                 .L = L,
                 .act = act,
                 .hidden_dropout = hidden_dropout,
                 .attn_dropout = attn_dropout,
                 .eps = eps,
                 .layer0 = layer0};
  e->li = calloc((size_t)L, sizeof *e->li);
  e->la = calloc((size_t)L, sizeof *e->la);
  e->hs = calloc((size_t)L + 1, sizeof *e->hs);
  if (!e->li || !e->la || !e->hs) {
    encoder_free(e);
    return status_set(STATUS_NOMEM, "out of memory creating the model");
  }
  return STATUS_OK;
}

void encoder_free(encoder *e) {
  if (!e) return;
  free(e->li);
  free(e->la);
  free(e->hs);
  e->li = NULL;
  e->la = NULL;
  e->hs = NULL;
}

status_t encoder_add_params(encoder *e, param_table *t, const char *p) {
  const int64_t H = e->H, I = e->I;
  int bad = 0;
#define ADD(dst, d0, d1, what) bad |= ((dst) = enc_add_param(t, d0, d1, "%s.%d." what, p, l)) < 0
  for (int l = 0; l < e->L; l++) {
    enc_layer_idx *x = &e->li[l];
    ADD(x->q_w, H, H, "attention.self.query.weight");
    ADD(x->k_w, H, H, "attention.self.key.weight");
    ADD(x->v_w, H, H, "attention.self.value.weight");
    ADD(x->q_b, H, 0, "attention.self.query.bias");
    ADD(x->k_b, H, 0, "attention.self.key.bias");
    ADD(x->v_b, H, 0, "attention.self.value.bias");
    ADD(x->ao_w, H, H, "attention.output.dense.weight");
    ADD(x->ao_b, H, 0, "attention.output.dense.bias");
    ADD(x->ln1_g, H, 0, "attention.output.LayerNorm.weight");
    ADD(x->ln1_b, H, 0, "attention.output.LayerNorm.bias");
    ADD(x->i_w, I, H, "intermediate.dense.weight");
    ADD(x->i_b, I, 0, "intermediate.dense.bias");
    ADD(x->o_w, H, I, "output.dense.weight");
    ADD(x->o_b, H, 0, "output.dense.bias");
    ADD(x->ln2_g, H, 0, "output.LayerNorm.weight");
    ADD(x->ln2_b, H, 0, "output.LayerNorm.bias");
  }
#undef ADD
  return bad ? STATUS_NOMEM : STATUS_OK;
}

void encoder_carve(encoder *e, float *a, size_t *u, size_t B, size_t T) {
  const size_t H = (size_t)e->H, I = (size_t)e->I, NH = (size_t)e->NH, N = B * T;
  for (int l = 0; l <= e->L; l++) e->hs[l] = arena_carve(a, u, N * H);
  for (int l = 0; l < e->L; l++) {
    enc_layer_acts *x = &e->la[l];
    x->qkv = arena_carve(a, u, N * 3 * H);
    x->probs = arena_carve(a, u, B * NH * T * T);
    x->ctx = arena_carve(a, u, N * H);
    x->sum1 = arena_carve(a, u, N * H);
    x->mean1 = arena_carve(a, u, N);
    x->rstd1 = arena_carve(a, u, N);
    x->x1 = arena_carve(a, u, N * H);
    x->pre = arena_carve(a, u, N * I);
    x->act = arena_carve(a, u, N * I);
    x->sum2 = arena_carve(a, u, N * H);
    x->mean2 = arena_carve(a, u, N);
    x->rstd2 = arena_carve(a, u, N);
  }
  e->proj = arena_carve(a, u, N * H);
  e->dx1 = arena_carve(a, u, N * H);
  e->dtmp = arena_carve(a, u, N * H);
  e->dctx = arena_carve(a, u, N * H);
  e->dqkv = arena_carve(a, u, N * 3 * H);
  e->dbig = arena_carve(a, u, N * I);
}

static void layer_fwd(encoder *e, const enc_ctx *c, int l) {
  const int H = e->H, I = e->I, NH = e->NH, T = c->T, N = c->B * T;
  const uint32_t g = e->layer0 + (uint32_t)l;
  const enc_layer_idx *w = &e->li[l];
  enc_layer_acts *a = &e->la[l];
  const float *x = e->hs[l];
  cx_linear_fwd(c->cx, a->qkv, x, P_(c, w->q_w), N, H, 3 * H);
  k_add_bias(a->qkv, P_(c, w->q_b), N, 3 * H);
  dropout_desc dp = enc_dropout(c, g, SITE_ATTN_PROBS, e->attn_dropout);
  cx_attention_fwd(c->cx, a->ctx, a->probs, a->qkv, c->input_mask, c->B, T, NH, H / NH, &dp,
                   c->scratch, c->nthreads);
  cx_linear_fwd(c->cx, e->proj, a->ctx, P_(c, w->ao_w), N, H, H);
  dropout_desc d1 = enc_dropout(c, g, SITE_ATTN_OUT, e->hidden_dropout);
  k_add_ln_fwd(a->sum1, a->x1, a->mean1, a->rstd1, e->proj, P_(c, w->ao_b), &d1, x, P_(c, w->ln1_g),
               P_(c, w->ln1_b), N, H, e->eps);
  cx_linear_fwd(c->cx, a->pre, a->x1, P_(c, w->i_w), N, H, I);
  k_bias_act_fwd(a->pre, a->act, P_(c, w->i_b), N, I, e->act);
  cx_linear_fwd(c->cx, e->proj, a->act, P_(c, w->o_w), N, I, H);
  dropout_desc d2 = enc_dropout(c, g, SITE_FFN_OUT, e->hidden_dropout);
  k_add_ln_fwd(a->sum2, e->hs[l + 1], a->mean2, a->rstd2, e->proj, P_(c, w->o_b), &d2, a->x1,
               P_(c, w->ln2_g), P_(c, w->ln2_b), N, H, e->eps);
}

void encoder_forward(encoder *e, const enc_ctx *c) {
  for (int l = 0; l < e->L; l++) layer_fwd(e, c, l);
}

/* On entry dh holds the gradient of layer l's output; on exit that of its
 * input. */
static void layer_bwd(encoder *e, const enc_ctx *c, int l, float *dh) {
  const int H = e->H, I = e->I, NH = e->NH, T = c->T, N = c->B * T;
  const uint32_t g = e->layer0 + (uint32_t)l;
  const enc_layer_idx *w = &e->li[l];
  const enc_layer_acts *a = &e->la[l];
  dropout_desc d2 = enc_dropout(c, g, SITE_FFN_OUT, e->hidden_dropout);
  k_add_ln_bwd(e->dtmp, e->dx1, G_(c, w->o_b), G_(c, w->ln2_g), G_(c, w->ln2_b), dh, a->sum2,
               a->mean2, a->rstd2, P_(c, w->ln2_g), &d2, N, H, c->scratch, c->nthreads);
  cx_linear_bwd(c->cx, e->dbig, false, G_(c, w->o_w), NULL, e->dtmp, a->act, P_(c, w->o_w), c->ones,
                N, I, H);
  k_act_bwd(e->dbig, e->dbig, a->pre, N, I, e->act);
  cx_linear_bwd(c->cx, e->dx1, true, G_(c, w->i_w), G_(c, w->i_b), e->dbig, a->x1, P_(c, w->i_w),
                c->ones, N, H, I);
  dropout_desc d1 = enc_dropout(c, g, SITE_ATTN_OUT, e->hidden_dropout);
  k_add_ln_bwd(e->dtmp, dh, G_(c, w->ao_b), G_(c, w->ln1_g), G_(c, w->ln1_b), e->dx1, a->sum1,
               a->mean1, a->rstd1, P_(c, w->ln1_g), &d1, N, H, c->scratch, c->nthreads);
  cx_linear_bwd(c->cx, e->dctx, false, G_(c, w->ao_w), NULL, e->dtmp, a->ctx, P_(c, w->ao_w),
                c->ones, N, H, H);
  dropout_desc dp = enc_dropout(c, g, SITE_ATTN_PROBS, e->attn_dropout);
  cx_attention_bwd(c->cx, e->dqkv, e->dctx, a->probs, a->qkv, c->input_mask, c->B, T, NH, H / NH,
                   &dp, c->scratch, c->nthreads);
  cx_linear_bwd(c->cx, dh, true, G_(c, w->q_w), G_(c, w->q_b), e->dqkv, e->hs[l], P_(c, w->q_w),
                c->ones, N, H, 3 * H);
  enc_announce(c, w->q_w, w->ln2_b);
}

void encoder_backward(encoder *e, const enc_ctx *c, float *dh) {
  for (int l = e->L - 1; l >= 0; l--) layer_bwd(e, c, l, dh);
}

status_t enc_net_init(enc_net *n, int E, int H, int I, int NH, int L, act_kind act,
                      float hidden_dropout, float attn_dropout, float eps, uint32_t group) {
  n->emb = (emb_block){.C = E, .eps = eps, .dropout = hidden_dropout, .layer = group};
  n->proj_w = n->proj_b = -1;
  return encoder_init(&n->enc, H, I, NH, L, act, hidden_dropout, attn_dropout, eps, group + 1);
}

void enc_net_free(enc_net *n) {
  if (n) encoder_free(&n->enc);
}

void enc_net_carve(enc_net *n, float *a, size_t *u, size_t B, size_t T) {
  const size_t N = B * T, E = (size_t)n->emb.C, H = (size_t)n->enc.H;
  emb_carve(&n->ea, &n->emb, a, u, N);
  encoder_carve(&n->enc, a, u, B, T);
  n->emb_out = n->proj_w >= 0 ? arena_carve(a, u, N * E) : n->enc.hs[0];
  n->dh = arena_carve(a, u, N * H);
  n->de = n->proj_w >= 0 ? arena_carve(a, u, N * E) : n->dh;
}

void enc_net_forward(const enc_ctx *c, enc_net *n, const int32_t *ids, const int32_t *seg) {
  const int N = c->B * c->T, E = n->emb.C, H = n->enc.H;
  emb_forward(c, &n->emb, &n->ea, ids, seg, n->emb_out);
  if (n->proj_w >= 0) {
    cx_linear_fwd(c->cx, n->enc.hs[0], n->emb_out, P_(c, n->proj_w), N, E, H);
    k_add_bias(n->enc.hs[0], P_(c, n->proj_b), N, H);
  }
  encoder_forward(&n->enc, c);
}

void enc_net_backward(const enc_ctx *c, enc_net *n, const int32_t *ids, const int32_t *seg,
                      float *dtmp) {
  const int N = c->B * c->T, E = n->emb.C, H = n->enc.H;
  encoder_backward(&n->enc, c, n->dh);
  if (n->proj_w >= 0) {
    cx_linear_bwd(c->cx, n->de, false, G_(c, n->proj_w), G_(c, n->proj_b), n->dh, n->emb_out,
                  P_(c, n->proj_w), c->ones, N, E, H);
    enc_announce(c, n->proj_w, n->proj_b);
  }
  emb_backward(c, &n->emb, &n->ea, ids, seg, n->de, dtmp);
}
