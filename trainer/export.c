/* export.c: `mlmpi-train export --checkpoint DIR --out DIR`: a checkpoint's
 * weights in the Hugging Face layout: model.safetensors (Hugging Face names,
 * the tied decoder not stored twice) and config.json, loadable by
 * transformers' BertForPreTraining / BertForMaskedLM. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "electra.h"
#include "train_config.h"

static const char export_usage[] =
    "usage: mlmpi-train export --checkpoint DIR --out DIR\n"
    "  Writes the checkpoint's model as a Hugging Face directory: model.safetensors and\n"
    "  config.json (BertForPreTraining, or BertForMaskedLM for models without NSP). An ELECTRA\n"
    "  model gives two: OUT/discriminator (ElectraForPreTraining) and OUT/generator\n"
    "  (ElectraForMaskedLM), each with its own copy of the shared embeddings.\n";

/* The model.config and model.preset of the checkpoint's effective config. */
static status_t model_keys_of(const char *ckpt, train_config *tc) {
  char path[4096];
  snprintf(path, sizeof path, "%s/meta.json", ckpt);
  FILE *f = fopen(path, "rb");
  if (!f) return status_set(STATUS_IO, "cannot open %s: %s", path, strerror(errno));
  char *text = NULL;
  size_t len = 0;
  FILE *m = open_memstream(&text, &len);
  char buf[4096];
  for (size_t n; m && (n = fread(buf, 1, sizeof buf, f)) > 0;) fwrite(buf, 1, n, m);
  fclose(f);
  if (m) fclose(m);
  cJSON *j = text ? cJSON_Parse(text) : NULL;
  free(text);
  const cJSON *cfg = cJSON_GetObjectItem(j, "config");
  if (!cJSON_IsString(cfg)) {
    cJSON_Delete(j);
    return status_set(STATUS_FORMAT, "%s: no effective config", path);
  }
  train_config_default(tc);
  status_t st = STATUS_OK;
  /* The dump is "section.key = value" lines. */
  for (char *line = strtok(cfg->valuestring, "\n"); line && st == STATUS_OK;
       line = strtok(NULL, "\n")) {
    char *eq = strstr(line, " = ");
    if (!eq) continue;
    *eq = 0;
    if (!strcmp(line, "model.config") || !strcmp(line, "model.preset"))
      st = train_config_set(tc, line, eq + 3);
  }
  cJSON_Delete(j);
  return st;
}

/* A BERT checkpoint's model config: its config.json, or a preset whose
 * vocabulary and NSP head are read off the weights. */
static status_t bert_config_of(const train_config *tc, const char *ckpt, const st_file *w,
                               bert_config *out) {
  status_t st;
  if (tc->model_config[0]) return bert_config_load(tc->model_config, out);
  if ((st = bert_preset(tc->model_preset, out))) return st;
  const st_tensor *we = st_find(w, "bert.embeddings.word_embeddings.weight");
  if (!we || we->ndim != 2) return status_set(STATUS_FORMAT, "%s: no word embeddings", ckpt);
  out->vocab_size = (int)we->shape[0];
  out->nsp = st_find(w, "bert.pooler.dense.weight") != NULL;
  return STATUS_OK;
}

static status_t write_json(const char *path, cJSON *j) {
  char *text = cJSON_Print(j);
  cJSON_Delete(j);
  FILE *f = fopen(path, "w");
  status_t st = STATUS_OK;
  if (!f || !text || fputs(text, f) < 0 || fputc('\n', f) < 0)
    st = status_set(STATUS_IO, "cannot write %s", path);
  if (f && fclose(f) != 0 && st == STATUS_OK) st = status_set(STATUS_IO, "cannot write %s", path);
  free(text);
  return st;
}

/* A Hugging Face config.json: BertConfig's fields, plus embedding_size when
 * it is > 0 (ElectraConfig). */
