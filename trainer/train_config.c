/* train_config.c: keys, defaults, the INI reader and the effective-config
 * dump of a training run. */
#include "train_config.h"

#include <errno.h>
#include <getopt.h>
#include <ini.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "model.h"

void train_config_default(train_config *c) {
  memset(c, 0, sizeof *c);
  snprintf(c->model_preset, sizeof c->model_preset, "bert-mini");
  snprintf(c->model_precision, sizeof c->model_precision, "fp32");
  c->data = data_config_default();
  c->global_batch = 32;
  c->micro_batch = 0;
  c->steps = 100;
  c->seed = 42;
  c->eval_every = 0;
  c->eval_batches = 4;
  c->log_every = 1;
  c->optim = optim_config_default();
  c->sched = lr_schedule_default();
  snprintf(c->comm_backend, sizeof c->comm_backend, "mpi");
  c->bucket_mb = 25;
  c->first_bucket_mb = 1;
  c->timeout_s = 300;
  c->shared_memory = true;
  c->ckpt_keep = 3;
  snprintf(c->ckpt_resume, sizeof c->ckpt_resume, "none");
}

void train_config_default_finetune(train_config *c) {
  train_config_default(c);
  c->finetune = true;
  snprintf(c->task_type, sizeof c->task_type, "classify");
  snprintf(c->task_text_field, sizeof c->task_text_field, "text");
  snprintf(c->task_label_field, sizeof c->task_label_field, "label");
  c->epochs = 3;
  c->steps = 0; /* epochs x steps per epoch, once the task is read */
  c->log_every = 10;
  c->data.max_predictions = 0;
  c->optim.kind = OPTIM_ADAMW;
  c->optim.eps = 1e-8f;
  c->sched.lr = 1e-4;
  c->sched.warmup = 0.1;
}

/* The fine-tuning keys; STATUS_CONFIG naming the key outside fine-tuning.
 * *done false: not one of them. */
static status_t set_finetune_key(train_config *c, const char *key, const char *v, bool *done);

static status_t set_i64(int64_t *dst, const char *key, const char *v, int64_t lo) {
  char *e;
  errno = 0;
  long long x = strtoll(v, &e, 10);
  if (!*v || *e || x < lo || errno == ERANGE)
    return status_set(STATUS_CONFIG, "%s: '%s' is not a whole number >= %lld", key, v,
                      (long long)lo);
  *dst = x;
  return STATUS_OK;
}

static status_t set_f64(double *dst, const char *key, const char *v) {
  char *e;
  double x = strtod(v, &e);
  if (!*v || *e || !(x >= 0) || isinf(x))
    return status_set(STATUS_CONFIG, "%s: '%s' is not a finite non-negative number", key, v);
  *dst = x;
  return STATUS_OK;
}

static status_t set_str(char *dst, size_t n, const char *key, const char *v) {
  if (strlen(v) >= n) return status_set(STATUS_CONFIG, "%s: value too long", key);
  snprintf(dst, n, "%s", v);
  return STATUS_OK;
}

