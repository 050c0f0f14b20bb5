/* gpt2_model.c: GPT-2's entry in the model table (model.h): its config from
 * a preset or config.json, its counters and metrics (loss, accuracy,
 * perplexity), its `step` batch and outputs and its Hugging Face export,
 * over gpt2.c. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpt2.h"
#include "model_impl.h"

extern const model_ops gpt2_model_ops; /* below */

#define GM(m) ((gpt2_model *)(m)->impl)

/* ---- Config and life cycle ------------------------------------------------------ */
static bool has_preset(const char *p) { return !strncmp(p, "gpt2", 4); }

static status_t config_of(const model_spec *s, gpt2_config *c) {
  status_t st;
  if (s->config_path && s->config_path[0]) {
    if ((st = gpt2_config_load(s->config_path, c))) return st;
  } else {
    if ((st = gpt2_preset(s->preset, c))) return st;
    c->vocab_size = s->vocab_size;
  }
  if (s->max_positions > 0) c->n_positions = s->max_positions;
  if (s->no_dropout) c->resid_pdrop = c->embd_pdrop = c->attn_pdrop = 0.0f;
  return model_spec_check(s, c->vocab_size, c->n_positions);
}

static void g_free(model *m) {
  if (!m) return;
  gpt2_free(GM(m));
  free(m);
}

static void free_impl(void *p) { gpt2_free(p); }

static status_t g_create(model **out, const model_spec *spec, const model_shape *sh) {
  gpt2_config c;
  gpt2_model *impl = NULL;
  *out = NULL;
  status_t st = config_of(spec, &c);
  if (st == STATUS_OK) st = gpt2_init(&impl, &c, sh->max_batch, sh->seq_len, sh->nthreads);
  if (st) return st;
  return model_wrap(out, &gpt2_model_ops, impl, gpt2_base(impl), free_impl);
}

static void g_describe(const model *m, char *buf, size_t n) {
  const gpt2_config *c = gpt2_get_config(GM(m));
  snprintf(buf, n, "GPT-2 %d layers, n_embd %d, %d heads, inner %d, positions %d, vocab %d",
           c->n_layer, c->n_embd, c->n_head, gpt2_inner(c), c->n_positions, c->vocab_size);
}

static int g_vocab_size(const model *m) { return gpt2_get_config(GM(m))->vocab_size; }

static void g_init_weights(model *m, uint64_t seed) { gpt2_init_weights(GM(m), seed); }

/* ---- Batches, forward, backward --------------------------------------------------- */
static status_t g_check_batch(const model *m, const model_batch *b) {
  return gpt2_check_batch(GM(m), b);
}

/* Counters: loss, correct (weighted), target weights. */
enum { C_LOSS, C_CORRECT, C_WSUM, N_COUNTERS };

static void g_forward(model *m, const model_batch *b, const model_run *r, double *g) {
  gpt2_losses ls;
  gpt2_forward(GM(m), b, r->train, r->seed, r->step, r->sample_base, r->mlm_den, &ls);
  g[C_LOSS] += ls.loss;
  g[C_CORRECT] += ls.correct;
  g[C_WSUM] += ls.weight_sum;
}

static void g_backward(model *m) { gpt2_backward(GM(m)); }

/* ---- Metrics ------------------------------------------------------------------------ */
static const model_metric train_metrics[] = {
    {"loss", 6, "train/loss", 4},
    {"lm_acc", 5, "train/lm_accuracy", 3},
};

static void g_train_values(const double *g, double sequences, double *v) {
  (void)sequences;
  v[0] = g[C_LOSS];
  v[1] = model_ratio(g[C_CORRECT], g[C_WSUM]);
}

static const model_metric eval_metrics[] = {
    {"eval_loss", 6, "eval/loss", 4},
    {"eval_ppl", 4, "eval/perplexity", 3},
    {"eval_lm_acc", 5, "eval/lm_accuracy", 4},
};

static void g_eval_values(const double *g, double batches, double sequences, double *v) {
  (void)sequences;
  v[0] = g[C_LOSS] / batches;
  v[1] = exp(v[0]);
  v[2] = model_ratio(g[C_CORRECT], g[C_WSUM]);
}

/* ---- `mlmpi-train step` ------------------------------------------------------------- */
static unsigned g_fields(const model *m) {
  (void)m;
  return MODEL_FIELD_CLM;
}

static int g_outputs(const model *m, const model_batch *b, const double *g, model_output *o) {
  const gpt2_model *gm = GM(m);
  int64_t lshape[3] = {b->B, b->T, gpt2_get_config(gm)->vocab_size};
  int n = 0;
  if (model_output_scalar(&o[n++], "loss", g[C_LOSS]) ||
      model_output_copy(&o[n++], "logits", DTYPE_F32, 3, lshape, gpt2_logits(gm))) {
    model_outputs_free(o, n);
    return -1;
  }
  return n;
}

