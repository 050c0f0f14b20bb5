/* bench_allreduce.c: the gradient all-reduce. For buffer sizes from 1 MB to
 * 256 MB: plain MPI_Allreduce of the whole buffer, and mlmpi's reducer path
 * (buckets of comm.bucket_mb started as non-blocking all-reduces, all
 * outstanding at once), each as algbw = bytes / time and busbw = algbw *
 * 2(n-1)/n (as nccl-tests define them), with the copy bandwidth of one rank
 * (memcpy, read + write) for scale. Run under mpirun; rank 0 prints JSON. */
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
  for (size_t s = 0; s < sizeof sizes_mb / sizeof sizes_mb[0]; s++) {
    job j = {.n = sizes_mb[s] << 18, .c = c};
    j.bucket = (size_t)(bucket_mb * (1 << 18));
    j.buf = malloc(j.n * sizeof(float));
    j.tmp = malloc(j.n * sizeof(float));
    for (size_t i = 0; i < j.n; i++) j.buf[i] = 1e-3f, j.tmp[i] = 0;
    int reps = sizes_mb[s] >= 64 ? 3 : 10;
    double tp = best_of(reps, plain, &j), tb = best_of(reps, bucketed, &j), tc = best_of(reps, copy, &j);
    double bytes = (double)j.n * sizeof(float), f = 2.0 * (size - 1) / size;
    if (rank == 0)
      printf("{\"ranks\":%d,\"mb\":%zu,\"bucket_mb\":%g,\"plain_algbw\":%.4f,\"plain_busbw\":%.4f,"
             "\"bucketed_algbw\":%.4f,\"bucketed_busbw\":%.4f,\"busbw_ratio\":%.3f,\"copy_gbs\":%.2f}\n",
             size, sizes_mb[s], bucket_mb, bytes / tp / 1e9, bytes / tp / 1e9 * f, bytes / tb / 1e9,
             bytes / tb / 1e9 * f, tp / tb, 2 * bytes / tc / 1e9);
    free(j.buf);
    free(j.tmp);
  }
  comm_free(c);
  MPI_Finalize();
  return 0;
}
