/* ckpt.h: checkpoints: <dir>/step-<N>/ holding model.safetensors (Hugging
 * Face names), optimizer.safetensors (moments and counters) and meta.json
 * (step, world size, seeds, data fingerprint, the effective config, CRC32C
 * of both files). Written under a temporary name, fsynced, renamed: the
 * newest complete checkpoint survives any crash. Private to trainer/. */
#ifndef MLMPI_CKPT_H
#define MLMPI_CKPT_H

#include <cjson/cJSON.h>

#include "optim.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  int64_t step; /* steps completed */
  int world_size;
  uint64_t data_fingerprint;
  int64_t seed;
} ckpt_info;

/* What ckpt_save_ex also writes, each when set (ckpt_load does not read
 * them back): the tokenizer the data were made with (meta.json "tokenizer":
 * {"path", "fingerprint"}), a fine-tuning task's description (JSON object
 * text, "task"), and a directory name other than step-N (e.g. "best"; not
 * counted by keep). */
typedef struct {
  const char *tokenizer;
  uint64_t tokenizer_fingerprint;
  const char *task_json;
  const char *name;
} ckpt_extra;

/* The optimizer's state in the whole layout (gathered when sharded), as the
 * optimizer lists it (optim_states): n buffers, stored in
 * optimizer.safetensors as "<names[i]>.<parameter>". */
typedef struct {
  int n;
  const char *names[OPTIM_MAX_STATES];
  float *bufs[OPTIM_MAX_STATES]; /* table layout */
  int64_t taken;
  uint64_t skipped;
} ckpt_optim;

/* Writes step-N into dir (created if missing) and keeps the newest `keep`.
 * When a write fails (a full disk, say) the partial directory is removed,
 * the older checkpoints are untouched, and the message names the checkpoint,
 * the file and the errno text. */
status_t ckpt_save(const char *dir, const ckpt_info *info, const param_table *t,
                   const float *params, const ckpt_optim *o, const char *config_text, int64_t keep);
status_t ckpt_save_ex(const char *dir, const ckpt_info *info, const ckpt_extra *extra,
                      const param_table *t, const float *params, const ckpt_optim *o,
                      const char *config_text, int64_t keep);
/* Finds the newest complete checkpoint in dir (checksums verified; damaged
 * ones are skipped with a warning). *path is set to "" when there is none. */
status_t ckpt_find_latest(const char *dir, char *path, size_t n);
/* The checkpoint a user names by DIR: DIR itself when it holds meta.json,
 * else DIR/best, else the newest complete DIR/step-N; STATUS_IO naming DIR
 * otherwise. */
status_t ckpt_resolve(const char *dir, char *path, size_t n);
/* meta.json of checkpoint path, parsed (*out the caller's: cJSON_Delete). */
status_t ckpt_read_meta(const char *path, cJSON **out);
/* The value of `key` ("model.preset") in the effective config of a parsed
 * meta.json, copied to out; false when absent. */
bool ckpt_config_value(const cJSON *meta, const char *key, char *out, size_t n);

/* Loads params (and, when o is not NULL, the optimizer state named by
 * o->names into o->bufs, and the counters) from a checkpoint directory. */
status_t ckpt_load(const char *path, ckpt_info *info, const param_table *t, float *params,
                   ckpt_optim *o);

#ifdef __cplusplus
}
#endif
#endif
