/* model.c: the model registry (see model.h) and what every model's table
 * shares: the batch view, the default run, output copies, and the checks of
 * a config against the data. */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_json.h"
#include "model_impl.h"

/* ---- The registry: one line a model (and its declaration). The first entry
 * also reads configs that name no model_type. ------------------------------ */
extern const model_ops bert_model_ops;       /* bert_model.c */
extern const model_ops electra_model_ops;    /* electra_model.c */
extern const model_ops bert_classify_ops;    /* classify.c */
extern const model_ops electra_classify_ops; /* classify.c */
extern const model_ops gpt2_model_ops;       /* gpt2_model.c */
static const model_ops *const registry[] = {
    &bert_model_ops,
    &electra_model_ops,
    &gpt2_model_ops,
    &bert_classify_ops,
    &electra_classify_ops,
};
enum { N_MODELS = sizeof registry / sizeof registry[0] };

const model_ops *model_by_name(const char *name) {
  for (int i = 0; i < N_MODELS; i++)
    if (!strcmp(registry[i]->name, name)) return registry[i];
  return NULL;
}

const model_ops *model_at(int i) { return i >= 0 && i < N_MODELS ? registry[i] : NULL; }

static bool same_task(const model_ops *m, const char *task) {
  return task ? m->task && !strcmp(m->task, task) : !m->task;
}

/* The pretraining models' model types or presets, for messages. */
static void known(char *buf, size_t n, bool presets) {
  size_t u = 0;
  buf[0] = 0;
  for (int i = 0; i < N_MODELS && u < n; i++)
    if (!registry[i]->task)
      u += (size_t)snprintf(buf + u, n - u, "%s%s", u ? ", " : "",
                            presets ? registry[i]->presets : registry[i]->model_type);
}

/* The entry of a model type and task. */
static const model_ops *entry(const char *model_type, const char *task) {
  for (int i = 0; i < N_MODELS; i++)
    if (!strcmp(model_type, registry[i]->model_type) && same_task(registry[i], task))
      return registry[i];
  return NULL;
}

/* "classify" when config.json's architectures name a sequence classifier. */
static const char *task_of(const cJSON *j) {
  const cJSON *a, *archs = cJSON_GetObjectItem(j, "architectures");
  cJSON_ArrayForEach(a, archs) {
    const char *s = cJSON_GetStringValue(a);
    size_t n = s ? strlen(s) : 0, k = strlen("ForSequenceClassification");
    if (n > k && !strcmp(s + n - k, "ForSequenceClassification")) return "classify";
  }
  return NULL;
}

static status_t lookup(const char *config_path, const char *preset, const char *task,
                       bool task_from_file, const model_ops **out) {
  char names[512];
  *out = NULL;
  if (config_path && config_path[0]) {
    /* An unreadable or malformed file is the first model's reader's to
     * report, naming the file. */
    cJSON *j = NULL;
    if (cfgj_read(config_path, &j) != STATUS_OK) {
      *out = entry(registry[0]->model_type, task);
      return STATUS_OK;
    }
    if (task_from_file) task = task_of(j);
    const cJSON *t = cJSON_GetObjectItem(j, "model_type");
    const char *type = cJSON_IsString(t) ? t->valuestring : registry[0]->model_type;
    status_t st = STATUS_OK;
    if (!(*out = entry(type, task))) {
      known(names, sizeof names, false);
      st = status_set(STATUS_CONFIG, "%s: model_type '%s' is not one mlmpi %s (%s)", config_path,
                      type, task ? "fine-tunes" : "trains", names);
    }
    cJSON_Delete(j);
    return st;
  }
  for (int i = 0; i < N_MODELS; i++)
    if (!registry[i]->task && registry[i]->has_preset(preset)) {
      *out = entry(registry[i]->model_type, task);
      if (*out) return STATUS_OK;
    }
  known(names, sizeof names, true);
  return status_set(STATUS_CONFIG, "model.preset: unknown preset '%s' (%s)", preset, names);
}

status_t model_lookup(const char *config_path, const char *preset, const model_ops **out) {
  return lookup(config_path, preset, NULL, true, out);
}

status_t model_lookup_task(const char *config_path, const char *preset, const char *task,
                           const model_ops **out) {
  return lookup(config_path, preset, task, false, out);
}

status_t model_create(model **out, const model_spec *spec, const model_shape *shape) {
  const model_ops *ops;
  *out = NULL;
  status_t st = model_lookup(spec->config_path, spec->preset, &ops);
  return st ? st : ops->create(out, spec, shape);
}

status_t model_set_precision(model *m, const char *precision) {
  return compute_open(&m->base->cx, precision, m->base->nthreads);
}

void model_free(model *m) {
  if (m) m->ops->free(m);
}