/* ---- Export --------------------------------------------------------------------------- */
static status_t g_spec_from_weights(const st_file *w, const char *path, model_spec *spec) {
  const st_tensor *we = st_find(w, "transformer.wte.weight");
  if (!we || we->ndim != 2) return status_set(STATUS_FORMAT, "%s: no token embeddings", path);
  spec->vocab_size = (int)we->shape[0];
  return STATUS_OK;
}

static status_t write_config(const gpt2_config *c, const char *path) {
  static const char *const acts[] = {
      [ACT_GELU] = "gelu", [ACT_GELU_TANH] = "gelu_new", [ACT_RELU] = "relu"};
  cJSON *j = cJSON_CreateObject(), *arch = cJSON_CreateArray();
  if (!j || !arch) {
    cJSON_Delete(j);
    cJSON_Delete(arch);
    return status_set(STATUS_NOMEM, "out of memory writing %s", path);
  }
  cJSON_AddItemToArray(arch, cJSON_CreateString("GPT2LMHeadModel"));
  cJSON_AddItemToObject(j, "architectures", arch);
  cJSON_AddStringToObject(j, "model_type", "gpt2");
  cJSON_AddNumberToObject(j, "vocab_size", c->vocab_size);
  cJSON_AddNumberToObject(j, "n_embd", c->n_embd);
  cJSON_AddNumberToObject(j, "n_layer", c->n_layer);
  cJSON_AddNumberToObject(j, "n_head", c->n_head);
  cJSON_AddNumberToObject(j, "n_positions", c->n_positions);
  cJSON_AddNumberToObject(j, "n_inner", gpt2_inner(c));
  cJSON_AddStringToObject(j, "activation_function", acts[c->act]);
  cJSON_AddNumberToObject(j, "layer_norm_epsilon", c->layer_norm_epsilon);
  cJSON_AddNumberToObject(j, "resid_pdrop", c->resid_pdrop);
  cJSON_AddNumberToObject(j, "embd_pdrop", c->embd_pdrop);
  cJSON_AddNumberToObject(j, "attn_pdrop", c->attn_pdrop);
  cJSON_AddNumberToObject(j, "initializer_range", c->initializer_range);
  cJSON_AddBoolToObject(j, "scale_attn_weights", c->scale_attn_weights);
  cJSON_AddBoolToObject(j, "tie_word_embeddings", true);
  char *text = cJSON_Print(j);
  cJSON_Delete(j);
  if (!text) return status_set(STATUS_NOMEM, "out of memory writing %s", path);
  FILE *f = fopen(path, "w");
  bool ok = f && fputs(text, f) >= 0 && fputc('\n', f) != EOF;
  if (f && fclose(f) != 0) ok = false;
  cJSON_free(text);
  return ok ? STATUS_OK : status_set(STATUS_IO, "cannot write %s", path);
}

static status_t g_export(const model *m, const char *dir, char *what, size_t n) {
  const gpt2_model *gm = GM(m);
  char path[4096 + 32];
  status_t st = model_write_hf_weights(&m->base->table, m->base->params, dir, "", NULL, NULL);
  snprintf(path, sizeof path, "%s/config.json", dir);
  if (st == STATUS_OK) st = write_config(gpt2_get_config(gm), path);
  snprintf(what, n, "%s (model.safetensors, config.json)", dir);
  return st;
}

const model_ops gpt2_model_ops = {
    .name = "gpt2",
    .model_type = "gpt2",
    .presets = GPT2_PRESETS,
    .has_preset = has_preset,
    .masking = MASK_BERT, /* not used: a causal LM masks nothing */
    .create = g_create,
    .free = g_free,
    .describe = g_describe,
    .vocab_size = g_vocab_size,
    .params = model_common_params,
    .param_buf = model_common_param_buf,
    .grad_buf = model_common_grad_buf,
    .use_grad_buf = model_common_use_grad_buf,
    .set_grad_ready = model_common_set_grad_ready,
    .init_weights = g_init_weights,
    .zero_grad = model_common_zero_grad,
    .check_batch = g_check_batch,
    .forward = g_forward,
    .backward = g_backward,
    .n_counters = N_COUNTERS,
    .n_eval_counters = N_COUNTERS,
    .train_metrics = train_metrics,
    .n_train_metrics = sizeof train_metrics / sizeof train_metrics[0],
    .train_values = g_train_values,
    .eval_metrics = eval_metrics,
    .n_eval_metrics = sizeof eval_metrics / sizeof eval_metrics[0],
    .eval_values = g_eval_values,
    .required_fields = g_fields,
    .allowed_fields = g_fields,
    .outputs = g_outputs,
    .step_help =
        "GPT-2 (GPT2Config, model_type gpt2): the batch has input_ids, input_mask (1 real, 0\n"
        "padding at the end), target_ids [B,T] I32 (the next token at each position) and\n"
        "target_weights [B,T] F32 (0: no target); no segment_ids. OUT gets loss (Σ weight·CE /\n"
        "Σ weight) and logits [B,T,V].\n",
    .spec_from_weights = g_spec_from_weights,
    .export_hf = g_export,
};
