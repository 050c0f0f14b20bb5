/* model_base.c: the buffers, arena, batch copy and checks that BERT and
 * ELECTRA share; each model keeps its layers, heads and losses. */
#include "model_base.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

status_t model_base_check_shape(int max_batch, int seq_len, int max_pred, int max_pos) {
  if (max_batch < 1 || seq_len < 1 || max_pred < 0 || seq_len > max_pos)
    return status_set(STATUS_ARG,
                      "batch shape %d x %d with %d masked slots does not fit the model "
                      "(max_position_embeddings %d)",
                      max_batch, seq_len, max_pred, max_pos);
  return STATUS_OK;
}

void model_base_init(model_base *b, int max_batch, int seq_len, int max_pred, int nthreads) {
  b->maxB = max_batch;
  b->T = seq_len;
  b->P = max_pred;
  b->nthreads = nthreads > 0 ? nthreads : omp_get_max_threads();
  b->cx = (compute){.ops = &compute_fp32_ops};
  param_table_init(&b->table);
}

static status_t alloc_batch_copy(model_base *b) {
  size_t N = (size_t)b->maxB * b->T, M = (size_t)b->maxB * b->P;
  b->ids = mem_alloc(N * sizeof(int32_t), "batch input_ids");
  b->mask = mem_alloc(N * sizeof(int32_t), "batch input_mask");
  b->seg = mem_alloc(N * sizeof(int32_t), "batch segment_ids");
  b->gidx = mem_alloc(M * sizeof(int32_t), "batch masked rows");
  b->mlm_ids = mem_alloc(M * sizeof(int32_t), "batch masked_lm_ids");
  b->mlm_w = mem_alloc(M * sizeof(float), "batch masked_lm_weights");
  if (!b->ids || !b->mask || !b->seg || !b->gidx || !b->mlm_ids || !b->mlm_w) return STATUS_NOMEM;
  return STATUS_OK;
}

status_t model_base_alloc(model_base *b, model_base_layout_fn layout, void *model) {
  b->params = mem_calloc(b->table.total * sizeof(float), "parameters");
  b->grads = mem_calloc(b->table.total * sizeof(float), "gradients");
  if (!b->params || !b->grads) return STATUS_NOMEM;
  b->arena_floats = layout(model, NULL);
  b->arena = mem_alloc(b->arena_floats * sizeof(float), "the activation arena");
  if (!b->arena) return STATUS_NOMEM;
  layout(model, b->arena);
  size_t nones = (size_t)b->maxB * (size_t)(b->T > b->P ? b->T : b->P);
  for (size_t i = 0; i < nones; i++) b->ones[i] = 1.0f;
  return alloc_batch_copy(b);
}

void model_base_carve_shared(model_base *b, float *a, size_t *u, size_t C) {
  const size_t B = (size_t)b->maxB, T = (size_t)b->T, N = B * T, M = B * (size_t)b->P;
  b->ones = arena_carve(a, u, N > M ? N : M);
  size_t per_thread = 2 * T * T > 3 * C ? 2 * T * T : 3 * C;
  b->scratch = arena_carve(a, u, (size_t)b->nthreads * per_thread);
}

void model_base_free(model_base *b) {
  compute_close(&b->cx);
  param_table_free(&b->table);
  mem_free(b->params);
  if (!b->grads_ext) mem_free(b->grads);
  mem_free(b->arena);
  mem_free(b->ids);
  mem_free(b->mask);
  mem_free(b->seg);
  mem_free(b->gidx);
  mem_free(b->mlm_ids);
  mem_free(b->mlm_w);
}

void model_base_use_grad_buf(model_base *b, float *buf) {
  if (!b->grads_ext) mem_free(b->grads);
  b->grads = buf;
  b->grads_ext = true;
  model_base_zero_grad(b);
}

void model_base_zero_grad(model_base *b) { memset(b->grads, 0, b->table.total * sizeof(float)); }

void model_base_set_grad_ready(model_base *b, bert_grad_ready_fn fn, void *ctx) {
  b->ready = fn;
  b->ready_ctx = ctx;
}

