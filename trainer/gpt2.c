/* gpt2.c: GPT2LMHeadModel as Hugging Face transformers defines it (pre-LN
 * blocks, causal self-attention, final LayerNorm, LM head tied to wte):
 * config, parameter table, initialisation, forward with the causal-LM loss,
 * backward. Conv1D weights are [in, out]: forward y = x W runs on the
 * compute table's linear_io_fwd, backward on linear_fwd / linear_bwd with
 * the operands' roles swapped (compute.h), so no weight is ever copied. */
#include "gpt2.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_json.h"

/* ---- Config --------------------------------------------------------------------- */
gpt2_config gpt2_config_default(void) {
  return (gpt2_config){.vocab_size = 50257,
                       .n_embd = 768,
                       .n_layer = 12,
                       .n_head = 12,
                       .n_positions = 1024,
                       .n_inner = 0,
                       .act = ACT_GELU_TANH,
                       .resid_pdrop = 0.1f,
                       .embd_pdrop = 0.1f,
                       .attn_pdrop = 0.1f,
                       .layer_norm_epsilon = 1e-5f,
                       .initializer_range = 0.02f,
                       .scale_attn_weights = true};
}

int gpt2_inner(const gpt2_config *c) { return c->n_inner > 0 ? c->n_inner : 4 * c->n_embd; }

status_t gpt2_config_check(const gpt2_config *c) {
  const cfgj_size sizes[] = {{"vocab_size", c->vocab_size},   {"n_embd", c->n_embd},
                             {"n_layer", c->n_layer},         {"n_head", c->n_head},
                             {"n_positions", c->n_positions}, {"n_inner", gpt2_inner(c)}};
  status_t st = cfgj_check_sizes(sizes, sizeof sizes / sizeof sizes[0], "");
  if (st) return st;
  if (c->n_embd % c->n_head)
    return status_set(STATUS_CONFIG, "model config: n_embd %d is not a multiple of n_head %d",
                      c->n_embd, c->n_head);
  const struct {
    const char *name;
    float p;
  } drops[] = {{"resid_pdrop", c->resid_pdrop},
               {"embd_pdrop", c->embd_pdrop},
               {"attn_pdrop", c->attn_pdrop}};
  for (size_t i = 0; i < sizeof drops / sizeof drops[0]; i++)
    if (!(drops[i].p >= 0 && drops[i].p < 1))
      return status_set(STATUS_CONFIG, "model config: %s must be in [0,1)", drops[i].name);
  if (!(c->layer_norm_epsilon > 0))
    return status_set(STATUS_CONFIG, "model config: layer_norm_epsilon must be > 0");
  if (!(c->initializer_range >= 0))
    return status_set(STATUS_CONFIG, "model config: initializer_range must be >= 0");
  if (!c->scale_attn_weights)
    return status_set(STATUS_CONFIG,
                      "model config: scale_attn_weights false is not supported (attention "
                      "scores are scaled by 1/sqrt(head width))");
  return STATUS_OK;
}

static status_t parse_act(const cJSON *root, const char *path, act_kind *out) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "activation_function");
  if (!v || cJSON_IsNull(v)) return STATUS_OK;
  if (!cJSON_IsString(v))
    return status_set(STATUS_CONFIG, "%s: 'activation_function' must be a string", path);
  const char *s = v->valuestring;
  if (!strcmp(s, "gelu"))
    *out = ACT_GELU;
  else if (!strcmp(s, "gelu_new") || !strcmp(s, "gelu_pytorch_tanh"))
    *out = ACT_GELU_TANH;
  else if (!strcmp(s, "relu"))
    *out = ACT_RELU;
  else
    return status_set(STATUS_CONFIG,
                      "%s: activation_function '%s' is not supported (gelu_new, "
                      "gelu_pytorch_tanh, gelu, relu)",
                      path, s);
  return STATUS_OK;
}

/* A boolean key: absent or null leaves *out; true/false only. */
static status_t parse_bool(const cJSON *root, const char *path, const char *key, bool *out) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
  if (!v || cJSON_IsNull(v)) return STATUS_OK;
  if (!cJSON_IsBool(v))
    return status_set(STATUS_CONFIG, "%s: '%s' must be true or false", path, key);
  *out = cJSON_IsTrue(v);
  return STATUS_OK;
}

/* GPT-2 variants mlmpi does not implement: an error naming the key. */
static status_t check_unsupported(const cJSON *root, const char *path) {
  static const char *const keys[] = {"scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn",
                                     "add_cross_attention"};
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
    bool on = false;
    status_t st = parse_bool(root, path, keys[i], &on);
    if (st) return st;
    if (on) return status_set(STATUS_CONFIG, "%s: '%s' true is not supported", path, keys[i]);
  }
  return STATUS_OK;
}

