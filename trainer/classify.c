/* classify.c: sequence classification as Hugging Face defines it, on the
 * encoder BERT and ELECTRA share: BertForSequenceClassification (the pooler,
 * dense + tanh at [CLS], then dropout and `classifier`) and
 * ElectraForSequenceClassification (ElectraClassificationHead at [CLS]:
 * dropout, `classifier.dense`, erf GELU, dropout, `classifier.out_proj`).
 * The loss is the mean softmax cross-entropy over the rows whose label is
 * >= 0 (the global batch's count when a run gives it). Two entries of the
 * model table ("bert-classify", "electra-classify"), one implementation. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_json.h"
#include "model_impl.h"

typedef enum { CLS_BERT, CLS_ELECTRA } cls_kind;

/* The encoder's shape (BERT: E == H) and the head's. */
typedef struct {
  cls_kind kind;
  bert_config enc; /* the encoder's sizes and settings (nsp unused) */
  int E;           /* embedding width */
  float cls_dropout;
  int C;         /* classes */
  char **labels; /* C names, id order */
} cls_config;

typedef struct {
  cls_config cfg;
  model_base base;
  enc_net net;
  int dw, db, ow, ob; /* pooler / classifier.dense; classifier / classifier.out_proj */
  /* (B, H) head activations: [CLS] rows, after dropout (ELECTRA), dense
   * output (pre-activation), activation, after dropout; (B, C) logits. */
  float *x0, *x0d, *z, *a, *ad, *logits, *dlogits;
  float *dad, *dx0;    /* (B, H) backward */
  int32_t *rows, *lab; /* (B) [CLS] rows, labels clamped to [0, C) */
  float *w;            /* (B) 1 for a labelled row, else 0 */
} cls_model;

#define CM(m) ((cls_model *)(m)->impl)

/* Dropout stream group of the head: after the embeddings (0) and the L
 * encoder layers. */
static uint32_t head_group(const cls_model *m) {
  return (uint32_t)m->cfg.enc.num_hidden_layers + 1;
}

/* ---- Config ----------------------------------------------------------------------- */
static void free_labels(cls_config *c) {
  for (int i = 0; c->labels && i < c->C; i++) free(c->labels[i]);
  free(c->labels);
  c->labels = NULL;
}

static status_t set_labels(cls_config *c, int n, const char *const *names) {
  if (n < 1 || n > MODEL_MAX_LABELS)
    return status_set(STATUS_CONFIG, "a classifier needs 1 to %d labels, not %d", MODEL_MAX_LABELS,
                      n);
  c->labels = calloc((size_t)n, sizeof *c->labels);
  if (!c->labels) return status_set(STATUS_NOMEM, "out of memory");
  c->C = n;
  for (int i = 0; i < n; i++) {
    char tmp[32];
    snprintf(tmp, sizeof tmp, "LABEL_%d", i);
    if (!(c->labels[i] = strdup(names && names[i] ? names[i] : tmp)))
      return status_set(STATUS_NOMEM, "out of memory");
  }
  return STATUS_OK;
}

/* id2label {"0": name, ...} (or num_labels) and classifier_dropout of a
 * config.json. */
static status_t read_head(const char *path, cls_config *c) {
  cJSON *j;
  status_t st = cfgj_read(path, &j);
  if (st) return st;
  const cJSON *map = cJSON_GetObjectItemCaseSensitive(j, "id2label");
  int n = 0;
  if (cJSON_IsObject(map)) {
    n = cJSON_GetArraySize(map);
  } else if ((st = cfgj_int(j, path, "", "num_labels", &n)) == STATUS_OK && n == 0) {
    st = status_set(STATUS_CONFIG,
                    "%s: id2label (or num_labels) is missing: a classifier needs "
                    "its labels",
                    path);
  }
  const char **names = st ? NULL : calloc((size_t)(n > 0 ? n : 1), sizeof *names);
  if (!st && !names) st = status_set(STATUS_NOMEM, "out of memory");
  for (int i = 0; !st && cJSON_IsObject(map) && i < n; i++) {
    char key[16];
    snprintf(key, sizeof key, "%d", i);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(map, key);
    if (!cJSON_IsString(v))
      st = status_set(STATUS_CONFIG, "%s: id2label has no name for id %d (ids must be 0..%d)", path,
                      i, n - 1);
    else
      names[i] = v->valuestring;
  }
  if (!st) st = set_labels(c, n, names);
  float drop = -1.0f;
  if (!st && (st = cfgj_float(j, path, "classifier_dropout", &drop)) == STATUS_OK && drop >= 0)
    c->cls_dropout = drop;
  free(names);
  cJSON_Delete(j);
  return st;
}

