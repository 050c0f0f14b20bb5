/* compute_onednn.c: the backends whose matrix products run in oneDNN's
 * matmul; everything else stays fp32 in kernels.c.
 *   bf16         bf16 inputs, fp32 accumulation and fp32 outputs (AVX512-BF16
 *                or AMX kernels). The master weights stay in the fp32
 *                parameter table; sync() converts them into a bf16 copy of
 *                the same layout at the start of every forward, so a weight
 *                operand W is read from the copy at W's offset. Activations
 *                and gradients are converted per product into scratch
 *                buffers that grow to the largest shape seen and are then
 *                reused. Conversions round to nearest even.
 *   fp32-onednn  the same products in fp32 with oneDNN's own CPU dispatch
 *                (not OpenBLAS's); operands are read in place.
 *
 * Each distinct product shape (dimensions, strides, types, scale and
 * whether it accumulates) gets one primitive and three memory objects,
 * created on first use and kept; a call only sets the data handles and
 * executes. oneDNN and OpenBLAS both run on libgomp's pool, sized by the
 * same omp_set_num_threads. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <oneapi/dnnl/dnnl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compute.h"

typedef uint16_t bf16;

/* fp32 -> bf16 rounding to nearest even (ties to the even mantissa); a NaN
 * stays a quiet NaN instead of rounding into infinity. */
static inline bf16 to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return (bf16)((u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : r);
}

static void to_bf16_n(bf16 *dst, const float *src, size_t n) {
#pragma omp parallel for simd schedule(static)
  for (size_t i = 0; i < n; i++) dst[i] = to_bf16(src[i]);
}

void compute_to_bf16(uint16_t *dst, const float *src, size_t n) { to_bf16_n(dst, src, n); }

/* ---- Primitive cache ---------------------------------------------------------
 * A product C[b] = alpha · A[b] · B[b] (+ C[b] when acc) over `batch`
 * matrices, each operand described by its dims and strides (so transposes
 * are strides, not copies). */
enum { SRC, WEI, DST };

typedef struct {
  int nd;
  dnnl_dims_t dims[3], strides[3];
  dnnl_data_type_t dt[3];
  float alpha;
  int acc;
} mm_key;

typedef struct {
  mm_key key;
  dnnl_primitive_t prim;
  dnnl_memory_t mem[3];
} mm_entry;

typedef struct {
  dnnl_data_type_t dt; /* the products' input type: dnnl_bf16 or dnnl_f32 */
  size_t esize;        /* its size in bytes */
  dnnl_engine_t engine;
  dnnl_stream_t stream;
  mm_entry *mm;
  int n_mm, cap_mm;
  /* The bf16 copy of the parameters of the last sync. */
  const float *params;
  size_t n_params;
  bf16 *wcopy;
  /* Growing scratch: operands (of type dt) and fp32 per-head results. */
  void *b[5];
  size_t b_cap[5];
  float *f[3];
  size_t f_cap[3];
} onednn_state;

enum { B_A, B_B, B_Q, B_K, B_V }; /* b[] slots; attention uses all five */