status_t gpt2_config_load(const char *path, gpt2_config *cfg) {
  cJSON *root;
  status_t st = cfgj_read(path, &root);
  if (st) return st;
  gpt2_config c = gpt2_config_default();
  if ((st = cfgj_int(root, path, "", "vocab_size", &c.vocab_size)) ||
      (st = cfgj_int(root, path, "", "n_embd", &c.n_embd)) ||
      (st = cfgj_int(root, path, "", "n_layer", &c.n_layer)) ||
      (st = cfgj_int(root, path, "", "n_head", &c.n_head)) ||
      (st = cfgj_int(root, path, "", "n_positions", &c.n_positions)) ||
      (st = cfgj_int(root, path, "", "n_inner", &c.n_inner)) ||
      (st = cfgj_float(root, path, "resid_pdrop", &c.resid_pdrop)) ||
      (st = cfgj_float(root, path, "embd_pdrop", &c.embd_pdrop)) ||
      (st = cfgj_float(root, path, "attn_pdrop", &c.attn_pdrop)) ||
      (st = cfgj_float(root, path, "layer_norm_epsilon", &c.layer_norm_epsilon)) ||
      (st = cfgj_float(root, path, "initializer_range", &c.initializer_range)) ||
      (st = parse_act(root, path, &c.act)) ||
      (st = parse_bool(root, path, "scale_attn_weights", &c.scale_attn_weights)) ||
      (st = check_unsupported(root, path))) {
    cJSON_Delete(root);
    return st;
  }
  cJSON_Delete(root);
  if (c.n_inner < 0) c.n_inner = 0;
  if ((st = gpt2_config_check(&c)) != STATUS_OK) {
    status_prefix("%s", path);
    return st;
  }
  *cfg = c;
  return STATUS_OK;
}

status_t gpt2_preset(const char *name, gpt2_config *out) {
  static const struct {
    const char *name;
    int E, L, NH, P;
  } presets[] = {{"gpt2-tiny", 128, 2, 2, 256},
                 {"gpt2", 768, 12, 12, 1024},
                 {"gpt2-medium", 1024, 24, 16, 1024}};
  for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++)
    if (!strcmp(name, presets[i].name)) {
      gpt2_config c = gpt2_config_default();
      c.n_embd = presets[i].E;
      c.n_layer = presets[i].L;
      c.n_head = presets[i].NH;
      c.n_positions = presets[i].P;
      *out = c;
      return STATUS_OK;
    }
  return status_set(STATUS_CONFIG, "model.preset: unknown preset '%s' (%s)", name, GPT2_PRESETS);
}

/* ---- The model ------------------------------------------------------------------ */
typedef struct {
  int ln1_g, ln1_b, attn_w, attn_b, aproj_w, aproj_b;
  int ln2_g, ln2_b, fc_w, fc_b, mproj_w, mproj_b; /* table indices, in this order */
} gpt2_layer_idx;

typedef struct {
  float *ln1, *mean1, *rstd1; /* ln_1 of hs[l] (N, E), its stats (N) */
  float *qkv, *probs, *ctx;   /* (N, 3E), (B, NH, T, T), (N, E) */
  float *mid;                 /* hs[l] + the attention branch (N, E) */
  float *ln2, *mean2, *rstd2; /* ln_2 of mid */
  float *pre, *act;           /* (N, I) before / after the activation */
} gpt2_layer_acts;

/* Dropout streams: the embeddings are group 0 (SITE_EMB), block l group
 * l + 1 (SITE_ATTN_PROBS, SITE_ATTN_OUT, SITE_FFN_OUT). */
struct gpt2_model {
  gpt2_config cfg;
  model_base base; /* table, buffers, arena, the batch's ids and mask */
  int wte, wpe, lnf_g, lnf_b;
  gpt2_layer_idx *li;  /* L */
  gpt2_layer_acts *la; /* L */
  float **hs;          /* L+1 of (N, E): the residual stream at each block's input, hs[L] the top */
  float *emb;          /* (N, E) wte[ids] + wpe[t] before dropout */
  float *lnf, *meanf, *rstdf;
  float *logits, *dlogits; /* (N, V) */
  float *proj;             /* (N, E) a projection before bias, dropout and residual */
  /* Backward: g the gradient of the residual stream; dtmp, dln, dctx (N, E),
   * dqkv (N, 3E), dbig (N, I). */
  float *g, *dtmp, *dln, *dctx, *dqkv, *dbig;
  int32_t *amask; /* [B, T] input_mask with the causal bit (kernels.h) */
  int32_t *tgt;   /* [B, T] */
  float *tw;      /* [B, T] */
};

static float *P_(const gpt2_model *m, int idx) { return model_base_param(&m->base, idx); }
static float *G_(const gpt2_model *m, int idx) { return model_base_grad(&m->base, idx); }