/* The encoder of a BERT or ELECTRA config (ELECTRA: the discriminator). */
static status_t encoder_of(const model_spec *s, cls_kind kind, cls_config *c) {
  status_t st;
  bool file = s->config_path && s->config_path[0];
  if (kind == CLS_BERT) {
    if ((st = file ? bert_config_load(s->config_path, &c->enc) : bert_preset(s->preset, &c->enc)))
      return st;
    c->E = c->enc.hidden_size;
  } else {
    electra_config e;
    if ((st = file ? electra_config_load(s->config_path, &e) : electra_preset(s->preset, &e)))
      return st;
    c->enc = (bert_config){.vocab_size = e.vocab_size,
                           .hidden_size = e.disc.hidden_size,
                           .num_hidden_layers = e.disc.num_hidden_layers,
                           .num_attention_heads = e.disc.num_attention_heads,
                           .intermediate_size = e.disc.intermediate_size,
                           .max_position_embeddings = e.max_position_embeddings,
                           .type_vocab_size = e.type_vocab_size,
                           .hidden_act = e.hidden_act,
                           .hidden_dropout_prob = e.hidden_dropout_prob,
                           .attention_probs_dropout_prob = e.attention_probs_dropout_prob,
                           .layer_norm_eps = e.layer_norm_eps,
                           .initializer_range = e.initializer_range};
    c->E = e.embedding_size;
  }
  if (!file) c->enc.vocab_size = s->vocab_size;
  return STATUS_OK;
}

static status_t config_of(const model_spec *s, cls_kind kind, cls_config *c) {
  memset(c, 0, sizeof *c);
  c->kind = kind;
  status_t st = encoder_of(s, kind, c);
  if (st) return st;
  c->cls_dropout = c->enc.hidden_dropout_prob;
  bool file = s->config_path && s->config_path[0];
  if (s->num_labels > 0)
    st = set_labels(c, s->num_labels, s->labels);
  else if (file)
    st = read_head(s->config_path, c);
  else
    st = status_set(STATUS_CONFIG, "a classifier needs its labels (none were given)");
  if (st) return st;
  if (s->max_positions > 0) c->enc.max_position_embeddings = s->max_positions;
  if (s->no_dropout)
    c->enc.hidden_dropout_prob = c->enc.attention_probs_dropout_prob = c->cls_dropout = 0.0f;
  if (!(c->cls_dropout >= 0 && c->cls_dropout < 1))
    return status_set(STATUS_CONFIG, "classifier_dropout %g is not in [0, 1)", c->cls_dropout);
  if ((st = bert_config_check(&c->enc))) return st;
  if (c->E < 1 || c->E > (1 << 24))
    return status_set(STATUS_CONFIG, "model config: embedding_size = %d is out of range", c->E);
  return model_spec_check(s, c->enc.vocab_size, c->enc.max_position_embeddings);
}

