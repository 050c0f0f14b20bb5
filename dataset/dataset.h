/* dataset.h: mlmpi's data path as the trainer sees it: the batch source
 * (local shards, BERT TFRecords or the dataset service, behind one table),
 * a data set of shards, the instances cut from it, and the batch function:
 * the batch a rank sees at a global step is a pure function of (data set,
 * seed, step, and which instances of the step's global batch it asks for).
 * Ranks, micro-batches and service replicas differ only in which range they
 * ask for. The one public header of dataset/. */
#ifndef MLMPI_DATASET_H
#define MLMPI_DATASET_H

#include "core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* How instances are cut from documents. */
typedef enum {
  INST_PACKED, /* RoBERTa FULL-SENTENCES: sentences packed to seq_len across documents */
  INST_NSP,    /* BERT segment pairs with next-sentence labels */
} inst_mode;

typedef enum {
  MASK_BERT,    /* 80% [MASK], 10% random token, 10% kept */
  MASK_ELECTRA, /* 85% [MASK], 15% kept */
} mask_style;

/* What a batch trains: masked-LM (BERT/ELECTRA instances, masked slots) or
 * causal LM (windows of the packed token stream, next-token targets). */
typedef enum {
  OBJECTIVE_MLM,
  OBJECTIVE_CLM,
} data_objective;

typedef struct {
  int seq_len;
  int max_predictions; /* masked slots per sequence */
  float mask_prob;
  mask_style masking;
  bool whole_word;
  inst_mode instances;
  float short_seq_prob; /* NSP mode: chance of a shorter target length */
  uint64_t seed;
  data_objective objective;
} data_config;

/* What a shard's header records about the data. */
typedef struct {
  uint64_t tokenizer_fingerprint;
  uint32_t vocab_size;
  int32_t cls_id, sep_id, mask_id, pad_id, unk_id;
  char tokenizer_kind[32];
  char split[16]; /* "train" or "holdout" */
} shard_meta;

/* seq_len 128, max_predictions 20, mask_prob 0.15, BERT masking, packed,
 * short_seq_prob 0.1, seed 12345. */
data_config data_config_default(void);
/* Sets one `data.*` key (without the prefix): seq_len, max_predictions,
 * mask_prob, masking (bert|electra), whole_word, instances (packed|nsp),
 * short_seq_prob, seed, objective (mlm|clm). STATUS_CONFIG names the key
 * otherwise. */
status_t data_set_key(data_config *c, const char *key, const char *value);
/* The data options the mlmpi-data commands share, as getopt_long entries
 * (with <getopt.h>): --seq-len, --seed, --max-predictions, --mask-prob,
 * --masking, --whole-word, --instances, --short-seq-prob. */
// clang-format off
#define DATA_GETOPT_OPTIONS                           \
  {"seq-len", required_argument, 0, 'T'},             \
  {"seed", required_argument, 0, 's'},                \
  {"max-predictions", required_argument, 0, 'P'},     \
  {"mask-prob", required_argument, 0, 'm'},           \
  {"masking", required_argument, 0, 'M'},             \
  {"whole-word", no_argument, 0, 'w'},                \
  {"instances", required_argument, 0, 'i'},           \
  {"short-seq-prob", required_argument, 0, 'q'}
// clang-format on
/* The data.* key of one of those options, by getopt's value, with *value
 * set to "true" for --whole-word (which takes none); NULL for others. */
const char *data_option_key(int option, const char **value);

/* A batch of n sequences, every field [n, T] or [n, P] row-major, owned.
 * target_ids / target_weights are always allocated and are zero except in
 * causal-LM batches (data.objective clm), where the masked_lm_* rows are zero
 * instead. */
typedef struct {
  int n, T, P;
  int32_t *input_ids, *input_mask, *segment_ids;
  int32_t *masked_lm_positions, *masked_lm_ids;
  float *masked_lm_weights;
  int32_t *next_sentence_labels; /* [n]; 0 in packed mode */
  int32_t *target_ids;           /* [n, T]: the next token of each input position */
  float *target_weights;         /* [n, T]: 1 where there is a target, else 0 */
} data_batch;
status_t data_batch_alloc(data_batch *b, int n, int T, int P);
void data_batch_free(data_batch *b);

/* ---- Batch sources ----------------------------------------------------------
 * Where a job's batches come from: shards read in-process (data.path a
 * directory), BERT TFRecord files with their static masks (data.path files),
 * or the dataset service (data.service, with data.path's shards, when set,
 * checked against it). All give the batch of (step, first, count) as a pure
 * function, so their users cannot tell them apart. One table per kind
 * (source.c); a source is used from one thread. */
