/* bert.c: BertForPreTraining / BertForMaskedLM as Hugging Face transformers
 * defines them (post-LN encoder, tied MLM decoder, optional NSP head):
 * parameter table, initialisation, forward with the loss, backward. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

enum { SITE_EMB = 0, SITE_ATTN_PROBS = 1, SITE_ATTN_OUT = 2, SITE_FFN_OUT = 3 };

/* Indices into the parameter table. q, k, v weights (and biases) are added
 * one after the other, so they form one [3H,H] matrix ([3H] vector). */
typedef struct {
  int q_w, k_w, v_w, q_b, k_b, v_b;
  int ao_w, ao_b, ln1_g, ln1_b;
  int i_w, i_b, o_w, o_b, ln2_g, ln2_b;
} layer_idx;

typedef struct {
  float *qkv;                  /* (N, 3H) */
  float *probs;                /* (B, NH, T, T) softmax output, before dropout */
  float *ctx;                  /* (N, H) */
  float *sum1, *mean1, *rstd1; /* attention residual sum (N, H), LN stats (N) */
  float *x1;                   /* (N, H) attention block output */
  float *pre, *act;            /* (N, I) intermediate before/after activation */
  float *sum2, *mean2, *rstd2; /* (N, H), (N) */
} layer_acts;

struct bert_model {
  bert_config cfg;
  int maxB, T, P, nthreads;
  param_table table;
  float *params, *grads;
  int we, pe, te, eln_g, eln_b;
  layer_idx *li;
  int pool_w, pool_b, sr_w, sr_b;
  int tr_w, tr_b, tln_g, tln_b, dec_b;
  bert_grad_ready_fn ready;
  void *ready_ctx;

  float *arena;
  size_t arena_floats;
  /* Activations. hs[l] is layer l's input, hs[L] the encoder output. */
  float *emb_sum, *emb_mean, *emb_rstd; /* (N, H), (N), (N) */
  float **hs;                           /* L+1 of (N, H) */
  layer_acts *la;
  float *proj;                             /* (N, H) a projection before bias/LN */
  float *G, *t1, *t2, *t3, *tmean, *trstd; /* MLM head rows (M, H), (M) */
  float *logits, *dlogits;                 /* (M, V) */
  float *p0, *pooled, *nsp_logits, *dnsp;  /* (B, H), (B, H), (B, 2), (B, 2) */
  /* Backward buffers. */
  float *dh, *dx1, *dtmp, *dctx, *dqkv, *dbig; /* (N,H) x4, (N,3H), (N,I) */
  float *dG, *dt_a, *dt_b;                     /* (M, H) */
  float *dp0, *dpooled;                        /* (B, H) */
  float *ones;                                 /* max(N, M) */
  float *scratch;                              /* per-thread */
  /* The last forward's batch (copied) and run. */
  int32_t *ids, *mask, *seg, *gidx, *mlm_ids, *nsp_lab, *cls_rows; /* gidx: (M) rows of hs */
  float *mlm_w;
  int B, Tcur, Pcur;
  bert_run run;
  bool have_forward;
};

/* ---- Parameter table ---------------------------------------------------------- */
static int add_param(param_table *t, const char *name, int64_t d0, int64_t d1) {
  int64_t shape[2] = {d0, d1};
  bool matrix = d1 > 0;
  /* Weight decay and LAMB adaptation: every matrix, no bias, no LayerNorm. */
  return param_table_add(t, name, matrix ? 2 : 1, shape, matrix, matrix);
}

