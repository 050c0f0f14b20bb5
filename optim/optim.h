/* optim.h: optimizers on the flat parameter/gradient buffers of the
 * parameter table: LAMB (apex FusedLAMB / TF Addons form, with the NVLAMB
 * and paper-v3 variants), AdamW, global-norm clipping with a skipped step on
 * non-finite norms, and learning-rate schedules. */
#ifndef MLMPI_OPTIM_H
#define MLMPI_OPTIM_H

#include "core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { OPTIM_LAMB, OPTIM_ADAMW } optim_kind;

typedef struct {
  optim_kind kind;
  float beta1, beta2, eps;
  float weight_decay;   /* λ, applied to tensors whose `decay` flag is set */
  bool bias_correction; /* false: LAMB paper v3 (no m̂, v̂ correction) */
  bool adapt_all;       /* NVLAMB: trust ratio on every tensor */
  float trust_min;      /* clamp of the trust ratio (0 = none) */
  float trust_max;      /* (0 = none) */
  float max_grad_norm;  /* global-norm clipping threshold (<= 0: off) */
} optim_config;

/* β1 0.9, β2 0.999, ε 1e-6, λ 0.01, bias correction on, LAMB, clip at 1.0. */
optim_config optim_config_default(void);

/* Learning-rate schedule: linear warmup from 0, then polynomial decay to
 * end_lr over the remaining steps (Hugging Face's polynomial schedule with
 * warmup: continuous at the end of warmup), or constant after warmup. */
typedef enum { SCHED_POLY, SCHED_CONSTANT } sched_kind;
typedef struct {
  sched_kind kind;
  double lr;
  double warmup; /* steps if >= 1, a fraction of total_steps if in (0,1) */
  int64_t total_steps;
  double power; /* 1.0 BERT, 0.5 NVIDIA's LAMB recipes */
  double end_lr;
} lr_schedule;
lr_schedule lr_schedule_default(void); /* poly, lr 1e-3, no warmup, power 1 */
/* The learning rate for the update made at step t (t = 0 for the first
 * update): t/W·lr during warmup (W warmup steps), then
 * end + (lr - end)·(1 - (t - W)/(total - W))^power, never below end; after
 * total_steps, end_lr. Pure. */
double lr_at(const lr_schedule *s, int64_t t);

/* Sets one `optim.*` config key (without the "optim." prefix) from text:
 * name (lamb|adamw), lr, warmup, decay_power, schedule (poly|constant),
 * end_lr, total_steps, beta1, beta2, eps, weight_decay, bias_correction,
 * adapt_all, trust_min, trust_max, max_grad_norm. STATUS_CONFIG names the
 * key and value when either is wrong. */
status_t optim_set_key(optim_config *c, lr_schedule *s, const char *key, const char *value);
/* One line per key with its default, for --help. */
const char *optim_keys_help(void);

/* What a step did, for metrics. */
typedef struct {
  double grad_norm; /* global norm before clipping */
  double clip;      /* factor applied to the gradient */
  float lr;
  bool skipped; /* non-finite norm: nothing changed */
  uint64_t skipped_total;
  float trust_min, trust_median, trust_max; /* over tensors with a ratio */
} optim_stats;

/* Optimizer state: first and second moments in buffers of the table's
 * layout, plus per-chunk scratch so that norms are summed in a fixed order
 * (the same result for any thread count). Not thread-safe; optim_step uses
 * OpenMP internally. The table must outlive the optimizer. */
typedef struct optim optim;
status_t optim_init(optim **out, const optim_config *c, const param_table *t);
/* ZeRO-1: an optimizer for the floats [lo, hi) of the layout only (moments
 * of that size). `sum` adds a vector of partial sums across the ranks in
 * place (an all-reduce); the global gradient norm and LAMB's per-tensor
 * norms go through it, since tensors straddle the ranks' ranges. */
typedef status_t (*optim_sum_fn)(void *ctx, double *buf, size_t n);
status_t optim_init_shard(optim **out, const optim_config *c, const param_table *t, size_t lo,
                          size_t hi, optim_sum_fn sum, void *ctx);
void optim_range(const optim *o, size_t *lo, size_t *hi);
void optim_free(optim *o);      /* NULL is a no-op */
float *optim_moment1(optim *o); /* m of floats [lo, hi) of the layout */
float *optim_moment2(optim *o); /* v, likewise */

/* The optimizer's state as checkpoints, ZeRO-1 gathering and resume see it,
 * without knowing the optimizer: a list of buffers, each with the layout of
 * the parameter table restricted to floats [lo, hi) (optim_range), and a
 * name (a checkpoint stores state `name` of parameter P as "<name>.P").
 * LAMB and AdamW: "exp_avg" (m), "exp_avg_sq" (v), as PyTorch names them. */
#define OPTIM_MAX_STATES 8
typedef struct {
  const char *name; /* static */
  float *data;      /* owned by the optimizer: floats [lo, hi) of the layout */
} optim_state;
/* Fills out[0..n) and returns n (<= OPTIM_MAX_STATES). */
int optim_states(optim *o, optim_state out[OPTIM_MAX_STATES]);
int64_t optim_steps_taken(const optim *o);
uint64_t optim_steps_skipped(const optim *o);
/* Restores the counters with the moments (resuming from a checkpoint). */
void optim_set_counters(optim *o, int64_t taken, uint64_t skipped);

/* Global L2 norm of the gradient, summed in double. `grads` points at the
 * gradient of float `lo` (the whole gradient buffer when not sharded). */
double optim_grad_norm(optim *o, const float *grads);

/* One update with learning rate lr: clips by the global norm, then applies
 * LAMB or AdamW to params[lo, hi) (params is the whole layout; grads points
 * at the gradient of float lo; grads are not modified). The bias
 * correction uses the optimizer's own count of steps taken + 1. A non-finite
 * gradient norm skips the step: params and moments stay as they were, the
 * step count does not advance, and stats->skipped is set. */
void optim_step(optim *o, float *params, const float *grads, float lr, optim_stats *stats);

#ifdef __cplusplus
}
#endif
#endif
