/* electra.c: ELECTRA's generator (Hugging Face ElectraForMaskedLM) and
 * discriminator (ElectraForPreTraining) over one parameter table, with
 * shared embeddings: forward (MLM loss, Gumbel-max sampling, replaced-token
 * detection loss) and backward into the flat gradient buffer. */
#include "electra.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model_base.h"

enum { GEN = 0, DISC = 1 };

struct electra_model {
  electra_config cfg;
  model_base base; /* table, buffers, arena, the last batch */
  /* The two networks; their emb blocks name the same (shared) tensors with
   * each network's dropout streams, proj_* is electra.embeddings_project. */
  enc_net net[2];
  mlm_head gen_head;          /* generator_predictions, generator_lm_head.bias */
  int dh_w, dh_b, dp_w, dp_b; /* discriminator_predictions.{dense,dense_prediction} */

  /* Activations; the shared ones and scratch are the base's. */
  float *gumbel; /* nthreads * V uniforms */
  /* Discriminator head over the N = B*T tokens. */
  float *u, *ua, *da;      /* (N, H) dense before / after the activation, its gradient */
  float *dlogit, *ddlogit; /* (N) logits, their gradient */
  float *demb_tmp;         /* (N, E) embeddings backward scratch */
  /* The last forward's samples (M), the discriminator's input and labels
   * (N), and run. */
  int32_t *samples, *dids;
  float *labels;
  electra_run run;
};

static float *P_(const electra_model *m, int idx) { return model_base_param(&m->base, idx); }
static float *G_(const electra_model *m, int idx) { return model_base_grad(&m->base, idx); }

/* ---- Parameter table ---------------------------------------------------------- */
/* Shared embeddings first, then the generator, then the discriminator:
 * backward finishes them in the reverse order, so announcements descend. */
static status_t build_table(electra_model *m) {
  const electra_config *c = &m->cfg;
  const int64_t E = c->embedding_size;
  param_table *t = &m->base.table;
  emb_block *e = &m->net[DISC].emb;
  status_t st = emb_add_params(e, t, "discriminator.electra.embeddings", c->vocab_size,
                               c->max_position_embeddings, c->type_vocab_size);
  if (st) return st;
  const uint32_t gen_group = m->net[GEN].emb.layer;
  m->net[GEN].emb = *e; /* the same tensors, the generator's dropout streams */
  m->net[GEN].emb.layer = gen_group;
  int bad = 0;
#define ADD(dst, d0, d1, name) bad |= ((dst) = enc_add_param(t, d0, d1, "%s", name)) < 0
  for (int k = GEN; k <= DISC; k++) {
    enc_net *n = &m->net[k];
    const char *who = k == GEN ? "generator" : "discriminator";
    const int64_t H = n->enc.H;
    if (H != E) {
      bad |= (n->proj_w = enc_add_param(t, H, E, "%s.electra.embeddings_project.weight", who)) < 0;
      bad |= (n->proj_b = enc_add_param(t, H, 0, "%s.electra.embeddings_project.bias", who)) < 0;
    }
    if (bad) return STATUS_NOMEM;
    char prefix[64];
    snprintf(prefix, sizeof prefix, "%s.electra.encoder.layer", who);
    if ((st = encoder_add_params(&n->enc, t, prefix))) return st;
    if (k == GEN) {
      m->gen_head.we = e->we;
      if ((st = mlm_head_add_params(&m->gen_head, t, "generator.generator_predictions",
                                    "generator.generator_lm_head.bias")))
        return st;
    } else {
      ADD(m->dh_w, H, H, "discriminator.discriminator_predictions.dense.weight");
      ADD(m->dh_b, H, 0, "discriminator.discriminator_predictions.dense.bias");
      ADD(m->dp_w, 1, H, "discriminator.discriminator_predictions.dense_prediction.weight");
      ADD(m->dp_b, 1, 0, "discriminator.discriminator_predictions.dense_prediction.bias");
    }
  }
#undef ADD
  return bad ? STATUS_NOMEM : STATUS_OK;
}