static status_t build_table(bert_model *m) {
  const bert_config *c = &m->cfg;
  const int64_t H = c->hidden_size, I = c->intermediate_size, V = c->vocab_size;
  param_table *t = &m->table;
  char n[PARAM_NAME_MAX];
  int bad = 0;
#define ADD(dst, d0, d1, ...)                     \
  do {                                            \
    snprintf(n, sizeof n, __VA_ARGS__);           \
    bad |= ((dst) = add_param(t, n, d0, d1)) < 0; \
  } while (0)
  ADD(m->we, V, H, "bert.embeddings.word_embeddings.weight");
  ADD(m->pe, c->max_position_embeddings, H, "bert.embeddings.position_embeddings.weight");
  ADD(m->te, c->type_vocab_size, H, "bert.embeddings.token_type_embeddings.weight");
  ADD(m->eln_g, H, 0, "bert.embeddings.LayerNorm.weight");
  ADD(m->eln_b, H, 0, "bert.embeddings.LayerNorm.bias");
  for (int l = 0; l < c->num_hidden_layers; l++) {
    layer_idx *x = &m->li[l];
    const char *p = "bert.encoder.layer";
    ADD(x->q_w, H, H, "%s.%d.attention.self.query.weight", p, l);
    ADD(x->k_w, H, H, "%s.%d.attention.self.key.weight", p, l);
    ADD(x->v_w, H, H, "%s.%d.attention.self.value.weight", p, l);
    ADD(x->q_b, H, 0, "%s.%d.attention.self.query.bias", p, l);
    ADD(x->k_b, H, 0, "%s.%d.attention.self.key.bias", p, l);
    ADD(x->v_b, H, 0, "%s.%d.attention.self.value.bias", p, l);
    ADD(x->ao_w, H, H, "%s.%d.attention.output.dense.weight", p, l);
    ADD(x->ao_b, H, 0, "%s.%d.attention.output.dense.bias", p, l);
    ADD(x->ln1_g, H, 0, "%s.%d.attention.output.LayerNorm.weight", p, l);
    ADD(x->ln1_b, H, 0, "%s.%d.attention.output.LayerNorm.bias", p, l);
    ADD(x->i_w, I, H, "%s.%d.intermediate.dense.weight", p, l);
    ADD(x->i_b, I, 0, "%s.%d.intermediate.dense.bias", p, l);
    ADD(x->o_w, H, I, "%s.%d.output.dense.weight", p, l);
    ADD(x->o_b, H, 0, "%s.%d.output.dense.bias", p, l);
    ADD(x->ln2_g, H, 0, "%s.%d.output.LayerNorm.weight", p, l);
    ADD(x->ln2_b, H, 0, "%s.%d.output.LayerNorm.bias", p, l);
  }
  m->pool_w = m->pool_b = m->sr_w = m->sr_b = -1;
  if (c->nsp) {
    ADD(m->pool_w, H, H, "bert.pooler.dense.weight");
    ADD(m->pool_b, H, 0, "bert.pooler.dense.bias");
  }
  ADD(m->tr_w, H, H, "cls.predictions.transform.dense.weight");
  ADD(m->tr_b, H, 0, "cls.predictions.transform.dense.bias");
  ADD(m->tln_g, H, 0, "cls.predictions.transform.LayerNorm.weight");
  ADD(m->tln_b, H, 0, "cls.predictions.transform.LayerNorm.bias");
  ADD(m->dec_b, V, 0, "cls.predictions.bias");
  if (c->nsp) {
    ADD(m->sr_w, 2, H, "cls.seq_relationship.weight");
    ADD(m->sr_b, 2, 0, "cls.seq_relationship.bias");
  }
#undef ADD
  return bad ? STATUS_NOMEM : STATUS_OK;
}

/* ---- Arena -------------------------------------------------------------------
 * carve() hands out 16-float aligned pieces; run once with base NULL to
 * count, once more to assign. */
static float *carve(float *base, size_t *used, size_t n) {
  float *p = base ? base + *used : NULL;
  *used += (n + 15) & ~(size_t)15;
  return p;
}