#define DNNL_OK(call)                              \
  do {                                             \
    dnnl_status_t s_ = (call);                     \
    if (s_ != dnnl_success) dnnl_panic(#call, s_); \
  } while (0)

/* A oneDNN call failed where no shape, type or input can make it fail
 * (every product shape is exercised by the tests): a bug, not bad input. */
__attribute__((noreturn)) static void dnnl_panic(const char *call, dnnl_status_t s) {
  char what[256];
  snprintf(what, sizeof what, "oneDNN call %s failed with status %d", call, (int)s);
  core_panic(__FILE__, __LINE__, what);
}

static void *grow(void **buf, size_t *cap, size_t bytes, const char *what) {
  if (bytes <= *cap) return *buf;
  mem_free(*buf);
  *buf = mem_alloc(bytes, what);
  if (!*buf) core_panic(__FILE__, __LINE__, "out of memory for the oneDNN backend's scratch");
  *cap = bytes;
  return *buf;
}

static void *bscratch(onednn_state *s, int slot, size_t n) {
  return grow(&s->b[slot], &s->b_cap[slot], n * s->esize, "matrix operands");
}
static float *fscratch(onednn_state *s, int slot, size_t n) {
  return grow((void **)&s->f[slot], &s->f_cap[slot], n * sizeof(float), "oneDNN backend results");
}

static mm_entry *mm_get(onednn_state *s, const mm_key *k) {
  for (int i = 0; i < s->n_mm; i++)
    if (memcmp(&s->mm[i].key, k, sizeof *k) == 0) return &s->mm[i];
  if (s->n_mm == s->cap_mm) {
    int cap = s->cap_mm ? 2 * s->cap_mm : 32;
    mm_entry *p = realloc(s->mm, (size_t)cap * sizeof *p);
    if (!p) core_panic(__FILE__, __LINE__, "out of memory for the oneDNN primitive cache");
    s->mm = p;
    s->cap_mm = cap;
  }
  mm_entry *e = &s->mm[s->n_mm];
  memset(e, 0, sizeof *e);
  e->key = *k;
  dnnl_memory_desc_t md[3];
  for (int i = 0; i < 3; i++)
    DNNL_OK(dnnl_memory_desc_init_by_strides(&md[i], k->nd, k->dims[i], k->dt[i], k->strides[i]));
  dnnl_primitive_attr_t attr;
  DNNL_OK(dnnl_primitive_attr_create(&attr));
  if (k->alpha != 1.0f) DNNL_OK(dnnl_primitive_attr_set_output_scales(attr, 1, 0, &k->alpha));
  if (k->acc) {
    dnnl_post_ops_t po;
    DNNL_OK(dnnl_post_ops_create(&po));
    DNNL_OK(dnnl_post_ops_append_sum(po, 1.0f));
    DNNL_OK(dnnl_primitive_attr_set_post_ops(attr, po));
    DNNL_OK(dnnl_post_ops_destroy(po));
  }
  dnnl_matmul_desc_t desc;
  DNNL_OK(dnnl_matmul_desc_init(&desc, &md[SRC], &md[WEI], NULL, &md[DST]));
  dnnl_primitive_desc_t pd;
  DNNL_OK(dnnl_primitive_desc_create(&pd, &desc, attr, s->engine, NULL));
  DNNL_OK(dnnl_primitive_create(&e->prim, pd));
  DNNL_OK(dnnl_primitive_desc_destroy(pd));
  DNNL_OK(dnnl_primitive_attr_destroy(attr));
  for (int i = 0; i < 3; i++)
    DNNL_OK(dnnl_memory_create(&e->mem[i], &md[i], s->engine, DNNL_MEMORY_NONE));
  s->n_mm++;
  return e;
}

/* An operand: its type, the matrix's rows x cols as the product reads it,
 * and the strides of (batch, row, col) in elements. */
typedef struct {
  const void *p;
  dnnl_data_type_t dt;
  int64_t bs, rs, cs;
} operand;

/* An operand of the backend's input type. */
static operand op_in(const onednn_state *s, const void *p, int64_t bs, int64_t rs, int64_t cs) {
  return (operand){p, s->dt, bs, rs, cs};
}
static operand op_f(const float *p, int64_t bs, int64_t rs, int64_t cs) {
  return (operand){p, dnnl_f32, bs, rs, cs};
}

/* C[b] (M x N) = alpha · A[b] (M x K) · B[b] (K x N) (+ C[b] when acc), for
 * b < batch (batch 1: plain 2-D matrices). */
static void matmul(onednn_state *s, int64_t batch, int64_t M, int64_t N, int64_t K, float alpha,
                   operand a, operand b, operand c, bool acc) {
  mm_key k;
  memset(&k, 0, sizeof k); /* the key is compared bytewise */
  const operand *ops[3] = {&a, &b, &c};
  const int64_t rows[3] = {M, K, M}, cols[3] = {K, N, N};
  k.nd = batch > 1 ? 3 : 2;
  for (int i = 0; i < 3; i++) {
    int j = 0;
    if (k.nd == 3) {
      k.dims[i][j] = batch;
      k.strides[i][j++] = ops[i]->bs;
    }
    k.dims[i][j] = rows[i];
    k.strides[i][j++] = ops[i]->rs;
    k.dims[i][j] = cols[i];
    k.strides[i][j] = ops[i]->cs;
    k.dt[i] = ops[i]->dt;
  }
  k.alpha = alpha;
  k.acc = acc;
  mm_entry *e = mm_get(s, &k);
  dnnl_exec_arg_t args[3] = {
      {DNNL_ARG_SRC, e->mem[SRC]}, {DNNL_ARG_WEIGHTS, e->mem[WEI]}, {DNNL_ARG_DST, e->mem[DST]}};
  for (int i = 0; i < 3; i++) DNNL_OK(dnnl_memory_set_data_handle(e->mem[i], (void *)ops[i]->p));
  DNNL_OK(dnnl_primitive_execute(e->prim, s->stream, 3, args));
  DNNL_OK(dnnl_stream_wait(s->stream));
}

/* ---- Open, close, sync -------------------------------------------------------- */
static const char *isa_name(dnnl_cpu_isa_t isa) {
  switch (isa) {
    case dnnl_cpu_isa_sse41: return "SSE4.1";
    case dnnl_cpu_isa_avx: return "AVX";
    case dnnl_cpu_isa_avx2: return "AVX2";
    case dnnl_cpu_isa_avx2_vnni: return "AVX2-VNNI";
    case dnnl_cpu_isa_avx512_core: return "AVX-512";
    case dnnl_cpu_isa_avx512_core_vnni: return "AVX-512 VNNI";
    case dnnl_cpu_isa_avx512_core_bf16: return "AVX512-BF16";
    case dnnl_cpu_isa_avx512_core_amx: return "AMX";
    default: return "no vector extension oneDNN uses";
  }
}

/* bf16 without AVX512-BF16 or AMX would run oneDNN's emulation or its
 * reference loops, many times slower than fp32: refuse rather than crawl.
 * oneDNN reads CPUID itself (and honours ONEDNN_MAX_CPU_ISA), so this never
 * executes an instruction the CPU lacks. */
static status_t check_cpu(void) {
  dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
  if (((unsigned)isa & (unsigned)dnnl_cpu_isa_avx512_core_bf16) ==
      (unsigned)dnnl_cpu_isa_avx512_core_bf16)
    return STATUS_OK;
  return status_set(STATUS_CONFIG,
                    "model.precision = bf16 needs a CPU with AVX512-BF16 or AMX; this one offers "
                    "%s (use model.precision = fp32)",
                    isa_name(isa));
}

static void onednn_close(void *impl) {
  onednn_state *s = impl;
  if (!s) return;
  for (int i = 0; i < s->n_mm; i++) {
    dnnl_primitive_destroy(s->mm[i].prim);
    for (int j = 0; j < 3; j++) dnnl_memory_destroy(s->mm[i].mem[j]);
  }
  free(s->mm);
  if (s->stream) dnnl_stream_destroy(s->stream);
  if (s->engine) dnnl_engine_destroy(s->engine);
  mem_free(s->wcopy);
  for (int i = 0; i < 5; i++) mem_free(s->b[i]);
  for (int i = 0; i < 3; i++) mem_free(s->f[i]);
  free(s);
}

static status_t open_dt(void **impl, dnnl_data_type_t dt) {
  onednn_state *s = calloc(1, sizeof *s);
  if (!s) return status_set(STATUS_NOMEM, "out of memory for the oneDNN backend");
  s->dt = dt;
  s->esize = dt == dnnl_bf16 ? sizeof(bf16) : sizeof(float);
  if (dnnl_engine_create(&s->engine, dnnl_cpu, 0) != dnnl_success ||
      dnnl_stream_create(&s->stream, s->engine, dnnl_stream_default_flags) != dnnl_success) {
    onednn_close(s);
    return status_set(STATUS_CONFIG, "oneDNN could not create a CPU engine");
  }
  *impl = s;
  return STATUS_OK;
}

/* nthreads is not kept: oneDNN takes omp_get_max_threads() at each call. */
static status_t bf16_open(void **impl, int nthreads) {
  (void)nthreads;
  status_t st = check_cpu();
  return st ? st : open_dt(impl, dnnl_bf16);
}

static status_t f32_open(void **impl, int nthreads) {
  (void)nthreads;
  return open_dt(impl, dnnl_f32);
}

static void onednn_sync(void *impl, const float *params, size_t n) {
  onednn_state *s = impl;
  if (s->dt == dnnl_bf16) {
    if (n > s->n_params || !s->wcopy) {
      mem_free(s->wcopy);
      s->wcopy = mem_alloc(n * sizeof(bf16), "the bf16 copy of the weights");
      if (!s->wcopy)
        core_panic(__FILE__, __LINE__, "out of memory for the bf16 copy of the weights");
    }
    to_bf16_n(s->wcopy, params, n);
  }
  s->params = params;
  s->n_params = n;
}

/* x (n floats) as a product input: itself in fp32, else converted into
 * scratch slot. */
static const void *input(onednn_state *s, int slot, const float *x, size_t n) {
  if (s->dt == dnnl_f32) return x;
  bf16 *b = bscratch(s, slot, n);
  to_bf16_n(b, x, n);
  return b;
}

/* Weight matrix W (n floats) as a product input: in fp32 itself, in bf16
 * the copy at W's offset (or W converted into scratch slot when W is not a
 * parameter). */
static const void *weight(onednn_state *s, const float *W, size_t n, int slot) {
  if (s->dt == dnnl_bf16 && s->params && W >= s->params && W + n <= s->params + s->n_params)
    return s->wcopy + (W - s->params);
  return input(s, slot, W, n);
}

/* n floats into the backend's input type at dst. */
static inline void store_in(const onednn_state *s, void *dst, const float *src, size_t n) {
  if (s->dt == dnnl_f32) {
    memcpy(dst, src, n * sizeof(float));
    return;
  }
  bf16 *o = dst;
#pragma omp simd
  for (size_t i = 0; i < n; i++) o[i] = to_bf16(src[i]);
}

/* ---- Linear -------------------------------------------------------------------- */
static void onednn_linear_fwd(void *impl, float *y, const float *x, const float *W, int N, int in,
                              int out) {
  onednn_state *s = impl;
  const void *xi = input(s, B_A, x, (size_t)N * in), *wi = weight(s, W, (size_t)out * in, B_B);
  /* y = x · W^T: W^T is W read with (row, col) strides (1, in). */
  matmul(s, 1, N, out, in, 1.0f, op_in(s, xi, 0, in, 1), op_in(s, wi, 0, 1, in), op_f(y, 0, out, 1),
         false);
}

static void onednn_linear_io_fwd(void *impl, float *y, const float *x, const float *W, int N,
                                 int in, int out) {
  onednn_state *s = impl;
  const void *xi = input(s, B_A, x, (size_t)N * in), *wi = weight(s, W, (size_t)in * out, B_B);
  /* y = x · W with W [in, out] read in place. */
  matmul(s, 1, N, out, in, 1.0f, op_in(s, xi, 0, in, 1), op_in(s, wi, 0, out, 1),
         op_f(y, 0, out, 1), false);
}

static void onednn_linear_bwd(void *impl, float *dx, bool dx_acc, float *dW, float *db,
                              const float *dy, const float *x, const float *W, const float *ones,
                              int N, int in, int out) {
  onednn_state *s = impl;
  const void *dyi = input(s, B_A, dy, (size_t)N * out), *xi = input(s, B_B, x, (size_t)N * in);
  /* dW += dy^T · x. */
  matmul(s, 1, out, in, N, 1.0f, op_in(s, dyi, 0, 1, out), op_in(s, xi, 0, in, 1),
         op_f(dW, 0, in, 1), true);
  /* The bias gradient is a reduction over rows: fp32 (OpenBLAS) in every backend. */
  if (db) cblas_sgemv(CblasRowMajor, CblasTrans, N, out, 1.0f, dy, out, ones, 1, 1.0f, db, 1);
  if (dx) {
    const void *wi = weight(s, W, (size_t)out * in, B_Q);
    matmul(s, 1, N, in, out, 1.0f, op_in(s, dyi, 0, out, 1), op_in(s, wi, 0, in, 1),
           op_f(dx, 0, in, 1), dx_acc);
  }
}

/* ---- Attention -------------------------------------------------------------------
 * The products run batched over all B·NH heads on head-major copies
 * [B, NH, T, D] of the input type; softmax, dropout and their backward run
 * per head in fp32 (kernels.c) on the probabilities [B, NH, T, T]. */

/* Columns off..off+H of rows of x [B*T, rs] into heads [B, NH, T, D]. */
static void split_heads(const onednn_state *s, void *dst, const float *x, int64_t rs, int64_t off,
                        int B, int T, int NH, int D) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T; t++) {
      const float *row = x + ((size_t)b * T + t) * rs + off;
      for (int h = 0; h < NH; h++)
        store_in(s, (char *)dst + (((size_t)b * NH + h) * T + t) * D * s->esize,
                 row + (size_t)h * D, (size_t)D);
    }
}

