/* electra_config.c: the ELECTRA config.json (a Hugging Face ElectraConfig
 * for the discriminator with a nested "generator" object and the two loss
 * weights) and the electra-small / electra-base presets. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_json.h"
#include "electra.h"

/* Sizes from the ELECTRA paper (Clark et al. 2020, Table 6) and the
 * published Hugging Face configs: google/electra-small-discriminator (E 128,
 * H 256, 12 layers, 4 heads, I 1024) with the paper's quarter-size generator
 * (H 64, 1 head, I 256; the released small generator checkpoint is wider),
 * and google/electra-base-discriminator (E = H = 768, 12 x 12, I 3072) with
 * google/electra-base-generator (H 256, 4 heads, I 1024: a third). */
electra_config electra_config_default(void) {
  return (electra_config){
      .vocab_size = 30522,
      .embedding_size = 128,
      .max_position_embeddings = 512,
      .type_vocab_size = 2,
      .hidden_act = ACT_GELU,
      .hidden_dropout_prob = 0.1f,
      .attention_probs_dropout_prob = 0.1f,
      .layer_norm_eps = 1e-12f,
      .initializer_range = 0.02f,
      .disc = {256, 12, 4, 1024},
      .gen = {64, 12, 1, 256},
      .gen_weight = 1.0f,
      .disc_weight = 50.0f,
      .sample_temperature = 1.0f,
  };
}

status_t electra_preset(const char *name, electra_config *out) {
  electra_config c = electra_config_default();
  if (!strcmp(name, "electra-small")) {
    /* mlmpi's recipe for short runs (docs/electra.md): samples at
     * temperature 2 keep the discriminator ahead of a quickly improving
     * generator (held-out AUC 0.88 against 0.62 at step 300 of the demo). */
    c.sample_temperature = 2.0f;
    *out = c;
    return STATUS_OK;
  }
  if (!strcmp(name, "electra-base")) {
    c.embedding_size = 768;
    c.disc = (electra_net_config){768, 12, 12, 3072};
    c.gen = (electra_net_config){256, 12, 4, 1024};
    *out = c;
    return STATUS_OK;
  }
  return status_set(STATUS_CONFIG,
                    "model.preset: unknown ELECTRA preset '%s' (electra-small, "
                    "electra-base)",
                    name);
}

static status_t check_net(const electra_net_config *n, const char *who) {
  const cfgj_size sizes[] = {{"hidden_size", n->hidden_size},
                             {"num_hidden_layers", n->num_hidden_layers},
                             {"num_attention_heads", n->num_attention_heads},
                             {"intermediate_size", n->intermediate_size}};
  status_t st = cfgj_check_sizes(sizes, sizeof sizes / sizeof sizes[0], who);
  return st ? st : cfgj_check_heads(n->hidden_size, n->num_attention_heads, who);
}

status_t electra_config_check(const electra_config *c) {
  const cfgj_size sizes[] = {{"vocab_size", c->vocab_size},
                             {"embedding_size", c->embedding_size},
                             {"max_position_embeddings", c->max_position_embeddings},
                             {"type_vocab_size", c->type_vocab_size}};
  status_t st;
  if ((st = cfgj_check_sizes(sizes, sizeof sizes / sizeof sizes[0], "")) ||
      (st = check_net(&c->disc, "")) || (st = check_net(&c->gen, "generator.")))
    return st;
  /* The sampling stream numbers element position·V + token in 32 bits. */
  if ((uint64_t)c->max_position_embeddings * (uint64_t)c->vocab_size > UINT32_MAX)
    return status_set(STATUS_CONFIG,
                      "model config: max_position_embeddings x vocab_size must be below 2^32");
  if ((st = cfgj_check_common(c->hidden_dropout_prob, c->attention_probs_dropout_prob,
                              c->layer_norm_eps, c->initializer_range)))
    return st;
  if (!(c->gen_weight >= 0 && isfinite(c->gen_weight)))
    return status_set(STATUS_CONFIG, "model config: gen_weight must be a finite number >= 0");
  if (!(c->disc_weight >= 0 && isfinite(c->disc_weight)))
    return status_set(STATUS_CONFIG, "model config: disc_weight must be a finite number >= 0");
  if (!(c->sample_temperature > 0 && isfinite(c->sample_temperature)))
    return status_set(STATUS_CONFIG,
                      "model config: sample_temperature must be a finite number > 0");
  return STATUS_OK;
}

bool electra_config_is_electra(const char *path) {
  cJSON *root;
  if (cfgj_read(path, &root) != STATUS_OK) return false;
  const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "model_type");
  bool yes = cJSON_IsString(t) && !strcmp(t->valuestring, "electra");
  cJSON_Delete(root);
  return yes;
}

