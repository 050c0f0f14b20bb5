/* tok_wordpiece.c: placeholder until the backend lands (being written now). */
#include "tokenizer.h"

status_t tok_wordpiece_load(const char *vocab_txt, void **impl, const tok_ops **ops) {
  (void)impl;
  (void)ops;
  return status_set(STATUS_ARG, "tokenizer %s: this tokenizer kind is not built yet", vocab_txt);
}
