/* export.c: `mlmpi-train export --checkpoint DIR --out DIR`: a checkpoint's
 * weights in the Hugging Face layout (model.safetensors with Hugging Face
 * names, the tied decoder not stored twice, and config.json), by the model
 * table of the model the checkpoint's config names; and the Hugging Face
 * writers the models' export entries share. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ckpt.h"
#include "model_impl.h"
#include "train_config.h"

static const char export_usage[] =
    "usage: mlmpi-train export --checkpoint DIR --out DIR\n"
    "  Writes the checkpoint's model as a Hugging Face directory: model.safetensors and\n"
    "  config.json (BertForPreTraining, or BertForMaskedLM for models without NSP). An ELECTRA\n"
    "  model gives two: OUT/discriminator (ElectraForPreTraining) and OUT/generator\n"
    "  (ElectraForMaskedLM), each with its own copy of the shared embeddings. A fine-tuned\n"
    "  checkpoint gives BertForSequenceClassification or ElectraForSequenceClassification with\n"
    "  id2label and label2id. DIR may be a checkpoint (step-N, best) or a ckpt.dir (its best/,\n"
    "  else its newest step-N).\n";

/* ---- Hugging Face writers ------------------------------------------------------ */
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

/* The shortest decimal that reads back as f (0.1 for 0.1f, not
 * 0.10000000149011612), as a double: cJSON prints doubles with 15
 * significant digits, so the file holds what Hugging Face's own config
 * files hold and still reads back as exactly f. */
static double shortest_decimal(float f) {
  char buf[32];
  for (int p = 1; p <= 9; p++) {
    snprintf(buf, sizeof buf, "%.*g", p, (double)f);
    if (strtof(buf, NULL) == f) return strtod(buf, NULL);
  }
  return f; /* NaN or infinity: cJSON writes null */
}

static void add_float(cJSON *j, const char *key, float f) {
  cJSON_AddNumberToObject(j, key, shortest_decimal(f));
}

status_t model_write_hf_config(const char *path, const char *arch, const char *model_type,
                               const bert_config *c, int embedding_size, const hf_head *head) {
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
  add_float(j, "hidden_dropout_prob", c->hidden_dropout_prob);
  add_float(j, "attention_probs_dropout_prob", c->attention_probs_dropout_prob);
  cJSON_AddNumberToObject(j, "max_position_embeddings", c->max_position_embeddings);
  cJSON_AddNumberToObject(j, "type_vocab_size", c->type_vocab_size);
  add_float(j, "layer_norm_eps", c->layer_norm_eps);
  add_float(j, "initializer_range", c->initializer_range);
  cJSON_AddStringToObject(j, "position_embedding_type", "absolute");
  cJSON_AddStringToObject(j, "torch_dtype", "float32");
  if (head) {
    cJSON *id2 = cJSON_AddObjectToObject(j, "id2label"),
          *l2 = cJSON_AddObjectToObject(j, "label2id");
    for (int i = 0; i < head->n; i++) {
      char id[16];
      snprintf(id, sizeof id, "%d", i);
      cJSON_AddStringToObject(id2, id, head->labels[i]);
      cJSON_AddNumberToObject(l2, head->labels[i], i);
    }
    add_float(j, "classifier_dropout", head->dropout);
  }
  return write_json(path, j);
}

status_t model_write_hf_weights(const param_table *t, const float *w, const char *dir,
                                const char *prefix, const char *also, const char *also_strip) {
  size_t np = strlen(prefix), na = also ? strlen(also) : 0, ns = also ? strlen(also_strip) : 0;
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
    else if (also && !strncmp(p->name, also, na))
      name = p->name + ns;
    if (name) st = st_writer_add(sw, name, DTYPE_F32, p->ndim, p->shape, w + p->offset);
  }
  char path[4096 + 64];
  snprintf(path, sizeof path, "%s/model.safetensors", dir);
  if (st == STATUS_OK) st = st_writer_meta(sw, "format", "pt");
  if (st == STATUS_OK) st = st_writer_write(sw, path);
  st_writer_free(sw);
  return st;
}

/* ---- A checkpoint's model --------------------------------------------------------- */
/* The label names of a fine-tuned checkpoint's task (meta.json "task"). */
static status_t task_labels_of(const cJSON *task, const char *path, const char ***names, int *n) {
  const cJSON *labels = cJSON_GetObjectItem(task, "labels");
  *n = cJSON_GetArraySize(labels);
  if (!cJSON_IsArray(labels) || *n < 1)
    return status_set(STATUS_FORMAT, "checkpoint %s: the task has no labels", path);
  *names = calloc((size_t)*n, sizeof **names);
  if (!*names) return status_set(STATUS_NOMEM, "out of memory");
  for (int i = 0; i < *n; i++)
    if (!((*names)[i] = cJSON_GetStringValue(cJSON_GetArrayItem(labels, i))))
      return status_set(STATUS_FORMAT, "checkpoint %s: label %d is not a string", path, i);
  return STATUS_OK;
}