/* ---- Table and arena ----------------------------------------------------------------- */
static status_t build_table(cls_model *m) {
  const cls_config *c = &m->cfg;
  const int64_t H = c->enc.hidden_size, E = c->E, C = c->C;
  const char *who = c->kind == CLS_BERT ? "bert" : "electra";
  param_table *t = &m->base.table;
  char prefix[64];
  snprintf(prefix, sizeof prefix, "%s.embeddings", who);
  status_t st = emb_add_params(&m->net.emb, t, prefix, c->enc.vocab_size,
                               c->enc.max_position_embeddings, c->enc.type_vocab_size);
  if (st) return st;
  int bad = 0;
  if (H != E) {
    bad |= (m->net.proj_w = enc_add_param(t, H, E, "%s.embeddings_project.weight", who)) < 0;
    bad |= (m->net.proj_b = enc_add_param(t, H, 0, "%s.embeddings_project.bias", who)) < 0;
  }
  snprintf(prefix, sizeof prefix, "%s.encoder.layer", who);
  if (bad || (st = encoder_add_params(&m->net.enc, t, prefix))) return bad ? STATUS_NOMEM : st;
  bool bert = c->kind == CLS_BERT;
  bad |= (m->dw = enc_add_param(t, H, H, "%s",
                                bert ? "bert.pooler.dense.weight" : "classifier.dense.weight")) < 0;
  bad |= (m->db = enc_add_param(t, H, 0, "%s",
                                bert ? "bert.pooler.dense.bias" : "classifier.dense.bias")) < 0;
  bad |= (m->ow = enc_add_param(t, C, H, "%s",
                                bert ? "classifier.weight" : "classifier.out_proj.weight")) < 0;
  bad |= (m->ob = enc_add_param(t, C, 0, "%s",
                                bert ? "classifier.bias" : "classifier.out_proj.bias")) < 0;
  return bad ? STATUS_NOMEM : STATUS_OK;
}

static size_t layout_arena(void *model, float *a) {
  cls_model *m = model;
  const size_t H = (size_t)m->cfg.enc.hidden_size, E = (size_t)m->cfg.E, C = (size_t)m->cfg.C;
  const size_t B = (size_t)m->base.maxB, T = (size_t)m->base.T;
  size_t u = 0;
  enc_net_carve(&m->net, a, &u, B, T);
  float **bh[] = {&m->x0, &m->x0d, &m->z, &m->a, &m->ad, &m->dad, &m->dx0};
  for (size_t i = 0; i < sizeof bh / sizeof bh[0]; i++) *bh[i] = arena_carve(a, &u, B * H);
  m->logits = arena_carve(a, &u, B * C);
  m->dlogits = arena_carve(a, &u, B * C);
  m->w = arena_carve(a, &u, B);
  model_base_carve_shared(&m->base, a, &u, H > E ? H : E);
  return u;
}

static void cls_free_impl(void *p) {
  cls_model *m = p;
  if (!m) return;
  model_base_free(&m->base);
  enc_net_free(&m->net);
  free_labels(&m->cfg);
  mem_free(m->rows);
  mem_free(m->lab);
  free(m);
}

static status_t cls_create(model **out, const model_spec *spec, const model_shape *sh,
                           cls_kind kind, const model_ops *ops) {
  *out = NULL;
  cls_model *m = calloc(1, sizeof *m);
  if (!m) return status_set(STATUS_NOMEM, "out of memory creating the model");
  const bert_config *e = &m->cfg.enc;
  status_t st = config_of(spec, kind, &m->cfg);
  if (st == STATUS_OK)
    st = model_base_check_shape(sh->max_batch, sh->seq_len, sh->max_pred,
                                e->max_position_embeddings);
  if (st == STATUS_OK) {
    model_base_init(&m->base, sh->max_batch, sh->seq_len, sh->max_pred, sh->nthreads);
    st =
        enc_net_init(&m->net, m->cfg.E, e->hidden_size, e->intermediate_size,
                     e->num_attention_heads, e->num_hidden_layers, e->hidden_act,
                     e->hidden_dropout_prob, e->attention_probs_dropout_prob, e->layer_norm_eps, 0);
  }
  if (st == STATUS_OK) st = build_table(m);
  if (st == STATUS_OK) st = model_base_alloc(&m->base, layout_arena, m);
  if (st == STATUS_OK) {
    m->rows = mem_alloc((size_t)sh->max_batch * sizeof(int32_t), "[CLS] rows");
    m->lab = mem_alloc((size_t)sh->max_batch * sizeof(int32_t), "batch labels");
    if (!m->rows || !m->lab) st = STATUS_NOMEM;
  }
  if (st) {
    cls_free_impl(m);
    return st;
  }
  return model_wrap(out, ops, m, &m->base, cls_free_impl);
}