static status_t build_table(gpt2_model *m) {
  const gpt2_config *c = &m->cfg;
  const int64_t E = c->n_embd, I = gpt2_inner(c);
  param_table *t = &m->base.table;
  int bad = 0;
  bad |= (m->wte = enc_add_param(t, c->vocab_size, E, "transformer.wte.weight")) < 0;
  bad |= (m->wpe = enc_add_param(t, c->n_positions, E, "transformer.wpe.weight")) < 0;
#define ADD(dst, d0, d1, what) \
  bad |= ((dst) = enc_add_param(t, d0, d1, "transformer.h.%d." what, l)) < 0
  for (int l = 0; l < c->n_layer; l++) {
    gpt2_layer_idx *x = &m->li[l];
    ADD(x->ln1_g, E, 0, "ln_1.weight");
    ADD(x->ln1_b, E, 0, "ln_1.bias");
    ADD(x->attn_w, E, 3 * E, "attn.c_attn.weight");
    ADD(x->attn_b, 3 * E, 0, "attn.c_attn.bias");
    ADD(x->aproj_w, E, E, "attn.c_proj.weight");
    ADD(x->aproj_b, E, 0, "attn.c_proj.bias");
    ADD(x->ln2_g, E, 0, "ln_2.weight");
    ADD(x->ln2_b, E, 0, "ln_2.bias");
    ADD(x->fc_w, E, I, "mlp.c_fc.weight");
    ADD(x->fc_b, I, 0, "mlp.c_fc.bias");
    ADD(x->mproj_w, I, E, "mlp.c_proj.weight");
    ADD(x->mproj_b, E, 0, "mlp.c_proj.bias");
  }
#undef ADD
  bad |= (m->lnf_g = enc_add_param(t, E, 0, "transformer.ln_f.weight")) < 0;
  bad |= (m->lnf_b = enc_add_param(t, E, 0, "transformer.ln_f.bias")) < 0;
  return bad ? STATUS_NOMEM : STATUS_OK;
}

static size_t layout_arena(void *model, float *a) {
  gpt2_model *m = model;
  const gpt2_config *c = &m->cfg;
  const size_t E = (size_t)c->n_embd, I = (size_t)gpt2_inner(c), NH = (size_t)c->n_head;
  const size_t V = (size_t)c->vocab_size, B = (size_t)m->base.maxB, T = (size_t)m->base.T;
  const size_t N = B * T;
  size_t u = 0;
  for (int l = 0; l <= c->n_layer; l++) m->hs[l] = arena_carve(a, &u, N * E);
  for (int l = 0; l < c->n_layer; l++) {
    gpt2_layer_acts *x = &m->la[l];
    x->ln1 = arena_carve(a, &u, N * E);
    x->mean1 = arena_carve(a, &u, N);
    x->rstd1 = arena_carve(a, &u, N);
    x->qkv = arena_carve(a, &u, N * 3 * E);
    x->probs = arena_carve(a, &u, B * NH * T * T);
    x->ctx = arena_carve(a, &u, N * E);
    x->mid = arena_carve(a, &u, N * E);
    x->ln2 = arena_carve(a, &u, N * E);
    x->mean2 = arena_carve(a, &u, N);
    x->rstd2 = arena_carve(a, &u, N);
    x->pre = arena_carve(a, &u, N * I);
    x->act = arena_carve(a, &u, N * I);
  }
  m->emb = arena_carve(a, &u, N * E);
  m->lnf = arena_carve(a, &u, N * E);
  m->meanf = arena_carve(a, &u, N);
  m->rstdf = arena_carve(a, &u, N);
  m->logits = arena_carve(a, &u, N * V);
  m->dlogits = arena_carve(a, &u, N * V);
  m->proj = arena_carve(a, &u, N * E);
  m->g = arena_carve(a, &u, N * E);
  m->dtmp = arena_carve(a, &u, N * E);
  m->dln = arena_carve(a, &u, N * E);
  m->dctx = arena_carve(a, &u, N * E);
  m->dqkv = arena_carve(a, &u, N * 3 * E);
  m->dbig = arena_carve(a, &u, N * I);
  model_base_carve_shared(&m->base, a, &u, E);
  return u;
}

status_t gpt2_init(gpt2_model **out, const gpt2_config *cfg, int max_batch, int seq_len,
                   int nthreads) {
  *out = NULL;
  status_t st;
  if ((st = gpt2_config_check(cfg)) ||
      (st = model_base_check_shape(max_batch, seq_len, 0, cfg->n_positions)))
    return st;
  gpt2_model *m = calloc(1, sizeof *m);
  if (!m) return status_set(STATUS_NOMEM, "out of memory creating the model");
  m->cfg = *cfg;
  model_base_init(&m->base, max_batch, seq_len, 0, nthreads);
  const int L = cfg->n_layer;
  size_t N = (size_t)max_batch * (size_t)seq_len;
  m->li = calloc((size_t)L, sizeof *m->li);
  m->la = calloc((size_t)L, sizeof *m->la);
  m->hs = calloc((size_t)L + 1, sizeof *m->hs);
  if (!m->li || !m->la || !m->hs) {
    st = status_set(STATUS_NOMEM, "out of memory creating the model");
    goto fail;
  }
  if ((st = build_table(m)) || (st = model_base_alloc(&m->base, layout_arena, m))) goto fail;
  m->amask = mem_alloc(N * sizeof(int32_t), "batch attention mask");
  m->tgt = mem_alloc(N * sizeof(int32_t), "batch target_ids");
  m->tw = mem_alloc(N * sizeof(float), "batch target_weights");
  if (!m->amask || !m->tgt || !m->tw) {
    st = STATUS_NOMEM;
    goto fail;
  }
  *out = m;
  return STATUS_OK;
fail:
  gpt2_free(m);
  return st;
}

