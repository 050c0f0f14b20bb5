/* fuzz_tfexample: one tf.train.Example payload (the protobuf inside a
 * TFRecord record), its shape read and then parsed into a batch row, both
 * at its own shape and at BERT's usual one. */
#include "dataset.h"
#include "fuzz_util.h"
#include "tfexample.h"

static void parse_at(const uint8_t *data, size_t size, int T, int P) {
  data_batch b = {0};
  if (data_batch_alloc(&b, 1, T, P) == STATUS_OK)
    (void)tfx_parse_row(data, size, "example", 0, &b, 0);
  data_batch_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  int T = 0, P = 0;
  if (tfx_peek_shape(data, size, "example", 0, &T, &P) == STATUS_OK && T > 0 && T <= 4096 &&
      P >= 0 && P <= 4096)
    parse_at(data, size, T, P);
  parse_at(data, size, 16, 4);
  return 0;
}
