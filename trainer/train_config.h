/* train_config.h: the training run's configuration: an INI file (inih) with
 * sections model, data, train, optim, comm, ckpt, log; every key also a
 * `--set section.key=value` flag; unknown keys are errors naming the key.
 * Private to trainer/. */
#ifndef MLMPI_TRAIN_CONFIG_H
#define MLMPI_TRAIN_CONFIG_H

#include "dataset.h"
#include "optim.h"
#include "trainer.h"

#define CFG_PATH 1024

typedef struct {
  /* [model] */
  char model_config[CFG_PATH]; /* a config.json, or empty for the preset */
  char model_preset[32];       /* bert-tiny, bert-mini, bert-small, bert-base */
  char model_precision[16];    /* the compute backend: fp32 (default), bf16, fp32-onednn */
  /* [data] */
  char data_path[CFG_PATH];       /* a directory of shards */
  char data_service[CFG_PATH];    /* host:port[,host:port]: fetch from the service */
  char data_token_file[CFG_PATH]; /* the service's shared secret, when it has one */
  data_config data;
  /* [train] */
  int64_t global_batch, micro_batch, steps, seed, eval_every, eval_batches, log_every;
  int threads;
  double time_limit_s; /* stop (checkpoint, exit 0) after this long; 0: none */
  /* [optim] */
  optim_config optim;
  lr_schedule sched;
  int zero;
  /* [comm] */
  char comm_backend[16]; /* mpi | nccl */
  double bucket_mb, first_bucket_mb, timeout_s;
  bool shared_memory; /* gradients in memory the ranks of a node share */
  /* [ckpt] */
  char ckpt_dir[CFG_PATH];
  int64_t ckpt_every, ckpt_keep;
  char ckpt_resume[CFG_PATH]; /* none, auto, or a checkpoint directory */
  /* [log] */
  char log_dir[CFG_PATH];
  /* Fine-tuning (`mlmpi-train finetune`; its keys are errors elsewhere). */
  bool finetune;
  char model_init[CFG_PATH]; /* model.init: a checkpoint or Hugging Face directory */
  char task_type[16];        /* task.type: classify */
  char task_train[CFG_PATH]; /* task.train, task.dev: JSON Lines */
  char task_dev[CFG_PATH];
  char task_text_field[64];      /* task.text_field (text) */
  char task_pair_field[64];      /* task.pair_field ("": single texts) */
  char task_label_field[64];     /* task.label_field (label) */
  char data_tokenizer[CFG_PATH]; /* data.tokenizer ("": model.init's) */
  int64_t epochs;                /* train.epochs */
} train_config;

void train_config_default(train_config *c);
/* Fine-tuning's defaults (AdamW 1e-4, 10% warmup, linear decay, 3 epochs,
 * no masked slots) and keys. */
void train_config_default_finetune(train_config *c);
/* Sets "section.key" from text; STATUS_CONFIG names the key when unknown or
 * when the value is wrong. */
status_t train_config_set(train_config *c, const char *key, const char *value);
/* Reads an INI file into c (on top of what is there). */
status_t train_config_load(train_config *c, const char *path);
/* Cross-key checks (batch sizes, paths). */
status_t train_config_check(const train_config *c);
/* Every key with its current value, one "section.key = value" per line
 * (the effective config, printed at start and stored in checkpoints).
 * Returns a malloc'd string. */
char *train_config_dump(const train_config *c);
/* --help text for every key. */
const char *train_config_help(void);

/* The command line of a training run: --config FILE (read first), then every
 * --set section.key=value on top, --init-from CKPT, --help. Defaults that
 * follow the model (data.masking) are settled through the model registry;
 * then train_config_check. *init_from points into argv (or is NULL). */
status_t train_config_from_args(int argc, char **argv, train_config *c, const char **init_from,
                                bool *help);
/* The same for `mlmpi-train finetune` (argv[0] the command): its defaults
 * and keys; --init-from is not taken (model.init is). */
status_t finetune_config_from_args(int argc, char **argv, train_config *c, bool *help);

#endif
