/* reducer.c: the bucketed gradient all-reduce, overlapped with backward
 * (see comm.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"

typedef struct {
  size_t begin, end; /* float span of the gradient buffer */
  int first_tensor, last_tensor;
  int pending; /* tensors not yet announced this step */
  comm_req *req;
  bool done;
} bucket;

struct reducer {
  comm_t *c;
  const param_table *t;
  float *grads;
  bucket *b;
  int nb;
  int *bucket_of; /* tensor -> bucket */
  bool on;
  uint64_t step;
  double exposed;
  /* The first failed collective of the step: no more are started, and
   * reducer_finish returns it. */
  status_t err;
  char err_msg[512];
};

status_t reducer_init(reducer **out, comm_t *c, const param_table *t, float *grads, double first_mb,
                      double bucket_mb) {
  *out = NULL;
  reducer *r = calloc(1, sizeof *r);
  if (!r) return status_set(STATUS_NOMEM, "out of memory creating the reducer");
  r->c = c;
  r->t = t;
  r->grads = grads;
  r->b = calloc((size_t)t->n, sizeof *r->b);
  r->bucket_of = calloc((size_t)t->n, sizeof *r->bucket_of);
  if (!r->b || !r->bucket_of) {
    reducer_free(r);
    return status_set(STATUS_NOMEM, "out of memory creating the reducer");
  }
  /* Walk tensors from the last (finished first by backward) to the first. */
  size_t cap = (size_t)(first_mb * (1 << 20) / sizeof(float));
  for (int i = t->n - 1; i >= 0;) {
    bucket *bk = &r->b[r->nb];
    bk->last_tensor = i;
    bk->end = t->p[i].offset + t->p[i].numel;
    size_t size = 0;
    while (i >= 0 && (size == 0 || size + t->p[i].numel <= cap)) {
      size += t->p[i].numel;
      r->bucket_of[i] = r->nb;
      i--;
    }
    bk->first_tensor = i + 1;
    bk->begin = t->p[i + 1].offset;
    r->nb++;
    cap = (size_t)(bucket_mb * (1 << 20) / sizeof(float));
  }
  *out = r;
  return STATUS_OK;
}

void reducer_free(reducer *r) {
  if (!r) return;
  free(r->b);
  free(r->bucket_of);
  free(r);
}

int reducer_buckets(const reducer *r) { return r->nb; }

void reducer_bucket(const reducer *r, int k, size_t *begin, size_t *end, int *first, int *last) {
  CORE_ASSERT(k >= 0 && k < r->nb);
  *begin = r->b[k].begin;
  *end = r->b[k].end;
  *first = r->b[k].first_tensor;
  *last = r->b[k].last_tensor;
}
double reducer_exposed_s(const reducer *r) { return r->exposed; }

void reducer_begin(reducer *r, bool communicate, uint64_t step) {
  r->on = communicate && r->c->size > 1;
  r->step = step;
  r->err = STATUS_OK;
  for (int k = 0; k < r->nb; k++) {
    r->b[k].pending = r->b[k].last_tensor - r->b[k].first_tensor + 1;
    r->b[k].req = NULL;
    r->b[k].done = false;
  }
}

/* Keeps the first failure for reducer_finish and stops communicating. */
static void fail(reducer *r, status_t st) {
  if (r->err) return;
  r->err = st;
  snprintf(r->err_msg, sizeof r->err_msg, "%s", status_message());
  r->on = false;
}

static void start_bucket(reducer *r, int k) {
  bucket *b = &r->b[k];
  comm_set_context(r->c, "step %llu bucket %d", (unsigned long long)r->step, k);
  status_t st = comm_iallreduce(r->c, r->grads + b->begin, b->end - b->begin, &b->req);
  if (st) fail(r, st);
}

/* Lets MPI progress the pending all-reduces. */
static void poke(reducer *r) {
  for (int k = 0; k < r->nb && r->on; k++) {
    bucket *b = &r->b[k];
    if (!b->req || b->done) continue;
    bool d = false; /* the context names the bucket started last */
    status_t st = comm_test(r->c, b->req, &d);
    if (st) fail(r, st);
    if (!d) break; /* they complete in order */
    b->done = true;
  }
}

void reducer_ready(reducer *r, int tensor) {
  if (!r->on) return;
  int k = r->bucket_of[tensor];
  if (--r->b[k].pending == 0) start_bucket(r, k);
  poke(r);
}

status_t reducer_finish(reducer *r) {
  r->exposed = 0;
  if (r->err) return status_set(r->err, "%s", r->err_msg);
  if (!r->on) return STATUS_OK;
  double t0 = core_now_s();
  for (int k = 0; k < r->nb; k++) {
    bucket *b = &r->b[k];
    CORE_ASSERT(b->pending == 0); /* backward announced every tensor */
    comm_set_context(r->c, "step %llu bucket %d", (unsigned long long)r->step, k);
    status_t st = comm_wait(r->c, b->req);
    b->req = NULL;
    if (st) return st;
  }
  r->exposed = core_now_s() - t0;
  return STATUS_OK;
}