static void c_free(model *m) {
  if (!m) return;
  cls_free_impl(m->impl);
  free(m);
}

static void c_describe(const model *m, char *buf, size_t n) {
  const cls_config *c = &CM(m)->cfg;
  snprintf(buf, n, "%s classifier: %d layers, hidden %d, %d heads, vocab %d, %d labels",
           c->kind == CLS_BERT ? "BERT" : "ELECTRA", c->enc.num_hidden_layers, c->enc.hidden_size,
           c->enc.num_attention_heads, c->enc.vocab_size, c->C);
}

static int c_vocab_size(const model *m) { return CM(m)->cfg.enc.vocab_size; }

static void c_init_weights(model *m, uint64_t seed) {
  cls_model *c = CM(m);
  enc_init_weights(&c->base.table, c->base.params, c->cfg.enc.initializer_range, seed);
}

/* ---- Batches ---------------------------------------------------------------------- */
static status_t c_check_batch(const model *m, const model_batch *b) {
  const cls_model *c = CM(m);
  status_t st =
      model_base_check_batch(&c->base, b, c->cfg.enc.vocab_size, c->cfg.enc.type_vocab_size);
  if (st) return st;
  if (!b->next_sentence_labels)
    return status_set(STATUS_ARG, "batch tensor 'labels' is missing (the model is a classifier)");
  for (int i = 0; i < b->B; i++)
    if (b->next_sentence_labels[i] >= c->cfg.C)
      return status_set(STATUS_ARG, "batch tensor 'labels' has %d at [%d]: the model has %d labels",
                        b->next_sentence_labels[i], i, c->cfg.C);
  return STATUS_OK;
}

/* ---- Forward and backward ------------------------------------------------------------ */
/* Counters: loss (as normalised), Σ cross-entropy, correct, labelled rows;
 * evaluation adds per class: true positives, predictions, labels. */
enum { C_LOSS, C_XENT, C_CORRECT, C_COUNT, N_COUNTERS };
#define C_TP(k) (N_COUNTERS + (k))
#define C_PRED(k) (N_COUNTERS + MODEL_MAX_LABELS + (k))
#define C_TRUE(k) (N_COUNTERS + 2 * MODEL_MAX_LABELS + (k))
enum { N_EVAL_COUNTERS = N_COUNTERS + 3 * MODEL_MAX_LABELS };

static float *P_(const cls_model *m, int idx) { return model_base_param(&m->base, idx); }
static float *G_(const cls_model *m, int idx) { return model_base_grad(&m->base, idx); }

static dropout_desc head_dropout(const cls_model *m, const enc_ctx *c, uint32_t site) {
  dropout_desc d = enc_dropout(c, head_group(m), site, m->cfg.cls_dropout);
  d.T = 1; /* one row per sequence */
  return d;
}