status_t train_config_set(train_config *c, const char *key, const char *v) {
  int64_t tmp = 0;
  bool done;
  status_t st = set_finetune_key(c, key, v, &done);
  if (done) return st;
#define STR(k, f) \
  if (!strcmp(key, k)) return set_str(c->f, sizeof c->f, key, v)
#define I64(k, f, lo) \
  if (!strcmp(key, k)) return set_i64(&c->f, key, v, lo)
#define F64(k, f) \
  if (!strcmp(key, k)) return set_f64(&c->f, key, v)
  STR("model.config", model_config);
  STR("model.preset", model_preset);
  if (!strcmp(key, "model.precision")) {
    if (!compute_lookup(v))
      return status_set(STATUS_CONFIG, "model.precision '%s' is not known (known: %s)", v,
                        compute_names());
    return set_str(c->model_precision, sizeof c->model_precision, key, v);
  }
  STR("data.path", data_path);
  STR("data.service", data_service);
  STR("data.token_file", data_token_file);
  I64("train.global_batch", global_batch, 1);
  I64("train.micro_batch", micro_batch, 0);
  I64("train.steps", steps, 0);
  I64("train.seed", seed, 0);
  I64("train.eval_every", eval_every, 0);
  I64("train.eval_batches", eval_batches, 1);
  I64("train.log_every", log_every, 1);
  if (!strcmp(key, "train.threads")) {
    if ((st = set_i64(&tmp, key, v, 0))) return st;
    if (tmp > 65536) return status_set(STATUS_CONFIG, "train.threads: %s is more than 65536", v);
    c->threads = (int)tmp;
    return STATUS_OK;
  }
  if (!strcmp(key, "optim.zero")) {
    if ((st = set_i64(&tmp, key, v, 0))) return st;
    if (tmp > 1) return status_set(STATUS_CONFIG, "optim.zero: only 0 and 1 exist");
    c->zero = (int)tmp;
    return STATUS_OK;
  }
  F64("train.time_limit_s", time_limit_s);
  if (!strcmp(key, "comm.backend")) {
    if (!comm_backend_known(v))
      return status_set(STATUS_CONFIG, "comm.backend: '%s' is not one of %s", v,
                        comm_backends_help());
    return set_str(c->comm_backend, sizeof c->comm_backend, key, v);
  }
  F64("comm.bucket_mb", bucket_mb);
  F64("comm.first_bucket_mb", first_bucket_mb);
  F64("comm.timeout_s", timeout_s);
  if (!strcmp(key, "comm.shared_memory")) {
    if (!core_parse_bool(v, &c->shared_memory))
      return status_set(STATUS_CONFIG, "comm.shared_memory: '%s' is not true or false", v);
    return STATUS_OK;
  }
  STR("ckpt.dir", ckpt_dir);
  I64("ckpt.every_steps", ckpt_every, 0);
  I64("ckpt.keep", ckpt_keep, 1);
  STR("ckpt.resume", ckpt_resume);
  STR("log.dir", log_dir);
#undef STR
#undef I64
#undef F64
  if (!strncmp(key, "optim.", 6)) return optim_set_key(&c->optim, &c->sched, key + 6, v);
  if (!strncmp(key, "data.", 5)) return data_set_key(&c->data, key + 5, v);
  return status_set(STATUS_CONFIG, "unknown config key '%s'", key);
}

static status_t set_finetune_key(train_config *c, const char *key, const char *v, bool *done) {
  static const char *const keys[] = {"model.init",       "task.type",       "task.train",
                                     "task.dev",         "task.text_field", "task.pair_field",
                                     "task.label_field", "data.tokenizer",  "train.epochs"};
  size_t k = 0, n = sizeof keys / sizeof keys[0];
  while (k < n && strcmp(key, keys[k])) k++;
  *done = k < n;
  if (!*done) return STATUS_OK;
  if (!c->finetune)
    return status_set(STATUS_CONFIG, "'%s' is a fine-tuning key (mlmpi-train finetune)", key);
  struct {
    char *dst;
    size_t n;
  } str[] = {{c->model_init, sizeof c->model_init},
             {c->task_type, sizeof c->task_type},
             {c->task_train, sizeof c->task_train},
             {c->task_dev, sizeof c->task_dev},
             {c->task_text_field, sizeof c->task_text_field},
             {c->task_pair_field, sizeof c->task_pair_field},
             {c->task_label_field, sizeof c->task_label_field},
             {c->data_tokenizer, sizeof c->data_tokenizer}};
  if (k == 8) return set_i64(&c->epochs, key, v, 1);
  if (k == 1 && strcmp(v, "classify"))
    return status_set(STATUS_CONFIG, "task.type: '%s' is not a task mlmpi fine-tunes (classify)",
                      v);
  if ((k == 4 || k == 6) && !v[0]) return status_set(STATUS_CONFIG, "%s: empty field name", key);
  return set_str(str[k].dst, str[k].n, key, v);
}

typedef struct {
  train_config *c;
  const char *path;
  status_t st;
} ini_ctx;

