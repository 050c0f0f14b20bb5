/* electra_model.c: ELECTRA's entry in the model table (model.h): its config
 * from a preset or config.json and the data, its counters and metrics
 * (generator MLM and replaced-token detection), its `step` outputs and its
 * export as two Hugging Face directories, over electra.c. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "electra.h"
#include "model_impl.h"

extern const model_ops electra_model_ops; /* below */

#define EM(m) ((electra_model *)(m)->impl)

/* ---- Config and life cycle ------------------------------------------------------ */
static bool has_preset(const char *p) { return !strncmp(p, "electra-", 8); }

static status_t config_of(const model_spec *s, electra_config *c) {
  status_t st;
  bool from_file = s->config_path && s->config_path[0];
  if (from_file) {
    if ((st = electra_config_load(s->config_path, c))) return st;
  } else {
    if ((st = electra_preset(s->preset, c))) return st;
    c->vocab_size = s->vocab_size;
  }
  if (s->max_positions > 0) c->max_position_embeddings = s->max_positions;
  if (s->no_dropout) c->hidden_dropout_prob = c->attention_probs_dropout_prob = 0.0f;
  if ((st = model_spec_check(s, c->vocab_size, c->max_position_embeddings))) return st;
  return from_file ? STATUS_OK : electra_config_check(c);
}

static void e_free(model *m) {
  if (!m) return;
  electra_free(EM(m));
  free(m);
}

static void free_impl(void *p) { electra_free(p); }

static status_t e_create(model **out, const model_spec *spec, const model_shape *sh) {
  electra_config c;
  electra_model *impl = NULL;
  *out = NULL;
  status_t st = config_of(spec, &c);
  if (st == STATUS_OK)
    st = electra_init(&impl, &c, sh->max_batch, sh->seq_len, sh->max_pred, sh->nthreads);
  if (st) return st;
  return model_wrap(out, &electra_model_ops, impl, electra_base(impl), free_impl);
}

static void e_describe(const model *m, char *buf, size_t n) {
  const electra_config *c = electra_get_config(EM(m));
  snprintf(buf, n,
           "ELECTRA discriminator %d layers, hidden %d, %d heads; generator %d layers, hidden %d, "
           "%d heads; embeddings %d, vocab %d",
           c->disc.num_hidden_layers, c->disc.hidden_size, c->disc.num_attention_heads,
           c->gen.num_hidden_layers, c->gen.hidden_size, c->gen.num_attention_heads,
           c->embedding_size, c->vocab_size);
}

static int e_vocab_size(const model *m) { return electra_get_config(EM(m))->vocab_size; }

/* ---- Parameters ------------------------------------------------------------------ */
static void e_init_weights(model *m, uint64_t seed) { electra_init_weights(EM(m), seed); }

/* ---- Batches, forward, backward --------------------------------------------------- */
/* NSP labels, where the data have them, are not used. */
static electra_batch batch_of(const model_batch *b) {
  return (electra_batch){b->B,
                         b->T,
                         b->P,
                         b->input_ids,
                         b->input_mask,
                         b->segment_ids,
                         b->masked_lm_positions,
                         b->masked_lm_ids,
                         b->masked_lm_weights,
                         b->sampled_ids};
}

static status_t e_check_batch(const model *m, const model_batch *b) {
  electra_batch eb = batch_of(b);
  return electra_check_batch(EM(m), &eb);
}

/* Counters: loss, the generator's MLM loss, the discriminator's loss, MLM
 * correct, MLM weights, real tokens, tokens classified right, replaced,
 * predicted replaced, both. */
enum {
  C_LOSS,
  C_MLM_LOSS,
  C_DISC_LOSS,
  C_MLM_CORRECT,
  C_MLM_WSUM,
  C_TOKENS,
  C_DISC_CORRECT,
  C_REPLACED,
  C_PREDICTED,
  C_TRUE_POSITIVE,
  C_NEG,                            /* MODEL_SCORE_BINS: logits of original real tokens */
  C_POS = C_NEG + MODEL_SCORE_BINS, /* and of replaced ones */
  N_COUNTERS = C_POS + MODEL_SCORE_BINS
};