/* [CLS] rows of the encoder output through the head into logits. */
static void head_forward(cls_model *m, const enc_ctx *c) {
  const int B = m->base.B, H = m->cfg.enc.hidden_size, C = m->cfg.C;
  k_gather_rows(m->x0, m->net.enc.hs[m->cfg.enc.num_hidden_layers], m->rows, B, H);
  dropout_desc d0 = head_dropout(m, c, 0), d1 = head_dropout(m, c, 1);
  const float *in = m->x0;
  if (m->cfg.kind == CLS_ELECTRA) {
    memcpy(m->x0d, m->x0, (size_t)B * H * sizeof(float));
    k_dropout(m->x0d, &d0, B, H);
    in = m->x0d;
  }
  cx_linear_fwd(&m->base.cx, m->z, in, P_(m, m->dw), B, H, H);
  if (m->cfg.kind == CLS_ELECTRA) {
    k_bias_act_fwd(m->z, m->a, P_(m, m->db), B, H, ACT_GELU);
  } else {
    k_bias_tanh_fwd(m->z, m->a, P_(m, m->db), B, H);
  }
  memcpy(m->ad, m->a, (size_t)B * H * sizeof(float));
  k_dropout(m->ad, &d1, B, H);
  cx_linear_fwd(&m->base.cx, m->logits, m->ad, P_(m, m->ow), B, H, C);
}

static void count_eval(const cls_model *m, double *g) {
  const int C = m->cfg.C;
  for (int i = 0; i < m->base.B; i++) {
    if (m->w[i] == 0) continue;
    const float *z = m->logits + (size_t)i * C;
    int best = 0;
    for (int k = 1; k < C; k++)
      if (z[k] > z[best]) best = k;
    g[C_PRED(best)] += 1;
    g[C_TRUE(m->lab[i])] += 1;
    if (best == m->lab[i]) g[C_TP(best)] += 1;
  }
}

static void c_forward(model *mm, const model_batch *b, const model_run *r, double *g) {
  cls_model *m = CM(mm);
  model_base_copy_batch(&m->base, b, r->train, r->seed, r->step, r->sample_base);
  double count = 0;
  for (int i = 0; i < b->B; i++) {
    m->rows[i] = i * b->T;
    int32_t y = b->next_sentence_labels[i];
    m->w[i] = y >= 0;
    m->lab[i] = y >= 0 ? y : 0;
    count += m->w[i];
  }
  enc_ctx c = model_base_ctx(&m->base);
  enc_net_forward(&c, &m->net, m->base.ids, m->base.seg);
  head_forward(m, &c);
  double den = r->sequences > 0 ? r->sequences : count, correct = 0;
  const float coef = den > 0 ? (float)(1.0 / den) : 0.0f;
  double xent = k_softmax_xent(m->logits, m->dlogits, P_(m, m->ob), m->lab, m->w, coef, b->B,
                               m->cfg.C, &correct);
  g[C_LOSS] += den > 0 ? xent / den : 0;
  g[C_XENT] += xent;
  g[C_CORRECT] += correct;
  g[C_COUNT] += count;
  if (!r->train) count_eval(m, g);
  m->base.have_forward = true;
}

static void c_backward(model *mm) {
  cls_model *m = CM(mm);
  CORE_ASSERT(m->base.have_forward);
  const int B = m->base.B, H = m->cfg.enc.hidden_size, C = m->cfg.C;
  enc_ctx c = model_base_ctx(&m->base);
  const float *ones = m->base.ones;
  dropout_desc d0 = head_dropout(m, &c, 0), d1 = head_dropout(m, &c, 1);
  cx_linear_bwd(&m->base.cx, m->dad, false, G_(m, m->ow), G_(m, m->ob), m->dlogits, m->ad,
                P_(m, m->ow), ones, B, H, C);
  k_dropout(m->dad, &d1, B, H);
  if (m->cfg.kind == CLS_ELECTRA) {
    k_act_bwd(m->dad, m->dad, m->z, B, H, ACT_GELU);
  } else {
    k_tanh_bwd(m->dad, m->a, B * H);
  }
  const float *in = m->cfg.kind == CLS_ELECTRA ? m->x0d : m->x0;
  cx_linear_bwd(&m->base.cx, m->dx0, false, G_(m, m->dw), G_(m, m->db), m->dad, in, P_(m, m->dw),
                ones, B, H, H);
  if (m->cfg.kind == CLS_ELECTRA) k_dropout(m->dx0, &d0, B, H);
  enc_announce(&c, m->dw, m->ob);
  memset(m->net.dh, 0, (size_t)B * m->base.Tcur * H * sizeof(float));
  k_scatter_add_rows(m->net.dh, m->dx0, m->rows, B, H);
  enc_net_backward(&c, &m->net, m->base.ids, m->base.seg, m->net.enc.dtmp);
  enc_announce(&c, m->net.emb.we, m->net.emb.ln_b);
}

