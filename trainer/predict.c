/* predict.c: `mlmpi-train predict --checkpoint DIR --input FILE.jsonl`: a
 * fine-tuned classifier's label and class probabilities for each example,
 * one JSON object a line, in the input's order. The inputs are read as the
 * checkpoint's task recorded them (fields, sequence length, tokenizer). */
#include <errno.h>
#include <getopt.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ckpt.h"
#include "model_impl.h"

static const char predict_usage[] =
    "usage: mlmpi-train predict --checkpoint DIR --input FILE.jsonl [--out FILE]\n"
    "                           [--tokenizer PATH] [--batch N] [--threads N] [--precision P]\n"
    "  For each line of FILE (the task's text field, and pair field where it has one), writes\n"
    "  {\"label\": L, \"probabilities\": {label: p, ...}} to FILE (written whole, then renamed\n"
    "  into place) or standard output. DIR: a fine-tuned checkpoint, or a ckpt.dir (its best/,\n"
    "  else its newest step-N). --tokenizer overrides the one the checkpoint records (its\n"
    "  fingerprint must match); --batch 32. --precision fp32 (default), bf16 or fp32-onednn:\n"
    "  the model.precision the matrix products run in.\n";

typedef struct {
  const char *ckpt, *input, *out, *tokenizer, *precision;
  int batch, threads;
} predict_args;