static size_t layout_arena(bert_model *m, float *a) {
  const bert_config *c = &m->cfg;
  const size_t H = (size_t)c->hidden_size, I = (size_t)c->intermediate_size,
               V = (size_t)c->vocab_size, L = (size_t)c->num_hidden_layers;
  const size_t B = (size_t)m->maxB, T = (size_t)m->T, N = B * T, M = B * (size_t)m->P,
               NH = (size_t)c->num_attention_heads, nt = (size_t)m->nthreads;
  size_t u = 0;
  m->emb_sum = carve(a, &u, N * H);
  m->emb_mean = carve(a, &u, N);
  m->emb_rstd = carve(a, &u, N);
  for (size_t l = 0; l <= L; l++) m->hs[l] = carve(a, &u, N * H);
  for (size_t l = 0; l < L; l++) {
    layer_acts *x = &m->la[l];
    x->qkv = carve(a, &u, N * 3 * H);
    x->probs = carve(a, &u, B * NH * T * T);
    x->ctx = carve(a, &u, N * H);
    x->sum1 = carve(a, &u, N * H);
    x->mean1 = carve(a, &u, N);
    x->rstd1 = carve(a, &u, N);
    x->x1 = carve(a, &u, N * H);
    x->pre = carve(a, &u, N * I);
    x->act = carve(a, &u, N * I);
    x->sum2 = carve(a, &u, N * H);
    x->mean2 = carve(a, &u, N);
    x->rstd2 = carve(a, &u, N);
  }
  m->proj = carve(a, &u, N * H);
  m->G = carve(a, &u, M * H);
  m->t1 = carve(a, &u, M * H);
  m->t2 = carve(a, &u, M * H);
  m->t3 = carve(a, &u, M * H);
  m->tmean = carve(a, &u, M);
  m->trstd = carve(a, &u, M);
  m->logits = carve(a, &u, M * V);
  m->dlogits = carve(a, &u, M * V);
  m->p0 = carve(a, &u, B * H);
  m->pooled = carve(a, &u, B * H);
  m->nsp_logits = carve(a, &u, B * 2);
  m->dnsp = carve(a, &u, B * 2);
  m->dh = carve(a, &u, N * H);
  m->dx1 = carve(a, &u, N * H);
  m->dtmp = carve(a, &u, N * H);
  m->dctx = carve(a, &u, N * H);
  m->dqkv = carve(a, &u, N * 3 * H);
  m->dbig = carve(a, &u, N * I);
  m->dG = carve(a, &u, M * H);
  m->dt_a = carve(a, &u, M * H);
  m->dt_b = carve(a, &u, M * H);
  m->dp0 = carve(a, &u, B * H);
  m->dpooled = carve(a, &u, B * H);
  m->ones = carve(a, &u, N > M ? N : M);
  size_t per_thread = 2 * T * T > 3 * H ? 2 * T * T : 3 * H;
  m->scratch = carve(a, &u, nt * per_thread);
  return u;
}

static status_t alloc_batch_copy(bert_model *m) {
  size_t N = (size_t)m->maxB * m->T, M = (size_t)m->maxB * m->P, B = (size_t)m->maxB;
  m->ids = mem_alloc(N * sizeof(int32_t), "batch input_ids");
  m->mask = mem_alloc(N * sizeof(int32_t), "batch input_mask");
  m->seg = mem_alloc(N * sizeof(int32_t), "batch segment_ids");
  m->gidx = mem_alloc(M * sizeof(int32_t), "batch masked rows");
  m->mlm_ids = mem_alloc(M * sizeof(int32_t), "batch masked_lm_ids");
  m->mlm_w = mem_alloc(M * sizeof(float), "batch masked_lm_weights");
  m->nsp_lab = mem_alloc(B * sizeof(int32_t), "batch next_sentence_labels");
  m->cls_rows = mem_alloc(B * sizeof(int32_t), "batch first-token rows");
  if (!m->ids || !m->mask || !m->seg || !m->gidx || !m->mlm_ids || !m->mlm_w || !m->nsp_lab ||
      !m->cls_rows)
    return STATUS_NOMEM;
  return STATUS_OK;
}

