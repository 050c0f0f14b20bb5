/* model_impl.h: what the registry (model.c) and the models' table files
 * share: each model's table and the helpers they use. Private to trainer/. */
#ifndef MLMPI_MODEL_IMPL_H
#define MLMPI_MODEL_IMPL_H

#include <cjson/cJSON.h>

#include "electra.h"
#include "model.h"

/* The model_base inside each model. */
model_base *bert_base(bert_model *m);
model_base *electra_base(electra_model *m);

/* *out = a model of ops over impl (whose base is given); impl is freed by
 * free_impl when this fails. */
status_t model_wrap(model **out, const model_ops *ops, void *impl, model_base *base,
                    void (*free_impl)(void *));
/* The parameter entries of the table for models built on model_base. */
const param_table *model_common_params(const model *m);
float *model_common_param_buf(model *m);
float *model_common_grad_buf(model *m);
void model_common_use_grad_buf(model *m, float *buf);
void model_common_set_grad_ready(model *m, bert_grad_ready_fn fn, void *ctx);
void model_common_zero_grad(model *m);

/* Scores of a binary classifier as two histograms (counts are counters:
 * they sum across micro-batches and ranks): MODEL_SCORE_BINS bins of logits
 * over [-MODEL_SCORE_RANGE, MODEL_SCORE_RANGE), the outer ones open-ended. */
#define MODEL_SCORE_BINS 1024
#define MODEL_SCORE_RANGE 16.0
/* Adds n logits z (only where mask is not 0) to neg or pos by label y. */
void model_score_hist_add(double *neg, double *pos, const float *z, const float *y,
                          const int32_t *mask, size_t n);
/* ROC AUC from the histograms: P(score of a positive > score of a
 * negative), ties (the same bin) counting half; 0.5 without both kinds. */
double model_score_auc(const double *neg, const double *pos);
/* a / b, or 0 when b is 0 (a rate over no events). */
static inline double model_ratio(double a, double b) { return b > 0 ? a / b : 0; }
/* Bernoulli entropy of p, in nats (0 at 0 and 1). */
double model_binary_entropy(double p);

/* STATUS_CONFIG unless the spec and the config read agree: a preset needs
 * the data's vocabulary; a config.json's vocab_size must cover the data's;
 * the sequences must fit max_positions. */
status_t model_spec_check(const model_spec *s, int vocab_size, int max_positions);
/* o = a copy of a tensor (shape[ndim]) / of a scalar, as float32. */
status_t model_output_copy(model_output *o, const char *name, dtype_t dtype, int ndim,
                           const int64_t *shape, const void *data);
status_t model_output_scalar(model_output *o, const char *name, double v);
/* A classifier's part of config.json: id2label, label2id, classifier_dropout. */
typedef struct {
  const char *const *labels;
  int n;
  float dropout;
} hf_head;
/* Writes a Hugging Face config.json of an encoder (BertConfig's fields;
 * embedding_size too when > 0) with the given architecture and model_type,
 * and a classifier's labels when head is not NULL. */
status_t model_write_hf_config(const char *path, const char *arch, const char *model_type,
                               const bert_config *c, int embedding_size, const hf_head *head);
/* Writes the tensors of t under prefix (renamed: prefix removed; plus, when
 * also is set, those under `also` renamed with `also_strip` removed) to
 * dir/model.safetensors, creating dir. */
status_t model_write_hf_weights(const param_table *t, const float *w, const char *dir,
                                const char *prefix, const char *also, const char *also_strip);

/* The model of checkpoint `path` (a step-N or best directory) whose
 * meta.json is `meta` (ckpt_read_meta), with its weights, for batches of
 * `shape`: a classifier when meta has a task. */
status_t model_from_checkpoint(const char *path, const cJSON *meta, const model_shape *shape,
                               model **out);

#endif