/* q, k and v of qkv [B*T, 3H] into heads in scratch slots B_Q, B_K, B_V. */
static void split_qkv(onednn_state *s, const float *qkv, int B, int T, int NH, int D, void **q,
                      void **k, void **v) {
  const size_t hd = (size_t)B * NH * T * D;
  const int H = NH * D;
  void **dst[3] = {q, k, v};
  for (int i = 0; i < 3; i++) {
    *dst[i] = bscratch(s, B_Q + i, hd);
    split_heads(s, *dst[i], qkv, 3 * H, (int64_t)i * H, B, T, NH, D);
  }
}

/* fp32 heads [B, NH, T, D] into columns off..off+H of rows of x [B*T, rs]. */
static void merge_heads(float *x, int64_t rs, int64_t off, const float *src, int B, int T, int NH,
                        int D) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T; t++) {
      float *row = x + ((size_t)b * T + t) * rs + off;
      for (int h = 0; h < NH; h++)
        memcpy(row + (size_t)h * D, src + (((size_t)b * NH + h) * T + t) * D,
               (size_t)D * sizeof(float));
    }
}

/* pd[bh] = dropout(P[bh]) in the input type for every head (the operand of
 * P·V and of dV = P^T·dctx). The fp32 dropped probabilities go to keep
 * [B·NH, T, T] when it is given (backward needs them again for the mask),
 * else to scratch, 2·T·T floats per thread. */
