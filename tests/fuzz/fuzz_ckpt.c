/* fuzz_ckpt: a checkpoint directory, `meta.json` NUL `model.safetensors`
 * NUL `optimizer.safetensors`, found, verified and loaded as resume and
 * export do: ckpt_find_latest, ckpt_resolve, ckpt_read_meta and its config
 * values, ckpt_load with an optimizer's state. Input byte 0: bit 0 set, the
 * checksums in meta.json are replaced by the files' own, so mutations reach
 * the loading behind them.
 *
 * MLMPI_FUZZ_WRITE_SEED=DIR writes a seed instead: a checkpoint of this
 * target's table by the trainer's own ckpt_save, as one input file. */
#include <cjson/cJSON.h>

#include "ckpt.h"
#include "fuzz_split.h"

static param_table table;
static float *params, *m, *v;

static void write_seed(const char *out) {
  char dir[600], step[700];
  snprintf(dir, sizeof dir, "%s/ckpt", fuzz_dir());
  for (size_t i = 0; i < table.total; i++) params[i] = 0.25f * (float)i, m[i] = 0.5f, v[i] = 2.f;
  ckpt_info info = {.step = 3, .world_size = 2, .data_fingerprint = 0x1234abcd, .seed = 42};
  ckpt_optim o = {.n = 2, .names = {"m", "v"}, .bufs = {m, v}, .taken = 3, .skipped = 0};
  if (ckpt_save(dir, &info, &table, params, &o, "model.preset = bert-tiny\ntrain.steps = 9\n", 2)) {
    fprintf(stderr, "fuzz_ckpt: %s\n", status_message());
    exit(1);
  }
  FILE *f = fopen(out, "wb");
  fputc(1, f);
  static const char *const names[] = {"meta.json", "model.safetensors", "optimizer.safetensors"};
  for (int i = 0; i < 3; i++) {
    snprintf(step, sizeof step, "%s/step-3/%s", dir, names[i]);
    FILE *g = fopen(step, "rb");
    int c;
    while (g && (c = fgetc(g)) != EOF) fputc(c, f);
    if (g) fclose(g);
    if (i < 2) fputc(0, f);
  }
  fclose(f);
  exit(0);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  param_table_init(&table);
  int64_t s2[2] = {4, 3}, s1[1] = {3};
  param_table_add(&table, "w", 2, s2, true, true);
  param_table_add(&table, "b", 1, s1, false, false);
  params = calloc(table.total, sizeof(float));
  m = calloc(table.total, sizeof(float));
  v = calloc(table.total, sizeof(float));
  const char *seed = getenv("MLMPI_FUZZ_WRITE_SEED");
  if (seed) write_seed(seed);
  return 0;
}

/* Rewrites meta.json's "crc32c" with the checksums of the files as written. */
static void fix_crcs(const char *step) {
  char p[700];
  uint32_t crc[2];
  static const char *const files[2] = {"model.safetensors", "optimizer.safetensors"};
  for (int i = 0; i < 2; i++) {
    snprintf(p, sizeof p, "%s/%s", step, files[i]);
    FILE *f = fopen(p, "rb");
    uint8_t buf[4096];
    size_t n;
    crc[i] = 0;
    while (f && (n = fread(buf, 1, sizeof buf, f)) > 0) crc[i] = crc32c_update(crc[i], buf, n);
    if (f) fclose(f);
  }
  cJSON *meta;
  if (ckpt_read_meta(step, &meta) != STATUS_OK) return;
  cJSON *cs = cJSON_CreateObject();
  for (int i = 0; i < 2; i++) {
    char hex[16];
    snprintf(hex, sizeof hex, "%08x", crc[i]);
    cJSON_AddStringToObject(cs, files[i], hex);
  }
  cJSON_DeleteItemFromObject(meta, "crc32c");
  cJSON_AddItemToObject(meta, "crc32c", cs);
  char *text = cJSON_PrintUnformatted(meta);
  snprintf(p, sizeof p, "%s/meta.json", step);
  if (text) fuzz_write("ckpt/step-3/meta.json", text, strlen(text));
  free(text);
  cJSON_Delete(meta);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  char dir[600], step[700], path[800];
  snprintf(dir, sizeof dir, "%s/ckpt", fuzz_dir());
  snprintf(step, sizeof step, "%s/step-3", dir);
  mkdir(dir, 0700);
  mkdir(step, 0700);
  static const char *const names[] = {"ckpt/step-3/meta.json", "ckpt/step-3/model.safetensors",
                                      "ckpt/step-3/optimizer.safetensors"};
  fuzz_write_parts(data + 1, size - 1, names, 3);
  if (data[0] & 1) fix_crcs(step);
  (void)ckpt_find_latest(dir, path, sizeof path);
  (void)ckpt_resolve(dir, path, sizeof path);
  cJSON *meta;
  if (ckpt_read_meta(step, &meta) == STATUS_OK) {
    char val[256];
    (void)ckpt_config_value(meta, "model.preset", val, sizeof val);
    (void)ckpt_config_value(meta, "train.steps", val, sizeof val);
    cJSON_Delete(meta);
  }
  ckpt_info info;
  ckpt_optim o = {.n = 2, .names = {"m", "v"}, .bufs = {m, v}};
  (void)ckpt_load(step, &info, &table, params, &o);
  return 0;
}
