/* bench_gemm.c: GEMM throughput (GFLOP/s, best of reps) for the matrix
 * products of one BERT training step, in the layouts the model uses:
 * OpenBLAS sgemm against oneDNN matmul in f32 and in bf16 (f32 output), each
 * oneDNN result checked against sgemm's once per shape.
 *
 * This file is a program, not library code: every failure prints one line
 * naming what failed and ends the process with status 1, since there is no
 * caller to hand a status to and nothing that the exit does not free. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_debug.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WARMUP_RUNS 2     /* untimed: page faults, oneDNN's JIT, thread start */
#define MASKED_PER_SEQ 20 /* MLM rows per sequence: 15% of T = 128, rounded up */
#define TOL_F32 1e-3      /* max |diff| / max |ref| against sgemm */
#define TOL_BF16 2e-2     /* bf16 inputs carry 8 mantissa bits */
#define MAX_SHAPES 16

static void die(const char *what, const char *msg) {
  fprintf(stderr, "bench_gemm: %s: %s\n", what, msg);
  exit(1);
}

/* Names the oneDNN function (the call's text up to its parenthesis), the
 * shape it was for and oneDNN's reason. */
static void dnnl_ok(dnnl_status_t st, const char *call, const char *what) {
  if (st == dnnl_success) return;
  fprintf(stderr, "bench_gemm: %s: %.*s failed: %s\n", what, (int)strcspn(call, "("), call,
          dnnl_status2str(st));
  exit(1);
}
#define DNNL_CHECK(call, what) dnnl_ok((call), #call, (what))

/* ---- Configuration --------------------------------------------------------- */
typedef struct bench_config {
  int threads, reps;
  int hidden, inter, heads, seq, batch, vocab; /* BERT-base by default */
  bool json;
} bench_config;

static bench_config bench_config_default(void) {
  /* Threads default to what OpenMP was given (OMP_NUM_THREADS, the cpuset). */
  return (bench_config){.threads = omp_get_max_threads(),
                        .reps = 10,
                        .hidden = 768,
                        .inter = 3072,
                        .heads = 12,
                        .seq = 128,
                        .batch = 8,
                        .vocab = 30522};
}

static void usage(FILE *f) {
  bench_config d = bench_config_default();
  fprintf(f,
          "usage: bench_gemm [options]\n"
          "  --threads N  OpenMP, OpenBLAS and oneDNN threads (%d)\n"
          "  --reps R     timed runs per shape and backend, best kept (%d)\n"
          "  --hidden H   hidden size (%d)\n"
          "  --inter I    intermediate (feed-forward) size (%d)\n"
          "  --heads NH   attention heads; H / NH is the head size (%d)\n"
          "  --seq T      sequence length (%d)\n"
          "  --batch B    sequences per step (%d)\n"
          "  --vocab V    vocabulary size (%d)\n"
          "  --json       one JSON object per shape and a peak line, no table\n",
          d.threads, d.reps, d.hidden, d.inter, d.heads, d.seq, d.batch, d.vocab);
}

/* 0: run; 1: bad arguments (already reported); 2: --help was asked for. */
static int bench_config_parse(bench_config *c, int argc, char **argv) {
  struct {
    const char *flag;
    int *val;
  } ints[] = {{"--threads", &c->threads}, {"--reps", &c->reps},   {"--hidden", &c->hidden},
              {"--inter", &c->inter},     {"--heads", &c->heads}, {"--seq", &c->seq},
              {"--batch", &c->batch},     {"--vocab", &c->vocab}};
  const int n_ints = (int)(sizeof ints / sizeof ints[0]);
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return 2;
    if (!strcmp(argv[i], "--json")) {
      c->json = true;
      continue;
    }
    int k = 0;
    while (k < n_ints && strcmp(argv[i], ints[k].flag)) k++;
    if (k == n_ints) {
      fprintf(stderr, "bench_gemm: unknown option %s\n", argv[i]);
      return 1;
    }
    char *end = NULL;
    long v = i + 1 < argc ? strtol(argv[i + 1], &end, 10) : 0;
    if (!end || *end || v <= 0 || v > 1 << 24) {
      fprintf(stderr, "bench_gemm: %s needs a positive integer\n", argv[i]);
      return 1;
    }
    *ints[k].val = (int)v;
    i++;
  }
  if (c->hidden % c->heads) {
    fprintf(stderr, "bench_gemm: --hidden %d is not a multiple of --heads %d\n", c->hidden,
            c->heads);
    return 1;
  }
  return 0;
}

