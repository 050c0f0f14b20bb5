/* finetune.c: what `mlmpi-train finetune` adds to the training run: the
 * labelled task as the batch source (task.train, and task.dev evaluated
 * after every epoch), the classifier built on the pretrained encoder
 * (model.init: a pretraining checkpoint or a Hugging Face directory) or a
 * fresh one (the control), the pretrained weights loaded by name, and the
 * best epoch's model kept in ckpt.dir/best. The loop itself is train.c's. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ckpt.h"
#include "run.h"

static bool exists(const char *dir, const char *name) {
  char p[CFG_PATH + 64];
  struct stat sb;
  snprintf(p, sizeof p, "%s/%s", dir, name);
  return stat(p, &sb) == 0;
}

/* ---- model.init ----------------------------------------------------------------- */
/* The encoder model.init names: a Hugging Face directory (config.json and
 * model.safetensors) or an mlmpi checkpoint (its effective config's
 * model.config / model.preset), and the tokenizer it records. */
static status_t read_init(run_state *s, char *tok, size_t n, uint64_t *tok_fp) {
  const char *dir = s->cfg.model_init;
  tok[0] = 0;
  *tok_fp = 0;
  if (exists(dir, "config.json") && !exists(dir, "meta.json")) {
    snprintf(s->init_config, sizeof s->init_config, "%s/config.json", dir);
    snprintf(s->init_weights, sizeof s->init_weights, "%s/model.safetensors", dir);
    return STATUS_OK;
  }
  char path[CFG_PATH + 64];
  cJSON *meta;
  status_t st = ckpt_resolve(dir, path, sizeof path);
  if (st || (st = ckpt_read_meta(path, &meta))) return status_prefix("model.init"), st;
  snprintf(s->init_weights, sizeof s->init_weights, "%s/model.safetensors", path);
  ckpt_config_value(meta, "model.config", s->init_config, sizeof s->init_config);
  ckpt_config_value(meta, "model.preset", s->init_preset, sizeof s->init_preset);
  const cJSON *t = cJSON_GetObjectItem(meta, "tokenizer");
  const char *p = cJSON_GetStringValue(cJSON_GetObjectItem(t, "path")),
             *fp = cJSON_GetStringValue(cJSON_GetObjectItem(t, "fingerprint"));
  if (p) snprintf(tok, n, "%s", p);
  if (fp) *tok_fp = strtoull(fp, NULL, 16);
  cJSON_Delete(meta);
  return STATUS_OK;
}

/* The tensor of the init file for the classifier's `name`: the same name,
 * or an mlmpi ELECTRA checkpoint's discriminator copy. */
static const st_tensor *init_tensor(const st_file *w, const char *name) {
  char alt[PARAM_NAME_MAX + 32];
  const st_tensor *x = st_find(w, name);
  if (x) return x;
  snprintf(alt, sizeof alt, "discriminator.%s", name);
  return st_find(w, alt);
}

/* ---- Sources ---------------------------------------------------------------------- */
static status_t open_task(run_state *s, const char *path, const char *key, task_data *labels_of,
                          task_data **out) {
  const train_config *c = &s->cfg;
  task_options o = {.path = path,
                    .tokenizer = s->tokenizer,
                    .text_field = c->task_text_field,
                    .pair_field = c->task_pair_field,
                    .label_field = c->task_label_field,
                    .seq_len = c->data.seq_len};
  if (labels_of) {
    o.labels = task_labels(labels_of);
    o.n_labels = task_n_labels(labels_of);
  }
  status_t st = task_open(out, &o);
  if (st) status_prefix("%s", key);
  return st;
}

/* What checkpoints record of the task: how to read inputs, the labels, the
 * model. */
static char *task_json(const run_state *s, double dev_accuracy, int64_t epoch) {
  const train_config *c = &s->cfg;
  cJSON *j = cJSON_CreateObject();
  cJSON_AddStringToObject(j, "type", c->task_type);
  cJSON_AddItemToObject(j, "labels",
                        cJSON_CreateStringArray(task_labels(s->task), task_n_labels(s->task)));
  cJSON_AddStringToObject(j, "text_field", c->task_text_field);
  cJSON_AddStringToObject(j, "pair_field", c->task_pair_field);
  cJSON_AddStringToObject(j, "label_field", c->task_label_field);
  cJSON_AddNumberToObject(j, "seq_len", c->data.seq_len);
  if (epoch > 0) {
    cJSON_AddNumberToObject(j, "epoch", (double)epoch);
    cJSON_AddNumberToObject(j, "dev_accuracy", dev_accuracy);
  }
  char *text = cJSON_PrintUnformatted(j);
  cJSON_Delete(j);
  return text;
}

