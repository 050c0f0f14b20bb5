/* gpt2.h: GPT-2 (Hugging Face GPT2LMHeadModel): learned positions, pre-LN
 * blocks with causal self-attention, final LayerNorm and the LM head tied to
 * the token embeddings; Conv1D weights stored [in, out] as Hugging Face
 * does. Config, parameter table, forward with the causal-LM loss, backward.
 * Private to trainer/. Not thread-safe; the calls use OpenMP inside. */
#ifndef MLMPI_GPT2_H
#define MLMPI_GPT2_H

#include "model_base.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  int vocab_size, n_embd, n_layer, n_head, n_positions;
  int n_inner; /* 0 (config null or absent): 4 * n_embd */
  act_kind act;
  float resid_pdrop, embd_pdrop, attn_pdrop, layer_norm_epsilon, initializer_range;
  bool scale_attn_weights;
} gpt2_config;

#define GPT2_PRESETS "gpt2-tiny, gpt2, gpt2-medium"

gpt2_config gpt2_config_default(void); /* GPT2Config's defaults (124M) */
/* A Hugging Face GPT2Config config.json; STATUS_CONFIG naming path and key. */
status_t gpt2_config_load(const char *path, gpt2_config *c);
/* gpt2-tiny, gpt2, gpt2-medium (vocab_size left to the caller). */
status_t gpt2_preset(const char *name, gpt2_config *c);
status_t gpt2_config_check(const gpt2_config *c);
/* n_inner, or 4 * n_embd when it is 0. */
int gpt2_inner(const gpt2_config *c);

typedef struct gpt2_model gpt2_model;

typedef struct {
  double loss;       /* Σ w·cross-entropy / denominator (0 when it is 0) */
  double weight_sum; /* this batch's Σ target_weights */
  double correct;    /* Σ weights where argmax == target */
} gpt2_losses;

/* A model for batches of up to max_batch x seq_len (seq_len <= n_positions)
 * with zeroed parameters. */
status_t gpt2_init(gpt2_model **out, const gpt2_config *c, int max_batch, int seq_len,
                   int nthreads);
void gpt2_free(gpt2_model *m); /* NULL-safe */
const gpt2_config *gpt2_get_config(const gpt2_model *m);
model_base *gpt2_base(gpt2_model *m);
/* Normal(0, initializer_range) matrices (c_proj weights scaled by
 * 1/sqrt(2 n_layer) as Hugging Face does), LayerNorm weights 1, biases 0; a
 * pure function of seed. */
void gpt2_init_weights(gpt2_model *m, uint64_t seed);
/* Shapes, ids, mask (1s then 0s), targets and weights; STATUS_ARG names the
 * tensor. */
status_t gpt2_check_batch(const gpt2_model *m, const model_batch *b);
/* Forward and the loss on a checked batch (den: the global Σ target_weights,
 * 0: this batch's); keeps what backward needs. */
void gpt2_forward(gpt2_model *m, const model_batch *b, bool train, uint64_t seed, uint32_t step,
                  uint32_t sample_base, double den, gpt2_losses *out);
/* ADDS the gradient of the last forward's loss; announces every tensor. */
void gpt2_backward(gpt2_model *m);
const float *gpt2_logits(const gpt2_model *m); /* [B, T, V] of the last forward */

/* Incremental inference (one sequence, no dropout): a cache of every
 * layer's keys and values for positions [0, len), len < n_positions. */
typedef struct gpt2_kv gpt2_kv;
/* A cache for up to n_positions positions of m's config, empty. */
status_t gpt2_kv_init(gpt2_kv **out, const gpt2_model *m);
void gpt2_kv_free(gpt2_kv *kv);  /* NULL-safe */
void gpt2_kv_reset(gpt2_kv *kv); /* empty again */
int gpt2_kv_len(const gpt2_kv *kv);
/* Runs the n tokens ids[0..n) at positions [len, len + n) against the
 * cached keys and values (n = the prompt: the prefill; n = 1: one new
 * token), appends their keys and values, and writes the logits [V] of the
 * last of them. STATUS_ARG (nothing changed) when len + n > n_positions or
 * an id is out of the vocabulary. */
status_t gpt2_kv_append(gpt2_model *m, gpt2_kv *kv, const int32_t *ids, int n, float *logits);

#ifdef __cplusplus
}
#endif
#endif
