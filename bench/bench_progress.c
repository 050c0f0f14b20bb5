/* bench_progress.c: who drives the gradient all-reduce while backward
 * computes. MPI moves a non-blocking all-reduce forward only inside MPI
 * calls, so something must call it during backward. A stand-in for the
 * backward of a BERT-mini-sized model: `layers` GEMMs (one OpenBLAS thread
 * per rank), each followed by the announcement of its gradients; a bucket's
 * all-reduce starts once its layers are done (buckets of comm.bucket_mb, the
 * first ~1 MB, as the reducer makes). Modes:
 *   none    start the all-reduces, never touch them until the end;
 *   test    MPI_Test on the pending ones after every layer (the trainer's way);
 *   thread  a communication thread polls them (MPI_THREAD_MULTIPLE) while the
 *           main thread only computes;
 * each on private memory (the MPI path) and, for none and test, on the
 * communicator's shared gradient memory (its in-place path). Reported: the
 * compute alone, the step, and the exposed communication (the wait after the
 * last layer) as a fraction of the step. Run under mpirun; rank 0 prints
 * JSON lines. Usage: bench_progress [total_mb [bucket_mb [layers]]] (44, 25,
 * 24: BERT-mini's gradients; a layer is a 512x1024x512 GEMM, ~10 ms). */
#include <cblas.h>
#include <mpi.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm.h"

void openblas_set_num_threads(int);

typedef struct {
  comm_t *c;
  float *grads;
  size_t n;
  int layers, nb;
  size_t *b_lo, *b_hi; /* bucket spans, reverse layer order */
  int *b_last_layer;   /* the layer whose end completes the bucket */
  float *A, *B, *C;    /* the GEMM */
  int m, k;
} setup;

/* The pending requests a communication thread polls. */
typedef struct {
  pthread_mutex_t mu;
  MPI_Request *r;
  int n;
  atomic_bool stop;
} poller;

static void *poll_thread(void *arg) {
  poller *p = arg;
  while (!atomic_load(&p->stop)) {
    pthread_mutex_lock(&p->mu);
    int flag;
    if (p->n) MPI_Testall(p->n, p->r, &flag, MPI_STATUSES_IGNORE);
    pthread_mutex_unlock(&p->mu);
    sched_yield();
  }
  return NULL;
}

static double now(void) { return MPI_Wtime(); }

static void layer(const setup *s) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s->m, s->m, s->k, 1.0f, s->A, s->k, s->B,
              s->m, 0.0f, s->C, s->m);
}

/* One step; returns {step, exposed}. mode: 0 none, 1 test, 2 thread. */
static void step(const setup *s, int mode, bool use_comm, double out[2]) {
  comm_req **q = calloc((size_t)s->nb, sizeof *q);
  MPI_Request *raw = calloc((size_t)s->nb, sizeof *raw);
  poller p = {.r = raw};
  pthread_t th;
  pthread_mutex_init(&p.mu, NULL);
  if (mode == 2) pthread_create(&th, NULL, poll_thread, &p);
  MPI_Barrier(MPI_COMM_WORLD);
  double t0 = now();
  int next = 0;
  for (int l = 0; l < s->layers; l++) {
    layer(s);
    while (next < s->nb && s->b_last_layer[next] == l) {
      size_t lo = s->b_lo[next], len = s->b_hi[next] - lo;
      if (mode == 2) {
        pthread_mutex_lock(&p.mu);
        MPI_Iallreduce(MPI_IN_PLACE, s->grads + lo, (int)len, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD,
                       &raw[next]);
        p.n = next + 1;
        pthread_mutex_unlock(&p.mu);
      } else if (use_comm) {
        if (s->c->ops->iallreduce(s->c, s->grads + lo, len, &q[next]))
          comm_fail(s->c, status_message());
      }
      next++;
    }
    if (mode == 1)
      for (int b = 0; b < next; b++) {
        bool d;
        if (q[b] && s->c->ops->test(s->c, q[b], &d)) comm_fail(s->c, status_message());
      }
  }
  double t1 = now();
  if (mode == 2) {
    atomic_store(&p.stop, true);
    pthread_join(th, NULL);
    MPI_Waitall(s->nb, raw, MPI_STATUSES_IGNORE);
  } else if (use_comm) {
    for (int b = 0; b < s->nb; b++)
      if (s->c->ops->wait(s->c, q[b])) comm_fail(s->c, status_message());
  }
  double t2 = now();
  out[0] = t2 - t0;
  out[1] = t2 - t1;
  pthread_mutex_destroy(&p.mu);
  free(q);
  free(raw);
}

