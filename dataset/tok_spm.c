/* tok_spm.c: placeholder until the backend lands (being written now). */
#include "tokenizer.h"

status_t tok_spm_load(const char *path, void **impl, const tok_ops **ops) {
  (void)impl;
  (void)ops;
  return status_set(STATUS_ARG, "tokenizer %s: this tokenizer kind is not built yet", path);
}
