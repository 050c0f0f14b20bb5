/* config_json.h: typed reads of a Hugging Face config.json (cJSON). A key
 * that is absent or null leaves *out as it was; a wrong type is
 * STATUS_CONFIG naming path and who+key ("generator." for nested objects).
 * Private to trainer/. */
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

#endif