status_t bert_init(bert_model **out, const bert_config *cfg, int max_batch, int seq_len,
                   int max_pred, int nthreads) {
  *out = NULL;
  status_t st = bert_config_check(cfg);
  if (st != STATUS_OK) return st;
  if (max_batch < 1 || seq_len < 1 || max_pred < 1 || seq_len > cfg->max_position_embeddings)
    return status_set(STATUS_ARG,
                      "batch shape %d x %d with %d masked slots does not fit the model "
                      "(max_position_embeddings %d)",
                      max_batch, seq_len, max_pred, cfg->max_position_embeddings);
  bert_model *m = calloc(1, sizeof *m);
  if (!m) return status_set(STATUS_NOMEM, "out of memory creating the model");
  m->cfg = *cfg;
  m->maxB = max_batch;
  m->T = seq_len;
  m->P = max_pred;
  m->nthreads = nthreads > 0 ? nthreads : omp_get_max_threads();
  param_table_init(&m->table);
  int L = cfg->num_hidden_layers;
  m->li = calloc((size_t)L, sizeof *m->li);
  m->la = calloc((size_t)L, sizeof *m->la);
  m->hs = calloc((size_t)L + 1, sizeof *m->hs);
  if (!m->li || !m->la || !m->hs) {
    st = status_set(STATUS_NOMEM, "out of memory creating the model");
    goto fail;
  }
  if ((st = build_table(m)) != STATUS_OK) goto fail;
  m->params = mem_calloc(m->table.total * sizeof(float), "parameters");
  m->grads = mem_calloc(m->table.total * sizeof(float), "gradients");
  if (!m->params || !m->grads) {
    st = STATUS_NOMEM;
    goto fail;
  }
  m->arena_floats = layout_arena(m, NULL);
  m->arena = mem_alloc(m->arena_floats * sizeof(float), "the activation arena");
  if (!m->arena) {
    st = STATUS_NOMEM;
    goto fail;
  }
  layout_arena(m, m->arena);
  size_t nones = (size_t)max_batch * (size_t)(seq_len > max_pred ? seq_len : max_pred);
  for (size_t i = 0; i < nones; i++) m->ones[i] = 1.0f;
  if ((st = alloc_batch_copy(m)) != STATUS_OK) goto fail;
  *out = m;
  return STATUS_OK;
fail:
  bert_free(m);
  return st;
}

void bert_free(bert_model *m) {
  if (!m) return;
  param_table_free(&m->table);
  mem_free(m->params);
  mem_free(m->grads);
  mem_free(m->arena);
  mem_free(m->ids);
  mem_free(m->mask);
  mem_free(m->seg);
  mem_free(m->gidx);
  mem_free(m->mlm_ids);
  mem_free(m->mlm_w);
  mem_free(m->nsp_lab);
  mem_free(m->cls_rows);
  free(m->li);
  free(m->la);
  free(m->hs);
  free(m);
}

const bert_config *bert_get_config(const bert_model *m) { return &m->cfg; }
const param_table *bert_params(const bert_model *m) { return &m->table; }
float *bert_param_buf(bert_model *m) { return m->params; }
float *bert_grad_buf(bert_model *m) { return m->grads; }
size_t bert_arena_bytes(const bert_model *m) { return m->arena_floats * sizeof(float); }
const float *bert_mlm_logits(const bert_model *m) { return m->logits; }
const float *bert_nsp_logits(const bert_model *m) { return m->cfg.nsp ? m->nsp_logits : NULL; }

void bert_set_grad_ready(bert_model *m, bert_grad_ready_fn fn, void *ctx) {
  m->ready = fn;
  m->ready_ctx = ctx;
}

void bert_zero_grad(bert_model *m) { memset(m->grads, 0, m->table.total * sizeof(float)); }