/* The samples are keyed by (seed, step, global sample index). */
static void e_forward(model *m, const model_batch *b, const model_run *r, double *g) {
  electra_batch eb = batch_of(b);
  electra_run run = electra_run_default();
  run.train = r->train;
  run.seed = r->seed;
  run.step = r->step;
  run.sample_base = r->sample_base;
  run.mlm_denominator = r->mlm_den;
  run.disc_denominator = r->token_den;
  electra_losses ls;
  electra_forward(EM(m), &eb, &run, &ls);
  g[C_LOSS] += ls.loss;
  g[C_MLM_LOSS] += ls.mlm_loss;
  g[C_DISC_LOSS] += ls.disc_loss;
  g[C_MLM_CORRECT] += ls.mlm_correct;
  g[C_MLM_WSUM] += ls.mlm_weight_sum;
  g[C_TOKENS] += ls.disc_tokens;
  g[C_DISC_CORRECT] += ls.disc_correct;
  g[C_REPLACED] += ls.replaced;
  g[C_PREDICTED] += ls.predicted;
  g[C_TRUE_POSITIVE] += ls.true_positive;
  if (!r->train) /* the held-out AUC's histograms */
    model_score_hist_add(g + C_NEG, g + C_POS, electra_discriminator_logits(EM(m)),
                         electra_replaced_labels(EM(m)), b->input_mask, (size_t)b->B * b->T);
}

static void e_backward(model *m) { electra_backward(EM(m)); }

/* ---- Metrics ------------------------------------------------------------------------ */
static const model_metric train_metrics[] = {
    {"loss", 6, "train/loss", 4},
    {"mlm_loss", 6, "train/mlm_loss", 0},
    {"disc_loss", 6, "train/disc_loss", 0},
    {"mlm_acc", 5, "train/mlm_accuracy", 3},
    {"disc_acc", 5, "train/disc_accuracy", 3},
    {"disc_precision", 5, "train/disc_precision", 0},
    {"disc_recall", 5, "train/disc_recall", 0},
    {"replaced_frac", 5, NULL, 0},
};

static void e_train_values(const double *g, double sequences, double *v) {
  (void)sequences;
  v[0] = g[C_LOSS];
  v[1] = g[C_MLM_LOSS];
  v[2] = g[C_DISC_LOSS];
  v[3] = model_ratio(g[C_MLM_CORRECT], g[C_MLM_WSUM]);
  v[4] = model_ratio(g[C_DISC_CORRECT], g[C_TOKENS]);
  v[5] = model_ratio(g[C_TRUE_POSITIVE], g[C_PREDICTED]);
  v[6] = model_ratio(g[C_TRUE_POSITIVE], g[C_REPLACED]);
  v[7] = model_ratio(g[C_REPLACED], g[C_TOKENS]);
}

static const model_metric eval_metrics[] = {
    {"eval_loss", 6, "eval/loss", 4},
    {"eval_mlm_acc", 5, "eval/mlm_accuracy", 4},
    {"eval_disc_acc", 5, NULL, 4},
    {"eval_replaced_frac", 5, NULL, 0},
    {"eval_disc_auc", 5, "eval/disc_auc", 4},
    {"eval_disc_prior_gap", 5, "eval/disc_prior_gap", 4},
};

static void e_eval_values(const double *g, double batches, double sequences, double *v) {
  (void)sequences;
  v[0] = g[C_LOSS] / batches;
  v[1] = model_ratio(g[C_MLM_CORRECT], g[C_MLM_WSUM]);
  v[2] = model_ratio(g[C_DISC_CORRECT], g[C_TOKENS]);
  v[3] = model_ratio(g[C_REPLACED], g[C_TOKENS]);
  /* How well the scores rank replaced above original tokens, and how far
   * the held-out log-loss is below that of always predicting the base rate
   * (> 0: the discriminator knows more than the replaced fraction). */
  v[4] = model_score_auc(g + C_NEG, g + C_POS);
  v[5] = model_binary_entropy(v[3]) - g[C_DISC_LOSS] / batches;
}

/* ---- `mlmpi-train step` ------------------------------------------------------------- */
static unsigned e_required(const model *m) {
  (void)m;
  return MODEL_FIELD_MLM;
}
static unsigned e_allowed(const model *m) {
  (void)m;
  return MODEL_FIELD_MLM | MODEL_FIELD_SAMPLED;
}

static int e_outputs(const model *m, const model_batch *b, const double *g, model_output *o) {
  const electra_model *em = EM(m);
  int64_t gshape[3] = {b->B, b->P, electra_get_config(em)->vocab_size}, dshape[2] = {b->B, b->T},
          sshape[2] = {b->B, b->P};
  int n = 0;
  status_t st;
  if ((st = model_output_scalar(&o[n++], "loss", g[C_LOSS])) ||
      (st = model_output_scalar(&o[n++], "mlm_loss", g[C_MLM_LOSS])) ||
      (st = model_output_scalar(&o[n++], "disc_loss", g[C_DISC_LOSS])) ||
      (st = model_output_copy(&o[n++], "generator_logits", DTYPE_F32, 3, gshape,
                              electra_generator_logits(em))) ||
      (st = model_output_copy(&o[n++], "discriminator_logits", DTYPE_F32, 2, dshape,
                              electra_discriminator_logits(em))) ||
      (st = model_output_copy(&o[n++], "sampled_ids", DTYPE_I32, 2, sshape,
                              electra_sampled_ids(em)))) {
    model_outputs_free(o, n);
    return -1;
  }
  return n;
}