void gpt2_free(gpt2_model *m) {
  if (!m) return;
  model_base_free(&m->base);
  free(m->li);
  free(m->la);
  free(m->hs);
  mem_free(m->amask);
  mem_free(m->tgt);
  mem_free(m->tw);
  free(m);
}

const gpt2_config *gpt2_get_config(const gpt2_model *m) { return &m->cfg; }
model_base *gpt2_base(gpt2_model *m) { return &m->base; }
const float *gpt2_logits(const gpt2_model *m) { return m->logits; }

void gpt2_init_weights(gpt2_model *m, uint64_t seed) {
  const param_table *t = &m->base.table;
  enc_init_weights(t, m->base.params, m->cfg.initializer_range, seed);
  const float proj_scale = 1.0f / sqrtf(2.0f * (float)m->cfg.n_layer);
  for (int l = 0; l < m->cfg.n_layer; l++) {
    const gpt2_layer_idx *x = &m->li[l];
    const int ones[] = {x->ln1_g, x->ln2_g}, scaled[] = {x->aproj_w, x->mproj_w};
    for (int k = 0; k < 2; k++) {
      float *g = P_(m, ones[k]), *w = P_(m, scaled[k]);
      for (size_t e = 0; e < t->p[ones[k]].numel; e++) g[e] = 1.0f;
      for (size_t e = 0; e < t->p[scaled[k]].numel; e++) w[e] *= proj_scale;
    }
  }
  float *g = P_(m, m->lnf_g);
  for (size_t e = 0; e < t->p[m->lnf_g].numel; e++) g[e] = 1.0f;
}

/* ---- Batch checks --------------------------------------------------------------- */
status_t gpt2_check_batch(const gpt2_model *m, const model_batch *b) {
  const model_base *s = &m->base;
  const int V = m->cfg.vocab_size;
  if (b->B < 1 || b->B > s->maxB || b->T < 1 || b->T > s->T)
    return status_set(STATUS_ARG, "batch shape B=%d T=%d does not fit the model's B<=%d T<=%d",
                      b->B, b->T, s->maxB, s->T);
  if (!b->target_ids || !b->target_weights)
    return status_set(STATUS_ARG, "batch tensor '%s' is missing (a causal LM needs it)",
                      b->target_ids ? "target_weights" : "target_ids");
  size_t N = (size_t)b->B * b->T;
  status_t st;
  if ((st = enc_check_range("input_ids", b->input_ids, N, 0, V, b->T)) ||
      (st = enc_check_range("input_mask", b->input_mask, N, 0, 2, b->T)) ||
      (st = enc_check_range("target_ids", b->target_ids, N, 0, V, b->T)))
    return st;
  for (size_t i = 0; i < N; i++) {
    if (i % (size_t)b->T && b->input_mask[i] > b->input_mask[i - 1])
      return status_set(STATUS_ARG,
                        "batch tensor 'input_mask' has a real token after padding at [%zu,%zu] "
                        "(padding only at the end)",
                        i / (size_t)b->T, i % (size_t)b->T);
    if (!isfinite(b->target_weights[i]) || b->target_weights[i] < 0)
      return status_set(STATUS_ARG, "batch tensor 'target_weights' has a bad value at [%zu,%zu]",
                        i / (size_t)b->T, i % (size_t)b->T);
  }
  return STATUS_OK;
}

/* ---- Forward -------------------------------------------------------------------- */
static void copy_batch(gpt2_model *m, const model_batch *b, bool train, uint64_t seed,
                       uint32_t step, uint32_t sample_base) {
  model_base *s = &m->base;
  size_t N = (size_t)b->B * b->T;
  s->B = b->B;
  s->Tcur = b->T;
  s->Pcur = 0;
  s->train = train;
  s->seed = seed;
  s->step = step;
  s->sample_base = sample_base;
  cx_sync(&s->cx, s->params, s->table.total);
  memcpy(s->ids, b->input_ids, N * sizeof(int32_t));
  memcpy(s->mask, b->input_mask, N * sizeof(int32_t));
  memcpy(m->tgt, b->target_ids, N * sizeof(int32_t));
  memcpy(m->tw, b->target_weights, N * sizeof(float));
  for (size_t i = 0; i < N; i++) m->amask[i] = (b->input_mask[i] ? K_ATTN_KEY : 0) | K_ATTN_CAUSAL;
}

static enc_ctx ctx_of(const gpt2_model *m) {
  enc_ctx c = model_base_ctx(&m->base);
  c.input_mask = m->amask;
  return c;
}

static void embed_fwd(float *out, const float *wte, const float *wpe, const int32_t *ids, int N,
                      int T, int E) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    const float *w = wte + (size_t)ids[n] * E, *p = wpe + (size_t)(n % T) * E;
    float *o = out + (size_t)n * E;