/* ---- Initialisation ----------------------------------------------------------- */
void bert_init_weights(bert_model *m, uint64_t seed) {
  const float std = m->cfg.initializer_range;
  for (int i = 0; i < m->table.n; i++) {
    const param_info *p = &m->table.p[i];
    float *w = m->params + p->offset;
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

/* ---- Batch checks ------------------------------------------------------------- */
static status_t check_range(const char *what, const int32_t *x, size_t n, int lo, int hi,
                            int cols) {
  for (size_t i = 0; i < n; i++)
    if (x[i] < lo || x[i] >= hi)
      return status_set(STATUS_ARG, "batch tensor '%s' has value %d at [%zu,%zu], outside [%d,%d)",
                        what, x[i], i / (size_t)cols, i % (size_t)cols, lo, hi);
  return STATUS_OK;
}

status_t bert_check_batch(const bert_model *m, const bert_batch *b) {
  const bert_config *c = &m->cfg;
  if (b->B < 1 || b->B > m->maxB || b->T < 1 || b->T > m->T || b->P < 1 || b->P > m->P)
    return status_set(STATUS_ARG,
                      "batch shape B=%d T=%d P=%d does not fit the model's B<=%d T<=%d P<=%d", b->B,
                      b->T, b->P, m->maxB, m->T, m->P);
  size_t N = (size_t)b->B * b->T, M = (size_t)b->B * b->P;
  status_t st;
  if ((st = check_range("input_ids", b->input_ids, N, 0, c->vocab_size, b->T)) ||
      (st = check_range("input_mask", b->input_mask, N, 0, 2, b->T)) ||
      (st = check_range("segment_ids", b->segment_ids, N, 0, c->type_vocab_size, b->T)) ||
      (st = check_range("masked_lm_positions", b->masked_lm_positions, M, 0, b->T, b->P)) ||
      (st = check_range("masked_lm_ids", b->masked_lm_ids, M, 0, c->vocab_size, b->P)))
    return st;
  for (size_t i = 0; i < M; i++)
    if (!isfinite(b->masked_lm_weights[i]) || b->masked_lm_weights[i] < 0)
      return status_set(STATUS_ARG, "batch tensor 'masked_lm_weights' has a bad value at [%zu,%zu]",
                        i / (size_t)b->P, i % (size_t)b->P);
  if (c->nsp && !b->next_sentence_labels)
    return status_set(STATUS_ARG,
                      "batch tensor 'next_sentence_labels' is missing (the model has "
                      "an NSP head)");
  if (c->nsp)
    return check_range("next_sentence_labels", b->next_sentence_labels, (size_t)b->B, 0, 2, 1);
  return STATUS_OK;
}

/* ---- Forward ------------------------------------------------------------------ */
static dropout_desc drop_for(const bert_model *m, uint32_t layer, uint32_t site, float p) {
  dropout_desc d = {.p = m->run.train ? p : 0.0f, .sample_base = m->run.sample_base, .T = m->Tcur};
  d.key = (rng_key){.seed = m->run.seed, .step = m->run.step, .stream = rng_stream(layer, site)};
  return d;
}

static float *P_(const bert_model *m, int idx) { return m->params + m->table.p[idx].offset; }
static float *G_(const bert_model *m, int idx) { return m->grads + m->table.p[idx].offset; }

static void copy_batch(bert_model *m, const bert_batch *b) {
  size_t N = (size_t)b->B * b->T, M = (size_t)b->B * b->P;
  m->B = b->B;
  m->Tcur = b->T;
  m->Pcur = b->P;
  memcpy(m->ids, b->input_ids, N * sizeof(int32_t));
  memcpy(m->mask, b->input_mask, N * sizeof(int32_t));
  memcpy(m->seg, b->segment_ids, N * sizeof(int32_t));
  memcpy(m->mlm_ids, b->masked_lm_ids, M * sizeof(int32_t));
  memcpy(m->mlm_w, b->masked_lm_weights, M * sizeof(float));
  for (size_t i = 0; i < M; i++)
    m->gidx[i] = (int32_t)((i / (size_t)b->P) * (size_t)b->T) + b->masked_lm_positions[i];
  for (int i = 0; i < b->B; i++) {
    m->cls_rows[i] = i * b->T;
    m->nsp_lab[i] = m->cfg.nsp ? b->next_sentence_labels[i] : 0;
  }
}

static void embed_fwd(bert_model *m) {
  const int H = m->cfg.hidden_size, T = m->Tcur, N = m->B * T;
  const float *we = P_(m, m->we), *pe = P_(m, m->pe), *te = P_(m, m->te);
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    const float *a = we + (size_t)m->ids[n] * H, *b = pe + (size_t)(n % T) * H,
                *c = te + (size_t)m->seg[n] * H;
    float *o = m->emb_sum + (size_t)n * H;
#pragma omp simd
    for (int j = 0; j < H; j++) o[j] = a[j] + b[j] + c[j];
  }
  k_add_ln_fwd(NULL, m->hs[0], m->emb_mean, m->emb_rstd, m->emb_sum, NULL, NULL, NULL,
               P_(m, m->eln_g), P_(m, m->eln_b), N, H, m->cfg.layer_norm_eps);
  dropout_desc d = drop_for(m, 0, SITE_EMB, m->cfg.hidden_dropout_prob);
  k_dropout(m->hs[0], &d, N, H);
}

static void layer_fwd(bert_model *m, int l) {
  const bert_config *c = &m->cfg;
  const int H = c->hidden_size, I = c->intermediate_size, NH = c->num_attention_heads;
  const int T = m->Tcur, N = m->B * T;
  const layer_idx *w = &m->li[l];
  layer_acts *a = &m->la[l];
  const float *x = m->hs[l], *bqkv = P_(m, w->q_b);
  k_linear_fwd(a->qkv, x, P_(m, w->q_w), N, H, 3 * H);
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    float *r = a->qkv + (size_t)n * 3 * H;
#pragma omp simd
    for (int j = 0; j < 3 * H; j++) r[j] += bqkv[j];
  }
  dropout_desc dp = drop_for(m, (uint32_t)l + 1, SITE_ATTN_PROBS, c->attention_probs_dropout_prob);
  k_attention_fwd(a->ctx, a->probs, a->qkv, m->mask, m->B, T, NH, H / NH, &dp, m->scratch,
                  m->nthreads);
  k_linear_fwd(m->proj, a->ctx, P_(m, w->ao_w), N, H, H);
  dropout_desc d1 = drop_for(m, (uint32_t)l + 1, SITE_ATTN_OUT, c->hidden_dropout_prob);
  k_add_ln_fwd(a->sum1, a->x1, a->mean1, a->rstd1, m->proj, P_(m, w->ao_b), &d1, x, P_(m, w->ln1_g),
               P_(m, w->ln1_b), N, H, c->layer_norm_eps);
  k_linear_fwd(a->pre, a->x1, P_(m, w->i_w), N, H, I);
  k_bias_act_fwd(a->pre, a->act, P_(m, w->i_b), N, I, c->hidden_act);
  k_linear_fwd(m->proj, a->act, P_(m, w->o_w), N, I, H);
  dropout_desc d2 = drop_for(m, (uint32_t)l + 1, SITE_FFN_OUT, c->hidden_dropout_prob);
  k_add_ln_fwd(a->sum2, m->hs[l + 1], a->mean2, a->rstd2, m->proj, P_(m, w->o_b), &d2, a->x1,
               P_(m, w->ln2_g), P_(m, w->ln2_b), N, H, c->layer_norm_eps);
}