int main(int argc, char **argv) {
  setenv("OMPI_MCA_coll_libnbc_iallreduce_algorithm", "1", 0); /* as the trainer */
  int prov;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &prov);
  openblas_set_num_threads(1);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  double total_mb = argc > 1 ? atof(argv[1]) : 44, bucket_mb = argc > 2 ? atof(argv[2]) : 25;
  setup s = {.layers = argc > 3 ? atoi(argv[3]) : 24, .m = 512, .k = 1024};
  if (comm_mpi_init(&s.c, 300)) MPI_Abort(MPI_COMM_WORLD, 1);
  s.n = (size_t)(total_mb * (1 << 18));
  /* Buckets from the end of the buffer (the last layers finish first). */
  s.b_lo = calloc(64 + (size_t)(total_mb / bucket_mb), sizeof *s.b_lo);
  s.b_hi = calloc(64 + (size_t)(total_mb / bucket_mb), sizeof *s.b_hi);
  s.b_last_layer = calloc(64 + (size_t)(total_mb / bucket_mb), sizeof *s.b_last_layer);
  size_t per_layer = s.n / (size_t)s.layers, cap = 1 << 18, end = s.n;
  while (end > 0) {
    size_t lo = end > cap ? end - cap : 0;
    s.b_lo[s.nb] = lo;
    s.b_hi[s.nb] = end;
    /* Layer l (counted from the top) produces [n - (l+1)·per_layer, n - l·per_layer). */
    size_t need = s.n - lo;
    int last = (int)((need + per_layer - 1) / per_layer) - 1;
    s.b_last_layer[s.nb] = last < s.layers ? last : s.layers - 1;
    s.nb++;
    end = lo;
    cap = (size_t)(bucket_mb * (1 << 18));
  }
  s.A = calloc((size_t)s.m * s.k, sizeof(float));
  s.B = calloc((size_t)s.k * s.m, sizeof(float));
  s.C = calloc((size_t)s.m * s.m, sizeof(float));
  float *priv = calloc(s.n, sizeof(float)), *shared = NULL;
  if (comm_alloc_shared(s.c, s.n, &shared)) comm_fail(s.c, status_message());
  const int reps = 10;
  /* Compute alone. */
  double compute = 1e30;
  for (int r = 0; r < reps; r++) {
    s.grads = priv;
    double o[2];
    step(&s, 0, false, o);
    compute = o[0] < compute ? o[0] : compute;
  }
  struct {
    const char *name;
    int mode;
    float *mem;
  } runs[] = {{"none", 0, priv},
              {"test", 1, priv},
              {"thread", 2, priv},
              {"none/shared", 0, shared},
              {"test/shared", 1, shared}};
  for (size_t i = 0; i < sizeof runs / sizeof runs[0]; i++) {
    if (!runs[i].mem) continue;
    if (runs[i].mode == 2 && prov < MPI_THREAD_MULTIPLE) {
      if (rank == 0)
        fprintf(stderr, "bench_progress: no MPI_THREAD_MULTIPLE: thread mode skipped\n");
      continue;
    }
    s.grads = runs[i].mem;
    double best[2] = {1e30, 0};
    for (int r = 0; r < reps; r++) {
      double o[2];
      step(&s, runs[i].mode, true, o);
      MPI_Allreduce(MPI_IN_PLACE, o, 2, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
      if (o[0] < best[0]) best[0] = o[0], best[1] = o[1];
    }
    if (rank == 0)
      printf(
          "{\"ranks\":%d,\"mode\":\"%s\",\"grad_mb\":%g,\"buckets\":%d,\"compute_ms\":%.2f,"
          "\"step_ms\":%.2f,\"exposed_ms\":%.2f,\"exposed_frac\":%.3f,\"overhead_vs_compute\":%.3f}"
          "\n",
          size, runs[i].name, total_mb, s.nb, compute * 1e3, best[0] * 1e3, best[1] * 1e3,
          best[1] / best[0], best[0] / compute - 1);
  }
  free(priv);
  free(s.A);
  free(s.B);
  free(s.C);
  free(s.b_lo);
  free(s.b_hi);
  free(s.b_last_layer);
  comm_free(s.c);
  MPI_Finalize();
  return 0;
}
