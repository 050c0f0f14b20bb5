/* fuzz_gpt2_files: a GPT-2 BPE tokenizer folder, `vocab.json` NUL
 * `merges.txt`, loaded and used to encode and decode fixed texts. */
#include "fuzz_split.h"
#include "fuzz_tok.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const char *const names[] = {"vocab.json", "merges.txt"};
  fuzz_write_parts(data, size, names, 2);
  fuzz_tok_load_and_use(fuzz_dir());
  return 0;
}