static void dropped_probs(const onednn_state *s, void *pd, float *keep, const float *probs,
                          const dropout_desc *drop, int B, int NH, int T, float *scratch,
                          int nthreads) {
  const size_t TT = (size_t)T * T;
#pragma omp parallel for schedule(static) num_threads(nthreads)
  for (int bh = 0; bh < B * NH; bh++) {
    const float *P = probs + (size_t)bh * TT;
    float *tmp = keep ? keep + (size_t)bh * TT : scratch + (size_t)omp_get_thread_num() * 2 * TT;
    if (k_attn_dropout(tmp, P, drop, bh / NH, bh % NH, T)) P = tmp;
    store_in(s, (char *)pd + (size_t)bh * TT * s->esize, P, TT);
  }
}

static void onednn_attention_fwd(void *impl, float *ctx, float *probs, const float *qkv,
                                 const int32_t *input_mask, int B, int T, int NH, int D,
                                 const dropout_desc *drop, float *scratch, int nthreads) {
  onednn_state *s = impl;
  const int H = NH * D, BH = B * NH;
  const size_t hd = (size_t)BH * T * D, TT = (size_t)T * T;
  void *q, *k, *v, *pd = bscratch(s, B_A, (size_t)BH * TT);
  float *oh = fscratch(s, 0, hd);
  split_qkv(s, qkv, B, T, NH, D, &q, &k, &v);
  const int64_t hs = (int64_t)T * D, ps = (int64_t)TT;
  /* scores = q · k^T / sqrt(D) into probs, then mask and softmax in fp32. */
  matmul(s, BH, T, T, D, 1.0f / sqrtf((float)D), op_in(s, q, hs, D, 1), op_in(s, k, hs, 1, D),
         op_f(probs, ps, T, 1), false);
#pragma omp parallel for schedule(static) num_threads(nthreads)
  for (int bh = 0; bh < BH; bh++)
    k_attn_softmax(probs + (size_t)bh * TT, input_mask + (size_t)(bh / NH) * T, T);
  dropped_probs(s, pd, NULL, probs, drop, B, NH, T, scratch, nthreads);
  matmul(s, BH, T, D, T, 1.0f, op_in(s, pd, ps, T, 1), op_in(s, v, hs, D, 1), op_f(oh, hs, D, 1),
         false);
  merge_heads(ctx, H, 0, oh, B, T, NH, D);
}

