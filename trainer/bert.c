/* bert.c: BertForPreTraining / BertForMaskedLM as Hugging Face transformers
 * defines them (post-LN encoder, tied MLM decoder, optional NSP head):
 * parameter table, initialisation, forward with the loss, backward. */
#include <math.h>
#include <stdlib.h>

#include "model_base.h"

/* The embeddings are stream group 0 and encoder layer l group l + 1 of the
 * dropout streams (rng_stream). */
struct bert_model {
  bert_config cfg;
  model_base base; /* table, buffers, arena, the last batch */
  enc_net net;     /* embeddings and encoder, no projection */
  mlm_head mlm;    /* cls.predictions */
  int pool_w, pool_b, sr_w, sr_b;

  /* Activations beyond the network's (net.enc.hs[L] is the encoder output);
   * the shared ones and scratch are the base's. */
  float *p0, *pooled, *nsp_logits, *dnsp; /* (B, H), (B, H), (B, 2), (B, 2) */
  /* Backward buffers; net.dh is the gradient of the encoder output. */
  float *dp0, *dpooled; /* (B, H) */
  /* The last forward's NSP labels and first-token rows (B), and run. */
  int32_t *nsp_lab, *cls_rows;
  bert_run run;
};

/* ---- Parameter table ---------------------------------------------------------- */
static status_t build_table(bert_model *m) {
  const bert_config *c = &m->cfg;
  const int64_t H = c->hidden_size;
  param_table *t = &m->base.table;
  status_t st;
  if ((st = emb_add_params(&m->net.emb, t, "bert.embeddings", c->vocab_size,
                           c->max_position_embeddings, c->type_vocab_size)) ||
      (st = encoder_add_params(&m->net.enc, t, "bert.encoder.layer")))
    return st;
  int bad = 0;
#define ADD(dst, d0, d1, name) bad |= ((dst) = enc_add_param(t, d0, d1, "%s", name)) < 0
  m->pool_w = m->pool_b = m->sr_w = m->sr_b = -1;
  if (c->nsp) {
    ADD(m->pool_w, H, H, "bert.pooler.dense.weight");
    ADD(m->pool_b, H, 0, "bert.pooler.dense.bias");
  }
  if (bad) return STATUS_NOMEM;
  m->mlm.we = m->net.emb.we;
  if ((st = mlm_head_add_params(&m->mlm, t, "cls.predictions.transform", "cls.predictions.bias")))
    return st;
  if (c->nsp) {
    ADD(m->sr_w, 2, H, "cls.seq_relationship.weight");
    ADD(m->sr_b, 2, 0, "cls.seq_relationship.bias");
  }
#undef ADD
  return bad ? STATUS_NOMEM : STATUS_OK;
}

/* ---- Arena -------------------------------------------------------------------- */
static size_t layout_arena(void *model, float *a) {
  bert_model *m = model;
  const bert_config *c = &m->cfg;
  const size_t H = (size_t)c->hidden_size;
  const size_t B = (size_t)m->base.maxB, T = (size_t)m->base.T, M = B * (size_t)m->base.P;
  size_t u = 0;
  enc_net_carve(&m->net, a, &u, B, T);
  mlm_head_carve(&m->mlm, a, &u, M);
  m->p0 = arena_carve(a, &u, B * H);
  m->pooled = arena_carve(a, &u, B * H);
  m->nsp_logits = arena_carve(a, &u, B * 2);
  m->dnsp = arena_carve(a, &u, B * 2);
  m->dp0 = arena_carve(a, &u, B * H);
  m->dpooled = arena_carve(a, &u, B * H);
  model_base_carve_shared(&m->base, a, &u, H);
  return u;
}

static status_t alloc_nsp_copy(bert_model *m) {
  size_t B = (size_t)m->base.maxB;
  m->nsp_lab = mem_alloc(B * sizeof(int32_t), "batch next_sentence_labels");
  m->cls_rows = mem_alloc(B * sizeof(int32_t), "batch first-token rows");
  return m->nsp_lab && m->cls_rows ? STATUS_OK : STATUS_NOMEM;
}

