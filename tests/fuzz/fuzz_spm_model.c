/* fuzz_spm_model: a SentencePiece `.model` file loaded, then used to encode
 * and decode a fixed set of texts (invalid UTF-8 among them). */
#include "fuzz_tok.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_tok_load_and_use(fuzz_write("m.model", data, size));
  return 0;
}