#pragma omp simd
    for (int j = 0; j < E; j++) o[j] = w[j] + p[j];
  }
}

/* Columns split across threads, so repeated ids never race. */
static void embed_bwd(float *gw, float *gp, const float *d, const int32_t *ids, int N, int T,
                      int E) {
#pragma omp parallel for schedule(static)
  for (int j = 0; j < E; j++)
    for (int n = 0; n < N; n++) {
      float v = d[(size_t)n * E + j];
      gw[(size_t)ids[n] * E + j] += v;
      gp[(size_t)(n % T) * E + j] += v;
    }
}

static void block_fwd(gpt2_model *m, const enc_ctx *c, int l) {
  const gpt2_config *cf = &m->cfg;
  const int E = cf->n_embd, I = gpt2_inner(cf), NH = cf->n_head, T = c->T, N = c->B * T;
  const uint32_t grp = (uint32_t)l + 1;
  const gpt2_layer_idx *w = &m->li[l];
  gpt2_layer_acts *a = &m->la[l];
  cx_linear_io_fwd(c->cx, a->qkv, a->ln1, P_(m, w->attn_w), N, E, 3 * E);
  k_add_bias(a->qkv, P_(m, w->attn_b), N, 3 * E);
  dropout_desc dp = enc_dropout(c, grp, SITE_ATTN_PROBS, cf->attn_pdrop);
  cx_attention_fwd(c->cx, a->ctx, a->probs, a->qkv, m->amask, c->B, T, NH, E / NH, &dp, c->scratch,
                   c->nthreads);
  cx_linear_io_fwd(c->cx, m->proj, a->ctx, P_(m, w->aproj_w), N, E, E);
  dropout_desc d1 = enc_dropout(c, grp, SITE_ATTN_OUT, cf->resid_pdrop);
  k_add_ln_fwd(a->mid, a->ln2, a->mean2, a->rstd2, m->proj, P_(m, w->aproj_b), &d1, m->hs[l],
               P_(m, w->ln2_g), P_(m, w->ln2_b), N, E, cf->layer_norm_epsilon);
  cx_linear_io_fwd(c->cx, a->pre, a->ln2, P_(m, w->fc_w), N, E, I);
  k_bias_act_fwd(a->pre, a->act, P_(m, w->fc_b), N, I, cf->act);
  cx_linear_io_fwd(c->cx, m->proj, a->act, P_(m, w->mproj_w), N, I, E);
  /* hs[l+1] = mid + dropout(proj + bias), with the next LayerNorm fused:
   * the next block's ln_1, or ln_f after the last block. */
  dropout_desc d2 = enc_dropout(c, grp, SITE_FFN_OUT, cf->resid_pdrop);
  bool last = l + 1 == cf->n_layer;
  gpt2_layer_acts *nx = last ? NULL : &m->la[l + 1];
  k_add_ln_fwd(m->hs[l + 1], last ? m->lnf : nx->ln1, last ? m->meanf : nx->mean1,
               last ? m->rstdf : nx->rstd1, m->proj, P_(m, w->mproj_b), &d2, a->mid,
               P_(m, last ? m->lnf_g : m->li[l + 1].ln1_g),
               P_(m, last ? m->lnf_b : m->li[l + 1].ln1_b), N, E, cf->layer_norm_epsilon);
}

void gpt2_forward(gpt2_model *m, const model_batch *b, bool train, uint64_t seed, uint32_t step,
                  uint32_t sample_base, double den, gpt2_losses *out) {
  const gpt2_config *cf = &m->cfg;
  const int E = cf->n_embd, V = cf->vocab_size, T = b->T, N = b->B * T;
  copy_batch(m, b, train, seed, step, sample_base);
  enc_ctx c = ctx_of(m);
  embed_fwd(m->emb, P_(m, m->wte), P_(m, m->wpe), m->base.ids, N, T, E);
  dropout_desc de = enc_dropout(&c, 0, SITE_EMB, cf->embd_pdrop);
  k_add_ln_fwd(m->hs[0], m->la[0].ln1, m->la[0].mean1, m->la[0].rstd1, m->emb, NULL, &de, NULL,
               P_(m, m->li[0].ln1_g), P_(m, m->li[0].ln1_b), N, E, cf->layer_norm_epsilon);
  for (int l = 0; l < cf->n_layer; l++) block_fwd(m, &c, l);
  /* The LM head: logits = ln_f(h) · wte^T (tied). */
  cx_linear_fwd(&m->base.cx, m->logits, m->lnf, P_(m, m->wte), N, E, V);
  double wsum = 0.0;
  for (int i = 0; i < N; i++) wsum += m->tw[i];
  double d = den > 0 ? den : wsum;
  out->weight_sum = wsum;
  out->correct = 0.0;
  double ce = k_softmax_xent(m->logits, m->dlogits, NULL, m->tgt, m->tw,
                             d > 0 ? (float)(1.0 / d) : 0.0f, N, V, &out->correct);
  out->loss = d > 0 ? ce / d : 0.0;
  m->base.have_forward = true;
}