status_t bert_init(bert_model **out, const bert_config *cfg, int max_batch, int seq_len,
                   int max_pred, int nthreads) {
  *out = NULL;
  status_t st;
  if ((st = bert_config_check(cfg)) ||
      (st = model_base_check_shape(max_batch, seq_len, max_pred, cfg->max_position_embeddings)))
    return st;
  bert_model *m = calloc(1, sizeof *m);
  if (!m) return status_set(STATUS_NOMEM, "out of memory creating the model");
  m->cfg = *cfg;
  model_base_init(&m->base, max_batch, seq_len, max_pred, nthreads);
  m->mlm = (mlm_head){.Hin = cfg->hidden_size,
                      .E = cfg->hidden_size,
                      .V = cfg->vocab_size,
                      .act = cfg->hidden_act,
                      .eps = cfg->layer_norm_eps};
  if ((st = enc_net_init(&m->net, cfg->hidden_size, cfg->hidden_size, cfg->intermediate_size,
                         cfg->num_attention_heads, cfg->num_hidden_layers, cfg->hidden_act,
                         cfg->hidden_dropout_prob, cfg->attention_probs_dropout_prob,
                         cfg->layer_norm_eps, 0)) ||
      (st = build_table(m)) || (st = model_base_alloc(&m->base, layout_arena, m)) ||
      (st = alloc_nsp_copy(m)))
    goto fail;
  *out = m;
  return STATUS_OK;
fail:
  bert_free(m);
  return st;
}

void bert_free(bert_model *m) {
  if (!m) return;
  model_base_free(&m->base);
  enc_net_free(&m->net);
  mem_free(m->nsp_lab);
  mem_free(m->cls_rows);
  free(m);
}

const bert_config *bert_get_config(const bert_model *m) { return &m->cfg; }
const param_table *bert_params(const bert_model *m) { return &m->base.table; }
float *bert_param_buf(bert_model *m) { return m->base.params; }
float *bert_grad_buf(bert_model *m) { return m->base.grads; }
size_t bert_arena_bytes(const bert_model *m) { return m->base.arena_floats * sizeof(float); }
const float *bert_mlm_logits(const bert_model *m) { return m->mlm.logits; }
const float *bert_nsp_logits(const bert_model *m) { return m->cfg.nsp ? m->nsp_logits : NULL; }

void bert_set_grad_ready(bert_model *m, bert_grad_ready_fn fn, void *ctx) {
  model_base_set_grad_ready(&m->base, fn, ctx);
}
void bert_use_grad_buf(bert_model *m, float *buf) { model_base_use_grad_buf(&m->base, buf); }
void bert_zero_grad(bert_model *m) { model_base_zero_grad(&m->base); }
model_base *bert_base(bert_model *m) { return &m->base; }

status_t bert_set_precision(bert_model *m, const char *precision) {
  return compute_open(&m->base.cx, precision, m->base.nthreads);
}

/* ---- Initialisation ----------------------------------------------------------- */
void bert_init_weights(bert_model *m, uint64_t seed) {
  enc_init_weights(&m->base.table, m->base.params, m->cfg.initializer_range, seed);
}

/* ---- Batch checks ------------------------------------------------------------- */
status_t bert_check_batch(const bert_model *m, const bert_batch *b) {
  const bert_config *c = &m->cfg;
  const model_batch x = MODEL_BASE_BATCH(b);
  status_t st;
  if ((st = model_base_check_batch(&m->base, &x, c->vocab_size, c->type_vocab_size)) ||
      (st = model_base_check_weights(&x)))
    return st;
  if (c->nsp && !b->next_sentence_labels)
    return status_set(STATUS_ARG,
                      "batch tensor 'next_sentence_labels' is missing (the model has "
                      "an NSP head)");
  if (c->nsp)
    return enc_check_range("next_sentence_labels", b->next_sentence_labels, (size_t)b->B, 0, 2, 1);
  return STATUS_OK;
}

