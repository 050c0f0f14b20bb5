/* config_json.h: typed reads of a Hugging Face config.json (cJSON) and the
 * checks the BERT and ELECTRA configs share. A key that is absent or null
 * leaves *out as it was; a wrong type is STATUS_CONFIG naming path and
 * who+key ("generator." for nested objects). Private to trainer/. */
#ifndef MLMPI_CONFIG_JSON_H
#define MLMPI_CONFIG_JSON_H

#include <cjson/cJSON.h>

#include "trainer.h"

/* Reads path as one JSON object (at most 64 MB); *out is the caller's. */
status_t cfgj_read(const char *path, cJSON **out);
status_t cfgj_int(const cJSON *o, const char *path, const char *who, const char *key, int *out);
status_t cfgj_float(const cJSON *o, const char *path, const char *key, float *out);
/* "hidden_act": gelu, gelu_new / gelu_pytorch_tanh, relu. */
status_t cfgj_act(const cJSON *o, const char *path, const char *who, act_kind *out);
/* STATUS_CONFIG unless "position_embedding_type" is absent or "absolute". */
status_t cfgj_check_position_type(const cJSON *root, const char *path);

/* A size to check, by its config.json name. */
typedef struct {
  const char *name;
  int v;
} cfgj_size;
/* STATUS_CONFIG "model config: <who><name> = v is out of range" for the
 * first size outside [1, 2^24]. */
status_t cfgj_check_sizes(const cfgj_size *sizes, size_t n, const char *who);
/* STATUS_CONFIG unless hidden is a multiple of heads. */
status_t cfgj_check_heads(int hidden, int heads, const char *who);
/* STATUS_CONFIG unless both dropout probabilities are in [0,1), eps > 0 and
 * the initializer range >= 0. */
status_t cfgj_check_common(float hidden_dropout, float attn_dropout, float eps, float init_range);

#endif
