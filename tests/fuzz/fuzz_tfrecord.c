/* fuzz_tfrecord: a TFRecord file of tf.train.Example rows, read as the
 * TFRecord batch source reads it: the framing record by record, then the
 * source opened over the file (indexing every record and reading the
 * shapes) and its rows parsed. Input byte 0: bit 0 set, the records' CRCs
 * are recomputed first. */
#include "dataset.h"
#include "fuzz_util.h"
#include "tfexample.h"
#include "tfrecord.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  uint8_t *p = malloc(size);
  memcpy(p, data + 1, size - 1);
  if (data[0] & 1) fuzz_fix_tfrecord_crcs(p, size - 1);
  const char *path = fuzz_write("f.tfrecord", p, size - 1);
  free(p);
  tfr_file f = {0};
  if (tfr_open(path, &f) == STATUS_OK) {
    uint64_t off = 0;
    const uint8_t *pl;
    size_t n;
    for (int i = 0; i < 1024 && off < f.size && tfr_read_at(&f, &off, &pl, &n) == STATUS_OK; i++) {
    }
    tfr_close(&f);
  }
  static FILE *null;
  if (!null) null = fopen("/dev/null", "w");
  (void)tfx_dump(path, null);
  const char *paths[1] = {path};
  tfx_source *s = NULL;
  if (tfx_open(paths, 1, 0, 0, 7, &s) == STATUS_OK) {
    int T = tfx_seq_len(s), P = tfx_max_predictions(s);
    uint64_t n = tfx_records(s);
    data_batch b = {0};
    if (T > 0 && T <= 4096 && P >= 0 && P <= 4096 && data_batch_alloc(&b, 1, T, P) == STATUS_OK) {
      for (uint64_t i = 0; i < n && i < 64; i++) (void)tfx_read_record(s, i, &b, 0);
      if (n > 0) (void)tfx_get_batch(s, n, 0, 0, 1, &b);
    }
    data_batch_free(&b);
    tfx_free(s);
  }
  return 0;
}