static status_t settle_tokenizer(run_state *s) {
  const train_config *c = &s->cfg;
  char rec[CFG_PATH] = "";
  uint64_t rec_fp = 0;
  status_t st = c->model_init[0] ? read_init(s, rec, sizeof rec, &rec_fp) : STATUS_OK;
  if (st) return st;
  const char *tok = c->data_tokenizer[0] ? c->data_tokenizer : rec;
  if (!tok[0])
    return status_set(STATUS_CONFIG, "data.tokenizer is not set and model.init %s records none",
                      c->model_init);
  snprintf(s->tokenizer, sizeof s->tokenizer, "%s", tok);
  s->tokenizer_fp = rec_fp;
  return STATUS_OK;
}

/* The tokenizer read must be the one the pretrained model was trained with. */
static status_t check_tokenizer(run_state *s) {
  uint64_t fp = task_tokenizer_fingerprint(s->task);
  if (s->tokenizer_fp && s->tokenizer_fp != fp)
    return status_set(STATUS_CONFIG,
                      "data.tokenizer %s is not the tokenizer model.init %s was pretrained with "
                      "(fingerprint %016llx, recorded %016llx)",
                      s->tokenizer, s->cfg.model_init, (unsigned long long)fp,
                      (unsigned long long)s->tokenizer_fp);
  return STATUS_OK;
}

status_t ft_open_sources(run_state *s) {
  train_config *c = &s->cfg;
  status_t st;
  s->best = -1;
  if ((st = settle_tokenizer(s)) ||
      (st = open_task(s, c->task_train, "task.train", NULL, &s->task)) || (st = check_tokenizer(s)))
    return st;
  if (task_n_labels(s->task) < 2)
    return status_set(STATUS_CONFIG,
                      "task.train %s has one label ('%s'): a classifier needs two or more",
                      c->task_train, task_labels(s->task)[0]);
  /* Checkpoints record the model that runs: model.init's, not the defaults. */
  if (c->model_init[0]) {
    if (strlen(s->init_config) >= sizeof c->model_config)
      return status_set(STATUS_CONFIG, "model.init: path too long");
    memcpy(c->model_config, s->init_config, strlen(s->init_config) + 1);
    if (s->init_preset[0]) snprintf(c->model_preset, sizeof c->model_preset, "%s", s->init_preset);
  }
  if (c->task_dev[0] && (st = open_task(s, c->task_dev, "task.dev", s->task, &s->dev_task)))
    return st;
  batch_source_options o = {.config = c->data,
                            .global_batch = (uint64_t)c->global_batch,
                            .task = s->task,
                            .task_seed = (uint64_t)c->seed};
  if ((st = batch_source_open(&s->data, &o))) return st;
  const uint64_t gb = (uint64_t)c->global_batch;
  s->steps_per_epoch = (int64_t)task_steps_per_epoch(task_examples(s->task), gb);
  c->steps = c->epochs * s->steps_per_epoch;
  if (c->sched.total_steps == 0) c->sched.total_steps = c->steps;
  if (s->dev_task) {
    o.task = s->dev_task;
    o.ordered = true;
    if ((st = batch_source_open(&s->holdout, &o))) return st;
    c->eval_every = s->steps_per_epoch;
    c->eval_batches = (int64_t)((task_examples(s->dev_task) + gb - 1) / gb);
  } else {
    c->eval_every = 0;
    if (s->rank == 0)
      LOG_WARN(TRAINER, "task.dev is not set: no evaluation, and the last epoch's model is kept");
  }
  /* The effective config now holds the steps the epochs make. */
  free(s->cfg_text);
  s->cfg_text = train_config_dump(c);
  s->task_json = task_json(s, 0, 0);
  if (!s->cfg_text || !s->task_json) return status_set(STATUS_NOMEM, "out of memory");
  return STATUS_OK;
}

/* ---- The model ------------------------------------------------------------------------ */
/* A preset's checkpoint (model.init without a config.json): its vocabulary
 * from its weights, which must cover the tokenizer's. */
static status_t init_vocab(run_state *s, const model_ops *ops, int *vocab) {
  st_file *w;
  model_spec ws = {.nsp = -1};
  status_t st = st_read(s->init_weights, &w);
  if (st) return status_prefix("model.init"), st;
  st = ops->spec_from_weights(w, s->init_weights, &ws);
  st_free(w);
  if (st == STATUS_OK && *vocab > ws.vocab_size)
    st = status_set(STATUS_CONFIG,
                    "data.tokenizer %s has %d tokens, more than model.init's vocabulary (%d)",
                    s->tokenizer, *vocab, ws.vocab_size);
  *vocab = ws.vocab_size;
  return st;
}

