/* electra.h: ELECTRA pretraining (Clark et al., ICLR 2020) as Hugging Face
 * transformers defines its networks: a small generator (ElectraForMaskedLM)
 * and the discriminator (ElectraForPreTraining) sharing one embeddings
 * block, trained together on masked-LM plus replaced-token detection. fp32
 * on OpenBLAS over the core parameter table, like the BERT model. */
#ifndef MLMPI_ELECTRA_H
#define MLMPI_ELECTRA_H

#include "trainer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The sizes of one network's encoder (ElectraConfig names). */
typedef struct {
  int hidden_size;
  int num_hidden_layers;
  int num_attention_heads;
  int intermediate_size;
} electra_net_config;

/* An ElectraConfig for the discriminator plus the generator's sizes. The
 * embeddings (vocab_size, embedding_size, max_position_embeddings,
 * type_vocab_size) and the remaining fields are the two networks' shared
 * settings. */
typedef struct {
  int vocab_size;
  int embedding_size;
  int max_position_embeddings;
  int type_vocab_size;
  act_kind hidden_act; /* encoders and discriminator head; the generator head
                          is always erf GELU, as in Hugging Face */
  float hidden_dropout_prob;
  float attention_probs_dropout_prob;
  float layer_norm_eps;
  float initializer_range;
  electra_net_config disc; /* the top-level hidden_size, ... */
  electra_net_config gen;  /* the "generator" object */
  float gen_weight;        /* weight of the generator's MLM loss (1.0) */
  float disc_weight;       /* weight of the discriminator's loss (50.0) */
  /* The generator's samples are drawn from softmax(logits / this) (1.0;
   * above 1 they are noisier, easier to tell from the originals). */
  float sample_temperature;
} electra_config;

/* ELECTRA-small with Hugging Face ElectraConfig() defaults (vocab 30522,
 * E 128, discriminator H 256 L 12 A 4 I 1024) and a quarter-size generator
 * (H 64 L 12 A 1 I 256); weights 1.0 and 50.0. */
electra_config electra_config_default(void);
/* Presets "electra-small" (the default above, sampling at temperature 2:
 * docs/electra.md) and "electra-base" (E 768,
 * discriminator H 768 L 12 A 12 I 3072, generator H 256 L 12 A 4 I 1024: a
 * third). vocab_size is left at 30522 for the caller to set. */
status_t electra_preset(const char *name, electra_config *out);
/* True when the config.json at path has "model_type": "electra" (false for
 * any other content, an unreadable file included: the BERT reader then
 * reports the problem). */
bool electra_config_is_electra(const char *path);
/* Reads a config.json: the ElectraConfig keys at the top level for the
 * discriminator and the embeddings, an optional "generator" object with
 * hidden_size, num_hidden_layers, num_attention_heads, intermediate_size
 * (absent: a quarter of the discriminator's width, heads and intermediate
 * size, the same depth) and optional gen_weight, disc_weight,
 * sample_temperature. Errors name the key. */
status_t electra_config_load(const char *path, electra_config *cfg);
status_t electra_config_check(const electra_config *cfg);

/* A batch as bert_batch (no NSP) plus the generator's samples. */
typedef struct {
  int B, T, P;
  const int32_t *input_ids;           /* [B,T] */
  const int32_t *input_mask;          /* [B,T] 1 real token, 0 padding */
  const int32_t *segment_ids;         /* [B,T] */
  const int32_t *masked_lm_positions; /* [B,P] */
  const int32_t *masked_lm_ids;       /* [B,P] the original tokens */
  const float *masked_lm_weights;     /* [B,P] 0 marks an unused slot */
  const int32_t *sampled_ids;         /* [B,P] the generator's samples, or NULL: draw them */
} electra_batch;

/* How one forward pass runs. */
typedef struct {
  bool train;           /* dropout on */
  uint64_t seed;        /* dropout and sampling: Philox key */
  uint32_t step;        /* global step */
  uint32_t sample_base; /* global index of this batch's first sequence */
  /* Loss normalisers; 0 means this batch's own: Σ masked_lm_weights (MLM,
   * plus 1e-5 as in BERT) and the count of input_mask == 1 tokens
   * (discriminator). Data-parallel ranks pass the global batch's values. */
  double mlm_denominator;
  double disc_denominator;
  float grad_scale; /* the gradient computed is of grad_scale × loss */
} electra_run;
electra_run electra_run_default(void); /* training, scale 1 */