/* ---- Shapes ---------------------------------------------------------------- */
/* A batch of equal, independent row-major GEMMs
 *   C[M,N] = alpha · op(A)[M,K] · op(B)[K,N] + beta · C.
 * A transposed A is stored [K,M] and a transposed B [N,K], which is how the
 * model holds dy in the weight gradient and W in the forward pass. */
typedef struct gemm_shape {
  char name[24];
  int batch, M, N, K;
  bool ta, tb;
  float alpha, beta;
} gemm_shape;

static double gemm_flops(const gemm_shape *s) {
  return 2.0 * s->batch * s->M * (double)s->N * s->K;
}

/* The three products of one linear layer over N rows, as k_linear_fwd and
 * k_linear_bwd (trainer/kernels.c) call them; W is [out,in]. */
static int shapes_linear(gemm_shape *s, const char *layer, int N, int in, int out) {
  /* y[N,out] = x[N,in] · W^T */
  s[0] = (gemm_shape){.batch = 1, .M = N, .N = out, .K = in, .tb = true, .alpha = 1};
  /* dW[out,in] += dy[N,out]^T · x[N,in] */
  s[1] = (gemm_shape){.batch = 1, .M = out, .N = in, .K = N, .ta = true, .alpha = 1, .beta = 1};
  /* dx[N,in] = dy[N,out] · W */
  s[2] = (gemm_shape){.batch = 1, .M = N, .N = in, .K = out, .alpha = 1};
  const char *form[3] = {"fwd", "wgrad", "dgrad"};
  for (int i = 0; i < 3; i++) snprintf(s[i].name, sizeof s[i].name, "%s_%s", layer, form[i]);
  return 3;
}

/* Every shape of a step, in the order the table prints them. */
static int shapes_build(gemm_shape *s, const bench_config *c) {
  /* Not `I`: cblas.h brings in <complex.h>, where I is the imaginary unit. */
  const int H = c->hidden, F = c->inter, N = c->batch * c->seq, T = c->seq;
  const int D = H / c->heads, heads = c->batch * c->heads;
  int n = 0;
  n += shapes_linear(s + n, "qkv", N, H, 3 * H);
  n += shapes_linear(s + n, "attn_out", N, H, H);
  n += shapes_linear(s + n, "ffn_in", N, H, F);
  n += shapes_linear(s + n, "ffn_out", N, F, H);
  /* logits[M,V] = h[M,H] · E^T with the tied embedding table E [V,H]. */
  s[n++] = (gemm_shape){"mlm_logits", 1, c->batch * MASKED_PER_SEQ, c->vocab, H, false, true, 1, 0};
  /* Per head: scores[T,T] = q k^T / sqrt(D), then ctx[T,D] = P v. */
  s[n++] = (gemm_shape){"attn_scores", heads, T, T, D, false, true, 1.0f / sqrtf((float)D), 0};
  s[n++] = (gemm_shape){"attn_ctx", heads, T, D, T, false, false, 1, 0};
  return n;
}

/* ---- Buffers ----------------------------------------------------------------- */
typedef struct gemm_bufs {
  size_t na, nb, nc;   /* elements, batch included */
  float *a, *b, *c0;   /* inputs and C's starting value (beta = 1 reads it) */
  float *ref, *c;      /* sgemm's result; oneDNN's result */
  uint16_t *a16, *b16; /* bf16 copies of a and b */
} gemm_bufs;

static void *alloc_or_die(size_t bytes, const char *what) {
  /* aligned_alloc wants a multiple of the alignment; 64 B is one cache line. */
  void *p = aligned_alloc(64, (bytes + 63) / 64 * 64);
  if (!p) die(what, "out of memory");
  return p;
}

/* Uniform in [-1, 1) from a counter hash (splitmix64), so every run and
 * every backend sees the same inputs. */
static void fill_random(float *x, size_t n, uint64_t seed) {
  for (size_t i = 0; i < n; i++) {
    uint64_t z = seed + (i + 1) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    x[i] = (float)(z >> 40) * (2.0f / 16777216.0f) - 1.0f;
  }
}

/* fp32 to bf16 rounding to nearest even, as oneDNN's own reorder does; the
 * inputs here are finite, so NaN needs no special case. */
static void to_bf16(uint16_t *dst, const float *src, size_t n) {
  for (size_t i = 0; i < n; i++) {
    uint32_t u;
    memcpy(&u, &src[i], sizeof u);
    u += 0x7fffu + ((u >> 16) & 1u);
    dst[i] = (uint16_t)(u >> 16);
  }
}