static void heads_fwd(bert_model *m, bert_losses *out) {
  const bert_config *c = &m->cfg;
  const int H = c->hidden_size, V = c->vocab_size, M = m->B * m->Pcur;
  const float *top = m->hs[c->num_hidden_layers];
  k_gather_rows(m->G, top, m->gidx, M, H);
  k_linear_fwd(m->t1, m->G, P_(m, m->tr_w), M, H, H);
  k_bias_act_fwd(m->t1, m->t2, P_(m, m->tr_b), M, H, c->hidden_act);
  k_add_ln_fwd(NULL, m->t3, m->tmean, m->trstd, m->t2, NULL, NULL, NULL, P_(m, m->tln_g),
               P_(m, m->tln_b), M, H, c->layer_norm_eps);
  k_linear_fwd(m->logits, m->t3, P_(m, m->we), M, H, V);
  double wsum = 0.0;
  for (int i = 0; i < M; i++) wsum += m->mlm_w[i];
  double den = (m->run.mlm_denominator > 0 ? m->run.mlm_denominator : wsum) + 1e-5;
  out->mlm_weight_sum = wsum;
  out->mlm_correct = 0.0;
  double ce = k_softmax_xent(m->logits, m->dlogits, P_(m, m->dec_b), m->mlm_ids, m->mlm_w,
                             (float)(m->run.grad_scale / den), M, V, &out->mlm_correct);
  out->mlm_loss = ce / den;
  out->nsp_loss = 0.0;
  out->nsp_correct = 0;
  if (c->nsp) {
    const int B = m->B;
    k_gather_rows(m->p0, top, m->cls_rows, B, H);
    k_linear_fwd(m->pooled, m->p0, P_(m, m->pool_w), B, H, H);
    const float *pb = P_(m, m->pool_b);
    for (int i = 0; i < B * H; i++) m->pooled[i] = tanhf(m->pooled[i] + pb[i % H]);
    k_linear_fwd(m->nsp_logits, m->pooled, P_(m, m->sr_w), B, H, 2);
    double nden = m->run.nsp_denominator > 0 ? m->run.nsp_denominator : B, good = 0.0;
    double nce = k_softmax_xent(m->nsp_logits, m->dnsp, P_(m, m->sr_b), m->nsp_lab, NULL,
                                (float)(m->run.grad_scale / nden), B, 2, &good);
    out->nsp_loss = nce / nden;
    out->nsp_correct = (int)good;
  }
  out->loss = out->mlm_loss + out->nsp_loss;
}

