/* comm_nccl.c: the NCCL backend of comm.h, for gradients in GPU memory:
 * every buffer passed to its operations is a device pointer. Collectives
 * run on one CUDA stream; waits poll the stream (and NCCL's asynchronous
 * error) against the deadline and return STATUS_TIMEOUT when it passes, so
 * a dead peer never leaves a rank spinning inside NCCL (main then ends
 * the job; comm_free aborts a failed communicator). The NCCL unique
 * id travels over MPI, which the trainer has initialised. Built only when
 * CUDA and NCCL are found. */
#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm.h"

struct comm_req {
  cudaEvent_t done;
};

typedef struct {
  ncclComm_t nccl;
  cudaStream_t stream;
  float *one;  /* a device float for the barrier */
  bool failed; /* a wait timed out or NCCL reported an error: no more calls */
} nccl_impl;

static nccl_impl *I(comm_t *c) { return c->impl; }

static status_t nccl_err(ncclResult_t r, const char *what) {
  return status_set(STATUS_COMM, "%s failed: %s", what, ncclGetErrorString(r));
}

static status_t cuda_err(cudaError_t e, const char *what) {
  return status_set(STATUS_COMM, "%s failed: %s", what, cudaGetErrorString(e));
}

/* Polls an event until it completes, NCCL reports an error, or the deadline
 * passes; the last two mark the communicator failed. */
static status_t wait_event(comm_t *c, cudaEvent_t ev, const char *what) {
  double deadline = core_now_s() + c->timeout_s;
  for (;;) {
    cudaError_t e = cudaEventQuery(ev);
    if (e == cudaSuccess) return STATUS_OK;
    if (e != cudaErrorNotReady) return cuda_err(e, what);
    ncclResult_t async;
    if (ncclCommGetAsyncError(I(c)->nccl, &async) == ncclSuccess && async != ncclSuccess) {
      I(c)->failed = true;
      return nccl_err(async, what);
    }
    /* Past the deadline return at once: aborting the communicator here can
     * block until the stream drains (it frees device memory), so that waits
     * for comm_free, after comm_fail has ended the job. */
    if (core_now_s() > deadline) {
      I(c)->failed = true;
      return status_set(STATUS_TIMEOUT, "%s did not complete within %.0f s (%s)", what,
                        c->timeout_s, c->context[0] ? c->context : "no context");
    }
    struct timespec ts = {0, 20000};
    nanosleep(&ts, NULL);
  }
}

static status_t failed_before(const char *what) {
  return status_set(STATUS_COMM, "%s: the NCCL communicator failed earlier (a timeout or an error)",
                    what);
}

/* Issues a collective unless the communicator has failed, then waits for it. */
#define COLLECTIVE(c, what, call) (I(c)->failed ? failed_before(what) : finish((c), (call), (what)))

static status_t finish(comm_t *c, ncclResult_t r, const char *what) {
  if (r != ncclSuccess) return nccl_err(r, what);
  cudaEvent_t ev;
  cudaError_t e = cudaEventCreateWithFlags(&ev, cudaEventDisableTiming);
  if (e != cudaSuccess) return cuda_err(e, what);
  cudaEventRecord(ev, I(c)->stream);
  status_t st = wait_event(c, ev, what);
  cudaEventDestroy(ev);
  return st;
}

static status_t n_allreduce(comm_t *c, float *buf, size_t n) {
  return COLLECTIVE(c, "allreduce",
                    ncclAllReduce(buf, buf, n, ncclFloat, ncclSum, I(c)->nccl, I(c)->stream));
}

static status_t n_allreduce_f64(comm_t *c, double *buf, size_t n) {
  return COLLECTIVE(c, "allreduce",
                    ncclAllReduce(buf, buf, n, ncclDouble, ncclSum, I(c)->nccl, I(c)->stream));
}

