/* tok_gpt2.c: placeholder until the backend lands (being written now). */
#include "tokenizer.h"

status_t tok_gpt2_load(const char *dir, void **impl, const tok_ops **ops) {
  (void)impl;
  (void)ops;
  return status_set(STATUS_ARG, "tokenizer %s: this tokenizer kind is not built yet", dir);
}
