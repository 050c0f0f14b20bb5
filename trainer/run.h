/* run.h: the training run's state and the pieces of the loop that live in
 * their own files: the loop and its set-up (train.c), checkpoints and
 * resume (train_ckpt.c), evaluation (train_eval.c), metrics and logging
 * (train_metrics.c). Private to trainer/. Not thread-safe. */
#ifndef MLMPI_RUN_H
#define MLMPI_RUN_H

#include <stdio.h>

#include "comm.h"
#include "model.h"
#include "optim.h"
#include "tb.h"
#include "train_config.h"

/* Runs the training job the config describes on this rank, over comm (the
 * caller's, created with cfg->comm_backend), with `threads` compute
 * threads, weights from init_from when not NULL. On failure *uniform says
 * whether every rank met it alike (a bad config: one message suffices) or
 * only this one: then the caller must end the job at once so no rank
 * waits, and the run's memory is left to the process's end. */
status_t train_run(const train_config *cfg, comm_t *comm, int threads, const char *init_from,
                   bool *uniform);
/* Asks the run to checkpoint and stop after the current step (from a
 * signal handler: async-signal-safe). */
void train_request_stop(void);

/* What one step measured, beside the model's counters. */
typedef struct {
  double counters[MODEL_MAX_COUNTERS]; /* this rank's, summed over micro-batches */
  double data_s, compute_s, exposed_s;
  optim_stats os;
} step_result;

typedef struct {
  train_config cfg;
  char *cfg_text; /* the effective config */
  comm_t *comm;
  int rank, world, threads;
  batch_source *data;    /* training batches */
  batch_source *holdout; /* evaluation batches (train.eval_every), or NULL */
  model *model;
  const model_ops *mops;
  optim *opt;
  reducer *red;
  int64_t micro, accum, per_rank;
  bool uniform; /* a failure now is the same on every rank */
  /* ZeRO-1: this rank updates floats [lo, hi) of the layout. */
  size_t lo, hi;
  int *counts;       /* every rank's slice size */
  float *gslice;     /* the reduce-scattered slice (ZeRO-1 over MPI) */
  bool shared_grads; /* gradients in the node's shared window: all-reduced
                        during backward, also under ZeRO-1 */
  data_batch *mb;    /* accum micro-batches of this rank's slice */
  FILE *metrics;     /* rank 0: metrics.jsonl */
  tb_writer *tb;     /* rank 0: TensorBoard events */
  bool tty;
  double t_start; /* core_now_s() when the loop began: train.time_limit_s counts from it */
  /* Fine-tuning (cfg.finetune; finetune.c): the task's examples, epochs of
   * steps_per_epoch steps (the holdout source is task.dev, evaluated after
   * every epoch), the best epoch's dev accuracy (-1: none yet), what
   * checkpoints record of the task, and the model the run starts from. */
  task_data *task, *dev_task;
  int64_t steps_per_epoch;
  double best;
  char *task_json;
  char tokenizer[4096];  /* data.tokenizer, else model.init's record (the task source
                           reports the resolved path checkpoints record) */
  uint64_t tokenizer_fp; /* model.init's recorded fingerprint (0: none) */
  char init_config[CFG_PATH + 16], init_preset[32], init_weights[4096 + 128];
  /* Fault injection for the tests (MLMPI_FAULT_NONFINITE=RANK:STEP): rank
   * fault_rank writes a NaN into the first gradient its backward finishes
   * at step fault_step (as logged, from 1; -1: never), before the all-reduce
   * sees it. cur_step: the step running (from 0). */
  int fault_rank;
  int64_t fault_step, cur_step;
} run_state;

/* The global index of the first sequence of micro-batch k of this rank. */
static inline uint64_t run_first(const run_state *s, int64_t k) {
  return (uint64_t)(s->rank * s->per_rank + k * s->micro);
}
/* How micro-batch k of step (or evaluation batch) `step` runs: the run's
 * seed, its global sample index, the global batch's normalisers den. */
model_run run_micro(const run_state *s, int64_t step, int64_t k, const double den[2], bool train);
/* Fetches this rank's micro-batches of step `step` from src into s->mb and
 * all-reduces the loss normalisers: den[0] = Σ masked_lm_weights, den[1] =
 * real tokens of the global batch. */
status_t run_fetch(run_state *s, batch_source *src, int64_t step, double den[2]);

/* train_ckpt.c */
/* Weights resumed (ckpt.resume), taken from init_from, or fresh; *start is
 * the first step to run. Rank 0 reads, everything is broadcast. */
status_t run_init_weights(run_state *s, const char *init_from, int64_t *start);
/* Writes ckpt.dir/step-N (rank 0, the optimizer state gathered first);
 * every rank learns whether it worked. */
status_t run_save(run_state *s, int64_t steps_done);
/* The same under another name than step-N (ckpt_extra.name); task_json
 * NULL: the run's. */
status_t run_save_as(run_state *s, int64_t steps_done, const char *name, const char *task_json);

/* finetune.c */
/* Reads task.train (and task.dev) with the tokenizer (data.tokenizer or
 * model.init's) and opens them as the run's sources; sets train.steps
 * (epochs), the schedule's length and the per-epoch evaluation. */
status_t ft_open_sources(run_state *s);
/* The classifier's spec and model-table entry: model.init's encoder, or
 * model.config / model.preset with the tokenizer's vocabulary; the labels
 * of task.train. */
status_t ft_model_spec(run_state *s, model_spec *spec, const model_ops **ops);
/* Rank 0: fresh weights (train.seed), then every tensor of model.init that
 * the classifier has (a pretraining checkpoint's ELECTRA discriminator
 * under "discriminator."); only the head may be missing. */
status_t ft_load_init(run_state *s);
/* After an evaluation at the end of an epoch: keeps the model in ckpt.dir/best when
 * its dev accuracy is the best so far. */
status_t ft_after_eval(run_state *s, int64_t step, const double *values);
void ft_free(run_state *s);

/* train_eval.c: the held-out metrics (the model's eval_metrics) on
 * train.eval_batches fixed batches. */
status_t run_evaluate(run_state *s, double *values);

/* train_metrics.c (rank 0 only, except run_open_logs' failure). */
status_t run_open_logs(run_state *s, int64_t start);
void run_close_logs(run_state *s);
/* sums: the step's counters summed over ranks. */
void run_log_step(run_state *s, int64_t step, const step_result *r, const double *sums,
                  double step_s);
void run_log_eval(run_state *s, int64_t step, const double *values);

#endif
