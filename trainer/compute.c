/* compute.c: the compute registry and the fp32 backend (OpenBLAS and
 * kernels.c, exactly the calls the layers made before the table existed). */
#include "compute.h"

#include <stdio.h>
#include <string.h>

static void fp32_linear_fwd(void *impl, float *y, const float *x, const float *W, int N, int in,
                            int out) {
  (void)impl;
  k_linear_fwd(y, x, W, N, in, out);
}

static void fp32_linear_bwd(void *impl, float *dx, bool dx_acc, float *dW, float *db,
                            const float *dy, const float *x, const float *W, const float *ones,
                            int N, int in, int out) {
  (void)impl;
  k_linear_bwd(dx, dx_acc, dW, db, dy, x, W, ones, N, in, out);
}

static void fp32_linear_io_fwd(void *impl, float *y, const float *x, const float *W, int N, int in,
                               int out) {
  (void)impl;
  k_linear_io_fwd(y, x, W, N, in, out);
}

static void fp32_attention_fwd(void *impl, float *ctx, float *probs, const float *qkv,
                               const int32_t *input_mask, int B, int T, int NH, int D,
                               const dropout_desc *drop, float *scratch, int nthreads) {
  (void)impl;
  k_attention_fwd(ctx, probs, qkv, input_mask, B, T, NH, D, drop, scratch, nthreads);
}

static void fp32_attention_bwd(void *impl, float *dqkv, const float *dctx, const float *probs,
                               const float *qkv, const int32_t *input_mask, int B, int T, int NH,
                               int D, const dropout_desc *drop, float *scratch, int nthreads) {
  (void)impl;
  k_attention_bwd(dqkv, dctx, probs, qkv, input_mask, B, T, NH, D, drop, scratch, nthreads);
}

const compute_ops compute_fp32_ops = {
    .name = "fp32",
    .linear_fwd = fp32_linear_fwd,
    .linear_bwd = fp32_linear_bwd,
    .linear_io_fwd = fp32_linear_io_fwd,
    .attention_fwd = fp32_attention_fwd,
    .attention_bwd = fp32_attention_bwd,
};

/* compute_onednn.c */
extern const compute_ops compute_bf16_ops, compute_fp32_onednn_ops;

static const compute_ops *const registry[] = {&compute_fp32_ops, &compute_bf16_ops,
                                              &compute_fp32_onednn_ops};

const compute_ops *compute_lookup(const char *precision) {
  for (size_t i = 0; i < sizeof registry / sizeof *registry; i++)
    if (strcmp(registry[i]->name, precision) == 0) return registry[i];
  return NULL;
}

const char *compute_names(void) {
  static char names[64];
  if (!names[0])
    for (size_t i = 0, u = 0; i < sizeof registry / sizeof *registry && u < sizeof names; i++)
      u += (size_t)snprintf(names + u, sizeof names - u, "%s%s", i ? ", " : "", registry[i]->name);
  return names;
}

status_t compute_open(compute *c, const char *precision, int nthreads) {
  if (!precision || !*precision) precision = "fp32";
  const compute_ops *ops = compute_lookup(precision);
  if (!ops)
    return status_set(STATUS_CONFIG, "model.precision '%s' is not known (known: %s)", precision,
                      compute_names());
  compute_close(c);
  void *impl = NULL;
  if (ops->open) {
    status_t st = ops->open(&impl, nthreads);
    if (st) return st;
  }
  *c = (compute){.ops = ops, .impl = impl};
  return STATUS_OK;
}

void compute_close(compute *c) {
  if (!c || !c->ops) return;
  if (c->ops->close) c->ops->close(c->impl);
  *c = (compute){.ops = &compute_fp32_ops};
}