status_t model_base_check_batch(const model_base *b, const model_batch *x, int vocab,
                                int type_vocab) {
  if (x->B < 1 || x->B > b->maxB || x->T < 1 || x->T > b->T || x->P < 0 || x->P > b->P)
    return status_set(STATUS_ARG,
                      "batch shape B=%d T=%d P=%d does not fit the model's B<=%d T<=%d P<=%d", x->B,
                      x->T, x->P, b->maxB, b->T, b->P);
  size_t N = (size_t)x->B * x->T, M = (size_t)x->B * x->P;
  status_t st;
  if ((st = enc_check_range("input_ids", x->input_ids, N, 0, vocab, x->T)) ||
      (st = enc_check_range("input_mask", x->input_mask, N, 0, 2, x->T)) ||
      (st = enc_check_range("segment_ids", x->segment_ids, N, 0, type_vocab, x->T)) ||
      (st = enc_check_range("masked_lm_positions", x->masked_lm_positions, M, 0, x->T, x->P)) ||
      (st = enc_check_range("masked_lm_ids", x->masked_lm_ids, M, 0, vocab, x->P)))
    return st;
  return STATUS_OK;
}

status_t model_base_check_weights(const model_batch *x) {
  size_t M = (size_t)x->B * x->P;
  for (size_t i = 0; i < M; i++)
    if (!isfinite(x->masked_lm_weights[i]) || x->masked_lm_weights[i] < 0)
      return status_set(STATUS_ARG, "batch tensor 'masked_lm_weights' has a bad value at [%zu,%zu]",
                        i / (size_t)x->P, i % (size_t)x->P);
  return STATUS_OK;
}

void model_base_copy_batch(model_base *b, const model_batch *x, bool train, uint64_t seed,
                           uint32_t step, uint32_t sample_base) {
  size_t N = (size_t)x->B * x->T, M = (size_t)x->B * x->P;
  b->B = x->B;
  b->Tcur = x->T;
  b->Pcur = x->P;
  b->train = train;
  b->seed = seed;
  b->step = step;
  b->sample_base = sample_base;
  /* Every forward starts from the current master weights (whatever an
   * optimizer step, load or broadcast wrote since the last one). */
  cx_sync(&b->cx, b->params, b->table.total);
  memcpy(b->ids, x->input_ids, N * sizeof(int32_t));
  memcpy(b->mask, x->input_mask, N * sizeof(int32_t));
  memcpy(b->seg, x->segment_ids, N * sizeof(int32_t));
  if (M) { /* a classifier's batch has no masked slots (and NULL arrays) */
    memcpy(b->mlm_ids, x->masked_lm_ids, M * sizeof(int32_t));
    memcpy(b->mlm_w, x->masked_lm_weights, M * sizeof(float));
  }
  for (size_t i = 0; i < M; i++)
    b->gidx[i] = (int32_t)((i / (size_t)x->P) * (size_t)x->T) + x->masked_lm_positions[i];
}

enc_ctx model_base_ctx(const model_base *b) {
  return (enc_ctx){.table = &b->table,
                   .params = b->params,
                   .grads = b->grads,
                   .cx = &b->cx,
                   .B = b->B,
                   .T = b->Tcur,
                   .input_mask = b->mask,
                   .train = b->train,
                   .seed = b->seed,
                   .step = b->step,
                   .sample_base = b->sample_base,
                   .scratch = b->scratch,
                   .ones = b->ones,
                   .nthreads = b->nthreads,
                   .ready = b->ready,
                   .ready_ctx = b->ready_ctx};
}

