/* bert_model.c: BERT's entry in the model table (model.h): its config from
 * a preset or config.json and the data, its counters and metrics (MLM and
 * NSP), its `step` outputs and its Hugging Face export, over bert.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model_impl.h"

extern const model_ops bert_model_ops; /* below */

#define BM(m) ((bert_model *)(m)->impl)

/* ---- Config and life cycle ------------------------------------------------------ */
static bool has_preset(const char *p) { return !strncmp(p, "bert-", 5); }

static status_t config_of(const model_spec *s, bert_config *c) {
  status_t st;
  if (s->config_path && s->config_path[0]) {
    if ((st = bert_config_load(s->config_path, c))) return st;
  } else {
    if ((st = bert_preset(s->preset, c))) return st;
    c->vocab_size = s->vocab_size;
  }
  if (s->nsp >= 0) c->nsp = s->nsp;
  if (s->max_positions > 0) c->max_position_embeddings = s->max_positions;
  if (s->no_dropout) c->hidden_dropout_prob = c->attention_probs_dropout_prob = 0.0f;
  return model_spec_check(s, c->vocab_size, c->max_position_embeddings);
}

static void b_free(model *m) {
  if (!m) return;
  bert_free(BM(m));
  free(m);
}

static void free_impl(void *p) { bert_free(p); }

static status_t b_create(model **out, const model_spec *spec, const model_shape *sh) {
  bert_config c;
  bert_model *impl = NULL;
  *out = NULL;
  status_t st = config_of(spec, &c);
  if (st == STATUS_OK)
    st = bert_init(&impl, &c, sh->max_batch, sh->seq_len, sh->max_pred, sh->nthreads);
  if (st) return st;
  return model_wrap(out, &bert_model_ops, impl, bert_base(impl), free_impl);
}

static void b_describe(const model *m, char *buf, size_t n) {
  const bert_config *c = bert_get_config(BM(m));
  snprintf(buf, n, "BERT %d layers, hidden %d, %d heads, vocab %d%s", c->num_hidden_layers,
           c->hidden_size, c->num_attention_heads, c->vocab_size, c->nsp ? ", NSP head" : "");
}

static int b_vocab_size(const model *m) { return bert_get_config(BM(m))->vocab_size; }

/* ---- Parameters ------------------------------------------------------------------ */
static void b_init_weights(model *m, uint64_t seed) { bert_init_weights(BM(m), seed); }

/* ---- Batches, forward, backward --------------------------------------------------- */
static bert_batch batch_of(const model_batch *b) {
  return (bert_batch){b->B,
                      b->T,
                      b->P,
                      b->input_ids,
                      b->input_mask,
                      b->segment_ids,
                      b->masked_lm_positions,
                      b->masked_lm_ids,
                      b->masked_lm_weights,
                      b->next_sentence_labels};
}

static status_t b_check_batch(const model *m, const model_batch *b) {
  bert_batch bb = batch_of(b);
  return bert_check_batch(BM(m), &bb);
}

/* Counters: loss, mlm_loss, nsp_loss, MLM correct, MLM weights, NSP correct. */
enum { C_LOSS, C_MLM_LOSS, C_NSP_LOSS, C_MLM_CORRECT, C_MLM_WSUM, C_NSP_CORRECT, N_COUNTERS };

static void b_forward(model *m, const model_batch *b, const model_run *r, double *g) {
  bert_batch bb = batch_of(b);
  bert_run run = bert_run_default();
  run.train = r->train;
  run.seed = r->seed;
  run.step = r->step;
  run.sample_base = r->sample_base;
  run.mlm_denominator = r->mlm_den;
  run.nsp_denominator = r->sequences;
  bert_losses ls;
  bert_forward(BM(m), &bb, &run, &ls);
  g[C_LOSS] += ls.loss;
  g[C_MLM_LOSS] += ls.mlm_loss;
  g[C_NSP_LOSS] += ls.nsp_loss;
  g[C_MLM_CORRECT] += ls.mlm_correct;
  g[C_MLM_WSUM] += ls.mlm_weight_sum;
  g[C_NSP_CORRECT] += ls.nsp_correct;
}

static void b_backward(model *m) { bert_backward(BM(m)); }

/* ---- Metrics ------------------------------------------------------------------------ */
static const model_metric train_metrics[] = {
    {"loss", 6, "train/loss", 4}, {"mlm_loss", 6, NULL, 0},
    {"nsp_loss", 6, NULL, 0},     {"mlm_acc", 5, "train/mlm_accuracy", 3},
    {"nsp_acc", 5, NULL, 0},
};

static void b_train_values(const double *g, double sequences, double *v) {
  v[0] = g[C_LOSS];
  v[1] = g[C_MLM_LOSS];
  v[2] = g[C_NSP_LOSS];
  v[3] = model_ratio(g[C_MLM_CORRECT], g[C_MLM_WSUM]);
  v[4] = g[C_NSP_CORRECT] / sequences;
}