static void gemm_bufs_init(gemm_bufs *g, const gemm_shape *s) {
  g->na = (size_t)s->batch * s->M * s->K;
  g->nb = (size_t)s->batch * s->K * s->N;
  g->nc = (size_t)s->batch * s->M * s->N;
  g->a = alloc_or_die(g->na * sizeof(float), s->name);
  g->b = alloc_or_die(g->nb * sizeof(float), s->name);
  g->c0 = alloc_or_die(g->nc * sizeof(float), s->name);
  g->ref = alloc_or_die(g->nc * sizeof(float), s->name);
  g->c = alloc_or_die(g->nc * sizeof(float), s->name);
  g->a16 = alloc_or_die(g->na * sizeof(uint16_t), s->name);
  g->b16 = alloc_or_die(g->nb * sizeof(uint16_t), s->name);
  fill_random(g->a, g->na, 1);
  fill_random(g->b, g->nb, 2);
  fill_random(g->c0, g->nc, 3);
  to_bf16(g->a16, g->a, g->na);
  to_bf16(g->b16, g->b, g->nb);
}

static void gemm_bufs_free(gemm_bufs *g) {
  free(g->a);
  free(g->b);
  free(g->c0);
  free(g->ref);
  free(g->c);
  free(g->a16);
  free(g->b16);
}

/* max |x - ref| / max |ref|: one number that does not blow up where ref is
 * near zero. */
static double rel_diff(const float *x, const float *ref, size_t n) {
  double diff = 0.0, mag = 0.0;
  for (size_t i = 0; i < n; i++) {
    diff = fmax(diff, fabs((double)x[i] - ref[i]));
    mag = fmax(mag, fabs((double)ref[i]));
  }
  return mag > 0.0 ? diff / mag : diff;
}

/* ---- OpenBLAS ---------------------------------------------------------------- */
/* One sgemm call, or for a batch one per entry in an OpenMP loop as
 * k_attention_fwd makes them: the OpenMP build of OpenBLAS runs each call on
 * one thread inside the parallel region. */
static void sgemm_run(const gemm_shape *s, const float *a, const float *b, float *c) {
  const CBLAS_TRANSPOSE ta = s->ta ? CblasTrans : CblasNoTrans;
  const CBLAS_TRANSPOSE tb = s->tb ? CblasTrans : CblasNoTrans;
  const int lda = s->ta ? s->M : s->K, ldb = s->tb ? s->K : s->N;
  if (s->batch == 1) {
    cblas_sgemm(CblasRowMajor, ta, tb, s->M, s->N, s->K, s->alpha, a, lda, b, ldb, s->beta, c,
                s->N);
    return;
  }
  const size_t sa = (size_t)s->M * s->K, sb = (size_t)s->K * s->N, sc = (size_t)s->M * s->N;
#pragma omp parallel for schedule(dynamic, 1)
  for (int i = 0; i < s->batch; i++)
    cblas_sgemm(CblasRowMajor, ta, tb, s->M, s->N, s->K, s->alpha, a + i * sa, lda, b + i * sb, ldb,
                s->beta, c + i * sc, s->N);
}

/* ---- oneDNN ------------------------------------------------------------------ */
typedef struct matmul {
  const char *name; /* the shape's, for messages */
  dnnl_primitive_t prim;
  dnnl_memory_t a, b, c; /* over the caller's buffers, which it keeps */
  dnnl_stream_t stream;
  char impl[64]; /* the implementation oneDNN chose, e.g. brg:avx512_core_bf16 */
} matmul;

/* [batch,] rows x cols over a row-major array, or over its transpose (stored
 * cols x rows) when trans: a transpose is a pair of strides, not a copy. A
 * single GEMM stays 2-D, a batch is 3-D with its entries back to back. */
static dnnl_memory_desc_t md_matrix(const gemm_shape *s, int rows, int cols, bool trans,
                                    dnnl_data_type_t type) {
  const dnnl_dims_t dims = {s->batch, rows, cols};
  const dnnl_dims_t strides = {(dnnl_dim_t)rows * cols, trans ? 1 : cols, trans ? rows : 1};
  const int skip = s->batch > 1 ? 0 : 1;
  dnnl_memory_desc_t md;
  DNNL_CHECK(dnnl_memory_desc_init_by_strides(&md, 3 - skip, dims + skip, type, strides + skip),
             s->name);
  return md;
}

/* alpha as an output scale and beta as a sum post-op: oneDNN applies both
 * inside the GEMM, as sgemm does. */