/* ---- Arena -------------------------------------------------------------------- */
static size_t layout_arena(void *model, float *a) {
  electra_model *m = model;
  const electra_config *c = &m->cfg;
  const size_t E = (size_t)c->embedding_size, V = (size_t)c->vocab_size;
  const size_t Hg = (size_t)c->gen.hidden_size, Hd = (size_t)c->disc.hidden_size;
  const size_t B = (size_t)m->base.maxB, T = (size_t)m->base.T, N = B * T,
               M = B * (size_t)m->base.P, nt = (size_t)m->base.nthreads;
  size_t u = 0;
  for (int k = GEN; k <= DISC; k++) enc_net_carve(&m->net[k], a, &u, B, T);
  mlm_head_carve(&m->gen_head, a, &u, M);
  m->gumbel = arena_carve(a, &u, nt * V);
  m->u = arena_carve(a, &u, N * Hd);
  m->ua = arena_carve(a, &u, N * Hd);
  m->da = arena_carve(a, &u, N * Hd);
  m->dlogit = arena_carve(a, &u, N);
  m->ddlogit = arena_carve(a, &u, N);
  m->demb_tmp = arena_carve(a, &u, N * E);
  size_t C = E > Hg ? E : Hg;
  model_base_carve_shared(&m->base, a, &u, C > Hd ? C : Hd);
  return u;
}

static status_t alloc_sample_copy(electra_model *m) {
  size_t N = (size_t)m->base.maxB * m->base.T, M = (size_t)m->base.maxB * m->base.P;
  m->dids = mem_alloc(N * sizeof(int32_t), "the discriminator's input");
  m->labels = mem_alloc(N * sizeof(float), "replaced-token labels");
  m->samples = mem_alloc(M * sizeof(int32_t), "generator samples");
  return m->dids && m->labels && m->samples ? STATUS_OK : STATUS_NOMEM;
}

static status_t init_nets(electra_model *m) {
  const electra_config *c = &m->cfg;
  for (int k = GEN; k <= DISC; k++) {
    const electra_net_config *n = k == GEN ? &c->gen : &c->disc;
    status_t st = enc_net_init(&m->net[k], c->embedding_size, n->hidden_size, n->intermediate_size,
                               n->num_attention_heads, n->num_hidden_layers, c->hidden_act,
                               c->hidden_dropout_prob, c->attention_probs_dropout_prob,
                               c->layer_norm_eps, k == GEN ? ELECTRA_GEN_GROUP : 0);
    if (st) return st;
  }
  /* The generator's prediction head is erf GELU whatever hidden_act says
   * (Hugging Face's ElectraGeneratorPredictions). */
  m->gen_head = (mlm_head){.Hin = c->gen.hidden_size,
                           .E = c->embedding_size,
                           .V = c->vocab_size,
                           .act = ACT_GELU,
                           .eps = c->layer_norm_eps};
  return STATUS_OK;
}

status_t electra_init(electra_model **out, const electra_config *cfg, int max_batch, int seq_len,
                      int max_pred, int nthreads) {
  *out = NULL;
  status_t st;
  if ((st = electra_config_check(cfg)) ||
      (st = model_base_check_shape(max_batch, seq_len, max_pred, cfg->max_position_embeddings)))
    return st;
  electra_model *m = calloc(1, sizeof *m);
  if (!m) return status_set(STATUS_NOMEM, "out of memory creating the model");
  m->cfg = *cfg;
  model_base_init(&m->base, max_batch, seq_len, max_pred, nthreads);
  if ((st = init_nets(m)) || (st = build_table(m)) ||
      (st = model_base_alloc(&m->base, layout_arena, m)) || (st = alloc_sample_copy(m)))
    goto fail;
  *out = m;
  return STATUS_OK;
fail:
  electra_free(m);
  return st;
}

void electra_free(electra_model *m) {
  if (!m) return;
  model_base_free(&m->base);
  enc_net_free(&m->net[GEN]);
  enc_net_free(&m->net[DISC]);
  mem_free(m->dids);
  mem_free(m->labels);
  mem_free(m->samples);
  free(m);
}

const electra_config *electra_get_config(const electra_model *m) { return &m->cfg; }
const param_table *electra_params(const electra_model *m) { return &m->base.table; }
float *electra_param_buf(electra_model *m) { return m->base.params; }
float *electra_grad_buf(electra_model *m) { return m->base.grads; }
const float *electra_generator_logits(const electra_model *m) { return m->gen_head.logits; }
const float *electra_discriminator_logits(const electra_model *m) { return m->dlogit; }
const int32_t *electra_sampled_ids(const electra_model *m) { return m->samples; }
const float *electra_replaced_labels(const electra_model *m) { return m->labels; }