/* ---- Backward ------------------------------------------------------------------- */
/* g += d, both (n) floats. */
static void add_to(float *g, const float *d, size_t n) {
#pragma omp parallel for simd schedule(static)
  for (size_t i = 0; i < n; i++) g[i] += d[i];
}

/* dy = dropout'(g) of a branch whose output added to the residual stream,
 * and its bias gradient. */
static void branch_grad(const gpt2_model *m, const enc_ctx *c, float *dy, const float *g,
                        const dropout_desc *d, int bias, int N, int E) {
  memcpy(dy, g, (size_t)N * E * sizeof(float));
  k_dropout(dy, d, N, E);
  k_bias_grad(G_(m, bias), dy, c->ones, N, E);
}

/* On entry m->g holds the gradient of hs[l+1]; on exit that of hs[l]. */
static void block_bwd(gpt2_model *m, const enc_ctx *c, int l) {
  const gpt2_config *cf = &m->cfg;
  const int E = cf->n_embd, I = gpt2_inner(cf), NH = cf->n_head, T = c->T, N = c->B * T;
  const uint32_t grp = (uint32_t)l + 1;
  const gpt2_layer_idx *w = &m->li[l];
  const gpt2_layer_acts *a = &m->la[l];
  const compute *cx = c->cx;
  /* MLP: hs[l+1] = mid + drop(act · W_proj + b). */
  dropout_desc d2 = enc_dropout(c, grp, SITE_FFN_OUT, cf->resid_pdrop);
  branch_grad(m, c, m->dtmp, m->g, &d2, w->mproj_b, N, E);
  cx_linear_fwd(cx, m->dbig, m->dtmp, P_(m, w->mproj_w), N, E, I);
  cx_linear_bwd(cx, NULL, false, G_(m, w->mproj_w), NULL, a->act, m->dtmp, P_(m, w->mproj_w),
                c->ones, N, E, I);
  k_act_bwd(m->dbig, m->dbig, a->pre, N, I, cf->act);
  k_bias_grad(G_(m, w->fc_b), m->dbig, c->ones, N, I);
  cx_linear_fwd(cx, m->dtmp, m->dbig, P_(m, w->fc_w), N, I, E);
  cx_linear_bwd(cx, NULL, false, G_(m, w->fc_w), NULL, a->ln2, m->dbig, P_(m, w->fc_w), c->ones, N,
                I, E);
  k_add_ln_bwd(NULL, m->dln, NULL, G_(m, w->ln2_g), G_(m, w->ln2_b), m->dtmp, a->mid, a->mean2,
               a->rstd2, P_(m, w->ln2_g), NULL, N, E, c->scratch, c->nthreads);
  add_to(m->g, m->dln, (size_t)N * E); /* now the gradient of mid */
  /* Attention: mid = hs[l] + drop(ctx · W_proj + b). */
  dropout_desc d1 = enc_dropout(c, grp, SITE_ATTN_OUT, cf->resid_pdrop);
  branch_grad(m, c, m->dtmp, m->g, &d1, w->aproj_b, N, E);
  cx_linear_fwd(cx, m->dctx, m->dtmp, P_(m, w->aproj_w), N, E, E);
  cx_linear_bwd(cx, NULL, false, G_(m, w->aproj_w), NULL, a->ctx, m->dtmp, P_(m, w->aproj_w),
                c->ones, N, E, E);
  dropout_desc dp = enc_dropout(c, grp, SITE_ATTN_PROBS, cf->attn_pdrop);
  cx_attention_bwd(cx, m->dqkv, m->dctx, a->probs, a->qkv, m->amask, c->B, T, NH, E / NH, &dp,
                   c->scratch, c->nthreads);
  k_bias_grad(G_(m, w->attn_b), m->dqkv, c->ones, N, 3 * E);
  cx_linear_fwd(cx, m->dtmp, m->dqkv, P_(m, w->attn_w), N, 3 * E, E);
  cx_linear_bwd(cx, NULL, false, G_(m, w->attn_w), NULL, a->ln1, m->dqkv, P_(m, w->attn_w), c->ones,
                N, 3 * E, E);
  k_add_ln_bwd(NULL, m->dln, NULL, G_(m, w->ln1_g), G_(m, w->ln1_b), m->dtmp, m->hs[l], a->mean1,
               a->rstd1, P_(m, w->ln1_g), NULL, N, E, c->scratch, c->nthreads);
  add_to(m->g, m->dln, (size_t)N * E);
  enc_announce(c, w->ln1_g, w->mproj_b);
}

