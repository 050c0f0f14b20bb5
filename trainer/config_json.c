/* config_json.c: reading Hugging Face config.json files with cJSON: the
 * file, and typed fields whose errors name the file and the key; and the
 * value checks both configs make. Shared by the BERT and ELECTRA config
 * readers. */
#include "config_json.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

status_t cfgj_read(const char *path, cJSON **out) {
  *out = NULL;
  char *text = NULL;
  size_t n = 0;
  status_t st = core_read_file("model config", path, 64u << 20, &text, &n);
  if (st) return st;
  cJSON *root = cJSON_ParseWithLength(text, n);
  free(text);
  if (!cJSON_IsObject(root)) {
    cJSON_Delete(root);
    return status_set(STATUS_FORMAT, "model config %s is not a JSON object", path);
  }
  *out = root;
  return STATUS_OK;
}

status_t cfgj_int(const cJSON *o, const char *path, const char *who, const char *key, int *out) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!v || cJSON_IsNull(v)) return STATUS_OK;
  if (!cJSON_IsNumber(v) || !(fabs(v->valuedouble) <= INT_MAX) ||
      v->valuedouble != floor(v->valuedouble))
    return status_set(STATUS_CONFIG, "%s: '%s%s' must be an integer", path, who, key);
  *out = (int)v->valuedouble;
  return STATUS_OK;
}

status_t cfgj_float(const cJSON *o, const char *path, const char *key, float *out) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!v || cJSON_IsNull(v)) return STATUS_OK;
  if (!cJSON_IsNumber(v)) return status_set(STATUS_CONFIG, "%s: '%s' must be a number", path, key);
  *out = (float)v->valuedouble;
  return STATUS_OK;
}

status_t cfgj_act(const cJSON *o, const char *path, const char *who, act_kind *out) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "hidden_act");
  if (!v) return STATUS_OK;
  if (!cJSON_IsString(v))
    return status_set(STATUS_CONFIG, "%s: '%shidden_act' must be a string", path, who);
  const char *s = v->valuestring;
  if (!strcmp(s, "gelu"))
    *out = ACT_GELU;
  else if (!strcmp(s, "gelu_new") || !strcmp(s, "gelu_pytorch_tanh"))
    *out = ACT_GELU_TANH;
  else if (!strcmp(s, "relu"))
    *out = ACT_RELU;
  else
    return status_set(
        STATUS_CONFIG,
        "%s: %shidden_act '%s' is not supported (gelu, gelu_new, gelu_pytorch_tanh, relu)", path,
        who, s);
  return STATUS_OK;
}

status_t cfgj_check_position_type(const cJSON *root, const char *path) {
  const cJSON *pe = cJSON_GetObjectItemCaseSensitive(root, "position_embedding_type");
  if (cJSON_IsString(pe) && strcmp(pe->valuestring, "absolute"))
    return status_set(STATUS_CONFIG, "%s: position_embedding_type '%s' is not supported (absolute)",
                      path, pe->valuestring);
  return STATUS_OK;
}

status_t cfgj_check_sizes(const cfgj_size *sizes, size_t n, const char *who) {
  for (size_t i = 0; i < n; i++)
    if (sizes[i].v < 1 || sizes[i].v > (1 << 24))
      return status_set(STATUS_CONFIG, "model config: %s%s = %d is out of range", who,
                        sizes[i].name, sizes[i].v);
  return STATUS_OK;
}

status_t cfgj_check_heads(int hidden, int heads, const char *who) {
  if (hidden % heads)
    return status_set(
        STATUS_CONFIG,
        "model config: %shidden_size %d is not a multiple of %snum_attention_heads %d", who, hidden,
        who, heads);
  return STATUS_OK;
}

status_t cfgj_check_common(float hidden_dropout, float attn_dropout, float eps, float init_range) {
  if (!(hidden_dropout >= 0 && hidden_dropout < 1))
    return status_set(STATUS_CONFIG, "model config: hidden_dropout_prob must be in [0,1)");
  if (!(attn_dropout >= 0 && attn_dropout < 1))
    return status_set(STATUS_CONFIG, "model config: attention_probs_dropout_prob must be in [0,1)");
  if (!(eps > 0)) return status_set(STATUS_CONFIG, "model config: layer_norm_eps must be > 0");
  if (!(init_range >= 0))
    return status_set(STATUS_CONFIG, "model config: initializer_range must be >= 0");
  return STATUS_OK;
}