void electra_set_grad_ready(electra_model *m, bert_grad_ready_fn fn, void *ctx) {
  model_base_set_grad_ready(&m->base, fn, ctx);
}
void electra_use_grad_buf(electra_model *m, float *buf) { model_base_use_grad_buf(&m->base, buf); }
void electra_zero_grad(electra_model *m) { model_base_zero_grad(&m->base); }
model_base *electra_base(electra_model *m) { return &m->base; }

void electra_init_weights(electra_model *m, uint64_t seed) {
  enc_init_weights(&m->base.table, m->base.params, m->cfg.initializer_range, seed);
}

electra_run electra_run_default(void) { return (electra_run){.train = true, .grad_scale = 1.0f}; }

/* ---- Batch checks ------------------------------------------------------------- */
status_t electra_check_batch(const electra_model *m, const electra_batch *b) {
  const electra_config *c = &m->cfg;
  const model_batch x = MODEL_BASE_BATCH(b);
  status_t st;
  if ((st = model_base_check_batch(&m->base, &x, c->vocab_size, c->type_vocab_size)) ||
      (b->sampled_ids && (st = enc_check_range("sampled_ids", b->sampled_ids, (size_t)b->B * b->P,
                                               0, c->vocab_size, b->P))) ||
      (st = model_base_check_weights(&x)))
    return st;
  /* A position takes one sample: weighted slots of a sequence must differ. */
  for (int s = 0; s < b->B; s++)
    for (int j = 0; j < b->P; j++) {
      size_t i = (size_t)s * b->P + (size_t)j;
      if (!(b->masked_lm_weights[i] > 0)) continue;
      for (int k = 0; k < j; k++) {
        size_t h = (size_t)s * b->P + (size_t)k;
        if (b->masked_lm_weights[h] > 0 && b->masked_lm_positions[h] == b->masked_lm_positions[i])
          return status_set(STATUS_ARG,
                            "batch tensor 'masked_lm_positions' repeats position %d in sequence "
                            "%d (slots %d and %d both have weight)",
                            b->masked_lm_positions[i], s, k, j);
      }
    }
  return STATUS_OK;
}

/* ---- Forward ------------------------------------------------------------------ */
static void copy_batch(electra_model *m, const electra_batch *b, const electra_run *run) {
  const model_batch x = MODEL_BASE_BATCH(b);
  model_base_copy_batch(&m->base, &x, run->train, run->seed, run->step, run->sample_base);
  m->run = *run;
  for (size_t i = 0; i < (size_t)b->B * b->P; i++)
    m->samples[i] = b->sampled_ids && b->masked_lm_weights[i] > 0 ? b->sampled_ids[i] : 0;
}

/* Generator head at the masked slots and its MLM loss (weighted by
 * gen_weight in the gradient). */
static void gen_head_fwd(electra_model *m, electra_losses *out) {
  const electra_config *c = &m->cfg;
  mlm_result r;
  mlm_head_forward(&m->base, &m->gen_head, m->net[GEN].enc.hs[c->gen.num_hidden_layers],
                   m->run.mlm_denominator, c->gen_weight * m->run.grad_scale, &r);
  out->mlm_loss = r.loss;
  out->mlm_weight_sum = r.weight_sum;
  out->mlm_correct = r.correct;
}

/* Gumbel-max: the first v maximising logit_v / τ - log(-log u_v), which
 * is a draw from softmax(logits / τ). */
static void draw_samples(electra_model *m) {
  const model_base *b = &m->base;
  rng_key k = {.seed = m->run.seed, .step = m->run.step, .stream = ELECTRA_STREAM_SAMPLE};
  /* tau 1 divides exactly: x / 1 is x. */
  k_gumbel_max(m->samples, m->gen_head.logits, b->mlm_w, b->gidx, k, m->run.sample_base,
               b->B * b->Pcur, b->Pcur, b->Tcur, m->cfg.vocab_size, m->cfg.sample_temperature,
               m->gumbel, b->nthreads);
}

/* The discriminator's input: the original tokens with the samples at the
 * weighted slots; label 1 where a sample differs from the original. */