static status_t write_hf_config(const char *path, const char *arch, const char *model_type,
                                const bert_config *c, int embedding_size) {
  cJSON *j = cJSON_CreateObject();
  cJSON *archs = cJSON_AddArrayToObject(j, "architectures");
  cJSON_AddItemToArray(archs, cJSON_CreateString(arch));
  cJSON_AddStringToObject(j, "model_type", model_type);
  cJSON_AddNumberToObject(j, "vocab_size", c->vocab_size);
  if (embedding_size > 0) cJSON_AddNumberToObject(j, "embedding_size", embedding_size);
  cJSON_AddNumberToObject(j, "hidden_size", c->hidden_size);
  cJSON_AddNumberToObject(j, "num_hidden_layers", c->num_hidden_layers);
  cJSON_AddNumberToObject(j, "num_attention_heads", c->num_attention_heads);
  cJSON_AddNumberToObject(j, "intermediate_size", c->intermediate_size);
  static const char *acts[] = {"gelu", "gelu_new", "relu"};
  cJSON_AddStringToObject(j, "hidden_act", acts[c->hidden_act]);
  cJSON_AddNumberToObject(j, "hidden_dropout_prob", c->hidden_dropout_prob);
  cJSON_AddNumberToObject(j, "attention_probs_dropout_prob", c->attention_probs_dropout_prob);
  cJSON_AddNumberToObject(j, "max_position_embeddings", c->max_position_embeddings);
  cJSON_AddNumberToObject(j, "type_vocab_size", c->type_vocab_size);
  cJSON_AddNumberToObject(j, "layer_norm_eps", c->layer_norm_eps);
  cJSON_AddNumberToObject(j, "initializer_range", c->initializer_range);
  cJSON_AddStringToObject(j, "position_embedding_type", "absolute");
  cJSON_AddStringToObject(j, "torch_dtype", "float32");
  return write_json(path, j);
}

static status_t write_config_json(const char *path, const bert_config *c) {
  return write_hf_config(path, c->nsp ? "BertForPreTraining" : "BertForMaskedLM", "bert", c, 0);
}

/* ---- ELECTRA ------------------------------------------------------------------ */
static status_t electra_config_json(const char *path, const electra_config *c, bool generator) {
  const electra_net_config *n = generator ? &c->gen : &c->disc;
  bert_config b = {.vocab_size = c->vocab_size,
                   .hidden_size = n->hidden_size,
                   .num_hidden_layers = n->num_hidden_layers,
                   .num_attention_heads = n->num_attention_heads,
                   .intermediate_size = n->intermediate_size,
                   .max_position_embeddings = c->max_position_embeddings,
                   .type_vocab_size = c->type_vocab_size,
                   .hidden_act = c->hidden_act,
                   .hidden_dropout_prob = c->hidden_dropout_prob,
                   .attention_probs_dropout_prob = c->attention_probs_dropout_prob,
                   .layer_norm_eps = c->layer_norm_eps,
                   .initializer_range = c->initializer_range};
  return write_hf_config(path, generator ? "ElectraForMaskedLM" : "ElectraForPreTraining",
                         "electra", &b, c->embedding_size);
}

/* One network's directory: the tensors under `prefix` with it removed, and
 * for the generator the shared embeddings (stored once, under the
 * discriminator's names) copied in as its own. */
static status_t electra_export_net(const param_table *t, const float *w, const electra_config *c,
                                   const char *dir, bool generator) {
  const char *prefix = generator ? "generator." : "discriminator.";
  const char *shared = "discriminator.electra.embeddings.";
  size_t np = strlen(prefix), ns = strlen(shared);
  if (mkdir(dir, 0755) != 0 && errno != EEXIST)
    return status_set(STATUS_IO, "cannot create %s: %s", dir, strerror(errno));
  st_writer *sw = st_writer_init();
  if (!sw) return STATUS_NOMEM;
  status_t st = STATUS_OK;
  for (int i = 0; i < t->n && st == STATUS_OK; i++) {
    const param_info *p = &t->p[i];
    const char *name = NULL;
    if (!strncmp(p->name, prefix, np))
      name = p->name + np;
    else if (generator && !strncmp(p->name, shared, ns))
      name = p->name + strlen("discriminator.");
    if (name) st = st_writer_add(sw, name, DTYPE_F32, p->ndim, p->shape, w + p->offset);
  }
  char path[4096 + 64];
  snprintf(path, sizeof path, "%s/model.safetensors", dir);
  if (st == STATUS_OK) st = st_writer_meta(sw, "format", "pt");
  if (st == STATUS_OK) st = st_writer_write(sw, path);
  st_writer_free(sw);
  snprintf(path, sizeof path, "%s/config.json", dir);
  if (st == STATUS_OK) st = electra_config_json(path, c, generator);
  return st;
}

