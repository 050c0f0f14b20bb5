/* fuzz_safetensors: a safetensors file (weights, checkpoints, `step`
 * batches) read and validated, every tensor's bytes read, the metadata
 * parsed, and the file loaded into a small parameter table the way
 * checkpoints and weights are (strict and not). */
#include <cjson/cJSON.h>

#include "fuzz_util.h"

static param_table table;
static float *buf;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  param_table_init(&table);
  int64_t s2[2] = {4, 3}, s1[1] = {3};
  param_table_add(&table, "w", 2, s2, true, true);
  param_table_add(&table, "b", 1, s1, false, false);
  buf = calloc(table.total, sizeof *buf);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *path = fuzz_write("f.safetensors", data, size);
  st_file *f = NULL;
  if (st_read(path, &f) != STATUS_OK) return 0;
  uint32_t sum = 0;
  for (int i = 0; i < f->n; i++) {
    const st_tensor *t = &f->tensors[i];
    if (t->nbytes != t->numel * dtype_size(t->dtype)) abort(); /* validated, so never */
    for (size_t j = 0; j < t->nbytes; j++) sum += ((const uint8_t *)t->data)[j];
    if (st_find(f, t->name) == NULL) abort();
  }
  if (f->metadata_json) cJSON_Delete(cJSON_Parse(f->metadata_json));
  int64_t shape[2] = {4, 3};
  const st_tensor *t;
  (void)st_expect(f, path, "w", DTYPE_F32, 2, shape, &t);
  (void)param_load_safetensors(&table, buf, f, path, true);
  (void)param_load_safetensors(&table, buf, f, path, false);
  st_free(f);
  return sum == 1;
}
