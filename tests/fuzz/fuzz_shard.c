/* fuzz_shard: an mlmpi shard (`*.mlms`: header, documents, index, trailer,
 * each a TFRecord record) opened, verified and read document by document.
 * Input byte 0: bit 0 set, the records' CRCs are recomputed first. */
#include "fuzz_util.h"
#include "shard.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  uint8_t *p = malloc(size - 1 + 1);
  memcpy(p, data + 1, size - 1);
  if (data[0] & 1) fuzz_fix_tfrecord_crcs(p, size - 1);
  const char *path = fuzz_write("f.mlms", p, size - 1);
  free(p);
  shard_reader *r = NULL;
  if (shard_open(path, &r) != STATUS_OK) return 0;
  (void)shard_verify(r);
  uint64_t sum = 0;
  for (uint64_t i = 0; i < r->n_docs && i < 256; i++) {
    shard_doc d = {0};
    if (shard_read_doc(r, i, &d) == STATUS_OK) {
      for (size_t j = 0; j < d.n_ids; j++) sum += (uint32_t)d.ids[j];
      for (size_t j = 0; j < d.n_sentences; j++) sum += d.sentence_ends[j];
      if (d.word_starts)
        for (size_t j = 0; j < (d.n_ids + 7) / 8; j++) sum += d.word_starts[j];
    }
    shard_doc_free(&d);
  }
  shard_close(r);
  return sum == 1 ? 1 : 0; /* sum is read so every byte is touched */
}