/* ---- Forward ------------------------------------------------------------------ */
static float *P_(const bert_model *m, int idx) { return model_base_param(&m->base, idx); }
static float *G_(const bert_model *m, int idx) { return model_base_grad(&m->base, idx); }

static void copy_batch(bert_model *m, const bert_batch *b, const bert_run *run) {
  const model_batch x = MODEL_BASE_BATCH(b);
  model_base_copy_batch(&m->base, &x, run->train, run->seed, run->step, run->sample_base);
  m->run = *run;
  for (int i = 0; i < b->B; i++) {
    m->cls_rows[i] = i * b->T;
    m->nsp_lab[i] = m->cfg.nsp ? b->next_sentence_labels[i] : 0;
  }
}

static void heads_fwd(bert_model *m, bert_losses *out) {
  const bert_config *c = &m->cfg;
  const int H = c->hidden_size;
  const float *top = m->net.enc.hs[c->num_hidden_layers];
  mlm_result r;
  mlm_head_forward(&m->base, &m->mlm, top, m->run.mlm_denominator, m->run.grad_scale, &r);
  out->mlm_loss = r.loss;
  out->mlm_weight_sum = r.weight_sum;
  out->mlm_correct = r.correct;
  out->nsp_loss = 0.0;
  out->nsp_correct = 0;
  if (c->nsp) {
    const int B = m->base.B;
    k_gather_rows(m->p0, top, m->cls_rows, B, H);
    cx_linear_fwd(&m->base.cx, m->pooled, m->p0, P_(m, m->pool_w), B, H, H);
    k_bias_tanh_fwd(m->pooled, m->pooled, P_(m, m->pool_b), B, H);
    cx_linear_fwd(&m->base.cx, m->nsp_logits, m->pooled, P_(m, m->sr_w), B, H, 2);
    double nden = m->run.nsp_denominator > 0 ? m->run.nsp_denominator : B, good = 0.0;
    double nce = k_softmax_xent(m->nsp_logits, m->dnsp, P_(m, m->sr_b), m->nsp_lab, NULL,
                                (float)(m->run.grad_scale / nden), B, 2, &good);
    out->nsp_loss = nce / nden;
    out->nsp_correct = (int)good;
  }
  out->loss = out->mlm_loss + out->nsp_loss;
}

void bert_forward(bert_model *m, const bert_batch *b, const bert_run *run, bert_losses *out) {
  copy_batch(m, b, run);
  enc_ctx c = model_base_ctx(&m->base);
  enc_net_forward(&c, &m->net, m->base.ids, m->base.seg);
  heads_fwd(m, out);
  m->base.have_forward = true;
}

/* ---- Backward ----------------------------------------------------------------- */
static void heads_bwd(bert_model *m, const enc_ctx *ec) {
  const bert_config *c = &m->cfg;
  const int H = c->hidden_size;
  mlm_head_backward(&m->base, ec, &m->mlm, m->net.dh);
  if (!c->nsp) return;
  const int B = m->base.B;
  cx_linear_bwd(&m->base.cx, m->dpooled, false, G_(m, m->sr_w), G_(m, m->sr_b), m->dnsp, m->pooled,
                P_(m, m->sr_w), m->base.ones, B, H, 2);
  k_tanh_bwd(m->dpooled, m->pooled, B * H);
  cx_linear_bwd(&m->base.cx, m->dp0, false, G_(m, m->pool_w), G_(m, m->pool_b), m->dpooled, m->p0,
                P_(m, m->pool_w), m->base.ones, B, H, H);
  enc_announce(ec, m->sr_w, m->sr_b);
  enc_announce(ec, m->pool_w, m->pool_b);
  k_scatter_add_rows(m->net.dh, m->dp0, m->cls_rows, B, H);
}

void bert_backward(bert_model *m) {
  CORE_ASSERT(m->base.have_forward);
  enc_ctx c = model_base_ctx(&m->base);
  heads_bwd(m, &c);
  enc_net_backward(&c, &m->net, m->base.ids, m->base.seg, m->net.enc.dtmp);
  enc_announce(&c, m->net.emb.we, m->net.emb.ln_b);
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
