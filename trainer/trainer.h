/* trainer.h: the BERT pretraining model (Hugging Face BertForPreTraining /
 * BertForMaskedLM) in fp32 on OpenBLAS: configuration, parameters in the
 * core parameter table, forward with fused loss, backward into the flat
 * gradient buffer. */
#ifndef MLMPI_TRAINER_H
#define MLMPI_TRAINER_H

#include "core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { ACT_GELU, ACT_GELU_TANH, ACT_RELU } act_kind;

/* BertConfig fields as Hugging Face names them (config.json). */
typedef struct {
  int vocab_size;
  int hidden_size;
  int num_hidden_layers;
  int num_attention_heads;
  int intermediate_size;
  int max_position_embeddings;
  int type_vocab_size;
  act_kind hidden_act; /* "gelu" (erf), "gelu_new"/"gelu_pytorch_tanh", "relu" */
  float hidden_dropout_prob;
  float attention_probs_dropout_prob;
  float layer_norm_eps;
  float initializer_range;
  bool nsp; /* BertForPreTraining (true) or BertForMaskedLM (false) */
} bert_config;

/* BERT-base defaults (what Hugging Face's BertConfig() gives). */
bert_config bert_config_default(void);
/* Reads a Hugging Face config.json. Unknown keys are ignored as Hugging Face
 * does; wrong types, impossible values and unsupported features are errors
 * naming the key. NSP is on unless "architectures" names BertForMaskedLM, or
 * "use_nsp" (an mlmpi key) says otherwise. */
status_t bert_config_load(const char *path, bert_config *cfg);
/* Checks sizes (positive, hidden divisible by heads, ...). */
status_t bert_config_check(const bert_config *cfg);
/* The presets' names, and a preset's shape (BERT-base defaults otherwise;
 * vocab_size left to the caller). STATUS_CONFIG for an unknown name. */
#define BERT_PRESETS "bert-tiny, bert-mini, bert-small, bert-medium, bert-base, bert-large"
status_t bert_preset(const char *name, bert_config *out);

/* A batch of B sequences of length T with P masked slots per sequence,
 * row-major [B,T] and [B,P]. The model does not keep these pointers. */
typedef struct {
  int B, T, P;
  const int32_t *input_ids;            /* [B,T] */
  const int32_t *input_mask;           /* [B,T] 1 real token, 0 padding */
  const int32_t *segment_ids;          /* [B,T] */
  const int32_t *masked_lm_positions;  /* [B,P] */
  const int32_t *masked_lm_ids;        /* [B,P] */
  const float *masked_lm_weights;      /* [B,P] 0 marks an unused slot */
  const int32_t *next_sentence_labels; /* [B] (the [B,1] tensor); NULL without NSP */
} bert_batch;

/* How one forward pass runs. */
typedef struct {
  bool train;           /* dropout on (with the config's probabilities) */
  uint64_t seed;        /* dropout: Philox key */
  uint32_t step;        /* dropout: global step */
  uint32_t sample_base; /* global index of this batch's first sequence */
  /* Loss normalisers. 0 means "this batch's own": Σ masked_lm_weights for
   * MLM and B for NSP. Data-parallel ranks pass the global batch's values so
   * that the sum of their gradients is the global batch's gradient. */
  double mlm_denominator;
  double nsp_denominator;
  float grad_scale; /* the gradient computed is of grad_scale × loss */
} bert_run;
bert_run bert_run_default(void); /* eval-free training defaults, scale 1 */

typedef struct {
  double loss, mlm_loss, nsp_loss; /* as normalised by bert_run */
  double mlm_weight_sum;           /* this batch's Σ masked_lm_weights */
  double mlm_correct;              /* Σ weights where argmax == label */
  int nsp_correct;
} bert_losses;

/* Called during backward once tensor `index` of the table has its final
 * gradient for this micro-batch (reverse layer order). */
typedef void (*bert_grad_ready_fn)(void *ctx, int index);

typedef struct bert_model bert_model;

/* Builds the parameter table, allocates parameters, gradients and one
 * activation arena for batches of up to max_batch sequences of exactly
 * seq_len tokens and max_pred masked slots. Parameters start at zero; call
 * bert_init_weights or load them. Not thread-safe; the model's calls use
 * up to nthreads OpenMP threads (0: omp_get_max_threads()). */
status_t bert_init(bert_model **out, const bert_config *cfg, int max_batch, int seq_len,
                   int max_pred, int nthreads);
void bert_free(bert_model *m); /* NULL is a no-op */
/* Runs the matrix products in `precision` ("fp32", the default, or "bf16":
 * model.precision); STATUS_CONFIG naming the value or what the CPU lacks. */
status_t bert_set_precision(bert_model *m, const char *precision);

const bert_config *bert_get_config(const bert_model *m);
const param_table *bert_params(const bert_model *m);
float *bert_param_buf(bert_model *m); /* owned by the model, table layout */
float *bert_grad_buf(bert_model *m);  /* owned by the model, table layout */
/* Makes buf (table.total floats, owned by the caller, outliving the model:
 * e.g. memory the communicator shares between the ranks of a node) the
 * gradient buffer, and zeroes it. */
void bert_use_grad_buf(bert_model *m, float *buf);
size_t bert_arena_bytes(const bert_model *m);
void bert_set_grad_ready(bert_model *m, bert_grad_ready_fn fn, void *ctx);

/* BERT initialisation: truncated normal (±2 std) with std initializer_range
 * for embeddings and linear weights, LayerNorm 1 and 0, biases 0; a pure
 * function of seed. */
void bert_init_weights(bert_model *m, uint64_t seed);

/* Validates the batch against the model (ids in range, shapes within the
 * arena) and returns STATUS_ARG naming the tensor and index otherwise. */
status_t bert_check_batch(const bert_model *m, const bert_batch *b);
/* Forward pass with the loss; keeps what backward needs. The batch must have
 * passed bert_check_batch. */
void bert_forward(bert_model *m, const bert_batch *b, const bert_run *run, bert_losses *out);
/* Backward of the last forward: ADDS the gradient of grad_scale × loss into
 * the gradient buffer (zero it first with bert_zero_grad), so micro-batches
 * accumulate. */
void bert_backward(bert_model *m);
void bert_zero_grad(bert_model *m);

/* Outputs of the last forward, owned by the model: logits at the masked
 * slots [B,P,V] and NSP logits [B,2] (NULL without NSP). */
const float *bert_mlm_logits(const bert_model *m);
const float *bert_nsp_logits(const bert_model *m);

/* FLOPs of one forward+backward of a batch (matrix products only, 2 per
 * multiply-add; backward counted as twice forward). */
double bert_flops_per_step(const bert_config *cfg, int B, int T, int P);

/* `mlmpi-train step`: see ARCHITECTURE.md §6. Returns the process exit code. */
int trainer_step_main(int argc, char **argv);

#ifdef __cplusplus
}
#endif
#endif