/* ---- Metrics ------------------------------------------------------------------------ */
static const model_metric train_metrics[] = {
    {"loss", 6, "train/loss", 4},
    {"acc", 4, "train/accuracy", 3},
};

static void c_train_values(const double *g, double sequences, double *v) {
  (void)sequences;
  v[0] = model_ratio(g[C_XENT], g[C_COUNT]);
  v[1] = model_ratio(g[C_CORRECT], g[C_COUNT]);
}

static const model_metric eval_metrics[] = {
    {"dev_loss", 6, "dev/loss", 4},
    {"dev_accuracy", 5, "dev/accuracy", 4},
    {"dev_macro_f1", 5, "dev/macro_f1", 4},
};

/* Macro-F1 over the classes that occur among the labels or the
 * predictions (scikit-learn's default), F1 = 2 TP / (labels + predictions). */
static double macro_f1(const double *g) {
  double sum = 0;
  int n = 0;
  for (int k = 0; k < MODEL_MAX_LABELS; k++) {
    double d = g[C_TRUE(k)] + g[C_PRED(k)];
    if (d == 0) continue;
    sum += 2 * g[C_TP(k)] / d;
    n++;
  }
  return n ? sum / n : 0;
}

static void c_eval_values(const double *g, double batches, double sequences, double *v) {
  (void)batches;
  (void)sequences;
  v[0] = model_ratio(g[C_XENT], g[C_COUNT]);
  v[1] = model_ratio(g[C_CORRECT], g[C_COUNT]);
  v[2] = macro_f1(g);
}

/* ---- `mlmpi-train step` ------------------------------------------------------------- */
static unsigned c_fields(const model *m) {
  (void)m;
  return MODEL_FIELD_LABELS;
}

static int c_outputs(const model *mm, const model_batch *b, const double *g, model_output *o) {
  const cls_model *m = CM(mm);
  int64_t shape[2] = {b->B, m->cfg.C};
  int n = 0;
  status_t st;
  if ((st = model_output_scalar(&o[n++], "loss", g[C_LOSS])) ||
      (st = model_output_copy(&o[n++], "logits", DTYPE_F32, 2, shape, m->logits))) {
    model_outputs_free(o, n);
    return -1;
  }
  return n;
}

/* Softmax of the last forward's logits: probs (B, C). */
void classify_probs(const model *mm, float *probs) {
  const cls_model *m = CM(mm);
  const int C = m->cfg.C;
  for (int i = 0; i < m->base.B; i++) {
    const float *z = m->logits + (size_t)i * C;
    float *p = probs + (size_t)i * C, mx = z[0];
    for (int k = 1; k < C; k++) mx = z[k] > mx ? z[k] : mx;
    double s = 0;
    for (int k = 0; k < C; k++) s += p[k] = expf(z[k] - mx);
    for (int k = 0; k < C; k++) p[k] = (float)(p[k] / s);
  }
}

int classify_labels(const model *mm, const char *const **names) {
  const cls_model *m = CM(mm);
  *names = (const char *const *)m->cfg.labels;
  return m->cfg.C;
}

bool classify_is_head(const model *mm, int i) { return i >= CM(mm)->dw; }

/* ---- Export --------------------------------------------------------------------------- */
/* The vocabulary from the word embeddings: a classifier's or a pretraining
 * model's (BERT, a Hugging Face ELECTRA discriminator, or an mlmpi ELECTRA
 * checkpoint's discriminator). */
