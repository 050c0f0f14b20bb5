/* tfrecord.h: TFRecord framing, as TensorFlow writes it: per record a u64
 * (LE) length, the masked CRC32C of those 8 bytes, the payload, and the
 * masked CRC32C of the payload. Used by mlmpi's shards and by BERT's
 * tf.train.Example files. Private to dataset/. */
#ifndef MLMPI_TFRECORD_H
#define MLMPI_TFRECORD_H

#include <stdio.h>

#include "core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Bytes a record of n payload bytes takes in the file. */
static inline uint64_t tfr_framed_size(uint64_t n) { return n + 16; }

/* Writes records to path.tmp; close fsyncs and renames it to path, so a
 * reader never sees a partial file. Not thread-safe. */
typedef struct {
  FILE *f;
  char *path, *tmp;
  uint64_t offset; /* where the next record starts */
} tfr_writer;
status_t tfr_writer_open(tfr_writer *w, const char *path);
/* Appends one record; *at (if not NULL) receives its offset. */
status_t tfr_write(tfr_writer *w, const void *payload, size_t n, uint64_t *at);
status_t tfr_writer_close(tfr_writer *w); /* on failure the file is removed */
void tfr_writer_abort(tfr_writer *w);     /* removes the temporary file */

/* A whole file mapped read-only. Thread-safe to read from. */
typedef struct {
  const uint8_t *data;
  size_t size;
  char *path;
} tfr_file;
status_t tfr_open(const char *path, tfr_file *f);
void tfr_close(tfr_file *f);
/* Reads the record starting at *offset, checking both CRCs and the bounds;
 * on success points *payload into the mapping and moves *offset past the
 * record. Errors name the file and the byte offset. */
status_t tfr_read_at(const tfr_file *f, uint64_t *offset, const uint8_t **payload, size_t *n);

#ifdef __cplusplus
}
#endif
#endif
