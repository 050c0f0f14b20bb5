/* model.h: the model table: everything the training loop, `mlmpi-train
 * step`, `export`, `demo` and the config loaders need of a model, behind one
 * operations table per model (BERT in bert_model.c, ELECTRA in
 * electra_model.c), chosen once by name from the registry in model.c.
 * After that choice nothing outside the model's own file branches on which
 * model runs. Private to trainer/. A model object is not thread-safe; its
 * calls use up to its nthreads OpenMP threads. */
#ifndef MLMPI_MODEL_H
#define MLMPI_MODEL_H

#include "dataset.h"
#include "model_base.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What a model is built from: a Hugging Face config.json, or a named preset
 * whose vocabulary comes from the data. */
typedef struct {
  const char *config_path; /* config.json, or NULL / "": use the preset */
  const char *preset;      /* e.g. "bert-mini", "electra-small" */
  int vocab_size;          /* the data's vocabulary (0: unknown, e.g. TFRecords) */
  int nsp;                 /* the data carry next-sentence labels: 1, 0, or -1 (unknown) */
  int seq_len;             /* longest sequence the model must take (0: no check) */
  /* Overrides for small synthetic runs (demo): > 0 replaces the config's. */
  int max_positions;
  bool no_dropout; /* dropout probabilities 0 */
  /* Classifiers: the labels (names in id order; NULL names: LABEL_i); 0:
   * config.json's id2label. */
  int num_labels;
  const char *const *labels;
} model_spec;

/* The batches a model object will take: up to max_batch sequences of
 * exactly seq_len tokens with max_pred masked slots. */
typedef struct {
  int max_batch, seq_len, max_pred;
  int nthreads; /* 0: omp_get_max_threads() */
} model_shape;

/* model_batch (model_base.h) is the batch as every model reads it. */
/* The model's view of a data batch (the same arrays; no samples). */
model_batch model_batch_of(const data_batch *b);

/* How one forward runs. The normalisers are the global batch's, so that
 * data-parallel ranks' gradients sum to the global batch's; 0 means this
 * batch's own. */
typedef struct {
  bool train;           /* dropout on */
  uint64_t seed;        /* dropout (and sampling): Philox key */
  uint32_t step;        /* global step (or evaluation batch) */
  uint32_t sample_base; /* global index of this batch's first sequence */
  double mlm_den;       /* Σ masked_lm_weights of the global batch */
  double token_den;     /* real (input_mask 1) tokens of the global batch */
  double sequences;     /* sequences in the global batch */
} model_run;
model_run model_run_default(void); /* training, everything else 0 */

/* A value the model reports, computed from its counters summed over
 * micro-batches and ranks. */
typedef struct {
  const char *key; /* metrics.jsonl key, e.g. "mlm_acc" */
  int digits;      /* decimals in metrics.jsonl */
  const char *tb;  /* TensorBoard tag, or NULL */
  int log_digits;  /* decimals in the log line; 0: not logged */
} model_metric;

#define MODEL_MAX_COUNTERS 2100
#define MODEL_MAX_METRICS 12
#define MODEL_MAX_OUTPUTS 8
#define MODEL_MAX_LABELS 512 /* a classifier's classes (TASK_MAX_LABELS) */

/* One output tensor of `mlmpi-train step` (loss, logits, ...), a copy owned
 * by whoever holds it (model_outputs_free). */
typedef struct {
  char name[48];
  dtype_t dtype;
  int ndim;
  int64_t shape[3];
  void *data; /* mem_alloc'd */
} model_output;
void model_outputs_free(model_output *o, int n);

/* Batch fields beyond the six every model reads, for `step`'s checks. */
enum {
  MODEL_FIELD_NSP = 1 << 0,
  MODEL_FIELD_SAMPLED = 1 << 1,
  MODEL_FIELD_MLM = 1 << 2,    /* masked_lm_positions, _ids, _weights [B,P] */
  MODEL_FIELD_LABELS = 1 << 3, /* labels [B] (next_sentence_labels' place) */
  MODEL_FIELD_CLM = 1 << 4,    /* target_ids, target_weights [B,T]; no segment_ids */
};

typedef struct model model;
typedef struct model_ops model_ops;

struct model_ops {
  const char *name;       /* registry key: "bert", "electra" */
  const char *model_type; /* config.json "model_type" it reads */
  const char *task;       /* NULL: pretraining; "classify": sequence classification */
  const char *presets;    /* its presets, comma-separated, for messages */
  bool (*has_preset)(const char *preset);
  mask_style masking; /* data.masking when the config leaves it unset */

  /* Reads the config (spec), checks it and builds the model with zeroed
   * parameters for batches of `shape`. Errors name the key or file. */
  status_t (*create)(model **out, const model_spec *spec, const model_shape *shape);
  void (*free)(model *m);
  /* One line on the model's shape, e.g. "BERT 4 layers, hidden 256, ...". */
  void (*describe)(const model *m, char *buf, size_t n);
  int (*vocab_size)(const model *m);

