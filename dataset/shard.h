/* shard.h: mlmpi's shard files (*.mlms): TFRecord-framed protobuf records —
 * a ShardHeader, one Document per document, a ShardIndex and a fixed-size
 * trailer pointing at the index, so a reader finds any document without a
 * scan (proto/shard.proto). */
#ifndef MLMPI_SHARD_H
#define MLMPI_SHARD_H

#include "dataset.h"
#include "tfrecord.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SHARD_MAGIC 0x314d4c53504d4c4dull /* "MLMPLSM1" little-endian */
#define SHARD_VERSION 1u
#define SHARD_TRAILER_MAGIC 0x31584449534d4c4dull /* "MLMSIDX1" */

/* What the header records about the data: shard_meta (dataset.h). */

/* One document as read back: owned by the caller (shard_doc_free). */
typedef struct {
  int32_t *ids;
  size_t n_ids;
  uint32_t *sentence_ends; /* exclusive ends in ids */
  size_t n_sentences;
  uint8_t *word_starts; /* (n_ids + 7) / 8 bytes, LSB first; NULL if unknown */
} shard_doc;
void shard_doc_free(shard_doc *d);

/* Writer: documents are appended in order; close writes the index and the
 * trailer, fsyncs and renames into place. Not thread-safe. */
typedef struct shard_writer shard_writer;
status_t shard_writer_open(shard_writer **out, const char *path, const shard_meta *meta);
status_t shard_writer_add(shard_writer *w, const int32_t *ids, size_t n_ids,
                          const uint32_t *sentence_ends, size_t n_sentences,
                          const uint8_t *word_starts);
uint64_t shard_writer_bytes(const shard_writer *w);
uint64_t shard_writer_docs(const shard_writer *w);
status_t shard_writer_close(shard_writer *w); /* frees w, also on failure */
void shard_writer_abort(shard_writer *w);     /* frees w, removes the file */

/* Reader: maps the file, checks the header, trailer and index (not every
 * document's CRC: shard_verify does that). Reading documents is
 * thread-safe. */
typedef struct {
  tfr_file file;
  shard_meta meta;
  uint64_t n_docs, n_tokens;
  uint64_t *offsets; /* of each Document record */
} shard_reader;
status_t shard_open(const char *path, shard_reader **out);
void shard_close(shard_reader *r);
status_t shard_read_doc(const shard_reader *r, uint64_t i, shard_doc *out);
/* Reads every record, checking every CRC, the record kinds and the index;
 * errors name the file and byte offset. */
status_t shard_verify(const shard_reader *r);

#ifdef __cplusplus
}
#endif
#endif
