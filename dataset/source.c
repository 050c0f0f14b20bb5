/* source.c: the batch sources of dataset.h, one table each: shards read
 * in-process, BERT TFRecords with static masks, and the dataset service's
 * client (holding local shards too when data.path is set, to check the
 * service's fingerprint and read the vocabulary). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "dataset.h"
#include "service.h"
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

static const source_ops shards_ops = {"shards", shards_get, NULL};
static const source_ops tfx_ops = {"tfrecords", tfx_get, NULL};
static const source_ops service_ops = {"service", service_get, service_plan};

static bool is_dir(const char *p) {
  struct stat sb;
  return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
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
  if (!path && !service) return status_set(STATUS_CONFIG, "data.path or data.service is not set");
  batch_source *s = calloc(1, sizeof *s);
  if (!s) return status_set(STATUS_NOMEM, "out of memory opening the data");
  s->global_batch = o->global_batch;
  s->nsp = o->config.instances == INST_NSP;
  status_t st = STATUS_OK;
  if (path && is_dir(o->path)) {
    st = dataset_open(&s->ds, o->path, split, &o->config);
    if (st == STATUS_OK) {
      s->ops = &shards_ops;
      s->fingerprint = dataset_fingerprint(s->ds);
      s->instances = dataset_instances(s->ds);
      s->vocab_size = (int)dataset_meta(s->ds)->vocab_size;
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
  if (st == STATUS_OK && service) st = open_service(s, o);
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
int batch_source_nsp(const batch_source *s) { return s->nsp; }
const char *batch_source_kind(const batch_source *s) { return s->ops->kind; }