static int ini_cb(void *user, const char *section, const char *name, const char *value) {
  ini_ctx *x = user;
  if (x->st) return 0;
  char key[256];
  snprintf(key, sizeof key, "%s.%s", section, name);
  if ((x->st = train_config_set(x->c, key, value))) {
    status_prefix("%s", x->path);
    return 0;
  }
  return 1;
}

status_t train_config_load(train_config *c, const char *path) {
  ini_ctx x = {c, path, STATUS_OK};
  int rc = ini_parse(path, ini_cb, &x);
  if (x.st) return x.st;
  if (rc < 0) return status_set(STATUS_IO, "cannot open config %s", path);
  if (rc > 0) return status_set(STATUS_CONFIG, "%s:%d: not a key = value line", path, rc);
  return STATUS_OK;
}

status_t train_config_check(const train_config *c) {
  if (c->finetune) {
    if (!c->task_train[0])
      return status_set(STATUS_CONFIG, "task.train (a JSON Lines file) is not set");
    if (!c->data_tokenizer[0] && !c->model_init[0])
      return status_set(STATUS_CONFIG,
                        "data.tokenizer is not set (it defaults to model.init's, and model.init "
                        "is not set either)");
    return STATUS_OK;
  }
  if (!c->data_path[0] && !c->data_service[0])
    return status_set(STATUS_CONFIG,
                      "data.path (a directory of shards, or TFRecord files) or "
                      "data.service is not set");
  return STATUS_OK;
}

/* Numbers of the dump: %g where six digits give the value back exactly,
 * else the shortest that does (as a float for float keys), so the
 * effective config stored and compared across ranks is the one that runs. */
typedef struct {
  char b[8][40];
  int i;
} num_ring;

static const char *num(num_ring *r, double v, bool single) {
  char *s = r->b[r->i++ % 8];
  for (int p = 6; p <= 17; p++) {
    snprintf(s, sizeof r->b[0], "%.*g", p, v);
    if (single ? strtof(s, NULL) == (float)v : strtod(s, NULL) == v) break;
  }
  return s;
}