typedef struct batch_source batch_source;
typedef struct task_data task_data; /* a labelled task (below) */

typedef struct {
  const char *path;       /* a directory of shards, or TFRecord files (file, glob or comma
                             list); "" or NULL: none */
  const char *service;    /* "host:port[,host:port...]" of the service; "" or NULL: none */
  const char *token_file; /* the service's shared secret, or "" / NULL */
  const char *split;      /* "train" (default) or "holdout" (shards only) */
  data_config config;
  uint64_t global_batch;
  double timeout_s; /* the service: how long a batch may take to arrive */
  /* A labelled task instead of shards (path, service and split unused): the
   * caller's, outliving the source. */
  const task_data *task;
  bool ordered;       /* the task's examples in file order (evaluation) */
  uint64_t task_seed; /* the task's epoch permutations */
} batch_source_options;

/* One slice of a step's global batch: instances first..first+count-1. */
typedef struct {
  uint64_t step, first;
  int count;
} batch_slice;

/* Opens the source the options name. Errors name the file, directory or
 * address, and say which combination is wrong (the service serves shards,
 * not TFRecords; TFRecords have no holdout split). *out is the caller's
 * (batch_source_free). */
status_t batch_source_open(batch_source **out, const batch_source_options *o);
void batch_source_free(batch_source *s); /* NULL is a no-op */
/* As dataset_get_batch: count sequences of the step's global batch from
 * instance first; out must have room for count rows of the config's
 * seq_len and max_predictions. */
status_t batch_source_get(batch_source *s, uint64_t step, uint64_t first, int count,
                          data_batch *out);
/* The slices the caller will ask for next, in order: fetched ahead where
 * that helps (the service), ignored elsewhere. */
void batch_source_plan(batch_source *s, const batch_slice *slices, size_t n);
/* Equal fingerprints mean equal batches (0: not known before the first
 * batch, a service without local shards). */
uint64_t batch_source_fingerprint(const batch_source *s);
uint64_t batch_source_instances(const batch_source *s); /* 0: not known */
/* The data's vocabulary (the shards' tokenizer); 0 when the source does
 * not say (TFRecords, the service alone). */
int batch_source_vocab_size(const batch_source *s);
/* The tokenizer the data were made with: the path `mlmpi-data shard`
 * recorded in the shard directory's mlmpi-tokenizer.json ("" when none is
 * recorded: older shards, TFRecords, the service alone; a task's own
 * tokenizer path) and its fingerprint (0: not known). */
const char *batch_source_tokenizer(const batch_source *s);
uint64_t batch_source_tokenizer_fingerprint(const batch_source *s);
/* Whether next_sentence_labels are real: 1 (NSP instances), 0 (packed: all
 * 0), -1 (the records' own: TFRecords, where the model's config decides). */
int batch_source_nsp(const batch_source *s);
/* "shards", "tfrecords", "service" or "task", for messages. */
const char *batch_source_kind(const batch_source *s);

/* ---- Labelled tasks (fine-tuning) -------------------------------------------
 * A JSON Lines file of examples, one object per line: a text field, an
 * optional second text (sentence pairs) and a label (a string or an
 * integer). Each example becomes [CLS] a [SEP] (b [SEP]) with segment ids 0
 * for [CLS] a [SEP] and 1 for b [SEP], truncated longest-first (one token
 * at a time from the longer text, from b on a tie) to seq_len, padded with
 * [PAD] (input_mask 0). The tokenizer gains the [CLS] [SEP] [MASK] [PAD] it
 * lacks as `mlmpi-data shard` appends them (tok_add_specials), so ids match
 * the pretraining data's. task_data is declared above, with the batch
 * sources that take one. */

typedef struct {
  const char *path;        /* the JSON Lines file */
  const char *tokenizer;   /* a tokenizer path as tok_load takes it */
  const char *text_field;  /* NULL or "": "text" */
  const char *pair_field;  /* NULL or "": single texts */
  const char *label_field; /* NULL or "": "label" */
  bool unlabelled;         /* labels not read (prediction input) */
  int seq_len;
  /* The label set to map labels onto (the training file's, for dev files
   * and models); NULL: this file's own, sorted (numerically when every label
   * is an integer, else by bytes). A label outside a given set is an error
   * naming the file, line and label. */
  const char *const *labels;
  int n_labels;
} task_options;