void bert_forward(bert_model *m, const bert_batch *b, const bert_run *run, bert_losses *out) {
  m->run = *run;
  copy_batch(m, b);
  embed_fwd(m);
  for (int l = 0; l < m->cfg.num_hidden_layers; l++) layer_fwd(m, l);
  heads_fwd(m, out);
  m->have_forward = true;
}

/* ---- Backward ----------------------------------------------------------------- */
static void announce(bert_model *m, int first, int last) {
  if (!m->ready) return;
  for (int i = last; i >= first; i--) m->ready(m->ready_ctx, i);
}

static void heads_bwd(bert_model *m) {
  const bert_config *c = &m->cfg;
  const int H = c->hidden_size, V = c->vocab_size, M = m->B * m->Pcur, N = m->B * m->Tcur;
  /* logits = t3 · word_embeddings^T + cls.predictions.bias (tied decoder). */
  k_linear_bwd(m->dt_a, false, G_(m, m->we), G_(m, m->dec_b), m->dlogits, m->t3, P_(m, m->we),
               m->ones, M, H, V);
  k_add_ln_bwd(m->dt_b, NULL, NULL, G_(m, m->tln_g), G_(m, m->tln_b), m->dt_a, m->t2, m->tmean,
               m->trstd, P_(m, m->tln_g), NULL, M, H, m->scratch, m->nthreads);
  k_act_bwd(m->dt_b, m->dt_b, m->t1, M, H, c->hidden_act);
  k_linear_bwd(m->dG, false, G_(m, m->tr_w), G_(m, m->tr_b), m->dt_b, m->G, P_(m, m->tr_w), m->ones,
               M, H, H);
  announce(m, m->tr_w, m->dec_b);
  memset(m->dh, 0, (size_t)N * H * sizeof(float));
  k_scatter_add_rows(m->dh, m->dG, m->gidx, M, H);
  if (!c->nsp) return;
  const int B = m->B;
  k_linear_bwd(m->dpooled, false, G_(m, m->sr_w), G_(m, m->sr_b), m->dnsp, m->pooled,
               P_(m, m->sr_w), m->ones, B, H, 2);
  for (int i = 0; i < B * H; i++) m->dpooled[i] *= 1.0f - m->pooled[i] * m->pooled[i];
  k_linear_bwd(m->dp0, false, G_(m, m->pool_w), G_(m, m->pool_b), m->dpooled, m->p0,
               P_(m, m->pool_w), m->ones, B, H, H);
  announce(m, m->sr_w, m->sr_b);
  announce(m, m->pool_w, m->pool_b);
  k_scatter_add_rows(m->dh, m->dp0, m->cls_rows, B, H);
}

/* On entry m->dh holds the gradient of layer l's output; on exit that of its
 * input. */