static status_t c_spec_from_weights(const st_file *w, const char *path, model_spec *spec) {
  static const char *const names[] = {"bert.embeddings.word_embeddings.weight",
                                      "electra.embeddings.word_embeddings.weight",
                                      "discriminator.electra.embeddings.word_embeddings.weight"};
  const st_tensor *we = NULL;
  for (size_t i = 0; i < sizeof names / sizeof names[0] && !we; i++) we = st_find(w, names[i]);
  if (!we || we->ndim != 2)
    return status_set(STATUS_FORMAT, "%s has no BERT or ELECTRA word embeddings", path);
  spec->vocab_size = (int)we->shape[0];
  return STATUS_OK;
}

static status_t c_export(const model *mm, const char *dir, char *what, size_t n) {
  const cls_model *m = CM(mm);
  const cls_config *c = &m->cfg;
  bool bert = c->kind == CLS_BERT;
  char path[4096 + 32];
  status_t st = model_write_hf_weights(&m->base.table, m->base.params, dir, "", NULL, NULL);
  snprintf(path, sizeof path, "%s/config.json", dir);
  hf_head head = {(const char *const *)c->labels, c->C, c->cls_dropout};
  if (st == STATUS_OK)
    st = model_write_hf_config(
        path, bert ? "BertForSequenceClassification" : "ElectraForSequenceClassification",
        bert ? "bert" : "electra", &c->enc, bert ? 0 : c->E, &head);
  snprintf(what, n, "%s (model.safetensors, config.json with %d labels)", dir, c->C);
  return st;
}

static bool no_preset(const char *p) {
  (void)p;
  return false;
}

static status_t bert_cls_create(model **out, const model_spec *s, const model_shape *sh);
static status_t electra_cls_create(model **out, const model_spec *s, const model_shape *sh);

#define CLASSIFY_OPS(kind_name, type, create_fn, help)                                            \
  {                                                                                               \
    .name = kind_name, .model_type = type, .task = "classify", .presets = "",                     \
    .has_preset = no_preset, .masking = MASK_BERT, .create = create_fn, .free = c_free,           \
    .describe = c_describe, .vocab_size = c_vocab_size, .params = model_common_params,            \
    .param_buf = model_common_param_buf, .grad_buf = model_common_grad_buf,                       \
    .use_grad_buf = model_common_use_grad_buf, .set_grad_ready = model_common_set_grad_ready,     \
    .init_weights = c_init_weights, .zero_grad = model_common_zero_grad,                          \
    .check_batch = c_check_batch, .forward = c_forward, .backward = c_backward,                   \
    .n_counters = N_COUNTERS, .n_eval_counters = N_EVAL_COUNTERS, .train_metrics = train_metrics, \
    .n_train_metrics = 2, .train_values = c_train_values, .eval_metrics = eval_metrics,           \
    .n_eval_metrics = 3, .eval_values = c_eval_values, .required_fields = c_fields,               \
    .allowed_fields = c_fields, .outputs = c_outputs, .step_help = help,                          \
    .spec_from_weights = c_spec_from_weights, .export_hf = c_export,                              \
  }

const model_ops bert_classify_ops = CLASSIFY_OPS(
    "bert-classify", "bert", bert_cls_create,
    "BertForSequenceClassification (BertConfig with id2label): the batch has input_ids,\n"
    "input_mask, segment_ids [B,T] I32 and labels [B] I32 (a row labelled < 0 is left out of\n"
    "the loss). OUT gets loss (the mean cross-entropy) and logits [B,num_labels].\n");
const model_ops electra_classify_ops = CLASSIFY_OPS(
    "electra-classify", "electra", electra_cls_create,
    "ElectraForSequenceClassification (ElectraConfig with id2label): batch and outputs as\n"
    "for BertForSequenceClassification.\n");

static status_t bert_cls_create(model **out, const model_spec *s, const model_shape *sh) {
  return cls_create(out, s, sh, CLS_BERT, &bert_classify_ops);
}
static status_t electra_cls_create(model **out, const model_spec *s, const model_shape *sh) {
  return cls_create(out, s, sh, CLS_ELECTRA, &electra_classify_ops);
}