static status_t n_iallreduce(comm_t *c, float *buf, size_t n, comm_req **req) {
  if (I(c)->failed) return failed_before("allreduce");
  comm_req *q = malloc(sizeof *q);
  if (!q) return status_set(STATUS_NOMEM, "out of memory starting an all-reduce");
  ncclResult_t r = ncclAllReduce(buf, buf, n, ncclFloat, ncclSum, I(c)->nccl, I(c)->stream);
  if (r != ncclSuccess) {
    free(q);
    return nccl_err(r, "allreduce");
  }
  cudaEventCreateWithFlags(&q->done, cudaEventDisableTiming);
  cudaEventRecord(q->done, I(c)->stream);
  *req = q;
  return STATUS_OK;
}

static status_t n_test(comm_t *c, comm_req *q, bool *done) {
  (void)c;
  cudaError_t e = cudaEventQuery(q->done);
  if (e != cudaSuccess && e != cudaErrorNotReady) return cuda_err(e, "test");
  *done = e == cudaSuccess;
  return STATUS_OK;
}

static status_t n_wait(comm_t *c, comm_req *q) {
  status_t st = wait_event(c, q->done, "allreduce");
  cudaEventDestroy(q->done);
  free(q);
  return st;
}

/* NCCL's reduce-scatter and all-gather take equal slices: the trainer's
 * slices differ by at most one float, so unequal counts go through a
 * padded device buffer... which this backend does not have yet: refuse. */
static bool equal_counts(const comm_t *c, const int *counts) {
  for (int r = 1; r < c->size; r++)
    if (counts[r] != counts[0]) return false;
  return true;
}

static status_t n_reduce_scatter(comm_t *c, const float *in, float *out, const int *counts) {
  if (!equal_counts(c, counts))
    return status_set(STATUS_ARG, "the NCCL backend needs equal reduce-scatter slices");
  return COLLECTIVE(
      c, "reduce_scatter",
      ncclReduceScatter(in, out, (size_t)counts[0], ncclFloat, ncclSum, I(c)->nccl, I(c)->stream));
}

static status_t n_allgather(comm_t *c, float *buf, const int *counts) {
  if (!equal_counts(c, counts))
    return status_set(STATUS_ARG, "the NCCL backend needs equal all-gather slices");
  size_t n = (size_t)counts[0];
  return COLLECTIVE(
      c, "allgather",
      ncclAllGather(buf + n * (size_t)c->rank, buf, n, ncclFloat, I(c)->nccl, I(c)->stream));
}

static status_t n_allgather_bytes(comm_t *c, const void *mine, void *all, size_t bytes) {
  return COLLECTIVE(c, "allgather",
                    ncclAllGather(mine, all, bytes, ncclChar, I(c)->nccl, I(c)->stream));
}

static status_t n_broadcast(comm_t *c, void *buf, size_t bytes, int root) {
  return COLLECTIVE(c, "broadcast",
                    ncclBroadcast(buf, buf, bytes, ncclChar, root, I(c)->nccl, I(c)->stream));
}

static status_t n_barrier(comm_t *c) { return n_allreduce(c, I(c)->one, 1); }

static void n_free(comm_t *c) {
  nccl_impl *m = c->impl;
  if (m) {
    if (m->nccl) (m->failed ? ncclCommAbort : ncclCommDestroy)(m->nccl);
    if (m->one) cudaFree(m->one);
    if (m->stream) cudaStreamDestroy(m->stream);
    free(m);
  }
  free(c);
}

static const comm_ops nccl_ops = {
    .name = "nccl",
    .device_buffers = true,
    .allreduce = n_allreduce,
    .allreduce_f64 = n_allreduce_f64,
    .iallreduce = n_iallreduce,
    .test = n_test,
    .wait = n_wait,
    .reduce_scatter = n_reduce_scatter,
    .allgather = n_allgather,
    .allgather_bytes = n_allgather_bytes,
    .broadcast = n_broadcast,
    .barrier = n_barrier,
    .free = n_free,
};

void *comm_nccl_stream(comm_t *c) { return c && c->ops == &nccl_ops ? (void *)I(c)->stream : NULL; }

/* NCCL refuses two ranks of one communicator on the same GPU with a bare
 * "invalid usage". Compare the PCI bus ids of the node's ranks first (by
 * bus id, not device number: with CUDA_VISIBLE_DEVICES each rank may see its
 * own GPU as device 0), so every rank fails alike, naming the two ranks. */
