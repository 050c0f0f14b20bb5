/* fuzz_train_config: an INI run config (`mlmpi-train --config`) loaded over
 * the defaults, checked, and dumped back. */
#include "fuzz_util.h"
#include "train_config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *path = fuzz_write("run.ini", data, size);
  train_config c;
  train_config_default(&c);
  if (train_config_load(&c, path) == STATUS_OK && train_config_check(&c) == STATUS_OK) {
    char *d = train_config_dump(&c);
    free(d);
  }
  return 0;
}