static void layer_bwd(bert_model *m, int l) {
  const bert_config *c = &m->cfg;
  const int H = c->hidden_size, I = c->intermediate_size, NH = c->num_attention_heads;
  const int T = m->Tcur, N = m->B * T;
  const layer_idx *w = &m->li[l];
  const layer_acts *a = &m->la[l];
  dropout_desc d2 = drop_for(m, (uint32_t)l + 1, SITE_FFN_OUT, c->hidden_dropout_prob);
  k_add_ln_bwd(m->dtmp, m->dx1, G_(m, w->o_b), G_(m, w->ln2_g), G_(m, w->ln2_b), m->dh, a->sum2,
               a->mean2, a->rstd2, P_(m, w->ln2_g), &d2, N, H, m->scratch, m->nthreads);
  k_linear_bwd(m->dbig, false, G_(m, w->o_w), NULL, m->dtmp, a->act, P_(m, w->o_w), m->ones, N, I,
               H);
  k_act_bwd(m->dbig, m->dbig, a->pre, N, I, c->hidden_act);
  k_linear_bwd(m->dx1, true, G_(m, w->i_w), G_(m, w->i_b), m->dbig, a->x1, P_(m, w->i_w), m->ones,
               N, H, I);
  dropout_desc d1 = drop_for(m, (uint32_t)l + 1, SITE_ATTN_OUT, c->hidden_dropout_prob);
  k_add_ln_bwd(m->dtmp, m->dh, G_(m, w->ao_b), G_(m, w->ln1_g), G_(m, w->ln1_b), m->dx1, a->sum1,
               a->mean1, a->rstd1, P_(m, w->ln1_g), &d1, N, H, m->scratch, m->nthreads);
  k_linear_bwd(m->dctx, false, G_(m, w->ao_w), NULL, m->dtmp, a->ctx, P_(m, w->ao_w), m->ones, N, H,
               H);
  dropout_desc dp = drop_for(m, (uint32_t)l + 1, SITE_ATTN_PROBS, c->attention_probs_dropout_prob);
  k_attention_bwd(m->dqkv, m->dctx, a->probs, a->qkv, m->B, T, NH, H / NH, &dp, m->scratch,
                  m->nthreads);
  k_linear_bwd(m->dh, true, G_(m, w->q_w), G_(m, w->q_b), m->dqkv, m->hs[l], P_(m, w->q_w), m->ones,
               N, H, 3 * H);
  announce(m, w->q_w, w->ln2_b);
}

static void embed_bwd(bert_model *m) {
  const int H = m->cfg.hidden_size, T = m->Tcur, N = m->B * T;
  dropout_desc d = drop_for(m, 0, SITE_EMB, m->cfg.hidden_dropout_prob);
  k_dropout(m->dh, &d, N, H);
  k_add_ln_bwd(m->dtmp, NULL, NULL, G_(m, m->eln_g), G_(m, m->eln_b), m->dh, m->emb_sum,
               m->emb_mean, m->emb_rstd, P_(m, m->eln_g), NULL, N, H, m->scratch, m->nthreads);
  float *gw = G_(m, m->we), *gp = G_(m, m->pe), *gt = G_(m, m->te);
  /* Columns are split across threads so repeated ids never race. */
#pragma omp parallel
  {
    int nt = omp_get_num_threads(), t = omp_get_thread_num();
    int c0 = (int)((long)H * t / nt), c1 = (int)((long)H * (t + 1) / nt);
    for (int n = 0; n < N; n++) {
      const float *g = m->dtmp + (size_t)n * H;
      float *a = gw + (size_t)m->ids[n] * H, *b = gp + (size_t)(n % T) * H,
            *c = gt + (size_t)m->seg[n] * H;
      for (int j = c0; j < c1; j++) {
        a[j] += g[j];
        b[j] += g[j];
        c[j] += g[j];
      }
    }
  }
  announce(m, m->we, m->eln_b);
}

void bert_backward(bert_model *m) {
  CORE_ASSERT(m->have_forward);
  heads_bwd(m);
  for (int l = m->cfg.num_hidden_layers - 1; l >= 0; l--) layer_bwd(m, l);
  embed_bwd(m);
}

bert_run bert_run_default(void) { return (bert_run){.train = true, .grad_scale = 1.0f}; }

double bert_flops_per_step(const bert_config *c, int B, int T, int P) {
  double H = c->hidden_size, I = c->intermediate_size, V = c->vocab_size, L = c->num_hidden_layers;
  double tok = (double)B * T, masked = (double)B * P;
  double fwd = tok * L * (2 * H * 3 * H + 2 * H * H + 4 * H * I + 4 * T * H);
  fwd += masked * (2 * H * H + 2 * H * V);
  if (c->nsp) fwd += B * (2 * H * H + 4 * H);
  return 3 * fwd;
}