typedef struct {
  double loss;           /* gen_weight·mlm_loss + disc_weight·disc_loss */
  double mlm_loss;       /* the generator's, normalised as bert_run's */
  double disc_loss;      /* mean sigmoid cross-entropy over real tokens */
  double mlm_weight_sum; /* this batch's Σ masked_lm_weights */
  double mlm_correct;    /* Σ weights where the generator's argmax is the label */
  double disc_tokens;    /* this batch's real (input_mask 1) tokens */
  double disc_correct;   /* real tokens where (logit > 0) == replaced */
  double replaced;       /* real tokens that were replaced (label 1) */
  double predicted;      /* real tokens predicted replaced (logit > 0) */
  double true_positive;  /* replaced and predicted replaced */
} electra_losses;

typedef struct electra_model electra_model;

/* Builds the table (shared embeddings first, then the generator, then the
 * discriminator), the buffers and one arena for batches of up to max_batch
 * x seq_len with max_pred masked slots. Parameters start at zero. Not
 * thread-safe; calls use up to nthreads OpenMP threads (0: all). */
status_t electra_init(electra_model **out, const electra_config *cfg, int max_batch, int seq_len,
                      int max_pred, int nthreads);
void electra_free(electra_model *m); /* NULL is a no-op */

const electra_config *electra_get_config(const electra_model *m);
const param_table *electra_params(const electra_model *m);
float *electra_param_buf(electra_model *m);              /* owned by the model */
float *electra_grad_buf(electra_model *m);               /* owned by the model */
void electra_use_grad_buf(electra_model *m, float *buf); /* as bert_use_grad_buf */
/* Backward announces every tensor once, in descending index order. */
void electra_set_grad_ready(electra_model *m, bert_grad_ready_fn fn, void *ctx);
void electra_init_weights(electra_model *m, uint64_t seed); /* as bert_init_weights */
void electra_zero_grad(electra_model *m);

/* Ids, shapes, weights and sampled_ids in range; no two weighted slots of a
 * sequence at one position. STATUS_ARG names the tensor and index. */
status_t electra_check_batch(const electra_model *m, const electra_batch *b);
/* Generator forward with its MLM loss; the samples (given, or drawn by
 * Gumbel-max: slot j of sequence s takes argmax_v logit_v / τ - log(-log u_v)
 * with τ the config's sample_temperature,
 * u_v element t·V + v of Philox stream (seed, step, s, ELECTRA_STREAM_SAMPLE)
 * with t the slot's position); the discriminator on the input with the
 * samples in place of the weighted slots; its loss against "replaced"
 * (sample != masked_lm_id). Keeps what backward needs. */
void electra_forward(electra_model *m, const electra_batch *b, const electra_run *run,
                     electra_losses *out);
/* ADDS the gradient of grad_scale × loss (zero first with electra_zero_grad).
 * Nothing flows back through the sampling. */
void electra_backward(electra_model *m);

/* Outputs of the last forward, owned by the model. */
const float *electra_generator_logits(const electra_model *m);     /* [B,P,V] with bias */
const float *electra_discriminator_logits(const electra_model *m); /* [B,T] */
/* The discriminator's labels of the last forward [B,T]: 1 where the token
 * was replaced (the sample differs from the original), else 0. */
const float *electra_replaced_labels(const electra_model *m);
/* The samples used (given or drawn) [B,P]; unused slots hold 0. */
const int32_t *electra_sampled_ids(const electra_model *m);

/* Dropout stream groups (rng_stream(group, site)): the discriminator uses
 * 0 (embeddings) and 1..L like BERT; the generator adds this offset; the
 * sampling uses its own group. */
#define ELECTRA_GEN_GROUP 4096u
#define ELECTRA_STREAM_SAMPLE (rng_stream(8192u, 0))

#ifdef __cplusplus
}
#endif
#endif
