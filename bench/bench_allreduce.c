/* bench_allreduce.c: the gradient all-reduce. For buffer sizes from 1 MB to
 * 256 MB: plain MPI_Allreduce of the whole buffer; mlmpi's reducer path as
 * the trainer runs it (buckets of comm.bucket_mb, all outstanding at once, in
 * the communicator's shared gradient memory); and the same buckets as MPI
 * non-blocking all-reduces of private memory (the path without shared
 * memory). Each as algbw = bytes / time and busbw = algbw * 2(n-1)/n (as
 * nccl-tests define them), with the copy bandwidth of one rank (memcpy, read
 * + write) for scale. The reduced buffers are checked. Run under mpirun;
 * rank 0 prints JSON. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"

static double best_of(int reps, double (*fn)(void *), void *arg) {
  double best = 1e30;
  for (int r = 0; r < reps; r++) {
    MPI_Barrier(MPI_COMM_WORLD);
    double t = fn(arg);
    MPI_Allreduce(MPI_IN_PLACE, &t, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    best = t < best ? t : best;
  }
  return best;
}

typedef struct {
  float *buf, *tmp;
  size_t n;
  size_t bucket;
  comm_t *c;
} job;

static double plain(void *p) {
  job *j = p;
  double t0 = MPI_Wtime();
  MPI_Allreduce(MPI_IN_PLACE, j->buf, (int)j->n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
  return MPI_Wtime() - t0;
}

static double bucketed(void *p) {
  job *j = p;
  size_t nb = (j->n + j->bucket - 1) / j->bucket;
  comm_req **req = calloc(nb, sizeof *req);
  double t0 = MPI_Wtime();
  for (size_t b = 0; b < nb; b++) {
    size_t off = b * j->bucket, len = off + j->bucket < j->n ? j->bucket : j->n - off;
    if (j->c->ops->iallreduce(j->c, j->buf + off, len, &req[b])) comm_fail(j->c, status_message());
  }
  for (size_t b = 0; b < nb; b++)
    if (j->c->ops->wait(j->c, req[b])) comm_fail(j->c, status_message());
  double t = MPI_Wtime() - t0;
  free(req);
  return t;
}

static double copy(void *p) {
  job *j = p;
  double t0 = MPI_Wtime();
  memcpy(j->tmp, j->buf, j->n * sizeof(float));
  return MPI_Wtime() - t0;
}

/* Every rank's element i is rank + i % 7; one all-reduce gives the sum. */
static void fill(float *x, size_t n, int rank) {
  for (size_t i = 0; i < n; i++) x[i] = (float)(rank + (int)(i % 7));
}

static int check(const float *x, size_t n, int size, const char *what) {
  for (size_t i = 0; i < n; i++) {
    float want = (float)(size * (size - 1) / 2 + size * (int)(i % 7));
    if (x[i] != want) {
      fprintf(stderr, "bench_allreduce: %s: element %zu is %g, not %g\n", what, i, x[i], want);
      return 1;
    }
  }
  return 0;
}

int main(int argc, char **argv) {
  /* As the trainer: the ring for non-blocking all-reduce unless set. */
  setenv("OMPI_MCA_coll_libnbc_iallreduce_algorithm", "1", 0);
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  double bucket_mb = argc > 1 ? atof(argv[1]) : 25.0;
  comm_t *c;
  if (comm_mpi_init(&c, 300) != STATUS_OK) MPI_Abort(MPI_COMM_WORLD, 1);
  const size_t sizes_mb[] = {1, 4, 16, 64, 256};
  const size_t nmax = (size_t)256 << 18;
  float *shared = NULL;
  if (comm_alloc_shared(c, nmax, &shared)) comm_fail(c, status_message());
  if (rank == 0 && !shared) fprintf(stderr, "bench_allreduce: no shared gradient memory here\n");
  float *priv = malloc(nmax * sizeof(float)), *tmp = malloc(nmax * sizeof(float));
  int bad = 0;
  for (size_t s = 0; s < sizeof sizes_mb / sizeof sizes_mb[0]; s++) {
    size_t n = sizes_mb[s] << 18;
    job j = {.n = n, .c = c, .buf = priv, .tmp = tmp, .bucket = (size_t)(bucket_mb * (1 << 18))};
    memset(tmp, 0, n * sizeof(float));
    int reps = sizes_mb[s] >= 64 ? 3 : 10;
    /* Correctness first, then timing on whatever the sums grew to. */
    fill(priv, n, rank);
    plain(&j);
    bad |= check(priv, n, size, "MPI_Allreduce");
    double tp = best_of(reps, plain, &j);
    fill(priv, n, rank);
    bucketed(&j);
    bad |= check(priv, n, size, "MPI buckets");
    double tm = best_of(reps, bucketed, &j), tc = best_of(reps, copy, &j);
    double ts = tm;
    if (shared) {
      j.buf = shared;
      fill(shared, n, rank);
      bucketed(&j);
      bad |= check(shared, n, size, "shared-memory buckets");
      ts = best_of(reps, bucketed, &j);
    }
    double bytes = (double)n * sizeof(float), f = 2.0 * (size - 1) / size;
    if (rank == 0)
      printf(
          "{\"ranks\":%d,\"mb\":%zu,\"bucket_mb\":%g,\"plain_busbw\":%.3f,"
          "\"mpi_buckets_busbw\":%.3f,\"mlmpi_busbw\":%.3f,\"mlmpi_algbw\":%.3f,"
          "\"shared_memory\":%s,\"ratio_vs_plain\":%.2f,\"copy_gbs\":%.2f}\n",
          size, sizes_mb[s], bucket_mb, bytes / tp / 1e9 * f, bytes / tm / 1e9 * f,
          bytes / ts / 1e9 * f, bytes / ts / 1e9, shared ? "true" : "false", tp / ts,
          2 * bytes / tc / 1e9);
  }
  free(priv);
  free(tmp);
  comm_free(c);
  MPI_Finalize();
  return bad;
}
