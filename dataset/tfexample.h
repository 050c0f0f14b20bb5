/* tfexample.h: BERT's pretraining records: tf.train.Example payloads with
 * the features create_pretraining_data.py writes, converted to and from rows
 * of a data_batch, and a batch source over TFRecord files of them (static
 * masks, the same epoch permutation as dataset_get_batch). */
#ifndef MLMPI_TFEXAMPLE_H
#define MLMPI_TFEXAMPLE_H

#include <stdio.h>

#include "dataset.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The features of one record: input_ids, input_mask, segment_ids [T] and
 * masked_lm_positions, masked_lm_ids [P] (int64_list), masked_lm_weights [P]
 * (float_list), next_sentence_labels [1] (int64_list). Other features are
 * ignored; when a name repeats, the last entry counts (protobuf map rules).
 * Both the packed and the unpacked wire form of the lists are accepted. */

/* Parses one Example payload into row k of b, whose T and P are the lengths
 * required. Every feature's presence, type, length and range (int32 values,
 * positions in [0, T), finite weights) is checked; errors name path, the
 * record's byte offset and the feature. Keeps nothing; thread-safe. */
status_t tfx_parse_row(const uint8_t *payload, size_t n, const char *path, uint64_t offset,
                       data_batch *b, int k);

/* Reads T and P from a payload (the lengths of input_ids and
 * masked_lm_positions), for sources opened without them. */
status_t tfx_peek_shape(const uint8_t *payload, size_t n, const char *path, uint64_t offset, int *T,
                        int *P);

/* Builds the Example payload of row k of b, features in the order BERT
 * writes them, lists packed. *out is malloc'd and owned by the caller.
 * Thread-safe. */
status_t tfx_build_row(const data_batch *b, int k, uint8_t **out, size_t *n);

/* A batch source over TFRecord files of Examples. The files stay mapped;
 * opening reads every record once (checking both CRCs) to index its offset,
 * and records are parsed when a batch asks for them. Reading is
 * thread-safe. */
typedef struct tfx_source tfx_source;

/* Opens the records of paths[0..n_paths-1]. Each entry is a file, a glob
 * pattern, or a comma-separated list of either (as BERT's --input_file);
 * matches of one pattern are taken in sorted order. T and P are the
 * sequence length and masked slots every record must have; 0 takes them
 * from the first record. seed keys the epoch permutation. Errors name the
 * file and byte offset; no records at all is an error. *out is owned by the
 * caller (tfx_free). */
status_t tfx_open(const char *const *paths, int n_paths, int T, int P, uint64_t seed,
                  tfx_source **out);
void tfx_free(tfx_source *s); /* tfx_free(NULL) is a no-op */

uint64_t tfx_records(const tfx_source *s);
int tfx_seq_len(const tfx_source *s);
int tfx_max_predictions(const tfx_source *s);
int tfx_files(const tfx_source *s);
const char *tfx_file_path(const tfx_source *s, int i);
uint64_t tfx_file_records(const tfx_source *s, int i);

/* A hash of (T, P, seed) and of every record's stored checksum, in order:
 * equal fingerprints mean equal batches, wherever the files lie. */
uint64_t tfx_fingerprint(const tfx_source *s);

/* Record i in file order into row k of out; errors name file and offset. */
status_t tfx_read_record(const tfx_source *s, uint64_t i, data_batch *out, int k);

/* As dataset_get_batch: instances first .. first+count-1 of the global batch
 * at step; instance g = step * global_batch + j is record
 * data_permute(g mod N, N, seed ^ e * 0x9e3779b97f4a7c15) of epoch e = g / N.
 * The masks are the records' own. out must have room for count rows of
 * this source's T and P. Thread-safe. */
status_t tfx_get_batch(const tfx_source *s, uint64_t global_batch, uint64_t step, uint64_t first,
                       int count, data_batch *out);

/* Prints every record of a TFRecord file of Examples as one JSON object per
 * line: {"record":i,"offset":byte,"features":{name: values}}. int64 lists
 * print as integers, float lists as numbers that always carry a '.' or an
 * exponent (non-finite values as the strings "nan", "inf", "-inf"), bytes
 * lists as strings (bytes >= 0x80 as \u00XX), a feature with no list as
 * null. Not thread-safe (writes to out). */
status_t tfx_dump(const char *path, FILE *out);

#ifdef __cplusplus
}
#endif
#endif