status_t ft_model_spec(run_state *s, model_spec *spec, const model_ops **ops) {
  const train_config *c = &s->cfg;
  int vocab = task_vocab_size(s->task);
  /* With model.init, ft_open_sources set model.config / model.preset to its model. */
  status_t st = model_lookup_task(c->model_config, c->model_preset, "classify", ops);
  if (st == STATUS_OK && c->model_init[0] && !c->model_config[0]) st = init_vocab(s, *ops, &vocab);
  *spec = (model_spec){.config_path = c->model_config,
                       .preset = c->model_preset,
                       .vocab_size = vocab,
                       .nsp = -1,
                       .seq_len = c->data.seq_len,
                       .num_labels = task_n_labels(s->task),
                       .labels = task_labels(s->task)};
  return st;
}

status_t ft_load_init(run_state *s) {
  const model_ops *m = s->mops;
  m->init_weights(s->model, (uint64_t)s->cfg.seed);
  if (!s->cfg.model_init[0]) return STATUS_OK;
  st_file *w;
  status_t st = st_read(s->init_weights, &w);
  if (st) return status_prefix("model.init"), st;
  const param_table *t = m->params(s->model);
  float *params = m->param_buf(s->model);
  char fresh[512] = "";
  size_t u = 0;
  int loaded = 0;
  for (int i = 0; i < t->n && st == STATUS_OK; i++) {
    const param_info *p = &t->p[i];
    const st_tensor *x = init_tensor(w, p->name);
    bool shape_ok = x && x->dtype == DTYPE_F32 && x->ndim == p->ndim && x->numel == p->numel;
    for (int d = 0; shape_ok && d < p->ndim; d++) shape_ok = x->shape[d] == p->shape[d];
    if (shape_ok) {
      memcpy(params + p->offset, x->data, p->numel * sizeof(float));
      loaded++;
    } else if (!classify_is_head(s->model, i)) {
      st = status_set(STATUS_FORMAT, "model.init %s: tensor '%s' is %s", s->init_weights, p->name,
                      x ? "of another dtype or shape" : "missing");
    } else if (u < sizeof fresh) {
      u += (size_t)snprintf(fresh + u, sizeof fresh - u, "%s%s", u ? ", " : "", p->name);
    }
  }
  st_free(w);
  if (st == STATUS_OK)
    LOG_INFO(TRAINER, "weights from %s: %d tensors; fresh: %s", s->init_weights, loaded,
             fresh[0] ? fresh : "none");
  return st;
}

/* ---- Epochs --------------------------------------------------------------------------- */
/* The best dev accuracy of an earlier attempt (ckpt.dir/best), when resuming. */
static double earlier_best(const run_state *s) {
  char path[CFG_PATH + 16];
  cJSON *meta;
  snprintf(path, sizeof path, "%s/best", s->cfg.ckpt_dir);
  if (!s->cfg.ckpt_dir[0] || !exists(path, "meta.json") || ckpt_read_meta(path, &meta)) return -1;
  const cJSON *a = cJSON_GetObjectItem(cJSON_GetObjectItem(meta, "task"), "dev_accuracy");
  double v = cJSON_IsNumber(a) ? a->valuedouble : -1;
  cJSON_Delete(meta);
  return v;
}

status_t ft_after_eval(run_state *s, int64_t step, const double *values) {
  const int64_t epoch = (step + 1) / s->steps_per_epoch;
  if (s->best < 0 && step + 1 > s->steps_per_epoch) s->best = earlier_best(s);
  /* values: dev_loss, dev_accuracy, dev_macro_f1; ties keep the earlier epoch. */
  if (values[1] <= s->best) return STATUS_OK;
  s->best = values[1];
  if (s->rank == 0)
    LOG_INFO(TRAINER, "epoch %lld: the best dev accuracy so far (%.4f)", (long long)epoch,
             values[1]);
  char *json = task_json(s, values[1], epoch);
  if (!json) return status_set(STATUS_NOMEM, "out of memory");
  status_t st = run_save_as(s, step + 1, "best", json);
  free(json);
  return st;
}

void ft_free(run_state *s) {
  task_free(s->task);
  task_free(s->dev_task);
  free(s->task_json);
}