  /* Parameters: the table and its buffers; models built on model_base use
   * the model_common_* entries (model_impl.h). */
  const param_table *(*params)(const model *m);
  float *(*param_buf)(model *m);
  float *(*grad_buf)(model *m);
  /* Makes buf (table.total floats, the caller's, outliving the model) the
   * gradient buffer, zeroed. */
  void (*use_grad_buf)(model *m, float *buf);
  /* Backward calls fn(ctx, i) once tensor i's gradient is final. */
  void (*set_grad_ready)(model *m, bert_grad_ready_fn fn, void *ctx);
  void (*init_weights)(model *m, uint64_t seed); /* a pure function of seed */
  void (*zero_grad)(model *m);

  /* Ids in range, shapes within the arena, ...; STATUS_ARG names the tensor. */
  status_t (*check_batch)(const model *m, const model_batch *b);
  /* Forward with the loss on a checked batch; ADDS this batch's counters
   * (n_counters doubles; counters[0] is the loss as normalised by run) to
   * counters. Keeps what backward needs. */
  void (*forward)(model *m, const model_batch *b, const model_run *run, double *counters);
  /* ADDS the gradient of the last forward's loss to the gradient buffer. */
  void (*backward)(model *m);

  /* Metrics: the counters sum across micro-batches and ranks; train_values
   * and eval_values turn the sums into the metrics listed (sequences: the
   * global batch's; batches: evaluation batches summed). A training
   * forward adds n_counters counters, an evaluation one (run.train false)
   * n_eval_counters >= n_counters: what only the held-out metrics need is
   * neither computed nor reduced at every step. */
  int n_counters, n_eval_counters;
  const model_metric *train_metrics;
  int n_train_metrics;
  void (*train_values)(const double *sums, double sequences, double *values);
  const model_metric *eval_metrics;
  int n_eval_metrics;
  void (*eval_values)(const double *sums, double batches, double sequences, double *values);

  /* `mlmpi-train step`: the batch fields it requires and allows beyond the
   * six every model reads (MODEL_FIELD_*), and copies of the last forward's
   * outputs given its batch and counters (loss tensors, logits, ...); returns how
   * many of out it filled, or -1 (status set) when out of memory. */
  unsigned (*required_fields)(const model *m);
  unsigned (*allowed_fields)(const model *m);
  int (*outputs)(const model *m, const model_batch *b, const double *counters,
                 model_output out[MODEL_MAX_OUTPUTS]);
  /* Text for `step --help` on the batch and outputs. */
  const char *step_help;

  /* `mlmpi-train export`: the vocabulary (and what else the weights of a
   * checkpoint made from a preset tell) into spec; then the Hugging Face
   * directory (or directories) under dir, *what describing them. */
  status_t (*spec_from_weights)(const st_file *w, const char *path, model_spec *spec);
  status_t (*export_hf)(const model *m, const char *dir, char *what, size_t n);
};

struct model {
  const model_ops *ops;
  void *impl;       /* bert_model, electra_model, ... */
  model_base *base; /* the impl's parameters, gradients and hook */
};

/* ---- The registry ---------------------------------------------------------
 * Adding a model: a file with its model_ops and one line in model.c. */
/* The model a config names: config.json's "model_type" when config_path is
 * set (no model_type: BERT), else the preset's owner. STATUS_CONFIG naming
 * the model_type or the preset (and the known ones) otherwise. */
status_t model_lookup(const char *config_path, const char *preset, const model_ops **out);
/* The model of a task (NULL: pretraining, "classify") on the encoder a
 * config or preset names; model_lookup's task is "classify" when the
 * config.json's architectures name a *ForSequenceClassification. */
status_t model_lookup_task(const char *config_path, const char *preset, const char *task,
                           const model_ops **out);
/* Registry entry by name, or NULL; entry i in registry order, NULL past the
 * last. */
const model_ops *model_by_name(const char *name);
const model_ops *model_at(int i);

/* Classifiers (classify.c): the softmax of the last forward's logits into
 * probs [B, labels], and the label names in id order (returns their count). */
void classify_probs(const model *m, float *probs);
int classify_labels(const model *m, const char *const **names);
/* Whether table tensor i is the head's (pooler and classifier), which a
 * pretrained encoder need not have. */
bool classify_is_head(const model *m, int i);

/* Runs m's matrix products on the compute backend of `precision`
 * (compute.h: "fp32", "bf16"; NULL or "": fp32). STATUS_CONFIG naming the
 * value or what the CPU lacks. */
status_t model_set_precision(model *m, const char *precision);

/* Looks up the model and creates it (ops->create). */
status_t model_create(model **out, const model_spec *spec, const model_shape *shape);
void model_free(model *m); /* NULL is a no-op */

#ifdef __cplusplus
}
#endif
#endif
