/* bert_config.c: reading a Hugging Face BertConfig config.json with cJSON. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_json.h"
#include "trainer.h"

bert_config bert_config_default(void) {
  return (bert_config){
      .vocab_size = 30522,
      .hidden_size = 768,
      .num_hidden_layers = 12,
      .num_attention_heads = 12,
      .intermediate_size = 3072,
      .max_position_embeddings = 512,
      .type_vocab_size = 2,
      .hidden_act = ACT_GELU,
      .hidden_dropout_prob = 0.1f,
      .attention_probs_dropout_prob = 0.1f,
      .layer_norm_eps = 1e-12f,
      .initializer_range = 0.02f,
      .nsp = true,
  };
}

status_t bert_config_check(const bert_config *c) {
  const cfgj_size sizes[] = {{"vocab_size", c->vocab_size},
                             {"hidden_size", c->hidden_size},
                             {"num_hidden_layers", c->num_hidden_layers},
                             {"num_attention_heads", c->num_attention_heads},
                             {"intermediate_size", c->intermediate_size},
                             {"max_position_embeddings", c->max_position_embeddings},
                             {"type_vocab_size", c->type_vocab_size}};
  status_t st;
  if ((st = cfgj_check_sizes(sizes, sizeof sizes / sizeof sizes[0], "")) ||
      (st = cfgj_check_heads(c->hidden_size, c->num_attention_heads, "")))
    return st;
  return cfgj_check_common(c->hidden_dropout_prob, c->attention_probs_dropout_prob,
                           c->layer_norm_eps, c->initializer_range);
}

/* NSP follows the architecture: BertForPreTraining has it, BertForMaskedLM
 * does not; "use_nsp" (an mlmpi key) overrides. */
static status_t parse_nsp(const cJSON *root, const char *path, bool *nsp) {
  const cJSON *arch = cJSON_GetObjectItemCaseSensitive(root, "architectures");
  if (cJSON_IsArray(arch)) {
    const cJSON *a;
    cJSON_ArrayForEach(a, arch) {
      if (!cJSON_IsString(a)) continue;
      if (!strcmp(a->valuestring, "BertForMaskedLM"))
        *nsp = false;
      else if (!strcmp(a->valuestring, "BertForPreTraining"))
        *nsp = true;
    }
  }
  const cJSON *u = cJSON_GetObjectItemCaseSensitive(root, "use_nsp");
  if (u && !cJSON_IsBool(u))
    return status_set(STATUS_CONFIG, "%s: 'use_nsp' must be true or false", path);
  if (u) *nsp = cJSON_IsTrue(u);
  return cfgj_check_position_type(root, path);
}

status_t bert_config_load(const char *path, bert_config *cfg) {
  cJSON *root;
  status_t st = cfgj_read(path, &root);
  if (st) return st;
  bert_config c = bert_config_default();
  if ((st = cfgj_int(root, path, "", "vocab_size", &c.vocab_size)) ||
      (st = cfgj_int(root, path, "", "hidden_size", &c.hidden_size)) ||
      (st = cfgj_int(root, path, "", "num_hidden_layers", &c.num_hidden_layers)) ||
      (st = cfgj_int(root, path, "", "num_attention_heads", &c.num_attention_heads)) ||
      (st = cfgj_int(root, path, "", "intermediate_size", &c.intermediate_size)) ||
      (st = cfgj_int(root, path, "", "max_position_embeddings", &c.max_position_embeddings)) ||
      (st = cfgj_int(root, path, "", "type_vocab_size", &c.type_vocab_size)) ||
      (st = cfgj_float(root, path, "hidden_dropout_prob", &c.hidden_dropout_prob)) ||
      (st = cfgj_float(root, path, "attention_probs_dropout_prob",
                       &c.attention_probs_dropout_prob)) ||
      (st = cfgj_float(root, path, "layer_norm_eps", &c.layer_norm_eps)) ||
      (st = cfgj_float(root, path, "initializer_range", &c.initializer_range)) ||
      (st = cfgj_act(root, path, "", &c.hidden_act)) || (st = parse_nsp(root, path, &c.nsp))) {
    cJSON_Delete(root);
    return st;
  }
  cJSON_Delete(root);
  if ((st = bert_config_check(&c)) != STATUS_OK) {
    status_prefix("%s", path);
    return st;
  }
  *cfg = c;
  return STATUS_OK;
}

status_t bert_preset(const char *name, bert_config *out) {
  static const struct {
    const char *name;
    int L, H, A, I;
  } presets[] = {{"bert-tiny", 2, 128, 2, 512},    {"bert-mini", 4, 256, 4, 1024},
                 {"bert-small", 4, 512, 8, 2048},  {"bert-medium", 8, 512, 8, 2048},
                 {"bert-base", 12, 768, 12, 3072}, {"bert-large", 24, 1024, 16, 4096}};
  for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++)
    if (!strcmp(name, presets[i].name)) {
      bert_config c = bert_config_default();
      c.num_hidden_layers = presets[i].L;
      c.hidden_size = presets[i].H;
      c.num_attention_heads = presets[i].A;
      c.intermediate_size = presets[i].I;
      *out = c;
      return STATUS_OK;
    }
  return status_set(STATUS_CONFIG, "model.preset: unknown preset '%s' (%s)", name, BERT_PRESETS);
}
