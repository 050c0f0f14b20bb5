/* comm.c: what every communicator shares, whatever its backend: the
 * registry that picks a backend by name, the process's start-up and
 * shut-down (MPI underneath), the collectives' wrappers that name what was
 * being waited for, and the rank's share of the node's cores. */
#define _GNU_SOURCE
#include "comm.h"

#include <mpi.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- The process ------------------------------------------------------------ */
status_t comm_process_init(int *argc, char ***argv) {
  /* Open MPI's non-blocking all-reduce (libnbc) uses a binomial tree
   * through rank 0 unless told otherwise; the gradient buckets want the
   * bandwidth-optimal ring. An explicit setting by the user wins. */
  setenv("OMPI_MCA_coll_libnbc_iallreduce_algorithm", "1", 0);
  int provided; /* FUNNELED suffices: only the main thread calls MPI */
  if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
    return status_set(STATUS_COMM, "MPI could not be initialised");
  int rank, world;
  comm_process_rank(&rank, &world);
  log_set_rank(world > 1 ? rank : -1);
  return STATUS_OK;
}

void comm_process_rank(int *rank, int *world) {
  MPI_Comm_rank(MPI_COMM_WORLD, rank);
  MPI_Comm_size(MPI_COMM_WORLD, world);
}

void comm_process_abort(int code) {
  MPI_Abort(MPI_COMM_WORLD, code);
  abort();
}

void comm_process_finalize(void) { MPI_Finalize(); }

/* ---- The registry ------------------------------------------------------------ */
typedef status_t (*comm_init_fn)(comm_t **out, double timeout_s);
static const struct {
  const char *name;
  comm_init_fn init; /* NULL: not in this build */
} backends[] = {
    {"mpi", comm_mpi_init},
#ifdef MLMPI_HAVE_NCCL
    {"nccl", comm_nccl_init},
#else
    {"nccl", NULL},
#endif
};

const char *comm_backends_help(void) {
#ifdef MLMPI_HAVE_NCCL
  return "mpi, nccl";
#else
  return "mpi (nccl: not in this build)";
#endif
}

bool comm_backend_known(const char *name) {
  for (size_t i = 0; i < sizeof backends / sizeof backends[0]; i++)
    if (!strcmp(name, backends[i].name)) return true;
  return false;
}

status_t comm_init(comm_t **out, const char *name, double timeout_s) {
  *out = NULL;
  for (size_t i = 0; i < sizeof backends / sizeof backends[0]; i++) {
    if (strcmp(name, backends[i].name)) continue;
    if (!backends[i].init)
      return status_set(STATUS_CONFIG,
                        "comm.backend = %s: this build has no %s backend (CUDA and NCCL were "
                        "not found when it was built)",
                        name, name);
    return backends[i].init(out, timeout_s);
  }
  return status_set(STATUS_CONFIG, "comm.backend: unknown backend '%s' (%s)", name,
                    comm_backends_help());
}

void comm_free(comm_t *c) {
  if (c) c->ops->free(c);
}

status_t comm_alloc_shared(comm_t *c, size_t n, float **out) {
  *out = NULL;
  return c->ops->alloc_shared ? c->ops->alloc_shared(c, n, out) : STATUS_OK;
}

int comm_default_threads(int local_size, const char **why) {
  const char *spt = getenv("SLURM_CPUS_PER_TASK");
  if (spt && atoi(spt) > 0) {
    *why = "SLURM_CPUS_PER_TASK";
    return atoi(spt);
  }
  long online = sysconf(_SC_NPROCESSORS_ONLN);
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) < online) {
    *why = "the cores this rank is bound to";
    return CPU_COUNT(&set);
  }
  *why = "the node's cores divided among its ranks";
  long t = online / (local_size > 0 ? local_size : 1);
  return t > 0 ? (int)t : 1;
}

/* ---- Collectives ------------------------------------------------------------- */
void comm_set_context(comm_t *c, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->context, sizeof c->context, fmt, ap);
  va_end(ap);
}

/* A failed collective's status, its message naming what was awaited. A
 * timeout's message names it already, at its start. */
static status_t failed(comm_t *c, status_t st) {
  if (st == STATUS_OK || st == STATUS_TIMEOUT) return st;
  char msg[512];
  snprintf(msg, sizeof msg, "%s", status_message());
  return status_set(st, "%s (while waiting for %s)", msg,
                    c->context[0] ? c->context : "a collective");
}

status_t comm_allreduce(comm_t *c, float *buf, size_t n) {
  return failed(c, c->ops->allreduce(c, buf, n));
}
status_t comm_allreduce_f64(comm_t *c, double *buf, size_t n) {
  return failed(c, c->ops->allreduce_f64(c, buf, n));
}
status_t comm_iallreduce(comm_t *c, float *buf, size_t n, comm_req **req) {
  return failed(c, c->ops->iallreduce(c, buf, n, req));
}
status_t comm_test(comm_t *c, comm_req *req, bool *done) {
  return failed(c, c->ops->test(c, req, done));
}
status_t comm_wait(comm_t *c, comm_req *req) { return failed(c, c->ops->wait(c, req)); }
status_t comm_reduce_scatter(comm_t *c, const float *in, float *out, const int *counts) {
  return failed(c, c->ops->reduce_scatter(c, in, out, counts));
}
status_t comm_allgather(comm_t *c, float *buf, const int *counts) {
  return failed(c, c->ops->allgather(c, buf, counts));
}
status_t comm_allgather_bytes(comm_t *c, const void *mine, void *all, size_t bytes) {
  return failed(c, c->ops->allgather_bytes(c, mine, all, bytes));
}
status_t comm_broadcast(comm_t *c, void *buf, size_t bytes, int root) {
  return failed(c, c->ops->broadcast(c, buf, bytes, root));
}
status_t comm_barrier(comm_t *c) { return failed(c, c->ops->barrier(c)); }

void comm_fail(comm_t *c, const char *what) {
  LOG_ERROR(COMM, "%s (while waiting for %s); aborting the job", what,
            c && c->context[0] ? c->context : "a collective");
  comm_process_abort(3);
}