/* ---- Export --------------------------------------------------------------------------- */
static status_t e_spec_from_weights(const st_file *w, const char *path, model_spec *spec) {
  const st_tensor *we = st_find(w, "discriminator.electra.embeddings.word_embeddings.weight");
  if (!we || we->ndim != 2) return status_set(STATUS_FORMAT, "%s: no word embeddings", path);
  spec->vocab_size = (int)we->shape[0];
  return STATUS_OK;
}

static status_t net_config_json(const char *path, const electra_config *c, bool generator) {
  const electra_net_config *n = generator ? &c->gen : &c->disc;
  bert_config b = {.vocab_size = c->vocab_size,
                   .hidden_size = n->hidden_size,
                   .num_hidden_layers = n->num_hidden_layers,
                   .num_attention_heads = n->num_attention_heads,
                   .intermediate_size = n->intermediate_size,
                   .max_position_embeddings = c->max_position_embeddings,
                   .type_vocab_size = c->type_vocab_size,
                   .hidden_act = c->hidden_act,
                   .hidden_dropout_prob = c->hidden_dropout_prob,
                   .attention_probs_dropout_prob = c->attention_probs_dropout_prob,
                   .layer_norm_eps = c->layer_norm_eps,
                   .initializer_range = c->initializer_range};
  return model_write_hf_config(path, generator ? "ElectraForMaskedLM" : "ElectraForPreTraining",
                               "electra", &b, c->embedding_size, NULL);
}

/* Two directories: discriminator/ (ElectraForPreTraining) and generator/
 * (ElectraForMaskedLM), each with its own copy of the shared embeddings
 * (stored once, under the discriminator's names). */
static status_t e_export(const model *m, const char *dir, char *what, size_t n) {
  const electra_model *em = EM(m);
  const float *w = electra_param_buf((electra_model *)em);
  status_t st = STATUS_OK;
  if (mkdir(dir, 0755) != 0 && errno != EEXIST)
    st = status_set(STATUS_IO, "cannot create %s: %s", dir, strerror(errno));
  char sub[4096 + 32], path[4096 + 64];
  for (int g = 0; g < 2 && st == STATUS_OK; g++) {
    snprintf(sub, sizeof sub, "%s/%s", dir, g ? "generator" : "discriminator");
    st = model_write_hf_weights(electra_params(em), w, sub, g ? "generator." : "discriminator.",
                                g ? "discriminator.electra.embeddings." : NULL, "discriminator.");
    snprintf(path, sizeof path, "%s/config.json", sub);
    if (st == STATUS_OK) st = net_config_json(path, electra_get_config(em), g == 1);
  }
  snprintf(what, n, "%s/discriminator and %s/generator", dir, dir);
  return st;
}

const model_ops electra_model_ops = {
    .name = "electra",
    .model_type = "electra",
    .presets = "electra-small, electra-base",
    .has_preset = has_preset,
    .masking = MASK_ELECTRA,
    .create = e_create,
    .free = e_free,
    .describe = e_describe,
    .vocab_size = e_vocab_size,
    .params = model_common_params,
    .param_buf = model_common_param_buf,
    .grad_buf = model_common_grad_buf,
    .use_grad_buf = model_common_use_grad_buf,
    .set_grad_ready = model_common_set_grad_ready,
    .init_weights = e_init_weights,
    .zero_grad = model_common_zero_grad,
    .check_batch = e_check_batch,
    .forward = e_forward,
    .backward = e_backward,
    .n_counters = C_NEG,
    .n_eval_counters = N_COUNTERS,
    .train_metrics = train_metrics,
    .n_train_metrics = sizeof train_metrics / sizeof train_metrics[0],
    .train_values = e_train_values,
    .eval_metrics = eval_metrics,
    .n_eval_metrics = sizeof eval_metrics / sizeof eval_metrics[0],
    .eval_values = e_eval_values,
    .required_fields = e_required,
    .allowed_fields = e_allowed,
    .outputs = e_outputs,
    .step_help =
        "ELECTRA (\"model_type\": \"electra\": the discriminator's ElectraConfig with a\n"
        "\"generator\" object and gen_weight, disc_weight): the batch has no next_sentence_labels\n"
        "and may carry sampled_ids [B,P] I32, the generator's samples (otherwise drawn from\n"
        "--seed); OUT gets loss, mlm_loss, disc_loss, generator_logits [B,P,V],\n"
        "discriminator_logits [B,T], sampled_ids [B,P].\n",
    .spec_from_weights = e_spec_from_weights,
    .export_hf = e_export,
};