static status_t electra_export(const train_config *tc, const char *ckpt, const st_file *w,
                               const char *wpath, const char *out) {
  electra_config cfg;
  status_t st;
  if (tc->model_config[0]) {
    st = electra_config_load(tc->model_config, &cfg);
  } else {
    st = electra_preset(tc->model_preset, &cfg);
    const st_tensor *we = st_find(w, "discriminator.electra.embeddings.word_embeddings.weight");
    if (st == STATUS_OK && (!we || we->ndim != 2))
      st = status_set(STATUS_FORMAT, "%s: no word embeddings", ckpt);
    if (st == STATUS_OK) cfg.vocab_size = (int)we->shape[0];
  }
  electra_model *m = NULL;
  if (st == STATUS_OK) st = electra_init(&m, &cfg, 1, 1, 1, 1);
  if (st == STATUS_OK)
    st = param_load_safetensors(electra_params(m), electra_param_buf(m), w, wpath, true);
  if (st == STATUS_OK && mkdir(out, 0755) != 0 && errno != EEXIST)
    st = status_set(STATUS_IO, "cannot create %s: %s", out, strerror(errno));
  char dir[4096 + 32];
  for (int g = 0; g < 2 && st == STATUS_OK; g++) {
    snprintf(dir, sizeof dir, "%s/%s", out, g ? "generator" : "discriminator");
    st = electra_export_net(electra_params(m), electra_param_buf(m), &cfg, dir, g == 1);
  }
  electra_free(m);
  if (st == STATUS_OK) printf("exported %s to %s/discriminator and %s/generator\n", ckpt, out, out);
  return st;
}

int trainer_export_main(int argc, char **argv) {
  static const struct option opts[] = {{"checkpoint", required_argument, 0, 'c'},
                                       {"out", required_argument, 0, 'o'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  const char *ckpt = NULL, *out = NULL;
  opterr = 0;
  optind = 1;
  for (int c; (c = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
    if (c == 'c')
      ckpt = optarg;
    else if (c == 'o')
      out = optarg;
    else if (c == 'h')
      return fputs(export_usage, stdout), 0;
    else
      return fprintf(stderr, "mlmpi-train export: unknown or incomplete option '%s'\n",
                     argv[optind - 1]),
             2;
  }
  if (!ckpt || !out)
    return fprintf(stderr, "mlmpi-train export: --checkpoint and --out are required\n"), 2;
  char path[4096];
  snprintf(path, sizeof path, "%s/model.safetensors", ckpt);
  st_file *w = NULL;
  bert_config cfg;
  bert_model *m = NULL;
  train_config tc;
  status_t st = st_read(path, &w);
  if (st == STATUS_OK) st = model_keys_of(ckpt, &tc);
  bool electra = st == STATUS_OK && (tc.model_config[0] ? electra_config_is_electra(tc.model_config)
                                                        : !strncmp(tc.model_preset, "electra", 7));
  if (electra) {
    st = electra_export(&tc, ckpt, w, path, out);
    if (st) fprintf(stderr, "mlmpi-train export: %s\n", status_message());
    st_free(w);
    return st ? 1 : 0;
  }
  if (st == STATUS_OK) st = bert_config_of(&tc, ckpt, w, &cfg);
  if (st == STATUS_OK) st = bert_init(&m, &cfg, 1, 1, 1, 1);
  /* Loading through the model's table checks every name and shape. */
  if (st == STATUS_OK)
    st = param_load_safetensors(bert_params(m), bert_param_buf(m), w, path, true);
  if (st == STATUS_OK && mkdir(out, 0755) != 0 && errno != EEXIST)
    st = status_set(STATUS_IO, "cannot create %s: %s", out, strerror(errno));
  if (st == STATUS_OK) {
    st_writer *sw = st_writer_init();
    snprintf(path, sizeof path, "%s/model.safetensors", out);
    st = sw ? param_add_to_writer(bert_params(m), bert_param_buf(m), "", sw) : STATUS_NOMEM;
    if (st == STATUS_OK) st = st_writer_meta(sw, "format", "pt");
    if (st == STATUS_OK) st = st_writer_write(sw, path);
    st_writer_free(sw);
  }
  if (st == STATUS_OK) {
    snprintf(path, sizeof path, "%s/config.json", out);
    st = write_config_json(path, &cfg);
  }
  if (st)
    fprintf(stderr, "mlmpi-train export: %s\n", status_message());
  else
    printf("exported %s to %s (model.safetensors, config.json)\n", ckpt, out);
  bert_free(m);
  st_free(w);
  return st ? 1 : 0;
}
