/* source.c: the batch sources of dataset.h, one table each: shards read
 * in-process, BERT TFRecords with static masks, the dataset service's
 * client (holding local shards too when data.path is set, to check the
 * service's fingerprint and read the vocabulary), and a labelled task. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dataset.h"
#include "service.h"
#include "task.h"
#include "tfexample.h"

typedef struct {
  const char *kind;
  status_t (*get)(batch_source *s, uint64_t step, uint64_t first, int count, data_batch *out);
  void (*plan)(batch_source *s, const batch_slice *slices, size_t n); /* NULL: nothing to do */
} source_ops;

struct batch_source {
  const source_ops *ops;
  uint64_t global_batch, fingerprint, instances;
  int vocab_size, nsp;
  dataset *ds;     /* shards (also beside the service) */
  tfx_source *tfx; /* TFRecords */
  svc_client *svc; /* the service */
  const task_data *task;
  bool ordered;
  uint64_t task_seed;
  int64_t *idx; /* [idx_cap] the task's example per row, kept between batches */
  int idx_cap;
  char *tokenizer; /* NULL: none recorded */
  uint64_t tokenizer_fingerprint;
};

static status_t shards_get(batch_source *s, uint64_t step, uint64_t first, int count,
                           data_batch *out) {
  return dataset_get_batch(s->ds, s->global_batch, step, first, count, out);
}

static status_t tfx_get(batch_source *s, uint64_t step, uint64_t first, int count,
                        data_batch *out) {
  return tfx_get_batch(s->tfx, s->global_batch, step, first, count, out);
}

static status_t service_get(batch_source *s, uint64_t step, uint64_t first, int count,
                            data_batch *out) {
  return svc_client_get(s->svc, step, first, count, out);
}

static void service_plan(batch_source *s, const batch_slice *slices, size_t n) {
  svc_client_plan(s->svc, slices, n);
}

/* The example at instance j of the step's global batch: see
 * task_steps_per_epoch in dataset.h. -1 is a padding row. */
static int64_t task_example_at(const batch_source *s, uint64_t step, uint64_t j) {
  const uint64_t n = task_examples(s->task), gb = s->global_batch;
  if (s->ordered) {
    uint64_t g;
    bool past = __builtin_mul_overflow(step, gb, &g) || __builtin_add_overflow(g, j, &g) || g >= n;
    return past ? -1 : (int64_t)g;
  }
  const uint64_t steps = task_steps_per_epoch(n, gb), epoch = step / steps;
  uint64_t key[2] = {s->task_seed, epoch};
  uint64_t i = ((step % steps) * gb + j) % n;
  return (int64_t)data_permute(i, n, core_fnv1a(CORE_FNV_OFFSET, key, sizeof key));
}

static status_t task_get(batch_source *s, uint64_t step, uint64_t first, int count,
                         data_batch *out) {
  if (count > s->idx_cap) {
    int64_t *idx = realloc(s->idx, (size_t)count * sizeof *idx);
    if (!idx) return status_set(STATUS_NOMEM, "out of memory for a batch of %d examples", count);
    s->idx = idx;
    s->idx_cap = count;
  }
  for (int j = 0; j < count; j++) s->idx[j] = task_example_at(s, step, first + (uint64_t)j);
  return task_fill(s->task, s->idx, count, out);
}

static const source_ops shards_ops = {"shards", shards_get, NULL};
static const source_ops tfx_ops = {"tfrecords", tfx_get, NULL};
static const source_ops service_ops = {"service", service_get, service_plan};
static const source_ops task_ops = {"task", task_get, NULL};

static bool is_dir(const char *p) {
  struct stat sb;
  return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static status_t open_task(batch_source *s, const batch_source_options *o) {
  if (!o->global_batch)
    return status_set(STATUS_CONFIG, "a task needs a global batch of 1 or more");
  s->ops = &task_ops;
  s->task = o->task;
  s->ordered = o->ordered;
  s->task_seed = o->task_seed;
  s->instances = task_examples(o->task);
  s->vocab_size = task_vocab_size(o->task);
  s->nsp = 1;
  /* The order of the examples is part of the batches too. */
  uint64_t order[3] = {o->ordered, o->task_seed, o->global_batch};
  s->fingerprint = core_fnv1a(task_fingerprint(o->task), order, sizeof order);
  s->tokenizer = strdup(task_tokenizer_path(o->task));
  s->tokenizer_fingerprint = task_tokenizer_fingerprint(o->task);
  return s->tokenizer ? STATUS_OK : status_set(STATUS_NOMEM, "out of memory opening a task");
}

/* The tokenizer `mlmpi-data shard` recorded beside the shards, trusted only
 * when its fingerprint is the shards' (an older mlmpi-data may have
 * rewritten the shards and left the file). Shards without one keep their
 * header's fingerprint and no path. */
static void read_tokenizer_record(batch_source *s, const char *dir) {
  char path[4096], *text = NULL;
  size_t len = 0;
  s->tokenizer_fingerprint = dataset_meta(s->ds)->tokenizer_fingerprint;
  snprintf(path, sizeof path, "%s/mlmpi-tokenizer.json", dir);
  if (access(path, F_OK) != 0) return;
  if (core_read_file("", path, 1 << 20, &text, &len)) {
    LOG_WARN(DATASET, "%s; the tokenizer record is ignored", status_message());
    return;
  }
  cJSON *j = cJSON_ParseWithLength(text, len);
  const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "path");
  const cJSON *f = cJSON_GetObjectItemCaseSensitive(j, "fingerprint");
  char *end = NULL;
  unsigned long long fp = cJSON_IsString(f) ? strtoull(f->valuestring, &end, 16) : 0;
  if (!cJSON_IsString(p) || !end || *end || end == f->valuestring)
    LOG_WARN(DATASET, "%s: not a tokenizer record ({\"path\": ..., \"fingerprint\": ...}); ignored",
             path);
  else if (fp != s->tokenizer_fingerprint)
    LOG_WARN(DATASET, "%s: tokenizer fingerprint %016llx is not the shards' %016llx; ignored", path,
             fp, (unsigned long long)s->tokenizer_fingerprint);
  else
    s->tokenizer = strdup(p->valuestring);
  cJSON_Delete(j);
  free(text);
}