/* ---- What the tables share ---------------------------------------------------- */
status_t model_wrap(model **out, const model_ops *ops, void *impl, model_base *base,
                    void (*free_impl)(void *)) {
  model *m = calloc(1, sizeof *m);
  if (!m) {
    free_impl(impl);
    return status_set(STATUS_NOMEM, "out of memory creating the model");
  }
  *m = (model){.ops = ops, .impl = impl, .base = base};
  *out = m;
  return STATUS_OK;
}

const param_table *model_common_params(const model *m) { return &m->base->table; }
float *model_common_param_buf(model *m) { return m->base->params; }
float *model_common_grad_buf(model *m) { return m->base->grads; }
void model_common_use_grad_buf(model *m, float *buf) { model_base_use_grad_buf(m->base, buf); }
void model_common_set_grad_ready(model *m, bert_grad_ready_fn fn, void *ctx) {
  model_base_set_grad_ready(m->base, fn, ctx);
}
void model_common_zero_grad(model *m) { model_base_zero_grad(m->base); }

model_batch model_batch_of(const data_batch *b) {
  return (model_batch){.B = b->n,
                       .T = b->T,
                       .P = b->P,
                       .input_ids = b->input_ids,
                       .input_mask = b->input_mask,
                       .segment_ids = b->segment_ids,
                       .masked_lm_positions = b->masked_lm_positions,
                       .masked_lm_ids = b->masked_lm_ids,
                       .masked_lm_weights = b->masked_lm_weights,
                       .next_sentence_labels = b->next_sentence_labels,
                       .sampled_ids = NULL,
                       .target_ids = b->target_ids,
                       .target_weights = b->target_weights};
}

model_run model_run_default(void) { return (model_run){.train = true}; }

void model_outputs_free(model_output *o, int n) {
  for (int i = 0; i < n; i++) {
    mem_free(o[i].data);
    o[i].data = NULL;
  }
}

status_t model_output_copy(model_output *o, const char *name, dtype_t dtype, int ndim,
                           const int64_t *shape, const void *data) {
  size_t count = 1;
  snprintf(o->name, sizeof o->name, "%s", name);
  o->dtype = dtype;
  o->ndim = ndim;
  for (int d = 0; d < ndim; d++) count *= (size_t)(o->shape[d] = shape[d]);
  size_t bytes = count * dtype_size(dtype);
  o->data = mem_alloc(bytes ? bytes : 1, name);
  if (!o->data) return STATUS_NOMEM;
  memcpy(o->data, data, bytes);
  return STATUS_OK;
}

status_t model_output_scalar(model_output *o, const char *name, double v) {
  float f = (float)v;
  return model_output_copy(o, name, DTYPE_F32, 0, NULL, &f);
}

status_t model_spec_check(const model_spec *s, int vocab_size, int max_positions) {
  bool from_file = s->config_path && s->config_path[0];
  if (!from_file && s->vocab_size <= 0)
    return status_set(STATUS_CONFIG,
                      "model.config (a config.json with vocab_size) is needed when "
                      "the data are not shards (a preset takes its vocabulary from them)");
  if (from_file && s->vocab_size > 0 && vocab_size < s->vocab_size)
    return status_set(STATUS_CONFIG, "%s: vocab_size %d is smaller than the data's tokenizer (%d)",
                      s->config_path, vocab_size, s->vocab_size);
  if (max_positions < s->seq_len)
    return status_set(STATUS_CONFIG,
                      "data.seq_len %d exceeds the model's max_position_embeddings %d", s->seq_len,
                      max_positions);
  return STATUS_OK;
}

void model_score_hist_add(double *neg, double *pos, const float *z, const float *y,
                          const int32_t *mask, size_t n) {
  const double scale = MODEL_SCORE_BINS / (2 * MODEL_SCORE_RANGE);
  for (size_t i = 0; i < n; i++) {
    if (!mask[i]) continue;
    double b = floor(((double)z[i] + MODEL_SCORE_RANGE) * scale);
    int k = b < 0 ? 0 : b >= MODEL_SCORE_BINS ? MODEL_SCORE_BINS - 1 : (int)b;
    (y[i] > 0 ? pos : neg)[k] += 1;
  }
}

double model_score_auc(const double *neg, const double *pos) {
  double below = 0, n = 0, p = 0, wins = 0;
  for (int k = 0; k < MODEL_SCORE_BINS; k++) {
    wins += pos[k] * (below + 0.5 * neg[k]);
    below += neg[k];
    n += neg[k];
    p += pos[k];
  }
  return n > 0 && p > 0 ? wins / (n * p) : 0.5;
}

double model_binary_entropy(double p) {
  if (!(p > 0 && p < 1)) return 0;
  return -p * log(p) - (1 - p) * log(1 - p);
}
