/* dataset.h: mlmpi's data path as the trainer sees it: a data set of shards,
 * the instances cut from it, and the batch function: the batch a rank sees
 * at a global step is a pure function of (data set, seed, step, and which
 * instances of the step's global batch it asks for). Ranks, micro-batches
 * and service replicas differ only in which range they ask for. */
#ifndef MLMPI_DATASET_H
#define MLMPI_DATASET_H

#include "core.h"
#include "shard.h"
#include "tokenizer.h"

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

typedef struct {
  int seq_len;
  int max_predictions; /* masked slots per sequence */
  float mask_prob;
  mask_style masking;
  bool whole_word;
  inst_mode instances;
  float short_seq_prob; /* NSP mode: chance of a shorter target length */
  uint64_t seed;
} data_config;

/* seq_len 128, max_predictions 20, mask_prob 0.15, BERT masking, packed,
 * short_seq_prob 0.1, seed 12345. */
data_config data_config_default(void);
/* Sets one `data.*` key (without the prefix): seq_len, max_predictions,
 * mask_prob, masking (bert|electra), whole_word, instances (packed|nsp),
 * short_seq_prob, seed. STATUS_CONFIG names the key otherwise. */
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

/* A batch of n sequences, every field [n, T] or [n, P] row-major, owned. */
typedef struct {
  int n, T, P;
  int32_t *input_ids, *input_mask, *segment_ids;
  int32_t *masked_lm_positions, *masked_lm_ids;
  float *masked_lm_weights;
  int32_t *next_sentence_labels; /* [n]; 0 in packed mode */
} data_batch;
status_t data_batch_alloc(data_batch *b, int n, int T, int P);
void data_batch_free(data_batch *b);

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

#ifdef __cplusplus
}
#endif
#endif