void gpt2_backward(gpt2_model *m) {
  CORE_ASSERT(m->base.have_forward);
  const gpt2_config *cf = &m->cfg;
  enc_ctx c = ctx_of(m);
  const int E = cf->n_embd, V = cf->vocab_size, T = c.T, N = c.B * T;
  /* The tied head adds its share to wte's gradient; then ln_f. */
  cx_linear_bwd(&m->base.cx, m->dtmp, false, G_(m, m->wte), NULL, m->dlogits, m->lnf, P_(m, m->wte),
                c.ones, N, E, V);
  k_add_ln_bwd(NULL, m->g, NULL, G_(m, m->lnf_g), G_(m, m->lnf_b), m->dtmp, m->hs[cf->n_layer],
               m->meanf, m->rstdf, P_(m, m->lnf_g), NULL, N, E, c.scratch, c.nthreads);
  enc_announce(&c, m->lnf_g, m->lnf_b);
  for (int l = cf->n_layer - 1; l >= 0; l--) block_bwd(m, &c, l);
  dropout_desc de = enc_dropout(&c, 0, SITE_EMB, cf->embd_pdrop);
  k_dropout(m->g, &de, N, E);
  embed_bwd(G_(m, m->wte), G_(m, m->wpe), m->g, m->base.ids, N, T, E);
  enc_announce(&c, m->wte, m->wpe);
}

/* ---- Incremental inference ------------------------------------------------------ */
/* Rows of the cache and of the work arrays are positions; keys, values and
 * queries keep the heads side by side ([.., E], head h at columns h*D). */
struct gpt2_kv {
  int cap, len, nthreads;
  float **k, **v;                          /* L of (cap, E) */
  float *hs, *mid, *ln, *proj, *ctx, *qkv; /* (cap, E), qkv (cap, 3E) */
  float *pre, *act;                        /* (cap, I) */
  float *mean, *rstd;                      /* (cap) */
  float *scores;                           /* nthreads * cap */
};

void gpt2_kv_free(gpt2_kv *kv) {
  if (!kv) return;
  float *bufs[] = {kv->hs,  kv->mid, kv->ln,   kv->proj, kv->ctx,   kv->qkv,
                   kv->pre, kv->act, kv->mean, kv->rstd, kv->scores};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) mem_free(bufs[i]);
  if (kv->k) free(kv->k[0]); /* k[0] .. v[L-1] are one block */
  free(kv->k);
  free(kv->v);
  free(kv);
}

status_t gpt2_kv_init(gpt2_kv **out, const gpt2_model *m) {
  const gpt2_config *c = &m->cfg;
  const size_t P = (size_t)c->n_positions, E = (size_t)c->n_embd, I = (size_t)gpt2_inner(c);
  const int L = c->n_layer;
  *out = NULL;
  gpt2_kv *kv = calloc(1, sizeof *kv);
  if (!kv) return status_set(STATUS_NOMEM, "out of memory creating the key/value cache");
  kv->cap = c->n_positions;
  kv->nthreads = omp_get_max_threads();
  kv->k = calloc((size_t)L, sizeof *kv->k);
  kv->v = calloc((size_t)L, sizeof *kv->v);
  float *block = kv->k && kv->v ? malloc(2 * (size_t)L * P * E * sizeof(float)) : NULL;
  if (kv->k) kv->k[0] = block;
  if (block)
    for (int l = 0; l < L; l++) {
      kv->k[l] = block + (size_t)(2 * l) * P * E;
      kv->v[l] = block + (size_t)(2 * l + 1) * P * E;
    }
  kv->hs = mem_alloc(P * E * sizeof(float), "cache work");
  kv->mid = mem_alloc(P * E * sizeof(float), "cache work");
  kv->ln = mem_alloc(P * E * sizeof(float), "cache work");
  kv->proj = mem_alloc(P * E * sizeof(float), "cache work");
  kv->ctx = mem_alloc(P * E * sizeof(float), "cache work");
  kv->qkv = mem_alloc(P * 3 * E * sizeof(float), "cache work");
  kv->pre = mem_alloc(P * I * sizeof(float), "cache work");
  kv->act = mem_alloc(P * I * sizeof(float), "cache work");
  kv->mean = mem_alloc(P * sizeof(float), "cache work");
  kv->rstd = mem_alloc(P * sizeof(float), "cache work");
  kv->scores = mem_alloc((size_t)kv->nthreads * P * sizeof(float), "cache work");
  if (!block || !kv->hs || !kv->mid || !kv->ln || !kv->proj || !kv->ctx || !kv->qkv || !kv->pre ||
      !kv->act || !kv->mean || !kv->rstd || !kv->scores) {
    gpt2_kv_free(kv);
    return status_set(STATUS_NOMEM, "out of memory creating the key/value cache (%d positions)",
                      c->n_positions);
  }
  *out = kv;
  return STATUS_OK;
}

void gpt2_kv_reset(gpt2_kv *kv) { kv->len = 0; }
int gpt2_kv_len(const gpt2_kv *kv) { return kv->len; }

/* ctx rows [0, n) of the new positions t0 + i: causal attention of their
 * queries (qkv) over the cached keys and values [0, t0 + i]. */