char *train_config_dump(const train_config *c) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  if (!f) return NULL;
  num_ring r = {.i = 0};
  const optim_config *o = &c->optim;
  const lr_schedule *sc = &c->sched;
  static const char *masking[] = {"bert", "electra"}, *inst[] = {"packed", "nsp"};
  fprintf(f, "model.config = %s\nmodel.preset = %s\nmodel.precision = %s\n", c->model_config,
          c->model_preset, c->model_precision);
  fprintf(f, "data.path = %s\ndata.service = %s\ndata.token_file = %s\ndata.seq_len = %d\n",
          c->data_path, c->data_service, c->data_token_file, c->data.seq_len);
  fprintf(f, "data.max_predictions = %d\n", c->data.max_predictions);
  fprintf(f, "data.mask_prob = %s\ndata.masking = %s\ndata.whole_word = %s\ndata.instances = %s\n",
          num(&r, c->data.mask_prob, true), masking[c->data.masking],
          c->data.whole_word ? "true" : "false", inst[c->data.instances]);
  fprintf(f, "data.short_seq_prob = %s\ndata.seed = %llu\n", num(&r, c->data.short_seq_prob, true),
          (unsigned long long)c->data.seed);
  /* Only when not the default: masked-LM jobs dump as they always did. */
  if (c->data.objective == OBJECTIVE_CLM) fprintf(f, "data.objective = clm\n");
  fprintf(f, "train.global_batch = %lld\ntrain.micro_batch = %lld\ntrain.steps = %lld\n",
          (long long)c->global_batch, (long long)c->micro_batch, (long long)c->steps);
  fprintf(f, "train.seed = %lld\ntrain.eval_every = %lld\ntrain.eval_batches = %lld\n",
          (long long)c->seed, (long long)c->eval_every, (long long)c->eval_batches);
  fprintf(f, "train.log_every = %lld\ntrain.threads = %d\ntrain.time_limit_s = %s\n",
          (long long)c->log_every, c->threads, num(&r, c->time_limit_s, false));
  fprintf(f, "optim.name = %s\noptim.lr = %s\noptim.schedule = %s\noptim.warmup = %s\n",
          o->kind == OPTIM_LAMB ? "lamb" : "adamw", num(&r, sc->lr, false),
          sc->kind == SCHED_POLY ? "poly" : "constant", num(&r, sc->warmup, false));
  fprintf(f, "optim.decay_power = %s\noptim.end_lr = %s\noptim.total_steps = %lld\n",
          num(&r, sc->power, false), num(&r, sc->end_lr, false), (long long)sc->total_steps);
  fprintf(f, "optim.beta1 = %s\noptim.beta2 = %s\noptim.eps = %s\noptim.weight_decay = %s\n",
          num(&r, o->beta1, true), num(&r, o->beta2, true), num(&r, o->eps, true),
          num(&r, o->weight_decay, true));
  fprintf(f, "optim.bias_correction = %s\noptim.adapt_all = %s\noptim.trust_min = %s\n",
          o->bias_correction ? "true" : "false", o->adapt_all ? "true" : "false",
          num(&r, o->trust_min, true));
  fprintf(f, "optim.trust_max = %s\noptim.max_grad_norm = %s\noptim.zero = %d\n",
          num(&r, o->trust_max, true), num(&r, o->max_grad_norm, true), c->zero);
  fprintf(f, "comm.backend = %s\n", c->comm_backend);
  fprintf(f, "comm.bucket_mb = %s\ncomm.first_bucket_mb = %s\ncomm.timeout_s = %s\n",
          num(&r, c->bucket_mb, false), num(&r, c->first_bucket_mb, false),
          num(&r, c->timeout_s, false));
  fprintf(f, "comm.shared_memory = %s\n", c->shared_memory ? "true" : "false");
  fprintf(f, "ckpt.dir = %s\nckpt.every_steps = %lld\nckpt.keep = %lld\nckpt.resume = %s\n",
          c->ckpt_dir, (long long)c->ckpt_every, (long long)c->ckpt_keep, c->ckpt_resume);
  fprintf(f, "log.dir = %s\n", c->log_dir);
  if (c->finetune) {
    fprintf(f, "model.init = %s\ntask.type = %s\ntask.train = %s\ntask.dev = %s\n", c->model_init,
            c->task_type, c->task_train, c->task_dev);
    fprintf(f, "task.text_field = %s\ntask.pair_field = %s\ntask.label_field = %s\n",
            c->task_text_field, c->task_pair_field, c->task_label_field);
    fprintf(f, "data.tokenizer = %s\ntrain.epochs = %lld\n", c->data_tokenizer,
            (long long)c->epochs);
  }
  fclose(f);
  return buf;
}

static const char help[] =
    "[model]  config = PATH (a Hugging Face config.json: BERT, or ELECTRA with model_type "
    "electra)\n"
    "         | preset = bert-tiny|bert-mini|bert-small|bert-medium|bert-base|bert-large|\n"
    "         electra-small|electra-base (bert-mini)\n"
    "         with a preset, vocab_size comes from the shards' tokenizer\n"
    "         | precision = fp32|bf16 (fp32): bf16 runs the matrix products with bf16 inputs and\n"
    "         fp32 accumulation (oneDNN; needs AVX512-BF16 or AMX), fp32 master weights\n"
    "[data]   path = DIR of shards (train-*.mlms, holdout-*.mlms), or BERT TFRecord files (a glob\n"
    "         or comma list; needs model.config) | service = HOST:PORT,... (the dataset service;\n"
    "         with path also set, its shards' fingerprint is checked against the service's),\n"
    "         token_file = FILE (the service's --token-file secret)\n"
    "         seq_len = 128, max_predictions = 20, mask_prob = 0.15, masking = bert|electra,\n"
    "         whole_word = false, instances = packed|nsp, short_seq_prob = 0.1, seed = 12345,\n"
    "         objective = mlm|clm (clm: causal-LM windows of the packed token stream, for GPT-2)\n"
    "[train]  global_batch = 32, micro_batch = 0 (global_batch / ranks), steps = 100, seed = 42,\n"
    "         eval_every = 0 (off), eval_batches = 4, log_every = 1, threads = 0 (cores/ranks),\n"
    "         time_limit_s = 0 (none: else checkpoint and stop after this many seconds)\n"
    "[optim]  name = lamb|adamw, lr, schedule, warmup, decay_power, end_lr, total_steps (0: "
    "train.steps),\n"
    "         beta1, beta2, eps, weight_decay, bias_correction, adapt_all, trust_min, trust_max,\n"
    "         max_grad_norm, zero = 0\n"
    "[comm]   backend = mpi|nccl (mpi; nccl needs a build with CUDA and NCCL, a GPU per rank\n"
    "         and a compute backend that keeps its buffers on the GPU),\n"
    "         bucket_mb = 25, first_bucket_mb = 1, timeout_s = 300,\n"
    "         shared_memory = true (the ranks of a node sum each other's gradients in place)\n"
    "[ckpt]   dir = DIR (none: no checkpoints), every_steps = 0 (only at the end), keep = 3,\n"
    "         resume = none|auto|DIR\n"
    "[log]    dir = DIR (metrics.jsonl; none: no file)\n";

