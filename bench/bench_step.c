/* bench_step.c: times mlmpi's BERT training step (forward + backward + SGD
 * update) on a random batch and measures cblas_sgemm's own GFLOP/s on the
 * model's largest matrix product in the same process, so the achieved
 * fraction of BLAS speed can be read off. --precision bf16 runs the matrix
 * products in bf16 (model.precision). Prints one JSON line. */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "trainer.h"

/* GFLOP/s of y[N,out] = x[N,in] W^T, the model's linear layer, best of reps. */
static double sgemm_gflops(int N, int in, int out, int reps) {
  float *x = calloc((size_t)N * in, 4), *w = calloc((size_t)out * in, 4),
        *y = calloc((size_t)N * out, 4);
  for (size_t i = 0; i < (size_t)N * in; i++) x[i] = (float)(i % 13) * 0.01f;
  for (size_t i = 0; i < (size_t)out * in; i++) w[i] = (float)(i % 7) * 0.01f;
  double best = 1e30;
  for (int r = 0; r < reps; r++) {
    double t0 = core_now_s();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, out, in, 1.0f, x, in, w, in, 0.0f, y,
                out);
    double t = core_now_s() - t0;
    best = t < best ? t : best;
  }
  free(x);
  free(w);
  free(y);
  return 2.0 * N * in * out / best / 1e9;
}

int main(int argc, char **argv) {
  bert_config c = bert_config_default();
  c.hidden_dropout_prob = c.attention_probs_dropout_prob = 0.0f;
  int B = 8, T = 128, P = -1, steps = 5, warmup = 1, threads = 0;
  const char *precision = "fp32";
  for (int i = 1; i + 1 < argc; i += 2) {
    const char *k = argv[i];
    int v = atoi(argv[i + 1]);
    if (!strcmp(k, "--precision"))
      precision = argv[i + 1];
    else if (!strcmp(k, "--layers"))
      c.num_hidden_layers = v;
    else if (!strcmp(k, "--hidden"))
      c.hidden_size = v;
    else if (!strcmp(k, "--heads"))
      c.num_attention_heads = v;
    else if (!strcmp(k, "--intermediate"))
      c.intermediate_size = v;
    else if (!strcmp(k, "--vocab"))
      c.vocab_size = v;
    else if (!strcmp(k, "--seq"))
      T = v;
    else if (!strcmp(k, "--batch"))
      B = v;
    else if (!strcmp(k, "--pred"))
      P = v;
    else if (!strcmp(k, "--steps"))
      steps = v;
    else if (!strcmp(k, "--warmup"))
      warmup = v;
    else if (!strcmp(k, "--threads"))
      threads = v;
    else {
      fprintf(stderr, "bench_step: unknown option %s\n", k);
      return 2;
    }
  }
  if (P < 0) P = (int)(0.15 * T + 0.5);
  if (threads) omp_set_num_threads(threads);
  bert_model *m;
  if (bert_init(&m, &c, B, T, P, threads) != STATUS_OK ||
      bert_set_precision(m, precision) != STATUS_OK) {
    fprintf(stderr, "bench_step: %s\n", status_message());
    return 1;
  }
  bert_init_weights(m, 1);
  size_t N = (size_t)B * T, M = (size_t)B * P;
  int32_t *ids = malloc(N * 4), *mask = malloc(N * 4), *seg = malloc(N * 4), *pos = malloc(M * 4),
          *mids = malloc(M * 4), *nsp = malloc((size_t)B * 4);
  float *w = malloc(M * 4);
  uint32_t s = 12345;
  for (size_t i = 0; i < N; i++) {
    s = s * 1664525u + 1013904223u;
    ids[i] = (int32_t)(s % (uint32_t)c.vocab_size);
    mask[i] = 1;
    seg[i] = (int32_t)((i % (size_t)T) >= (size_t)T / 2);
  }
  for (size_t i = 0; i < M; i++) {
    s = s * 1664525u + 1013904223u;
    pos[i] = (int32_t)(s % (uint32_t)T);
    mids[i] = ids[(i / (size_t)P) * (size_t)T + (size_t)pos[i]];
    w[i] = 1.0f;
  }
  for (int i = 0; i < B; i++) nsp[i] = i & 1;
  bert_batch b = {B, T, P, ids, mask, seg, pos, mids, w, nsp};
  const param_table *tab = bert_params(m);
  float *pw = bert_param_buf(m), *g = bert_grad_buf(m);
  double t_total = 0.0, loss = 0.0;
  for (int it = 0; it < warmup + steps; it++) {
    double t0 = core_now_s();
    bert_run run = bert_run_default();
    run.step = (uint32_t)it;
    bert_losses ls;
    bert_zero_grad(m);
    bert_forward(m, &b, &run, &ls);
    bert_backward(m);
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < tab->total; i++) pw[i] -= 1e-4f * g[i];
    if (it >= warmup) t_total += core_now_s() - t0;
    loss = ls.loss;
  }
  double step_s = t_total / steps, flops = bert_flops_per_step(&c, B, T, P);
  double blas = sgemm_gflops((int)N, c.hidden_size, c.intermediate_size, 5);
  printf(
      "{\"impl\":\"mlmpi\",\"tokens_per_s\":%.1f,\"step_ms\":%.2f,\"gflops\":%.2f,"
      "\"sgemm_gflops\":%.2f,\"blas_fraction\":%.3f,\"threads\":%d,\"layers\":%d,\"hidden\":%d,"
      "\"heads\":%d,\"intermediate\":%d,\"vocab\":%d,\"seq\":%d,\"batch\":%d,\"pred\":%d,"
      "\"loss\":%.4f,\"precision\":\"%s\"}\n",
      (double)N / step_s, step_s * 1e3, flops / step_s / 1e9, blas, flops / step_s / 1e9 / blas,
      omp_get_max_threads(), c.num_hidden_layers, c.hidden_size, c.num_attention_heads,
      c.intermediate_size, c.vocab_size, T, B, P, loss, precision);
  bert_free(m);
  free(ids);
  free(mask);
  free(seg);
  free(pos);
  free(mids);
  free(nsp);
  free(w);
  return 0;
}
