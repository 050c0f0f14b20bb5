/* fuzz_hf_config: a Hugging Face config.json read as every model reads it:
 * the model table's lookup (model_type, architectures), BERT's and
 * ELECTRA's loaders and checks. */
#include "electra.h"
#include "fuzz_util.h"
#include "model.h"
#include "trainer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *path = fuzz_write("config.json", data, size);
  const model_ops *ops;
  (void)model_lookup(path, NULL, &ops);
  (void)model_lookup_task(path, NULL, "classify", &ops);
  bert_config b;
  if (bert_config_load(path, &b) == STATUS_OK) (void)bert_config_check(&b);
  electra_config e;
  (void)electra_config_load(path, &e);
  return 0;
}
