/* comm.h: the communicator: collectives over a backend's operations table
 * (MPI for host buffers; NCCL for device buffers where built), every wait
 * bounded by a deadline, and the bucketed gradient reducer that overlaps the
 * all-reduce with backward. */
#ifndef MLMPI_COMM_H
#define MLMPI_COMM_H

#include "core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct comm comm_t;
typedef struct comm_req comm_req; /* a pending non-blocking collective */

/* The backend's table. Buffers are fp32 unless a size in bytes is given.
 * Every blocking call and `wait` returns STATUS_TIMEOUT past the deadline
 * (comm->timeout_s), or STATUS_COMM; the caller carries the status up to
 * `main`, which ends the job (comm_fail). Callers use the comm_* wrappers
 * below rather than the table. */
typedef struct {
  const char *name;
  /* true: the buffers given to the collectives must be device memory (NCCL);
   * false: host memory. */
  bool device_buffers;
  status_t (*allreduce)(comm_t *c, float *buf, size_t n); /* sum, in place */
  status_t (*allreduce_f64)(comm_t *c, double *buf, size_t n);
  status_t (*iallreduce)(comm_t *c, float *buf, size_t n, comm_req **req);
  status_t (*test)(comm_t *c, comm_req *req, bool *done);
  status_t (*wait)(comm_t *c, comm_req *req); /* frees req */
  /* out[counts[rank]] = this rank's slice of the sum of in (all ranks' in
   * have the same layout: slices in rank order). */
  status_t (*reduce_scatter)(comm_t *c, const float *in, float *out, const int *counts);
  /* buf holds every rank's slice in rank order; each rank's own slice is
   * already in place; on return every slice is everywhere. */
  status_t (*allgather)(comm_t *c, float *buf, const int *counts);
  status_t (*allgather_bytes)(comm_t *c, const void *mine, void *all, size_t bytes);
  status_t (*broadcast)(comm_t *c, void *buf, size_t bytes, int root);
  status_t (*barrier)(comm_t *c);
  /* Collective, with the same n everywhere: n zeroed floats whose spans the
   * backend all-reduces without copies through MPI (MPI: one shared-memory
   * window across the ranks of a node, reduced in place; see comm_mpi.c),
   * freed with the communicator. *out = NULL where that cannot be (one rank
   * a node, MLMPI_COMM_SHM=0, no room in /dev/shm, unequal nodes): the
   * caller keeps its own memory. NULL in backends without it. */
  status_t (*alloc_shared)(comm_t *c, size_t n, float **out);
  void (*free)(comm_t *c);
} comm_ops;

struct comm {
  const comm_ops *ops;
  int rank, size;             /* in the job */
  int local_rank, local_size; /* on this node */
  double timeout_s;           /* deadline of every wait */
  char context[128];          /* what is being waited for, for the timeout message */
  void *impl;
};

/* ---- The process ----------------------------------------------------------
 * Start-up and shut-down of the job's processes (MPI underneath every
 * backend: it starts the ranks and carries NCCL's id). Only an executable's
 * main calls these, once each, from the main thread. */
/* Initialises MPI (threads: funneled) and sets log lines' rank. */
status_t comm_process_init(int *argc, char ***argv);
/* This process's rank and the job's size (valid after comm_process_init). */
void comm_process_rank(int *rank, int *world);
/* Ends every rank of the job with exit code `code` (MPI_Abort); for a failure
 * that only some ranks met, so that no rank is left waiting. */
__attribute__((noreturn)) void comm_process_abort(int code);
void comm_process_finalize(void);

/* ---- Communicators --------------------------------------------------------- */
/* The backends that can be chosen by name ("mpi", "nccl"), with whether
 * this build has them; for --help and messages. */
const char *comm_backends_help(void);
/* True when name is a backend comm_init knows (built here or not). */
bool comm_backend_known(const char *name);
/* Creates the communicator of backend `name` (comm.backend) over all ranks.
 * STATUS_CONFIG for an unknown name or one this build lacks (NCCL without
 * CUDA), STATUS_COMM when the backend cannot start (no GPU visible); the
 * message is one line naming the reason. Collective: every rank gets the
 * same verdict (the backends agree before they fail). *out is owned by the
 * caller (comm_free). */