static const model_metric eval_metrics[] = {
    {"eval_loss", 6, "eval/loss", 4},
    {"eval_mlm_acc", 5, "eval/mlm_accuracy", 4},
    {"eval_nsp_acc", 5, NULL, 0},
};

static void b_eval_values(const double *g, double batches, double sequences, double *v) {
  v[0] = g[C_LOSS] / batches;
  v[1] = model_ratio(g[C_MLM_CORRECT], g[C_MLM_WSUM]);
  v[2] = g[C_NSP_CORRECT] / (batches * sequences);
}

/* ---- `mlmpi-train step` ------------------------------------------------------------- */
static unsigned b_required(const model *m) {
  return MODEL_FIELD_MLM | (bert_get_config(BM(m))->nsp ? MODEL_FIELD_NSP : 0u);
}

static int b_outputs(const model *m, const model_batch *b, const double *g, model_output *o) {
  const bert_model *bm = BM(m);
  const bert_config *c = bert_get_config(bm);
  int64_t lshape[3] = {b->B, b->P, c->vocab_size}, nshape[2] = {b->B, 2};
  int n = 0;
  status_t st;
  if ((st = model_output_scalar(&o[n++], "loss", g[C_LOSS])) ||
      (st = model_output_scalar(&o[n++], "mlm_loss", g[C_MLM_LOSS])) ||
      (st = model_output_copy(&o[n++], "mlm_logits", DTYPE_F32, 3, lshape, bert_mlm_logits(bm))))
    goto fail;
  if (c->nsp &&
      ((st = model_output_scalar(&o[n++], "nsp_loss", g[C_NSP_LOSS])) ||
       (st = model_output_copy(&o[n++], "nsp_logits", DTYPE_F32, 2, nshape, bert_nsp_logits(bm)))))
    goto fail;
  return n;
fail:
  model_outputs_free(o, n);
  return -1;
}

/* ---- Export --------------------------------------------------------------------------- */
static status_t b_spec_from_weights(const st_file *w, const char *path, model_spec *spec) {
  const st_tensor *we = st_find(w, "bert.embeddings.word_embeddings.weight");
  if (!we || we->ndim != 2) return status_set(STATUS_FORMAT, "%s: no word embeddings", path);
  spec->vocab_size = (int)we->shape[0];
  spec->nsp = st_find(w, "bert.pooler.dense.weight") != NULL;
  return STATUS_OK;
}

static status_t b_export(const model *m, const char *dir, char *what, size_t n) {
  const bert_model *bm = BM(m);
  const bert_config *c = bert_get_config(bm);
  char path[4096 + 32];
  status_t st = model_write_hf_weights(bert_params(bm), bert_param_buf((bert_model *)bm), dir, "",
                                       NULL, NULL);
  snprintf(path, sizeof path, "%s/config.json", dir);
  if (st == STATUS_OK)
    st = model_write_hf_config(path, c->nsp ? "BertForPreTraining" : "BertForMaskedLM", "bert", c,
                               0, NULL);
  snprintf(what, n, "%s (model.safetensors, config.json)", dir);
  return st;
}

const model_ops bert_model_ops = {
    .name = "bert",
    .model_type = "bert",
    .presets = BERT_PRESETS,
    .has_preset = has_preset,
    .masking = MASK_BERT,
    .create = b_create,
    .free = b_free,
    .describe = b_describe,
    .vocab_size = b_vocab_size,
    .params = model_common_params,
    .param_buf = model_common_param_buf,
    .grad_buf = model_common_grad_buf,
    .use_grad_buf = model_common_use_grad_buf,
    .set_grad_ready = model_common_set_grad_ready,
    .init_weights = b_init_weights,
    .zero_grad = model_common_zero_grad,
    .check_batch = b_check_batch,
    .forward = b_forward,
    .backward = b_backward,
    .n_counters = N_COUNTERS,
    .n_eval_counters = N_COUNTERS,
    .train_metrics = train_metrics,
    .n_train_metrics = sizeof train_metrics / sizeof train_metrics[0],
    .train_values = b_train_values,
    .eval_metrics = eval_metrics,
    .n_eval_metrics = sizeof eval_metrics / sizeof eval_metrics[0],
    .eval_values = b_eval_values,
    .required_fields = b_required,
    .allowed_fields = b_required,
    .outputs = b_outputs,
    .step_help =
        "BERT (BertConfig): the batch has input_ids, input_mask, segment_ids [B,T] I32;\n"
        "masked_lm_positions, masked_lm_ids [B,P] I32; masked_lm_weights [B,P] F32;\n"
        "next_sentence_labels [B,1] I32 with NSP. OUT gets loss, mlm_loss, nsp_loss, mlm_logits\n"
        "[B,P,V], nsp_logits [B,2] (the NSP outputs only when the model has an NSP head).\n",
    .spec_from_weights = b_spec_from_weights,
    .export_hf = b_export,
};
