/* comm_mpi.c: the MPI backend of comm.h (Open MPI, host buffers). Every
 * collective is issued non-blocking and completed by a polling wait with a
 * deadline, so a dead or stuck peer becomes an error instead of a hang. */
#include <mpi.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm.h"

struct comm_req {
  MPI_Request r;
};

typedef struct {
  MPI_Comm world, node;
} mpi_impl;

static MPI_Comm W(comm_t *c) { return ((mpi_impl *)c->impl)->world; }

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static status_t mpi_err(int rc, const char *what) {
  char s[MPI_MAX_ERROR_STRING];
  int n = 0;
  MPI_Error_string(rc, s, &n);
  return status_set(STATUS_COMM, "%s failed: %s", what, s);
}

/* Polls until done or the deadline: a few tight tests, then short sleeps. */
static status_t wait_req(comm_t *c, MPI_Request *r, const char *what) {
  double deadline = now_s() + c->timeout_s;
  for (long spin = 0;; spin++) {
    int done = 0, rc = MPI_Test(r, &done, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) return mpi_err(rc, what);
    if (done) return STATUS_OK;
    if (spin > 1000) {
      if (now_s() > deadline)
        return status_set(STATUS_TIMEOUT, "%s did not complete within %.0f s (%s)", what,
                          c->timeout_s, c->context[0] ? c->context : "no context");
      struct timespec ts = {0, 20000};
      nanosleep(&ts, NULL);
    }
  }
}

#define ISSUE(call, what)                                       \
  do {                                                          \
    int rc_ = (call);                                           \
    if (rc_ != MPI_SUCCESS) return mpi_err(rc_, what);          \
  } while (0)

static status_t m_allreduce(comm_t *c, float *buf, size_t n) {
  MPI_Request r;
  ISSUE(MPI_Iallreduce(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_SUM, W(c), &r), "allreduce");
  return wait_req(c, &r, "allreduce");
}

static status_t m_allreduce_f64(comm_t *c, double *buf, size_t n) {
  MPI_Request r;
  ISSUE(MPI_Iallreduce(MPI_IN_PLACE, buf, (int)n, MPI_DOUBLE, MPI_SUM, W(c), &r), "allreduce");
  return wait_req(c, &r, "allreduce");
}

static status_t m_iallreduce(comm_t *c, float *buf, size_t n, comm_req **req) {
  comm_req *q = malloc(sizeof *q);
  if (!q) return status_set(STATUS_NOMEM, "out of memory starting an all-reduce");
  int rc = MPI_Iallreduce(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_SUM, W(c), &q->r);
  if (rc != MPI_SUCCESS) {
    free(q);
    return mpi_err(rc, "allreduce");
  }
  *req = q;
  return STATUS_OK;
}

static status_t m_test(comm_t *c, comm_req *q, bool *done) {
  (void)c;
  int d = 0, rc = MPI_Test(&q->r, &d, MPI_STATUS_IGNORE);
  if (rc != MPI_SUCCESS) return mpi_err(rc, "test");
  *done = d != 0;
  return STATUS_OK;
}

static status_t m_wait(comm_t *c, comm_req *q) {
  status_t st = wait_req(c, &q->r, "allreduce");
  free(q);
  return st;
}

static status_t m_reduce_scatter(comm_t *c, const float *in, float *out, const int *counts) {
  MPI_Request r;
  ISSUE(MPI_Ireduce_scatter(in, out, counts, MPI_FLOAT, MPI_SUM, W(c), &r), "reduce_scatter");
  return wait_req(c, &r, "reduce_scatter");
}

static status_t m_allgather(comm_t *c, float *buf, const int *counts) {
  int *displs = malloc((size_t)c->size * sizeof *displs);
  if (!displs) return status_set(STATUS_NOMEM, "out of memory in allgather");
  for (int i = 0, o = 0; i < c->size; i++) displs[i] = o, o += counts[i];
  MPI_Request r;
  int rc = MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, counts, displs, MPI_FLOAT, W(c), &r);
  status_t st = rc == MPI_SUCCESS ? wait_req(c, &r, "allgather") : mpi_err(rc, "allgather");
  free(displs);
  return st;
}

static status_t m_allgather_bytes(comm_t *c, const void *mine, void *all, size_t bytes) {
  MPI_Request r;
  ISSUE(MPI_Iallgather(mine, (int)bytes, MPI_BYTE, all, (int)bytes, MPI_BYTE, W(c), &r), "allgather");
  return wait_req(c, &r, "allgather");
}

static status_t m_broadcast(comm_t *c, void *buf, size_t bytes, int root) {
  /* In pieces: MPI counts are int. */
  char *p = buf;
  while (bytes) {
    size_t n = bytes > (1u << 30) ? (1u << 30) : bytes;
    MPI_Request r;
    ISSUE(MPI_Ibcast(p, (int)n, MPI_BYTE, root, W(c), &r), "broadcast");
    status_t st = wait_req(c, &r, "broadcast");
    if (st) return st;
    p += n;
    bytes -= n;
  }
  return STATUS_OK;
}

static status_t m_barrier(comm_t *c) {
  MPI_Request r;
  ISSUE(MPI_Ibarrier(W(c), &r), "barrier");
  return wait_req(c, &r, "barrier");
}

static void m_free(comm_t *c) {
  mpi_impl *m = c->impl;
  if (m) {
    MPI_Comm_free(&m->node);
    MPI_Comm_free(&m->world);
    free(m);
  }
  free(c);
}

static const comm_ops mpi_ops = {
    .name = "mpi",
    .allreduce = m_allreduce,
    .allreduce_f64 = m_allreduce_f64,
    .iallreduce = m_iallreduce,
    .test = m_test,
    .wait = m_wait,
    .reduce_scatter = m_reduce_scatter,
    .allgather = m_allgather,
    .allgather_bytes = m_allgather_bytes,
    .broadcast = m_broadcast,
    .barrier = m_barrier,
    .free = m_free,
};

status_t comm_mpi_init(comm_t **out, double timeout_s) {
  *out = NULL;
  comm_t *c = calloc(1, sizeof *c);
  mpi_impl *m = calloc(1, sizeof *m);
  if (!c || !m) {
    free(c);
    free(m);
    return status_set(STATUS_NOMEM, "out of memory creating the communicator");
  }
  /* A private duplicate, so nothing else on MPI_COMM_WORLD can interleave. */
  MPI_Comm_dup(MPI_COMM_WORLD, &m->world);
  /* Errors come back as codes (translated above) rather than aborting. */
  MPI_Comm_set_errhandler(m->world, MPI_ERRORS_RETURN);
  MPI_Comm_split_type(m->world, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &m->node);
  MPI_Comm_rank(m->world, &c->rank);
  MPI_Comm_size(m->world, &c->size);
  MPI_Comm_rank(m->node, &c->local_rank);
  MPI_Comm_size(m->node, &c->local_size);
  c->ops = &mpi_ops;
  c->impl = m;
  c->timeout_s = timeout_s > 0 ? timeout_s : 300;
  *out = c;
  return STATUS_OK;
}

void comm_free(comm_t *c) {
  if (c) c->ops->free(c);
}

void comm_set_context(comm_t *c, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->context, sizeof c->context, fmt, ap);
  va_end(ap);
}

void comm_fail(comm_t *c, const char *what) {
  LOG_ERROR(COMM, "%s (while waiting for %s); aborting the job", what,
            c && c->context[0] ? c->context : "a collective");
  MPI_Abort(MPI_COMM_WORLD, 3);
  abort();
}
