/* model_base.h: what the BERT and ELECTRA models hold and do alike: the
 * parameter table with its parameter and gradient buffers, the activation
 * arena, the copy of the last forward's batch and the gradient-ready hook.
 * A model embeds one model_base and keeps only its own layers and heads.
 * Private to trainer/. Not thread-safe. */
#ifndef MLMPI_MODEL_BASE_H
#define MLMPI_MODEL_BASE_H

#include "encoder.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  int maxB, T, P, nthreads; /* batches of up to maxB x T with P masked slots */
  param_table table;
  float *params, *grads; /* table layout */
  compute cx;            /* fp32 unless model_set_precision chose another */
  bool grads_ext;        /* grads belongs to the caller (use_grad_buf) */
  bert_grad_ready_fn ready;
  void *ready_ctx;

  float *arena;
  size_t arena_floats;
  float *ones;    /* max(N, M), all 1 */
  float *scratch; /* per-thread, see enc_ctx */
  /* The last forward's batch (copied) and its dropout key. */
  int32_t *ids, *mask, *seg; /* [B,T] */
  int32_t *gidx;             /* [B,P] the masked slots' rows of the [B*T] token rows */
  int32_t *mlm_ids;          /* [B,P] */
  float *mlm_w;              /* [B,P] */
  int B, Tcur, Pcur;
  bool train;
  uint64_t seed;
  uint32_t step, sample_base;
  bool have_forward;
} model_base;

/* A batch as every model reads it, row-major; the pointers are the
 * caller's and are not kept. MODEL_BASE_BATCH(b) takes the fields
 * bert_batch and electra_batch share (they name them alike) from either. */
typedef struct {
  int B, T, P;
  const int32_t *input_ids, *input_mask, *segment_ids; /* [B,T] */
  const int32_t *masked_lm_positions, *masked_lm_ids;  /* [B,P] */
  const float *masked_lm_weights;                      /* [B,P] */
  const int32_t *next_sentence_labels;                 /* [B], or NULL */
  const int32_t *sampled_ids; /* [B,P] fixed generator samples (ELECTRA), or NULL */
  /* Causal LM (GPT-2): the next token at each position and its weight (0:
   * no target) [B,T]; NULL for the other models. */
  const int32_t *target_ids;
  const float *target_weights;
} model_batch;
#define MODEL_BASE_BATCH(b)                                       \
  ((model_batch){.B = (b)->B,                                     \
                 .T = (b)->T,                                     \
                 .P = (b)->P,                                     \
                 .input_ids = (b)->input_ids,                     \
                 .input_mask = (b)->input_mask,                   \
                 .segment_ids = (b)->segment_ids,                 \
                 .masked_lm_positions = (b)->masked_lm_positions, \
                 .masked_lm_ids = (b)->masked_lm_ids,             \
                 .masked_lm_weights = (b)->masked_lm_weights})

/* STATUS_ARG unless a model can serve batches of max_batch x seq_len with
 * max_pred masked slots given max_pos positions. */
status_t model_base_check_shape(int max_batch, int seq_len, int max_pred, int max_pos);
/* Sets the shape and thread count (0: omp_get_max_threads()) of a zeroed
 * base and initialises its empty table; model_base_free undoes it. */
void model_base_init(model_base *b, int max_batch, int seq_len, int max_pred, int nthreads);

/* With the table complete: allocates zeroed parameters and gradients, the
 * arena and the batch copy. layout(model, arena) carves the model's arena
 * and returns its size in floats; it runs once with arena NULL to count and
 * once to assign, and must call model_base_carve_shared. */
typedef size_t (*model_base_layout_fn)(void *model, float *arena);
status_t model_base_alloc(model_base *b, model_base_layout_fn layout, void *model);
/* Carves ones and the per-thread scratch for widths up to C; sets b->ones
 * and b->scratch when a is not NULL. */
void model_base_carve_shared(model_base *b, float *a, size_t *used, size_t C);
/* Frees what the base owns (not the gradient buffer the caller gave). */
void model_base_free(model_base *b);

/* The contracts of bert_use_grad_buf, bert_zero_grad, bert_set_grad_ready. */
void model_base_use_grad_buf(model_base *b, float *buf);
void model_base_zero_grad(model_base *b);
void model_base_set_grad_ready(model_base *b, bert_grad_ready_fn fn, void *ctx);

static inline float *model_base_param(const model_base *b, int idx) {
  return b->params + b->table.p[idx].offset;
}
static inline float *model_base_grad(const model_base *b, int idx) {
  return b->grads + b->table.p[idx].offset;
}

/* Shape within the arena and ids, mask, segments, positions and masked ids
 * in range; STATUS_ARG names the tensor and index. */
status_t model_base_check_batch(const model_base *b, const model_batch *x, int vocab,
                                int type_vocab);
/* masked_lm_weights finite and >= 0; STATUS_ARG names the slot. */
status_t model_base_check_weights(const model_batch *x);
/* Copies the batch (gidx from the positions) and the run's dropout key;
 * keeps no pointer. The batch must have passed the checks. */
void model_base_copy_batch(model_base *b, const model_batch *x, bool train, uint64_t seed,
                           uint32_t step, uint32_t sample_base);
/* The shared modules' view of the current batch, key and buffers. */
enc_ctx model_base_ctx(const model_base *b);

/* ---- Masked-LM head -------------------------------------------------------------
 * At the M = B*P masked slots: rows of the encoder output (width Hin), a
 * dense layer to the embedding width E with activation, LayerNorm, and the
 * decoder tied to the word embeddings plus its own bias, with the weighted
 * softmax cross-entropy. Hugging Face's BertOnlyMLMHead (E = Hin) and
 * ElectraGeneratorPredictions + generator_lm_head. */
typedef struct {
  int w, b, ln_g, ln_b, dec_b; /* table indices, added in this order */
  int we;                      /* the tied decoder: the word embeddings (V, E) */
  int Hin, E, V;
  act_kind act;
  float eps;
  float *G, *t1, *t2, *t3, *tmean, *trstd; /* (M, Hin), (M, E) x3, (M), (M) */
  float *logits, *dlogits;                 /* (M, V) */
  float *dG, *dt_a, *dt_b;                 /* (M, Hin), (M, E), (M, E) */
} mlm_head;

typedef struct {
  double loss;       /* Σ weight·cross-entropy / (denominator + 1e-5) */
  double weight_sum; /* this batch's Σ masked_lm_weights */
  double correct;    /* Σ weights where argmax == label */
} mlm_result;

/* Adds "<prefix>.dense.weight" (E, Hin), "<prefix>.dense.bias",
 * "<prefix>.LayerNorm.{weight,bias}" and bias_name (V); h->we must be set. */
status_t mlm_head_add_params(mlm_head *h, param_table *t, const char *prefix,
                             const char *bias_name);
void mlm_head_carve(mlm_head *h, float *base, size_t *used, size_t M);
/* The head on top's rows at the base's masked slots and the loss against
 * its masked_lm_ids; denominator 0 means Σ weights. Keeps the gradient of
 * scale × loss with respect to the logits for backward. */
void mlm_head_forward(const model_base *b, mlm_head *h, const float *top, double denominator,
                      float scale, mlm_result *out);
/* ADDS the head's gradients and announces its tensors (the tied word
 * embeddings' share is added, not announced); sets dh (B*T, Hin) to the
 * gradient of top. */
void mlm_head_backward(const model_base *b, const enc_ctx *c, mlm_head *h, float *dh);

#ifdef __cplusplus
}
#endif
#endif