static status_t get_net(const cJSON *o, const char *path, const char *who, electra_net_config *n) {
  status_t st;
  if ((st = cfgj_int(o, path, who, "hidden_size", &n->hidden_size)) ||
      (st = cfgj_int(o, path, who, "num_hidden_layers", &n->num_hidden_layers)) ||
      (st = cfgj_int(o, path, who, "num_attention_heads", &n->num_attention_heads)) ||
      (st = cfgj_int(o, path, who, "intermediate_size", &n->intermediate_size)))
    return st;
  return STATUS_OK;
}

/* The generator object may be a whole ElectraConfig; what the two networks
 * share must then agree with the top level. */
static status_t get_generator(const cJSON *root, const char *path, electra_config *c) {
  const cJSON *g = cJSON_GetObjectItemCaseSensitive(root, "generator");
  c->gen = (electra_net_config){
      .hidden_size = c->disc.hidden_size / 4,
      .num_hidden_layers = c->disc.num_hidden_layers,
      .num_attention_heads = c->disc.num_attention_heads >= 4 ? c->disc.num_attention_heads / 4 : 1,
      .intermediate_size = c->disc.intermediate_size / 4,
  };
  if (!g || cJSON_IsNull(g)) return STATUS_OK;
  if (!cJSON_IsObject(g))
    return status_set(STATUS_CONFIG, "%s: 'generator' must be an object", path);
  status_t st = get_net(g, path, "generator.", &c->gen);
  if (st) return st;
  const struct {
    const char *key;
    int v;
  } shared[] = {{"vocab_size", c->vocab_size},
                {"embedding_size", c->embedding_size},
                {"max_position_embeddings", c->max_position_embeddings},
                {"type_vocab_size", c->type_vocab_size}};
  for (size_t i = 0; i < sizeof shared / sizeof shared[0]; i++) {
    int v = shared[i].v;
    if ((st = cfgj_int(g, path, "generator.", shared[i].key, &v))) return st;
    if (v != shared[i].v)
      return status_set(STATUS_CONFIG,
                        "%s: 'generator.%s' = %d differs from the discriminator's %d (the "
                        "embeddings are shared)",
                        path, shared[i].key, v, shared[i].v);
  }
  act_kind a = c->hidden_act;
  if ((st = cfgj_act(g, path, "generator.", &a))) return st;
  if (a != c->hidden_act)
    return status_set(STATUS_CONFIG,
                      "%s: 'generator.hidden_act' differs from the discriminator's (one "
                      "activation is shared)",
                      path);
  return STATUS_OK;
}

static status_t parse(const cJSON *root, const char *path, electra_config *c) {
  status_t st;
  if ((st = cfgj_int(root, path, "", "vocab_size", &c->vocab_size)) ||
      (st = cfgj_int(root, path, "", "embedding_size", &c->embedding_size)) ||
      (st = cfgj_int(root, path, "", "max_position_embeddings", &c->max_position_embeddings)) ||
      (st = cfgj_int(root, path, "", "type_vocab_size", &c->type_vocab_size)) ||
      (st = get_net(root, path, "", &c->disc)) ||
      (st = cfgj_float(root, path, "hidden_dropout_prob", &c->hidden_dropout_prob)) ||
      (st = cfgj_float(root, path, "attention_probs_dropout_prob",
                       &c->attention_probs_dropout_prob)) ||
      (st = cfgj_float(root, path, "layer_norm_eps", &c->layer_norm_eps)) ||
      (st = cfgj_float(root, path, "initializer_range", &c->initializer_range)) ||
      (st = cfgj_float(root, path, "gen_weight", &c->gen_weight)) ||
      (st = cfgj_float(root, path, "disc_weight", &c->disc_weight)) ||
      (st = cfgj_float(root, path, "sample_temperature", &c->sample_temperature)) ||
      (st = cfgj_act(root, path, "", &c->hidden_act)) || (st = get_generator(root, path, c)))
    return st;
  return cfgj_check_position_type(root, path);
}

status_t electra_config_load(const char *path, electra_config *cfg) {
  cJSON *root;
  status_t st = cfgj_read(path, &root);
  if (st) return st;
  const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "model_type");
  if (t && !(cJSON_IsString(t) && !strcmp(t->valuestring, "electra"))) {
    cJSON_Delete(root);
    return status_set(STATUS_CONFIG, "%s: 'model_type' is not \"electra\"", path);
  }
  electra_config c = electra_config_default();
  st = parse(root, path, &c);
  cJSON_Delete(root);
  if (st) return st;
  if ((st = electra_config_check(&c)) != STATUS_OK) {
    status_prefix("%s", path);
    return st;
  }
  *cfg = c;
  return STATUS_OK;
}