static void onednn_attention_bwd(void *impl, float *dqkv, const float *dctx, const float *probs,
                                 const float *qkv, const int32_t *input_mask, int B, int T, int NH,
                                 int D, const dropout_desc *drop, float *scratch, int nthreads) {
  (void)input_mask; /* the full T x T products: a causal head's zeros stay zeros */
  onednn_state *s = impl;
  const int H = NH * D, BH = B * NH;
  const size_t hd = (size_t)BH * T * D, TT = (size_t)T * T;
  void *q, *k, *v, *pd = bscratch(s, B_A, (size_t)BH * TT), *dc = bscratch(s, B_B, hd);
  float *oh = fscratch(s, 0, hd), *dP = fscratch(s, 1, (size_t)BH * TT);
  split_qkv(s, qkv, B, T, NH, D, &q, &k, &v);
  split_heads(s, dc, dctx, H, 0, B, T, NH, D);
  const int64_t hs = (int64_t)T * D, ps = (int64_t)TT;
  /* The dropout mask is drawn once: its fp32 result serves dV and, below,
   * the backward through dropout. */
  float *Pd = k_dropout_on(drop) ? fscratch(s, 2, (size_t)BH * TT) : NULL;
  dropped_probs(s, pd, Pd, probs, drop, B, NH, T, scratch, nthreads);
  /* dV = dropout(P)^T · dctx; dP = dctx · V^T. */
  matmul(s, BH, T, D, T, 1.0f, op_in(s, pd, ps, 1, T), op_in(s, dc, hs, D, 1), op_f(oh, hs, D, 1),
         false);
  merge_heads(dqkv, 3 * H, 2 * H, oh, B, T, NH, D);
  matmul(s, BH, T, T, D, 1.0f, op_in(s, dc, hs, D, 1), op_in(s, v, hs, 1, D), op_f(dP, ps, T, 1),
         false);
  /* Through dropout and softmax in fp32; dS replaces dropout(P) in pd. */
#pragma omp parallel for schedule(static) num_threads(nthreads)
  for (int bh = 0; bh < BH; bh++) {
    const float *P = probs + (size_t)bh * TT;
    float *g = dP + (size_t)bh * TT;
    k_attn_softmax_bwd(g, P, Pd ? Pd + (size_t)bh * TT : P, drop, T);
    store_in(s, (char *)pd + (size_t)bh * TT * s->esize, g, TT);
  }
  const float scale = 1.0f / sqrtf((float)D);
  /* dQ = scale · dS · K; dK = scale · dS^T · Q. */
  matmul(s, BH, T, D, T, scale, op_in(s, pd, ps, T, 1), op_in(s, k, hs, D, 1), op_f(oh, hs, D, 1),
         false);
  merge_heads(dqkv, 3 * H, 0, oh, B, T, NH, D);
  matmul(s, BH, T, D, T, scale, op_in(s, pd, ps, 1, T), op_in(s, q, hs, D, 1), op_f(oh, hs, D, 1),
         false);
  merge_heads(dqkv, 3 * H, H, oh, B, T, NH, D);
}

#define ONEDNN_OPS(label, open_fn)                                                \
  {                                                                               \
    .name = label, .open = open_fn, .close = onednn_close, .sync = onednn_sync,   \
    .linear_fwd = onednn_linear_fwd, .linear_bwd = onednn_linear_bwd,             \
    .linear_io_fwd = onednn_linear_io_fwd, .attention_fwd = onednn_attention_fwd, \
    .attention_bwd = onednn_attention_bwd,                                        \
  }
const compute_ops compute_bf16_ops = ONEDNN_OPS("bf16", bf16_open);
const compute_ops compute_fp32_onednn_ops = ONEDNN_OPS("fp32-onednn", f32_open);
