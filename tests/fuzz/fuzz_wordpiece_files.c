/* fuzz_wordpiece_files: a WordPiece `vocab.txt` NUL `tokenizer_config.json`
 * (absent when the input has no NUL) loaded and used to encode and decode
 * fixed texts. */
#include "fuzz_split.h"
#include "fuzz_tok.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const char *const names[] = {"vocab.txt", "tokenizer_config.json"};
  fuzz_write_parts(data, size, names, 2);
  char path[512];
  snprintf(path, sizeof path, "%s/vocab.txt", fuzz_dir());
  fuzz_tok_load_and_use(path);
  return 0;
}