status_t model_from_checkpoint(const char *path, const cJSON *meta, const model_shape *shape,
                               model **out) {
  char config[CFG_PATH] = "", preset[32] = "bert-mini", wpath[4096 + 32];
  const char **labels = NULL;
  st_file *w = NULL;
  const model_ops *ops = NULL;
  *out = NULL;
  status_t st = STATUS_OK;
  ckpt_config_value(meta, "model.config", config, sizeof config);
  ckpt_config_value(meta, "model.preset", preset, sizeof preset);
  const cJSON *task = cJSON_GetObjectItem(meta, "task");
  model_spec spec = {.config_path = config, .preset = preset, .nsp = -1};
  if (task && (st = task_labels_of(task, path, &labels, &spec.num_labels)) == STATUS_OK)
    spec.labels = labels;
  snprintf(wpath, sizeof wpath, "%s/model.safetensors", path);
  if (st == STATUS_OK)
    st = task ? model_lookup_task(config, preset, "classify", &ops)
              : model_lookup(config, preset, &ops);
  if (st == STATUS_OK) st = st_read(wpath, &w);
  /* A preset's vocabulary (and what else the weights tell) from the weights. */
  if (st == STATUS_OK) st = ops->spec_from_weights(w, wpath, &spec);
  if (st == STATUS_OK) st = ops->create(out, &spec, shape);
  /* Loading through the model's table checks every name and shape. */
  if (st == STATUS_OK)
    st = param_load_safetensors(ops->params(*out), ops->param_buf(*out), w, wpath, true);
  st_free(w);
  free(labels);
  if (st) {
    model_free(*out);
    *out = NULL;
  }
  return st;
}

/* ---- The tokenizer files ------------------------------------------------------------ */
/* Copies src to dir/name; false (status set) when src cannot be read or the
 * copy written. */
static bool copy_to(const char *src, const char *dir, const char *name) {
  char *text = NULL, dst[4096 + 64];
  size_t len = 0;
  if (core_read_file("tokenizer file", src, 1u << 30, &text, &len)) return false;
  snprintf(dst, sizeof dst, "%s/%s", dir, name);
  FILE *f = fopen(dst, "wb");
  bool ok = f && fwrite(text, 1, len, f) == len;
  if (f && fclose(f)) ok = false;
  free(text);
  if (!ok) status_set(STATUS_IO, "cannot write %s: %s", dst, strerror(errno));
  return ok;
}

static bool is_file(const char *p) {
  struct stat sb;
  return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* The tokenizer the checkpoint's data were made with (meta.json
 * "tokenizer"), beside the model in out as Hugging Face names its files:
 * vocab.json + merges.txt (GPT-2 BPE), spiece.model (SentencePiece),
 * vocab.txt [+ tokenizer_config.json] (WordPiece). Appends what it copied to
 * what; a checkpoint that records none, or whose tokenizer is gone, gets a
 * warning and no files. */
static status_t export_tokenizer(const cJSON *meta, const char *out, char *what, size_t n) {
  const char *path =
      cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetObjectItem(meta, "tokenizer"), "path"));
  struct stat sb;
  if (!path || stat(path, &sb) != 0) {
    LOG_WARN(TRAINER, "the checkpoint's tokenizer%s%s is not there: exported without it",
             path ? " " : "", path ? path : "");
    return STATUS_OK;
  }
  char src[4096 + 64], dir[4096];
  const char *files[3][2] = {{0}};
  size_t len = strlen(path);
  if (S_ISDIR(sb.st_mode)) {
    snprintf(dir, sizeof dir, "%s", path);
  } else {
    const char *slash = strrchr(path, '/');
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - path) : 1, slash ? path : ".");
  }
  snprintf(src, sizeof src, "%s/merges.txt", dir);
  if (S_ISDIR(sb.st_mode) && is_file(src)) {
    files[0][0] = "vocab.json", files[1][0] = "merges.txt";
  } else if (len > 6 && !strcmp(path + len - 6, ".model")) {
    files[0][0] = path, files[0][1] = "spiece.model";
  } else {
    files[0][0] = "vocab.txt", files[1][0] = "tokenizer_config.json";
  }
  size_t k = strlen(what);
  for (int i = 0; i < 3 && files[i][0]; i++) {
    const char *name = files[i][1] ? files[i][1] : files[i][0];
    if (files[i][1])
      snprintf(src, sizeof src, "%s", files[i][0]);
    else
      snprintf(src, sizeof src, "%s/%s", dir, files[i][0]);
    if (!is_file(src) && !strcmp(name, "tokenizer_config.json")) continue; /* optional */
    if (!copy_to(src, out, name)) return STATUS_IO;
    k += (size_t)snprintf(what + k, k < n ? n - k : 0, "%s%s", i ? ", " : "; tokenizer: ", name);
    if (k >= n) k = n - 1;
  }
  return STATUS_OK;
}

/* ---- The command ------------------------------------------------------------------ */
static status_t export_checkpoint(const char *dir, const char *out) {
  char path[4096], what[8300];
  model *m = NULL;
  cJSON *meta = NULL;
  status_t st = ckpt_resolve(dir, path, sizeof path);
  if (st == STATUS_OK) st = ckpt_read_meta(path, &meta);
  if (st == STATUS_OK) st = model_from_checkpoint(path, meta, &(model_shape){1, 1, 1, 1}, &m);
  if (st == STATUS_OK) st = m->ops->export_hf(m, out, what, sizeof what);
  if (st == STATUS_OK) st = export_tokenizer(meta, out, what, sizeof what);
  if (st == STATUS_OK) printf("exported %s to %s\n", path, what);
  model_free(m);
  cJSON_Delete(meta);
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
  if (export_checkpoint(ckpt, out) == STATUS_OK) return 0;
  fprintf(stderr, "mlmpi-train export: %s\n", status_message());
  return 1;
}