status_t mlm_head_add_params(mlm_head *h, param_table *t, const char *prefix,
                             const char *bias_name) {
  const int64_t Hin = h->Hin, E = h->E;
  int bad = 0;
  bad |= (h->w = enc_add_param(t, E, Hin, "%s.dense.weight", prefix)) < 0;
  bad |= (h->b = enc_add_param(t, E, 0, "%s.dense.bias", prefix)) < 0;
  bad |= (h->ln_g = enc_add_param(t, E, 0, "%s.LayerNorm.weight", prefix)) < 0;
  bad |= (h->ln_b = enc_add_param(t, E, 0, "%s.LayerNorm.bias", prefix)) < 0;
  bad |= (h->dec_b = enc_add_param(t, h->V, 0, "%s", bias_name)) < 0;
  return bad ? STATUS_NOMEM : STATUS_OK;
}

void mlm_head_carve(mlm_head *h, float *a, size_t *u, size_t M) {
  const size_t Hin = (size_t)h->Hin, E = (size_t)h->E, V = (size_t)h->V;
  h->G = arena_carve(a, u, M * Hin);
  h->t1 = arena_carve(a, u, M * E);
  h->t2 = arena_carve(a, u, M * E);
  h->t3 = arena_carve(a, u, M * E);
  h->tmean = arena_carve(a, u, M);
  h->trstd = arena_carve(a, u, M);
  h->logits = arena_carve(a, u, M * V);
  h->dlogits = arena_carve(a, u, M * V);
  h->dG = arena_carve(a, u, M * Hin);
  h->dt_a = arena_carve(a, u, M * E);
  h->dt_b = arena_carve(a, u, M * E);
}

void mlm_head_forward(const model_base *b, mlm_head *h, const float *top, double denominator,
                      float scale, mlm_result *out) {
  const int Hin = h->Hin, E = h->E, V = h->V, M = b->B * b->Pcur;
  k_gather_rows(h->G, top, b->gidx, M, Hin);
  cx_linear_fwd(&b->cx, h->t1, h->G, model_base_param(b, h->w), M, Hin, E);
  k_bias_act_fwd(h->t1, h->t2, model_base_param(b, h->b), M, E, h->act);
  k_add_ln_fwd(NULL, h->t3, h->tmean, h->trstd, h->t2, NULL, NULL, NULL,
               model_base_param(b, h->ln_g), model_base_param(b, h->ln_b), M, E, h->eps);
  cx_linear_fwd(&b->cx, h->logits, h->t3, model_base_param(b, h->we), M, E, V);
  double wsum = 0.0;
  for (int i = 0; i < M; i++) wsum += b->mlm_w[i];
  double den = (denominator > 0 ? denominator : wsum) + 1e-5;
  out->weight_sum = wsum;
  out->correct = 0.0;
  double ce = k_softmax_xent(h->logits, h->dlogits, model_base_param(b, h->dec_b), b->mlm_ids,
                             b->mlm_w, (float)(scale / den), M, V, &out->correct);
  out->loss = ce / den;
}

void mlm_head_backward(const model_base *b, const enc_ctx *c, mlm_head *h, float *dh) {
  const int Hin = h->Hin, E = h->E, V = h->V, M = b->B * b->Pcur, N = b->B * b->Tcur;
  /* logits = t3 · word_embeddings^T + decoder bias (tied). */
  cx_linear_bwd(&b->cx, h->dt_a, false, model_base_grad(b, h->we), model_base_grad(b, h->dec_b),
                h->dlogits, h->t3, model_base_param(b, h->we), b->ones, M, E, V);
  k_add_ln_bwd(h->dt_b, NULL, NULL, model_base_grad(b, h->ln_g), model_base_grad(b, h->ln_b),
               h->dt_a, h->t2, h->tmean, h->trstd, model_base_param(b, h->ln_g), NULL, M, E,
               b->scratch, b->nthreads);
  k_act_bwd(h->dt_b, h->dt_b, h->t1, M, E, h->act);
  cx_linear_bwd(&b->cx, h->dG, false, model_base_grad(b, h->w), model_base_grad(b, h->b), h->dt_b,
                h->G, model_base_param(b, h->w), b->ones, M, Hin, E);
  enc_announce(c, h->w, h->dec_b);
  memset(dh, 0, (size_t)N * Hin * sizeof(float));
  k_scatter_add_rows(dh, h->dG, b->gidx, M, Hin);
}