const char *train_config_help(void) { return help; }

/* data.masking before parsing: not given (the default then follows the model). */
#define MASKING_UNSET ((mask_style)0x7f)

/* --config first, then every --set on top, whatever their order; --init-from
 * where init_from is not NULL. */
static status_t parse_args(int argc, char **argv, train_config *c, const char **init_from,
                           bool *help) {
  static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                       {"set", required_argument, 0, 's'},
                                       {"init-from", required_argument, 0, 'i'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  *help = false;
  opterr = 0;
  optind = 1;
  for (int o; (o = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
    if (o == 'c') {
      status_t st = train_config_load(c, optarg);
      if (st) return st;
    } else if (o == 'h') {
      *help = true;
      return STATUS_OK;
    } else if (o == '?' || (o == 'i' && !init_from)) {
      return status_set(STATUS_ARG, "unknown or incomplete option '%s' (see --help)",
                        argv[optind - 1]);
    }
  }
  optind = 1;
  for (int o; (o = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
    if (o == 's') {
      char *eq = strchr(optarg, '=');
      if (!eq) return status_set(STATUS_ARG, "--set needs section.key=value, not '%s'", optarg);
      *eq = 0;
      status_t st = train_config_set(c, optarg, eq + 1);
      *eq = '=';
      if (st) return st;
    } else if (o == 'i') {
      *init_from = optarg;
    }
  }
  if (optind < argc) return status_set(STATUS_ARG, "unexpected argument '%s'", argv[optind]);
  return STATUS_OK;
}

status_t train_config_from_args(int argc, char **argv, train_config *c, const char **init_from,
                                bool *help) {
  train_config_default(c);
  c->data.masking = MASKING_UNSET;
  *init_from = NULL;
  status_t st = parse_args(argc, argv, c, init_from, help);
  if (st || *help) return st;
  if (c->sched.total_steps == 0) c->sched.total_steps = c->steps;
  /* data.masking defaults to the model's scheme (BERT's 80/10/10, ELECTRA's
   * 85/15). */
  const model_ops *m;
  if ((st = model_lookup(c->model_config, c->model_preset, &m))) return st;
  if (m->task)
    return status_set(STATUS_CONFIG,
                      "model.config %s is a sequence classifier: fine-tune it with mlmpi-train "
                      "finetune",
                      c->model_config);
  if (c->data.masking == MASKING_UNSET) c->data.masking = m->masking;
  return train_config_check(c);
}

status_t finetune_config_from_args(int argc, char **argv, train_config *c, bool *help) {
  train_config_default_finetune(c);
  status_t st = parse_args(argc, argv, c, NULL, help);
  if (st || *help) return st;
  c->data.max_predictions = 0; /* no masked slots in a task's batches */
  if (!c->model_init[0]) {
    const model_ops *m;
    if ((st = model_lookup_task(c->model_config, c->model_preset, "classify", &m))) return st;
  }
  return train_config_check(c);
}