static dnnl_primitive_attr_t matmul_attr(const gemm_shape *s) {
  dnnl_primitive_attr_t attr;
  DNNL_CHECK(dnnl_primitive_attr_create(&attr), s->name);
  if (s->alpha != 1.0f)
    DNNL_CHECK(dnnl_primitive_attr_set_output_scales(attr, 1, 0, &s->alpha), s->name);
  if (s->beta != 0.0f) {
    dnnl_post_ops_t ops;
    DNNL_CHECK(dnnl_post_ops_create(&ops), s->name);
    DNNL_CHECK(dnnl_post_ops_append_sum(ops, s->beta), s->name);
    DNNL_CHECK(dnnl_primitive_attr_set_post_ops(attr, ops), s->name);
    DNNL_CHECK(dnnl_post_ops_destroy(ops), s->name);
  }
  return attr;
}

/* A matmul over a, b (of type `in`) and the f32 c. Creating the primitive
 * JIT-compiles its kernel, so it happens here, once per shape, and the timed
 * loop only executes. */
static void matmul_init(matmul *m, const gemm_shape *s, dnnl_data_type_t in, void *a, void *b,
                        float *c, dnnl_engine_t eng, dnnl_stream_t stream) {
  const dnnl_memory_desc_t amd = md_matrix(s, s->M, s->K, s->ta, in);
  const dnnl_memory_desc_t bmd = md_matrix(s, s->K, s->N, s->tb, in);
  const dnnl_memory_desc_t cmd = md_matrix(s, s->M, s->N, false, dnnl_f32);
  dnnl_matmul_desc_t desc;
  DNNL_CHECK(dnnl_matmul_desc_init(&desc, &amd, &bmd, NULL, &cmd), s->name);
  dnnl_primitive_attr_t attr = matmul_attr(s);
  dnnl_primitive_desc_t pd;
  DNNL_CHECK(dnnl_primitive_desc_create(&pd, &desc, attr, eng, NULL), s->name);
  const char *impl = NULL;
  DNNL_CHECK(dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl), s->name);
  snprintf(m->impl, sizeof m->impl, "%s", impl);
  DNNL_CHECK(dnnl_primitive_create(&m->prim, pd), s->name);
  DNNL_CHECK(dnnl_primitive_desc_destroy(pd), s->name);
  DNNL_CHECK(dnnl_primitive_attr_destroy(attr), s->name);
  DNNL_CHECK(dnnl_memory_create(&m->a, &amd, eng, a), s->name);
  DNNL_CHECK(dnnl_memory_create(&m->b, &bmd, eng, b), s->name);
  DNNL_CHECK(dnnl_memory_create(&m->c, &cmd, eng, c), s->name);
  m->name = s->name;
  m->stream = stream;
}

/* Runs to completion: the wait is part of what is timed. */
static void matmul_run(const matmul *m) {
  const dnnl_exec_arg_t args[3] = {
      {DNNL_ARG_SRC, m->a}, {DNNL_ARG_WEIGHTS, m->b}, {DNNL_ARG_DST, m->c}};
  DNNL_CHECK(dnnl_primitive_execute(m->prim, m->stream, 3, args), m->name);
  DNNL_CHECK(dnnl_stream_wait(m->stream), m->name);
}

static void matmul_free(matmul *m) {
  DNNL_CHECK(dnnl_primitive_destroy(m->prim), m->name);
  DNNL_CHECK(dnnl_memory_destroy(m->a), m->name);
  DNNL_CHECK(dnnl_memory_destroy(m->b), m->name);
  DNNL_CHECK(dnnl_memory_destroy(m->c), m->name);
}

/* ---- Measuring ---------------------------------------------------------------- */
typedef enum { BACKEND_OPENBLAS, BACKEND_DNNL_F32, BACKEND_DNNL_BF16, BACKEND_COUNT } backend;

typedef struct shape_result {
  double gflops[BACKEND_COUNT];
  double err_f32, err_bf16; /* rel_diff against sgemm */
  char impl_f32[64], impl_bf16[64];
} shape_result;

/* What one timed run does: sgemm over the f32 buffers, or a matmul. */
typedef struct gemm_job {
  const gemm_shape *s;
  const gemm_bufs *g;
  const matmul *m; /* NULL: sgemm */
} gemm_job;

static void gemm_job_run(const gemm_job *j) {
  if (j->m)
    matmul_run(j->m);
  else
    sgemm_run(j->s, j->g->a, j->g->b, j->g->ref);
}