#define TASK_MAX_LABELS 512

/* Reads and tokenizes the whole file. Errors name the file and line: not
 * JSON, not an object, a field missing or of the wrong type, an unknown
 * label, no examples; more than TASK_MAX_LABELS labels. */
status_t task_open(task_data **out, const task_options *o);
void task_free(task_data *t); /* NULL is a no-op */
uint64_t task_examples(const task_data *t);
int task_n_labels(const task_data *t);
const char *const *task_labels(const task_data *t); /* n_labels names, id order */
int task_vocab_size(const task_data *t);            /* with the appended specials */
uint64_t task_tokenizer_fingerprint(const task_data *t);
/* A hash of the examples' ids and labels, seq_len and the label set. */
uint64_t task_fingerprint(const task_data *t);
/* Example idx[i] into row i of out (count rows; out has room for them, any
 * P: masked_lm_* rows are zeroed); labels into next_sentence_labels (-1
 * when unlabelled). idx[i] < 0 gives a padding row: [CLS] [SEP], label -1. */
status_t task_fill(const task_data *t, const int64_t *idx, int count, data_batch *out);

/* A task as a batch source (batch_source_options.task): with `ordered`
 * false, epoch e = step / S of S = ceil(N / global_batch) steps covers the
 * N examples in the order of a permutation keyed by (seed, e), the last
 * step wrapping to the permutation's start; with `ordered` true, instance
 * g = step * global_batch + j is example g in file order, padding rows past
 * the end (evaluation). */
uint64_t task_steps_per_epoch(uint64_t examples, uint64_t global_batch);

typedef struct dataset dataset;
/* Opens every `<split>-*.mlms` in dir (sorted by name), checks that they
 * share one tokenizer, and cuts the instances (a pass over the documents).
 * Errors name the file. */
status_t dataset_open(dataset **out, const char *dir, const char *split, const data_config *cfg);
void dataset_free(dataset *d);
uint64_t dataset_instances(const dataset *d);
uint64_t dataset_documents(const dataset *d);
const shard_meta *dataset_meta(const dataset *d);
/* A hash of the shards (fingerprints and counts) and of every setting that
 * shapes a batch: equal fingerprints mean equal batches. */
uint64_t dataset_fingerprint(const dataset *d);

/* The id that separates documents in causal-LM batches (the tokenizer's
 * end of text); -1 in masked-LM data sets. */
int32_t dataset_eot_id(const dataset *d);

/* Fills out->n = count sequences: instances first .. first+count-1 of the
 * global batch of size global_batch at step `step`. Instance g = step *
 * global_batch + j of the endless stream is instance perm_e(g mod N) of
 * epoch e = g / N, with perm_e a pseudo-random permutation keyed by (seed,
 * e); masking is keyed by (seed, step, j). out must have room for count.
 * Thread-safe. */
status_t dataset_get_batch(const dataset *d, uint64_t global_batch, uint64_t step, uint64_t first,
                           int count, data_batch *out);

/* The pseudo-random permutation of [0, n) for a key (a Feistel network on
 * the next power of two, cycle-walked into range): bijective, O(1) memory. */
uint64_t data_permute(uint64_t i, uint64_t n, uint64_t key);

/* ---- Text through a tokenizer (for mlmpi-train generate) ------------------------ */
typedef struct text_codec text_codec;
/* A tokenizer by path as `mlmpi-data shard` takes it (a SentencePiece
 * .model, a directory with vocab.json + merges.txt, a vocab.txt), without
 * added specials. */
status_t text_codec_open(const char *path, text_codec **out);
void text_codec_free(text_codec *c); /* NULL-safe */
int32_t text_codec_vocab_size(const text_codec *c);
uint64_t text_codec_fingerprint(const text_codec *c);
/* The end-of-text id (as data.objective clm separates documents with it:
 * <|endoftext|>, </s>, WordPiece's [SEP]); -1 when the vocabulary has none. */
int32_t text_codec_eot_id(const text_codec *c);
/* The ids of text (*ids malloc'd: the caller frees it; *n may be 0). */
status_t text_codec_encode(const text_codec *c, const char *text, int32_t **ids, size_t *n);
/* The text of ids, NUL-terminated (*text malloc'd: the caller frees it). */
status_t text_codec_decode(const text_codec *c, const int32_t *ids, size_t n, char **text);

#ifdef __cplusplus
}
#endif
#endif