static status_t check_one_gpu_per_rank(comm_t *c, MPI_Comm node, int dev, int ndev) {
  enum { ID = 32 };
  char mine[ID] = {0};
  if (cudaDeviceGetPCIBusId(mine, ID, dev) != cudaSuccess) snprintf(mine, ID, "device %d", dev);
  char *all = calloc((size_t)c->local_size, ID);
  if (!all) return status_set(STATUS_NOMEM, "out of memory checking the GPUs of this node");
  MPI_Allgather(mine, ID, MPI_CHAR, all, ID, MPI_CHAR, node);
  status_t st = STATUS_OK;
  for (int a = 0; a < c->local_size && st == STATUS_OK; a++)
    for (int b = a + 1; b < c->local_size && st == STATUS_OK; b++)
      if (memcmp(all + (size_t)a * ID, all + (size_t)b * ID, ID) == 0)
        st = status_set(
            STATUS_COMM,
            "local ranks %d and %d both use the GPU at %s: the NCCL backend needs one GPU "
            "per rank (%d ranks on this node, %d GPU%s visible to rank %d)",
            a, b, all + (size_t)a * ID, c->local_size, ndev, ndev == 1 ? "" : "s", c->local_rank);
  free(all);
  return st;
}

status_t comm_nccl_init(comm_t **out, double timeout_s) {
  *out = NULL;
  int ndev = 0;
  cudaError_t e = cudaGetDeviceCount(&ndev);
  if (e != cudaSuccess) ndev = 0;
  /* Every rank learns whether some rank has no GPU, so that all fail alike
   * (none is left waiting in the collectives below). */
  int least = ndev;
  MPI_Allreduce(&ndev, &least, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (ndev == 0)
    return status_set(STATUS_COMM, "no CUDA GPU on this machine (%s): the NCCL backend needs one",
                      e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
  if (least == 0)
    return status_set(STATUS_COMM,
                      "another rank's machine has no CUDA GPU: the NCCL backend needs one per "
                      "rank");
  comm_t *c = calloc(1, sizeof *c);
  nccl_impl *m = calloc(1, sizeof *m);
  if (!c || !m) {
    free(c);
    free(m);
    return status_set(STATUS_NOMEM, "out of memory creating the communicator");
  }
  c->impl = m;
  c->ops = &nccl_ops;
  c->timeout_s = timeout_s > 0 ? timeout_s : 300;
  MPI_Comm node;
  MPI_Comm_rank(MPI_COMM_WORLD, &c->rank);
  MPI_Comm_size(MPI_COMM_WORLD, &c->size);
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  MPI_Comm_rank(node, &c->local_rank);
  MPI_Comm_size(node, &c->local_size);
  status_t st = STATUS_OK;
  if ((e = cudaSetDevice(c->local_rank % ndev)) != cudaSuccess) {
    MPI_Comm_free(&node);
    st = cuda_err(e, "CUDA set-up");
    goto fail;
  }
  st = check_one_gpu_per_rank(c, node, c->local_rank % ndev, ndev);
  MPI_Comm_free(&node);
  if (st != STATUS_OK) goto fail;
  if ((e = cudaStreamCreateWithFlags(&m->stream, cudaStreamNonBlocking)) != cudaSuccess ||
      (e = cudaMalloc((void **)&m->one, sizeof(float))) != cudaSuccess) {
    st = cuda_err(e, "CUDA set-up");
    goto fail;
  }
  ncclUniqueId id;
  if (c->rank == 0 && ncclGetUniqueId(&id) != ncclSuccess) memset(&id, 0, sizeof id);
  MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD);
  ncclResult_t r = ncclCommInitRank(&m->nccl, c->size, id, c->rank);
  if (r != ncclSuccess) {
    m->nccl = NULL;
    st = nccl_err(r, "NCCL initialisation");
    goto fail;
  }
  *out = c;
  return STATUS_OK;
fail:
  n_free(c);
  return st;
}