static void build_disc_input(electra_model *m) {
  const int N = m->base.B * m->base.Tcur, M = m->base.B * m->base.Pcur;
  memcpy(m->dids, m->base.ids, (size_t)N * sizeof(int32_t));
  for (int n = 0; n < N; n++) m->labels[n] = 0.0f;
  for (int i = 0; i < M; i++) {
    if (!(m->base.mlm_w[i] > 0)) continue;
    m->dids[m->base.gidx[i]] = m->samples[i];
    m->labels[m->base.gidx[i]] = m->samples[i] != m->base.mlm_ids[i] ? 1.0f : 0.0f;
  }
}

/* Discriminator head on every token and the sigmoid cross-entropy over the
 * real ones (Hugging Face ElectraForPreTraining's loss). */
static void disc_head_fwd(electra_model *m, electra_losses *out) {
  const electra_config *c = &m->cfg;
  const int H = c->disc.hidden_size, N = m->base.B * m->base.Tcur;
  const float *X = m->net[DISC].enc.hs[c->disc.num_hidden_layers];
  cx_linear_fwd(&m->base.cx, m->u, X, P_(m, m->dh_w), N, H, H);
  k_bias_act_fwd(m->u, m->ua, P_(m, m->dh_b), N, H, c->hidden_act);
  cx_linear_fwd(&m->base.cx, m->dlogit, m->ua, P_(m, m->dp_w), N, H, 1);
  k_add_bias(m->dlogit, P_(m, m->dp_b), N, 1);
  double count = 0.0; /* the real tokens */
  for (int n = 0; n < N; n++) count += m->base.mask[n] ? 1.0 : 0.0;
  double den = m->run.disc_denominator > 0 ? m->run.disc_denominator : count;
  double coef = den > 0 ? c->disc_weight * m->run.grad_scale / den : 0.0;
  k_bce_sums s = k_sigmoid_bce(m->ddlogit, m->dlogit, m->labels, m->base.mask, coef, N);
  out->disc_loss = den > 0 ? s.loss / den : 0.0;
  out->disc_tokens = count;
  out->disc_correct = s.correct;
  out->replaced = s.replaced;
  out->predicted = s.predicted;
  out->true_positive = s.true_positive;
}

void electra_forward(electra_model *m, const electra_batch *b, const electra_run *run,
                     electra_losses *out) {
  memset(out, 0, sizeof *out);
  copy_batch(m, b, run);
  enc_ctx c = model_base_ctx(&m->base);
  enc_net_forward(&c, &m->net[GEN], m->base.ids, m->base.seg);
  gen_head_fwd(m, out);
  if (!b->sampled_ids) draw_samples(m);
  build_disc_input(m);
  enc_net_forward(&c, &m->net[DISC], m->dids, m->base.seg);
  disc_head_fwd(m, out);
  out->loss = m->cfg.gen_weight * out->mlm_loss + m->cfg.disc_weight * out->disc_loss;
  m->base.have_forward = true;
}

/* ---- Backward ----------------------------------------------------------------- */
static void disc_head_bwd(electra_model *m, const enc_ctx *c) {
  const electra_config *cf = &m->cfg;
  const int H = cf->disc.hidden_size, N = m->base.B * m->base.Tcur;
  const float *X = m->net[DISC].enc.hs[cf->disc.num_hidden_layers];
  cx_linear_bwd(&m->base.cx, m->da, false, G_(m, m->dp_w), G_(m, m->dp_b), m->ddlogit, m->ua,
                P_(m, m->dp_w), m->base.ones, N, H, 1);
  k_act_bwd(m->da, m->da, m->u, N, H, cf->hidden_act);
  cx_linear_bwd(&m->base.cx, m->net[DISC].dh, false, G_(m, m->dh_w), G_(m, m->dh_b), m->da, X,
                P_(m, m->dh_w), m->base.ones, N, H, H);
  enc_announce(c, m->dh_w, m->dp_b);
}

void electra_backward(electra_model *m) {
  CORE_ASSERT(m->base.have_forward);
  enc_ctx c = model_base_ctx(&m->base);
  disc_head_bwd(m, &c);
  /* Each network's backward ends in the shared embeddings (added to, not
   * announced). */
  enc_net_backward(&c, &m->net[DISC], m->dids, m->base.seg, m->demb_tmp);
  mlm_head_backward(&m->base, &c, &m->gen_head, m->net[GEN].dh);
  enc_net_backward(&c, &m->net[GEN], m->base.ids, m->base.seg, m->demb_tmp);
  const emb_block *e = &m->net[DISC].emb;
  enc_announce(&c, e->we, e->ln_b);
}