/* GFLOP/s of the fastest of reps runs after the warm-up ones. */
static double best_gflops(const gemm_job *j, int reps) {
  for (int r = 0; r < WARMUP_RUNS; r++) gemm_job_run(j);
  double best = INFINITY;
  for (int r = 0; r < reps; r++) {
    double t0 = omp_get_wtime();
    gemm_job_run(j);
    best = fmin(best, omp_get_wtime() - t0);
  }
  return gemm_flops(j->s) / best / 1e9;
}

/* One run of each oneDNN matmul from C's starting value, compared with
 * sgemm's from the same start: beta = 1 makes the start part of the result. */
static void check_results(shape_result *r, const gemm_shape *s, const gemm_bufs *g,
                          const matmul *f32, const matmul *bf16) {
  memcpy(g->ref, g->c0, g->nc * sizeof(float));
  sgemm_run(s, g->a, g->b, g->ref);
  memcpy(g->c, g->c0, g->nc * sizeof(float));
  matmul_run(f32);
  r->err_f32 = rel_diff(g->c, g->ref, g->nc);
  memcpy(g->c, g->c0, g->nc * sizeof(float));
  matmul_run(bf16);
  r->err_bf16 = rel_diff(g->c, g->ref, g->nc);
}

static shape_result bench_shape(const gemm_shape *s, int reps, dnnl_engine_t eng,
                                dnnl_stream_t stream) {
  gemm_bufs g;
  gemm_bufs_init(&g, s);
  matmul f32, bf16;
  matmul_init(&f32, s, dnnl_f32, g.a, g.b, g.c, eng, stream);
  matmul_init(&bf16, s, dnnl_bf16, g.a16, g.b16, g.c, eng, stream);
  shape_result r = {0};
  check_results(&r, s, &g, &f32, &bf16);
  snprintf(r.impl_f32, sizeof r.impl_f32, "%s", f32.impl);
  snprintf(r.impl_bf16, sizeof r.impl_bf16, "%s", bf16.impl);
  /* The timed runs keep accumulating into C where beta = 1; the values stay
   * small enough after a few dozen runs not to matter. */
  r.gflops[BACKEND_OPENBLAS] = best_gflops(&(gemm_job){s, &g, NULL}, reps);
  r.gflops[BACKEND_DNNL_F32] = best_gflops(&(gemm_job){s, &g, &f32}, reps);
  r.gflops[BACKEND_DNNL_BF16] = best_gflops(&(gemm_job){s, &g, &bf16}, reps);
  matmul_free(&f32);
  matmul_free(&bf16);
  gemm_bufs_free(&g);
  return r;
}

/* ---- Output ------------------------------------------------------------------ */
static void print_config(FILE *f, const bench_config *c) {
  const dnnl_version_t *v = dnnl_version();
  fprintf(f,
          "# bench_gemm: threads %d, reps %d (best of, after %d warm-up), H %d, I %d, NH %d "
          "(D %d), T %d, B %d (N %d rows, M %d masked), V %d\n"
          "# OpenBLAS %s (core %s); oneDNN %d.%d.%d (cpu runtime %s)\n",
          c->threads, c->reps, WARMUP_RUNS, c->hidden, c->inter, c->heads, c->hidden / c->heads,
          c->seq, c->batch, c->batch * c->seq, c->batch * MASKED_PER_SEQ, c->vocab,
          openblas_get_config(), openblas_get_corename(), v->major, v->minor, v->patch,
          v->cpu_runtime == DNNL_RUNTIME_OMP ? "OpenMP" : "other");
}

static void print_header(void) {
  printf("%-15s %5s %6s %6s %6s %9s %9s %9s %7s %7s  %s\n", "shape", "batch", "M", "N", "K",
         "openblas", "dnnl_f32", "dnnl_bf16", "f32/ob", "bf16/ob", "oneDNN impl (f32 | bf16)");
}

