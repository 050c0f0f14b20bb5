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

#include "train_config.h"

static const char export_usage[] =
    "usage: mlmpi-train export --checkpoint DIR --out DIR\n"
    "  Writes the checkpoint's model as a Hugging Face directory: model.safetensors and\n"
    "  config.json (BertForPreTraining, or BertForMaskedLM for models without NSP).\n";

/* The model's config from the checkpoint's effective config: a config.json
 * path, or a preset whose vocabulary and NSP head are read off the weights. */
static status_t model_config_of(const char *ckpt, const st_file *w, bert_config *out) {
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
  train_config tc;
  train_config_default(&tc);
  status_t st = STATUS_OK;
  /* The dump is "section.key = value" lines. */
  for (char *line = strtok(cfg->valuestring, "\n"); line && st == STATUS_OK; line = strtok(NULL, "\n")) {
    char *eq = strstr(line, " = ");
    if (!eq) continue;
    *eq = 0;
    if (!strcmp(line, "model.config") || !strcmp(line, "model.preset"))
      st = train_config_set(&tc, line, eq + 3);
  }
  cJSON_Delete(j);
  if (st) return st;
  if (tc.model_config[0]) return bert_config_load(tc.model_config, out);
  if ((st = bert_preset(tc.model_preset, out))) return st;
  const st_tensor *we = st_find(w, "bert.embeddings.word_embeddings.weight");
  if (!we || we->ndim != 2) return status_set(STATUS_FORMAT, "%s: no word embeddings", ckpt);
  out->vocab_size = (int)we->shape[0];
  out->nsp = st_find(w, "bert.pooler.dense.weight") != NULL;
  return STATUS_OK;
}

static status_t write_config_json(const char *path, const bert_config *c) {
  cJSON *j = cJSON_CreateObject();
  cJSON *arch = cJSON_AddArrayToObject(j, "architectures");
  cJSON_AddItemToArray(arch, cJSON_CreateString(c->nsp ? "BertForPreTraining" : "BertForMaskedLM"));
  cJSON_AddStringToObject(j, "model_type", "bert");
  cJSON_AddNumberToObject(j, "vocab_size", c->vocab_size);
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

int trainer_export_main(int argc, char **argv) {
  static const struct option opts[] = {{"checkpoint", required_argument, 0, 'c'},
                                       {"out", required_argument, 0, 'o'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  const char *ckpt = NULL, *out = NULL;
  opterr = 0;
  optind = 1;
  for (int c; (c = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
    if (c == 'c') ckpt = optarg;
    else if (c == 'o') out = optarg;
    else if (c == 'h') return fputs(export_usage, stdout), 0;
    else return fprintf(stderr, "mlmpi-train export: unknown or incomplete option '%s'\n", argv[optind - 1]), 2;
  }
  if (!ckpt || !out) return fprintf(stderr, "mlmpi-train export: --checkpoint and --out are required\n"), 2;
  char path[4096];
  snprintf(path, sizeof path, "%s/model.safetensors", ckpt);
  st_file *w = NULL;
  bert_config cfg;
  bert_model *m = NULL;
  status_t st = st_read(path, &w);
  if (st == STATUS_OK) st = model_config_of(ckpt, w, &cfg);
  if (st == STATUS_OK) st = bert_init(&m, &cfg, 1, 1, 1, 1);
  /* Loading through the model's table checks every name and shape. */
  if (st == STATUS_OK) st = param_load_safetensors(bert_params(m), bert_param_buf(m), w, path, true);
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
  if (st) fprintf(stderr, "mlmpi-train export: %s\n", status_message());
  else printf("exported %s to %s (model.safetensors, config.json)\n", ckpt, out);
  bert_free(m);
  st_free(w);
  return st ? 1 : 0;
}