static void kv_attention(gpt2_kv *kv, const float *kc, const float *vc, int t0, int n, int NH,
                         int D) {
  const int E = NH * D;
  const float scale = 1.0f / sqrtf((float)D);
  /* One new token of a small model is too little work to share. */
  const bool par = (int64_t)n * NH * (t0 + n) * D >= (1 << 16);
#pragma omp parallel for collapse(2) schedule(dynamic, 1) if (par)
  for (int i = 0; i < n; i++)
    for (int h = 0; h < NH; h++) {
      const float *q = kv->qkv + (size_t)i * 3 * E + (size_t)h * D;
      float *s = kv->scores + (size_t)omp_get_thread_num() * kv->cap, *o;
      const int keys = t0 + i + 1;
      float mx = -INFINITY, sum = 0.0f;
      for (int j = 0; j < keys; j++) {
        const float *k = kc + (size_t)j * E + (size_t)h * D;
        float d = 0.0f;
#pragma omp simd reduction(+ : d)
        for (int e = 0; e < D; e++) d += q[e] * k[e];
        s[j] = d * scale;
        if (s[j] > mx) mx = s[j];
      }
      for (int j = 0; j < keys; j++) sum += (s[j] = expf(s[j] - mx));
      o = kv->ctx + (size_t)i * E + (size_t)h * D;
      for (int e = 0; e < D; e++) o[e] = 0.0f;
      for (int j = 0; j < keys; j++) {
        const float *v = vc + (size_t)j * E + (size_t)h * D, p = s[j] / sum;
#pragma omp simd
        for (int e = 0; e < D; e++) o[e] += p * v[e];
      }
    }
}

status_t gpt2_kv_append(gpt2_model *m, gpt2_kv *kv, const int32_t *ids, int n, float *logits) {
  const gpt2_config *cf = &m->cfg;
  const int E = cf->n_embd, I = gpt2_inner(cf), NH = cf->n_head, V = cf->vocab_size;
  const int t0 = kv->len;
  const float eps = cf->layer_norm_epsilon;
  const compute *cx = &m->base.cx;
  if (n < 1 || n > kv->cap - t0)
    return status_set(STATUS_ARG, "%d new token(s) after %d do not fit n_positions %d", n, t0,
                      kv->cap);
  for (int i = 0; i < n; i++)
    if (ids[i] < 0 || ids[i] >= V)
      return status_set(STATUS_ARG, "token id %d is outside the vocabulary (%d)", (int)ids[i], V);
  if (t0 == 0) cx_sync(cx, m->base.params, m->base.table.total);
  /* The embeddings, and ln_1 of the first block. */
  const float *wte = P_(m, m->wte), *wpe = P_(m, m->wpe);
  for (int i = 0; i < n; i++) {
    const float *w = wte + (size_t)ids[i] * E, *p = wpe + (size_t)(t0 + i) * E;
    float *o = kv->mid + (size_t)i * E;
    for (int j = 0; j < E; j++) o[j] = w[j] + p[j];
  }
  k_add_ln_fwd(kv->hs, kv->ln, kv->mean, kv->rstd, kv->mid, NULL, NULL, NULL, P_(m, m->li[0].ln1_g),
               P_(m, m->li[0].ln1_b), n, E, eps);
  for (int l = 0; l < cf->n_layer; l++) {
    const gpt2_layer_idx *w = &m->li[l];
    cx_linear_io_fwd(cx, kv->qkv, kv->ln, P_(m, w->attn_w), n, E, 3 * E);
    k_add_bias(kv->qkv, P_(m, w->attn_b), n, 3 * E);
    for (int i = 0; i < n; i++) {
      const float *r = kv->qkv + (size_t)i * 3 * E;
      memcpy(kv->k[l] + (size_t)(t0 + i) * E, r + E, (size_t)E * sizeof(float));
      memcpy(kv->v[l] + (size_t)(t0 + i) * E, r + 2 * E, (size_t)E * sizeof(float));
    }
    kv_attention(kv, kv->k[l], kv->v[l], t0, n, NH, E / NH);
    cx_linear_io_fwd(cx, kv->proj, kv->ctx, P_(m, w->aproj_w), n, E, E);
    k_add_ln_fwd(kv->mid, kv->ln, kv->mean, kv->rstd, kv->proj, P_(m, w->aproj_b), NULL, kv->hs,
                 P_(m, w->ln2_g), P_(m, w->ln2_b), n, E, eps);
    cx_linear_io_fwd(cx, kv->pre, kv->ln, P_(m, w->fc_w), n, E, I);
    k_bias_act_fwd(kv->pre, kv->act, P_(m, w->fc_b), n, I, cf->act);
    cx_linear_io_fwd(cx, kv->proj, kv->act, P_(m, w->mproj_w), n, I, E);
    bool last = l + 1 == cf->n_layer;
    k_add_ln_fwd(kv->hs, kv->ln, kv->mean, kv->rstd, kv->proj, P_(m, w->mproj_b), NULL, kv->mid,
                 P_(m, last ? m->lnf_g : m->li[l + 1].ln1_g),
                 P_(m, last ? m->lnf_b : m->li[l + 1].ln1_b), n, E, eps);
  }
  /* The tied head on the last new position only. */
  cx_linear_fwd(cx, logits, kv->ln + (size_t)(n - 1) * E, wte, 1, E, V);
  kv->len = t0 + n;
  return STATUS_OK;
}