static void print_row(const gemm_shape *s, const shape_result *r, bool json) {
  const double *g = r->gflops, ob = g[BACKEND_OPENBLAS];
  if (json) {
    printf(
        "{\"shape\":\"%s\",\"batch\":%d,\"M\":%d,\"N\":%d,\"K\":%d,\"gflop\":%.4f,"
        "\"openblas_gflops\":%.2f,\"dnnl_f32_gflops\":%.2f,\"dnnl_bf16_gflops\":%.2f,"
        "\"dnnl_f32_ratio\":%.3f,\"dnnl_bf16_ratio\":%.3f,\"f32_rel_err\":%.3g,"
        "\"bf16_rel_err\":%.3g,\"dnnl_f32_impl\":\"%s\",\"dnnl_bf16_impl\":\"%s\"}\n",
        s->name, s->batch, s->M, s->N, s->K, gemm_flops(s) / 1e9, ob, g[BACKEND_DNNL_F32],
        g[BACKEND_DNNL_BF16], g[BACKEND_DNNL_F32] / ob, g[BACKEND_DNNL_BF16] / ob, r->err_f32,
        r->err_bf16, r->impl_f32, r->impl_bf16);
  } else {
    printf("%-15s %5d %6d %6d %6d %9.1f %9.1f %9.1f %7.2f %7.2f  %s | %s\n", s->name, s->batch,
           s->M, s->N, s->K, ob, g[BACKEND_DNNL_F32], g[BACKEND_DNNL_BF16],
           g[BACKEND_DNNL_F32] / ob, g[BACKEND_DNNL_BF16] / ob, r->impl_f32, r->impl_bf16);
  }
  fflush(stdout);
}

/* Each backend's best rate over the shapes with the most FLOPs (the three
 * forms of one layer tie, so the best of them counts). */
static void print_peak(const gemm_shape *s, const shape_result *r, int n, bool json) {
  double most = 0.0, peak[BACKEND_COUNT] = {0};
  int at = 0;
  for (int i = 0; i < n; i++)
    if (gemm_flops(&s[i]) > most) most = gemm_flops(&s[i]), at = i;
  for (int i = 0; i < n; i++) {
    if (gemm_flops(&s[i]) != most) continue;
    for (int b = 0; b < BACKEND_COUNT; b++) peak[b] = fmax(peak[b], r[i].gflops[b]);
  }
  if (json)
    printf("{\"peak_bf16_gflops\":%.2f,\"peak_f32_gflops\":%.2f,\"peak_openblas_gflops\":%.2f}\n",
           peak[BACKEND_DNNL_BF16], peak[BACKEND_DNNL_F32], peak[BACKEND_OPENBLAS]);
  else
    printf(
        "peak on the largest shape (%s, %.2f GFLOP): dnnl_bf16 %.1f, dnnl_f32 %.1f, "
        "openblas %.1f GFLOP/s\n",
        s[at].name, most / 1e9, peak[BACKEND_DNNL_BF16], peak[BACKEND_DNNL_F32],
        peak[BACKEND_OPENBLAS]);
}

/* Fails the run when oneDNN and sgemm disagree, so the bench checks itself. */
static bool result_ok(const gemm_shape *s, const shape_result *r) {
  if (r->err_f32 <= TOL_F32 && r->err_bf16 <= TOL_BF16) return true;
  fprintf(stderr,
          "bench_gemm: %s: oneDNN differs from sgemm: f32 %.3g (limit %.0e), bf16 %.3g "
          "(limit %.0e)\n",
          s->name, r->err_f32, TOL_F32, r->err_bf16, TOL_BF16);
  return false;
}

int main(int argc, char **argv) {
  bench_config c = bench_config_default();
  int rc = bench_config_parse(&c, argc, argv);
  if (rc) {
    usage(rc == 2 ? stdout : stderr);
    return rc == 2 ? 0 : 1;
  }
  /* oneDNN runs on the same OpenMP runtime, so omp_set_num_threads sets its
   * threads too; OpenBLAS keeps its own count. */
  omp_set_num_threads(c.threads);
  openblas_set_num_threads(c.threads);
  print_config(c.json ? stderr : stdout, &c);

  dnnl_engine_t eng;
  dnnl_stream_t stream;
  DNNL_CHECK(dnnl_engine_create(&eng, dnnl_cpu, 0), "setup");
  DNNL_CHECK(dnnl_stream_create(&stream, eng, dnnl_stream_default_flags), "setup");

  gemm_shape shapes[MAX_SHAPES];
  shape_result results[MAX_SHAPES];
  int n = shapes_build(shapes, &c);
  if (!c.json) print_header();
  for (int i = 0; i < n; i++) {
    results[i] = bench_shape(&shapes[i], c.reps, eng, stream);
    print_row(&shapes[i], &results[i], c.json);
    if (!result_ok(&shapes[i], &results[i])) return 1;
  }
  print_peak(shapes, results, n, c.json);

  DNNL_CHECK(dnnl_stream_destroy(stream), "teardown");
  DNNL_CHECK(dnnl_engine_destroy(eng), "teardown");
  return 0;
}