static status_t open_service(batch_source *s, const batch_source_options *o) {
  if (s->tfx)
    return status_set(STATUS_CONFIG, "data.service serves shards, not TFRecords (data.path)");
  svc_client_options c = svc_client_options_default();
  c.addresses = o->service;
  c.config = o->config;
  c.split = o->split && o->split[0] ? o->split : "train";
  c.global_batch = o->global_batch;
  c.fingerprint = s->ds ? s->fingerprint : 0;
  c.timeout_ms = (int)(o->timeout_s * 1000);
  char *token = NULL;
  status_t st;
  if (o->token_file && o->token_file[0] && (st = svc_read_token(o->token_file, &token))) return st;
  c.token = token;
  st = svc_client_open(&s->svc, &c);
  free(token);
  s->ops = &service_ops;
  return st;
}

status_t batch_source_open(batch_source **out, const batch_source_options *o) {
  *out = NULL;
  const char *split = o->split && o->split[0] ? o->split : "train";
  bool path = o->path && o->path[0], service = o->service && o->service[0];
  if (!o->task && !path && !service)
    return status_set(STATUS_CONFIG, "data.path or data.service is not set");
  if (o->config.objective == OBJECTIVE_CLM && (o->task || (path && !is_dir(o->path))))
    return status_set(STATUS_CONFIG,
                      "data.objective clm needs shards (data.path a directory) or the service, "
                      "not %s",
                      o->task ? "a labelled task" : "TFRecord files");
  batch_source *s = calloc(1, sizeof *s);
  if (!s) return status_set(STATUS_NOMEM, "out of memory opening the data");
  s->global_batch = o->global_batch;
  s->nsp = o->config.instances == INST_NSP;
  status_t st = STATUS_OK;
  if (o->task) {
    st = open_task(s, o);
  } else if (path && is_dir(o->path)) {
    st = dataset_open(&s->ds, o->path, split, &o->config);
    if (st == STATUS_OK) {
      s->ops = &shards_ops;
      s->fingerprint = dataset_fingerprint(s->ds);
      s->instances = dataset_instances(s->ds);
      s->vocab_size = (int)dataset_meta(s->ds)->vocab_size;
      read_tokenizer_record(s, o->path);
    }
  } else if (path && strcmp(split, "train") != 0) {
    st = status_set(STATUS_CONFIG,
                    "a %s split needs data.path to be a directory of shards (%s-*.mlms), not "
                    "TFRecord files",
                    split, split);
  } else if (path) {
    const char *paths[1] = {o->path};
    st = tfx_open(paths, 1, o->config.seq_len, o->config.max_predictions, o->config.seed, &s->tfx);
    if (st == STATUS_OK) {
      s->ops = &tfx_ops;
      s->fingerprint = tfx_fingerprint(s->tfx);
      s->instances = tfx_records(s->tfx);
      s->nsp = -1;
    }
  }
  if (st == STATUS_OK && service && !o->task) st = open_service(s, o);
  if (st != STATUS_OK) {
    batch_source_free(s);
    return st;
  }
  *out = s;
  return STATUS_OK;
}

void batch_source_free(batch_source *s) {
  if (!s) return;
  svc_client_free(s->svc);
  tfx_free(s->tfx);
  dataset_free(s->ds);
  free(s->idx);
  free(s->tokenizer);
  free(s);
}

status_t batch_source_get(batch_source *s, uint64_t step, uint64_t first, int count,
                          data_batch *out) {
  return s->ops->get(s, step, first, count, out);
}

void batch_source_plan(batch_source *s, const batch_slice *slices, size_t n) {
  if (s->ops->plan) s->ops->plan(s, slices, n);
}

uint64_t batch_source_fingerprint(const batch_source *s) { return s->fingerprint; }
uint64_t batch_source_instances(const batch_source *s) { return s->instances; }
int batch_source_vocab_size(const batch_source *s) { return s->vocab_size; }
const char *batch_source_tokenizer(const batch_source *s) {
  return s->tokenizer ? s->tokenizer : "";
}
uint64_t batch_source_tokenizer_fingerprint(const batch_source *s) {
  return s->tokenizer_fingerprint;
}
int batch_source_nsp(const batch_source *s) { return s->nsp; }
const char *batch_source_kind(const batch_source *s) { return s->ops->kind; }