static int parse_args(int argc, char **argv, predict_args *a) {
  static const struct option opts[] = {{"checkpoint", required_argument, 0, 'c'},
                                       {"input", required_argument, 0, 'i'},
                                       {"out", required_argument, 0, 'o'},
                                       {"tokenizer", required_argument, 0, 'k'},
                                       {"batch", required_argument, 0, 'b'},
                                       {"threads", required_argument, 0, 't'},
                                       {"precision", required_argument, 0, 'p'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  *a = (predict_args){.batch = 32};
  opterr = 0;
  optind = 1;
  for (int c; (c = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
    char *end = NULL;
    long v = 0;
    if (c == 'b' || c == 't') {
      v = strtol(optarg, &end, 10);
      if (*end || v < 1 || v > 65536)
        return fprintf(stderr, "mlmpi-train predict: --%s needs a number from 1 to 65536\n",
                       c == 'b' ? "batch" : "threads"),
               2;
    }
    switch (c) {
      case 'c': a->ckpt = optarg; break;
      case 'i': a->input = optarg; break;
      case 'o': a->out = optarg; break;
      case 'k': a->tokenizer = optarg; break;
      case 'b': a->batch = (int)v; break;
      case 't': a->threads = (int)v; break;
      case 'p': a->precision = optarg; break;
      case 'h': fputs(predict_usage, stdout); return 1;
      default:
        return fprintf(stderr, "mlmpi-train predict: unknown or incomplete option '%s'\n",
                       argv[optind - 1]),
               2;
    }
  }
  if (optind < argc)
    return fprintf(stderr, "mlmpi-train predict: unexpected argument '%s'\n", argv[optind]), 2;
  if (!a->ckpt || !a->input)
    return fprintf(stderr, "mlmpi-train predict: --checkpoint and --input are required\n"), 2;
  return 0;
}

/* The state of one run, freed by free_run. */
typedef struct {
  cJSON *meta;
  model *m;
  task_data *task;
  data_batch b;
  float *probs;
  FILE *f;
  char tmp[4096 + 32];
} predict_run;

static void free_run(predict_run *x) {
  if (x->f && x->f != stdout) fclose(x->f);
  if (x->tmp[0]) unlink(x->tmp);
  mem_free(x->probs);
  data_batch_free(&x->b);
  task_free(x->task);
  model_free(x->m);
  cJSON_Delete(x->meta);
}

/* The input as the checkpoint's task reads it, with its tokenizer. */
static status_t open_input(predict_run *x, const predict_args *a, int seq_len) {
  const cJSON *task = cJSON_GetObjectItem(x->meta, "task"),
              *tok = cJSON_GetObjectItem(x->meta, "tokenizer");
  const char *path =
      a->tokenizer ? a->tokenizer : cJSON_GetStringValue(cJSON_GetObjectItem(tok, "path"));
  const char *fp = cJSON_GetStringValue(cJSON_GetObjectItem(tok, "fingerprint"));
  if (!path) return status_set(STATUS_CONFIG, "%s records no tokenizer: give --tokenizer", a->ckpt);
  task_options o = {.path = a->input,
                    .tokenizer = path,
                    .text_field = cJSON_GetStringValue(cJSON_GetObjectItem(task, "text_field")),
                    .pair_field = cJSON_GetStringValue(cJSON_GetObjectItem(task, "pair_field")),
                    .unlabelled = true,
                    .seq_len = seq_len};
  status_t st = task_open(&x->task, &o);
  if (st) return st;
  if (fp && strtoull(fp, NULL, 16) != task_tokenizer_fingerprint(x->task))
    return status_set(STATUS_CONFIG,
                      "tokenizer %s is not the one %s was trained with (fingerprints "
                      "differ)",
                      path, a->ckpt);
  return STATUS_OK;
}

static status_t open_output(predict_run *x, const char *out) {
  if (!out) {
    x->f = stdout;
    return STATUS_OK;
  }
  snprintf(x->tmp, sizeof x->tmp, "%s.tmp%d", out, (int)getpid());
  x->f = fopen(x->tmp, "w");
  if (!x->f) {
    x->tmp[0] = 0;
    return status_set(STATUS_IO, "cannot create %s: %s", out, strerror(errno));
  }
  return STATUS_OK;
}

static void write_row(FILE *f, const float *p, const char *const *names, int C) {
  int best = 0;
  for (int k = 1; k < C; k++)
    if (p[k] > p[best]) best = k;
  cJSON *j = cJSON_CreateObject(), *probs;
  cJSON_AddStringToObject(j, "label", names[best]);
  probs = cJSON_AddObjectToObject(j, "probabilities");
  for (int k = 0; k < C; k++) {
    char num[32];
    snprintf(num, sizeof num, "%.6g", (double)p[k]);
    cJSON_AddItemToObject(probs, names[k], cJSON_CreateRaw(num));
  }
  char *text = cJSON_PrintUnformatted(j);
  if (text) fprintf(f, "%s\n", text);
  free(text);
  cJSON_Delete(j);
}

static status_t predict_all(predict_run *x, const predict_args *a) {
  const char *const *names;
  const int C = classify_labels(x->m, &names), B = a->batch;
  const uint64_t n = task_examples(x->task);
  int64_t idx[65536];
  double counters[MODEL_MAX_COUNTERS];
  status_t st = STATUS_OK;
  double t0 = core_now_s(), shown = t0;
  for (uint64_t first = 0; first < n && st == STATUS_OK; first += (uint64_t)B) {
    if (core_now_s() - shown >= 10) { /* long inputs show progress */
      shown = core_now_s();
      LOG_INFO(TRAINER, "predicted %llu of %llu examples (%.0f s)", (unsigned long long)first,
               (unsigned long long)n, shown - t0);
    }
    int count = n - first < (uint64_t)B ? (int)(n - first) : B;
    for (int i = 0; i < count; i++) idx[i] = (int64_t)(first + (uint64_t)i);
    if ((st = task_fill(x->task, idx, count, &x->b))) break;
    model_batch mb = model_batch_of(&x->b);
    if ((st = x->m->ops->check_batch(x->m, &mb))) break;
    model_run run = model_run_default();
    run.train = false;
    memset(counters, 0, sizeof counters);
    x->m->ops->forward(x->m, &mb, &run, counters);
    classify_probs(x->m, x->probs);
    for (int i = 0; i < count; i++) write_row(x->f, x->probs + (size_t)i * C, names, C);
  }
  if (st == STATUS_OK && ferror(x->f)) st = status_set(STATUS_IO, "cannot write the predictions");
  return st;
}

static status_t run_predict(predict_run *x, const predict_args *a) {
  char path[4096];
  cJSON *task;
  status_t st = ckpt_resolve(a->ckpt, path, sizeof path);
  if (st || (st = ckpt_read_meta(path, &x->meta))) return st;
  task = cJSON_GetObjectItem(x->meta, "task");
  if (!task)
    return status_set(STATUS_CONFIG,
                      "%s is a pretraining checkpoint: predict needs a fine-tuned one", path);
  const cJSON *T = cJSON_GetObjectItem(task, "seq_len");
  double t = cJSON_IsNumber(T) ? T->valuedouble : 0;
  int seq_len = t >= 2 && t <= (1 << 16) ? (int)t : 0;
  if (seq_len < 2 || seq_len > (1 << 16))
    return status_set(STATUS_FORMAT, "checkpoint %s: the task's seq_len is missing", path);
  model_shape shape = {a->batch, seq_len, 0, a->threads};
  if ((st = model_from_checkpoint(path, x->meta, &shape, &x->m)) ||
      (st = model_set_precision(x->m, a->precision)) || (st = open_input(x, a, seq_len)) ||
      (st = data_batch_alloc(&x->b, a->batch, seq_len, 0)))
    return st;
  const char *const *names;
  int C = classify_labels(x->m, &names);
  x->probs = mem_alloc((size_t)a->batch * (size_t)C * sizeof(float), "class probabilities");
  if (!x->probs) return STATUS_NOMEM;
  double t0 = core_now_s();
  if ((st = open_output(x, a->out)) || (st = predict_all(x, a))) return st;
  if (a->out) {
    FILE *f = x->f;
    x->f = NULL;
    if (fclose(f) != 0 || rename(x->tmp, a->out) != 0)
      return status_set(STATUS_IO, "cannot write %s: %s", a->out, strerror(errno));
    x->tmp[0] = 0;
  }
  LOG_INFO(TRAINER, "predicted %llu examples in %.1f s", (unsigned long long)task_examples(x->task),
           core_now_s() - t0);
  return STATUS_OK;
}

int trainer_predict_main(int argc, char **argv) {
  predict_args a;
  int rc = parse_args(argc, argv, &a);
  if (rc) return rc == 1 ? 0 : rc;
  if (a.threads) omp_set_num_threads(a.threads);
  predict_run x = {0};
  status_t st = run_predict(&x, &a);
  if (st) fprintf(stderr, "mlmpi-train predict: %s\n", status_message());
  free_run(&x);
  return st ? 1 : 0;
}