status_t comm_init(comm_t **out, const char *name, double timeout_s);
/* MPI backend over MPI_COMM_WORLD (MPI must be initialised). */
status_t comm_mpi_init(comm_t **out, double timeout_s);
/* NCCL backend for device buffers, one GPU per local rank (local rank mod
 * the device count); MPI must be initialised (it carries NCCL's id). Built
 * only with CUDA and NCCL (MLMPI_HAVE_NCCL); STATUS_COMM naming the missing
 * GPU where there is none. */
status_t comm_nccl_init(comm_t **out, double timeout_s);
/* The CUDA stream (a cudaStream_t) the NCCL backend's collectives run on, so
 * device work can be ordered with them; NULL when c is not an NCCL
 * communicator. In NCCL builds only, as comm_nccl_init. */
void *comm_nccl_stream(comm_t *c);
void comm_free(comm_t *c); /* NULL is a no-op */
/* ops->alloc_shared where the backend has it, else *out = NULL. */
status_t comm_alloc_shared(comm_t *c, size_t n, float **out);

/* Threads for this rank's compute: the cores it owns. SLURM_CPUS_PER_TASK
 * where Slurm says so; the cores the rank is bound to; else the node's
 * cores divided among its local_size ranks. *why says which. */
int comm_default_threads(int local_size, const char **why);

/* Records what the next waits are for ("step 12 bucket 3"); thread-unsafe. */
void comm_set_context(comm_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The collectives, through the backend's table. On failure the status
 * message names the context: a timeout (STATUS_TIMEOUT) starts "<context>:
 * <collective> did not complete within T s; waiting for rank R (why)" (MPI;
 * see comm_mpi.c), other failures end "(while waiting for <context>)";
 * nothing is ended here. */
status_t comm_allreduce(comm_t *c, float *buf, size_t n);
status_t comm_allreduce_f64(comm_t *c, double *buf, size_t n);
status_t comm_iallreduce(comm_t *c, float *buf, size_t n, comm_req **req);
status_t comm_test(comm_t *c, comm_req *req, bool *done);
status_t comm_wait(comm_t *c, comm_req *req);
status_t comm_reduce_scatter(comm_t *c, const float *in, float *out, const int *counts);
status_t comm_allgather(comm_t *c, float *buf, const int *counts);
status_t comm_allgather_bytes(comm_t *c, const void *mine, void *all, size_t bytes);
status_t comm_broadcast(comm_t *c, void *buf, size_t bytes, int root);
status_t comm_barrier(comm_t *c);

/* Ends the whole job after a failure that not every rank met: logs the
 * message (with the context) and aborts every rank (comm_process_abort with
 * code 3), so no rank is left waiting. For executables' main (and test
 * programs) only: library code returns the status instead. */
__attribute__((noreturn)) void comm_fail(comm_t *c, const char *what);

/* ---- The gradient reducer -------------------------------------------------
 * Buckets are spans of the flat gradient buffer covering whole tensors in
 * reverse table order (the order backward finishes them): the first about
 * first_mb, then bucket_mb each. During the last micro-batch's backward the
 * model announces each finished tensor (reducer_ready); a bucket whose
 * tensors are all finished starts its all-reduce at once, and every
 * announcement also tests the pending ones so MPI makes progress while
 * backward runs; every rank must announce in an order that finishes the
 * buckets in the same order (backward's own order does), since the
 * collectives must be issued alike everywhere. reducer_finish waits for all. A failed collective
 * stops the step's communication; reducer_finish then returns its status (and message). Not
 * thread-safe. */
typedef struct reducer reducer;
status_t reducer_init(reducer **out, comm_t *c, const param_table *t, float *grads, double first_mb,
                      double bucket_mb);
void reducer_free(reducer *r);
void reducer_begin(reducer *r, bool communicate, uint64_t step); /* before backward */
void reducer_ready(reducer *r, int tensor);                      /* from backward */
status_t reducer_finish(reducer *r);                             /* after backward */
int reducer_buckets(const reducer *r);
/* Bucket k's float span [*begin, *end) of the gradient buffer and its
 * tensors [*first, *last] (table indices), k in [0, reducer_buckets). */
void reducer_bucket(const reducer *r, int k, size_t *begin, size_t *end, int *first, int *last);
/* Seconds spent waiting in reducer_finish at the last step: the
 * communication backward did not hide. */
double reducer_exposed_s(const reducer *r);

#ifdef __cplusplus
}
#endif
#endif
