/* compute.h: the compute table. Every matrix product of the models (the
 * linear layers forward and backward, the attention's batched products)
 * goes through one operations table, chosen once by `model.precision`:
 *   fp32  OpenBLAS sgemm and mlmpi's kernels (kernels.c), bit-identical to
 *         the path before the table existed; the default.
 *   bf16  mixed precision through oneDNN (compute_onednn.c): bf16 GEMM inputs,
 *         fp32 accumulation and outputs; fp32 master weights stay in the
 *         parameter table and the backend keeps a bf16 copy of them.
 *   fp32-onednn  fp32 products in oneDNN (its own CPU dispatch: AVX-512
 *         kernels where OpenBLAS is held to AVX2); same numbers as fp32 up
 *         to summation order.
 * The element-wise kernels (activations, LayerNorm, softmax, dropout,
 * losses) run in fp32 in every CPU backend and are called directly; a
 * device backend would add them here. Private to trainer/. A compute object
 * belongs to one model and is not thread-safe. */
#ifndef MLMPI_COMPUTE_H
#define MLMPI_COMPUTE_H

#include "kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct compute_ops compute_ops;

typedef struct {
  const compute_ops *ops;
  void *impl; /* the backend's state (NULL for fp32) */
} compute;

struct compute_ops {
  const char *name; /* the model.precision value: "fp32", "bf16", "fp32-onednn" */
  /* Checks the CPU and makes the backend's state; STATUS_CONFIG naming what
   * is missing. */
  status_t (*open)(void **impl, int nthreads);
  void (*close)(void *impl);
  /* Called at the start of every forward with the master weights (n
   * floats): a backend that keeps another copy refreshes it here, so it is
   * current after every optimizer step, load or broadcast. */
  void (*sync)(void *impl, const float *params, size_t n);
  /* The contracts of k_linear_fwd, k_linear_bwd, k_attention_fwd and
   * k_attention_bwd (kernels.h). W is a pointer into the params of the
   * last sync. */
  void (*linear_fwd)(void *impl, float *y, const float *x, const float *W, int N, int in, int out);
  void (*linear_bwd)(void *impl, float *dx, bool dx_acc, float *dW, float *db, const float *dy,
                     const float *x, const float *W, const float *ones, int N, int in, int out);
  /* y[N,out] = x[N,in] · W[in,out] (k_linear_io_fwd: Conv1D's layout). Its
   * backward is linear_fwd (dx = dy · W^T, W read as [out', in'] = [in, out])
   * and linear_bwd with dx NULL (dW += x^T dy, the roles of x and dy swapped). */
  void (*linear_io_fwd)(void *impl, float *y, const float *x, const float *W, int N, int in,
                        int out);
  void (*attention_fwd)(void *impl, float *ctx, float *probs, const float *qkv,
                        const int32_t *input_mask, int B, int T, int NH, int D,
                        const dropout_desc *drop, float *scratch, int nthreads);
  void (*attention_bwd)(void *impl, float *dqkv, const float *dctx, const float *probs,
                        const float *qkv, const int32_t *input_mask, int B, int T, int NH, int D,
                        const dropout_desc *drop, float *scratch, int nthreads);
};

extern const compute_ops compute_fp32_ops;

/* The backend of a model.precision value, or NULL. */
const compute_ops *compute_lookup(const char *precision);
/* The registry's names, "fp32, bf16, fp32-onednn", for messages. */
const char *compute_names(void);
/* Opens the backend of `precision` (NULL or "": fp32) into c, which holds
 * fp32 until then. STATUS_CONFIG naming the value or what the CPU lacks. */
status_t compute_open(compute *c, const char *precision, int nthreads);
/* Back to fp32 (which needs no state); NULL-safe. */
void compute_close(compute *c);
/* fp32 -> bf16 bit patterns, rounding to nearest even (NaN stays NaN), as
 * the bf16 backend converts every operand. */
void compute_to_bf16(uint16_t *dst, const float *src, size_t n);

static inline void cx_sync(const compute *c, const float *params, size_t n) {
  if (c->ops->sync) c->ops->sync(c->impl, params, n);
}
static inline void cx_linear_fwd(const compute *c, float *y, const float *x, const float *W, int N,
                                 int in, int out) {
  c->ops->linear_fwd(c->impl, y, x, W, N, in, out);
}
static inline void cx_linear_io_fwd(const compute *c, float *y, const float *x, const float *W,
                                    int N, int in, int out) {
  c->ops->linear_io_fwd(c->impl, y, x, W, N, in, out);
}
static inline void cx_linear_bwd(const compute *c, float *dx, bool dx_acc, float *dW, float *db,
                                 const float *dy, const float *x, const float *W, const float *ones,
                                 int N, int in, int out) {
  c->ops->linear_bwd(c->impl, dx, dx_acc, dW, db, dy, x, W, ones, N, in, out);
}

static inline void cx_attention_fwd(const compute *c, float *ctx, float *probs, const float *qkv,
                                    const int32_t *input_mask, int B, int T, int NH, int D,
                                    const dropout_desc *drop, float *scratch, int nthreads) {
  c->ops->attention_fwd(c->impl, ctx, probs, qkv, input_mask, B, T, NH, D, drop, scratch, nthreads);
}
static inline void cx_attention_bwd(const compute *c, float *dqkv, const float *dctx,
                                    const float *probs, const float *qkv, const int32_t *input_mask,
                                    int B, int T, int NH, int D, const dropout_desc *drop,
                                    float *scratch, int nthreads) {
  c->ops->attention_bwd(c->impl, dqkv, dctx, probs, qkv, input_mask, B, T, NH, D, drop, scratch,
                        nthreads);
}

#ifdef __cplusplus
}
#endif
#endif
