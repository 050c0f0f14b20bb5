/* train.c: the data-parallel training loop. Every rank holds the whole
 * model and takes its contiguous slice of each global batch, in
 * micro-batches; gradients are all-reduced in buckets during the last
 * micro-batch's backward; every rank then takes the same optimizer step.
 * Loss normalisers are the global batch's, so N ranks and one rank with
 * accumulation compute the same gradient. The loop knows the model, the
 * batch source, the communicator and the optimizer only through their
 * tables. */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "run.h"

static volatile sig_atomic_t stop_requested;
void train_request_stop(void) { stop_requested = 1; }

/* ---- Set-up ------------------------------------------------------------------- */
static status_t setup_batches(run_state *s) {
  train_config *c = &s->cfg;
  if (c->global_batch % s->world)
    return status_set(STATUS_CONFIG, "train.global_batch %lld is not divisible by the %d ranks",
                      (long long)c->global_batch, s->world);
  s->per_rank = c->global_batch / s->world;
  s->micro = c->micro_batch ? c->micro_batch : s->per_rank;
  if (s->per_rank % s->micro)
    return status_set(STATUS_CONFIG,
                      "train.global_batch %lld over %d ranks gives %lld sequences per rank, not a "
                      "multiple of train.micro_batch %lld",
                      (long long)c->global_batch, s->world, (long long)s->per_rank,
                      (long long)s->micro);
  s->accum = s->per_rank / s->micro;
  s->mb = calloc((size_t)s->accum, sizeof *s->mb);
  if (!s->mb) return status_set(STATUS_NOMEM, "out of memory");
  for (int64_t k = 0; k < s->accum; k++) {
    status_t st =
        data_batch_alloc(&s->mb[k], (int)s->micro, c->data.seq_len, c->data.max_predictions);
    if (st) return st;
  }
  return STATUS_OK;
}

static status_t open_sources(run_state *s) {
  train_config *c = &s->cfg;
  if (c->finetune) return ft_open_sources(s);
  batch_source_options o = {.path = c->data_path,
                            .service = c->data_service,
                            .token_file = c->data_token_file,
                            .split = "train",
                            .config = c->data,
                            .global_batch = (uint64_t)c->global_batch,
                            .timeout_s = c->timeout_s};
  status_t st = batch_source_open(&s->data, &o);
  if (st || !c->eval_every) return st;
  o.service = NULL;
  o.split = "holdout";
  if ((st = batch_source_open(&s->holdout, &o))) status_prefix("train.eval_every");
  return st;
}

/* The optimizer's cross-rank sum under ZeRO-1. */
static status_t sum_across_ranks(void *ctx, double *buf, size_t n) {
  comm_t *c = ctx;
  comm_set_context(c, "optimizer norms");
  return comm_allreduce_f64(c, buf, n);
}

static void on_grad_ready(void *ctx, int tensor) {
  run_state *s = ctx;
  if (s->cur_step + 1 == s->fault_step && s->rank == s->fault_rank) {
    const param_info *p = &s->mops->params(s->model)->p[tensor];
    s->mops->grad_buf(s->model)[p->offset] = NAN;
    LOG_WARN(TRAINER,
             "fault injected (MLMPI_FAULT_NONFINITE): NaN in the gradient of %s at step %lld",
             p->name, (long long)s->fault_step);
    s->fault_step = -1;
  }
  reducer_ready(s->red, tensor);
}

/* MLMPI_FAULT_NONFINITE=RANK:STEP, for the fault tests; anything else: off. */
static void read_fault(run_state *s) {
  const char *v = getenv("MLMPI_FAULT_NONFINITE");
  long long step = -1;
  int rank = -1;
  s->fault_step = -1;
  if (v && sscanf(v, "%d:%lld", &rank, &step) == 2 && rank >= 0 && step >= 0) {
    s->fault_rank = rank;
    s->fault_step = step;
  }
}

/* ZeRO-1 shards the optimizer state, not the gradients: in shared memory
 * the full gradient is all-reduced under backward as without ZeRO, and each
 * rank reads its slice of it; over MPI a reduce-scatter after backward
 * moves half the bytes of an all-reduce. */
static status_t setup_optimizer(run_state *s) {
  train_config *c = &s->cfg;
  const param_table *t = s->mops->params(s->model);
  if (!c->zero) {
    s->lo = 0;
    s->hi = t->total;
    return optim_init(&s->opt, &c->optim, t);
  }
  s->counts = calloc((size_t)s->world, sizeof *s->counts);
  if (!s->counts) return status_set(STATUS_NOMEM, "out of memory");
  for (int r = 0; r < s->world; r++)
    s->counts[r] = (int)(t->total * (size_t)(r + 1) / (size_t)s->world -
                         t->total * (size_t)r / (size_t)s->world);
  s->lo = t->total * (size_t)s->rank / (size_t)s->world;
  s->hi = s->lo + (size_t)s->counts[s->rank];
  if (!s->shared_grads) {
    s->gslice = mem_alloc((s->hi - s->lo + 1) * sizeof(float), "the gradient shard");
    if (!s->gslice) return STATUS_NOMEM;
  }
  return optim_init_shard(&s->opt, &c->optim, t, s->lo, s->hi, sum_across_ranks, s->comm);
}

static status_t setup_model(run_state *s) {
  train_config *c = &s->cfg;
  model_spec spec = {.config_path = c->model_config,
                     .preset = c->model_preset,
                     .vocab_size = batch_source_vocab_size(s->data),
                     .nsp = batch_source_nsp(s->data),
                     .seq_len = c->data.seq_len};
  model_shape shape = {(int)s->micro, c->data.seq_len, c->data.max_predictions, s->threads};
  const model_ops *ops;
  status_t st = c->finetune ? ft_model_spec(s, &spec, &ops)
                            : model_lookup(spec.config_path, spec.preset, &ops);
  if (st || (st = ops->create(&s->model, &spec, &shape)) ||
      (st = model_set_precision(s->model, c->model_precision)))
    return st;
  s->mops = s->model->ops;
  /* A causal LM learns from clm batches only, the masked-LM models from mlm
   * ones: the other kind would train on all-zero loss weights. */
  bool causal = s->mops->required_fields && (s->mops->required_fields(s->model) & MODEL_FIELD_CLM);
  if (!c->finetune && causal != (c->data.objective == OBJECTIVE_CLM))
    return status_set(STATUS_CONFIG, "%s needs data.objective = %s (it is %s)",
                      causal ? "a causal language model" : "a masked-LM model",
                      causal ? "clm" : "mlm", c->data.objective == OBJECTIVE_CLM ? "clm" : "mlm");
  const param_table *t = s->mops->params(s->model);
  if (c->shared_memory) {
    float *shared = NULL;
    if ((st = comm_alloc_shared(s->comm, t->total, &shared))) return st;
    if (shared) s->mops->use_grad_buf(s->model, shared);
    s->shared_grads = shared != NULL;
  }
  if (s->rank == 0)
    LOG_INFO(TRAINER, "gradient %s: %s",
             c->zero && !s->shared_grads ? "reduce-scatter" : "all-reduce",
             s->shared_grads ? "in shared memory on each node, MPI across nodes" : "MPI");
  if ((st = setup_optimizer(s))) return st;
  if ((st = reducer_init(&s->red, s->comm, t, s->mops->grad_buf(s->model), c->first_bucket_mb,
                         c->bucket_mb)))
    return st;
  read_fault(s);
  s->mops->set_grad_ready(s->model, on_grad_ready, s);
  return STATUS_OK;
}

/* A set-up failure every rank met (a wrong key, a file missing on a shared
 * file system) is said once, by rank 0; one that only some ranks met ends
 * the job, each of those ranks saying why. */
static status_t agree_on_setup(run_state *s, status_t st) {
  double failed[1] = {st != STATUS_OK};
  comm_set_context(s->comm, "the start-up check");
  status_t cs = comm_allreduce_f64(s->comm, failed, 1);
  if (cs) return cs;
  if (failed[0] == s->world) s->uniform = true;
  if (failed[0] > 0 && st == STATUS_OK)
    st = status_set(STATUS_CONFIG, "%.0f of the %d ranks could not set up the run", failed[0],
                    s->world);
  return st;
}

/* Every rank must run the same job: compare hashes of the effective config,
 * the parameter layout and the data with every other rank's. */
typedef struct {
  uint64_t config, layout, data;
  int64_t world;
} job_hash;

static status_t check_same_job(run_state *s) {
  job_hash mine = {core_fnv1a_str(s->cfg_text), param_table_hash(s->mops->params(s->model)),
                   batch_source_fingerprint(s->data), s->world};
  job_hash *all = calloc((size_t)s->world, sizeof *all);
  if (!all) return status_set(STATUS_NOMEM, "out of memory");
  comm_set_context(s->comm, "the start-up job check");
  status_t st = comm_allgather_bytes(s->comm, &mine, all, sizeof mine);
  for (int r = 1; r < s->world && st == STATUS_OK; r++) {
    const char *field = all[r].config != all[0].config   ? "config"
                        : all[r].layout != all[0].layout ? "model layout"
                        : all[r].data != all[0].data     ? "data fingerprint"
                                                         : NULL;
    if (field)
      st = status_set(STATUS_CONFIG,
                      "rank %d differs from rank 0 in its %s: every rank must run the same job", r,
                      field);
  }
  free(all);
  return st;
}

/* ---- One step ----------------------------------------------------------------- */
status_t run_fetch(run_state *s, batch_source *src, int64_t step, double den[2]) {
  const train_config *c = &s->cfg;
  den[0] = den[1] = 0;
  for (int64_t k = 0; k < s->accum; k++) {
    status_t st = batch_source_get(src, (uint64_t)step, run_first(s, k), (int)s->micro, &s->mb[k]);
    if (st) return st;
    /* The loss normaliser: Σ masked_lm_weights, or Σ target_weights of a
     * causal-LM batch. */
    if (c->data.objective == OBJECTIVE_CLM)
      for (int64_t i = 0; i < s->micro * c->data.seq_len; i++) den[0] += s->mb[k].target_weights[i];
    else
      for (int64_t i = 0; i < s->micro * c->data.max_predictions; i++)
        den[0] += s->mb[k].masked_lm_weights[i];
    for (int64_t i = 0; i < s->micro * c->data.seq_len; i++) den[1] += s->mb[k].input_mask[i];
  }
  return STATUS_OK;
}

model_run run_micro(const run_state *s, int64_t step, int64_t k, const double den[2], bool train) {
  return (model_run){.train = train,
                     .seed = (uint64_t)s->cfg.seed,
                     .step = (uint32_t)step,
                     .sample_base = (uint32_t)run_first(s, k),
                     .mlm_den = den[0],
                     .token_den = den[1],
                     .sequences = (double)s->cfg.global_batch};
}

/* Whether backward all-reduces the gradient (bucket by bucket) during
 * micro-batch k: on the last micro-batch of a step, unless ZeRO-1 reduce-
 * scatters it over MPI afterwards. */
static bool allreduce_in_backward(const run_state *s, int64_t k) {
  return (!s->cfg.zero || s->shared_grads) && k == s->accum - 1;
}

/* Forward and backward of every micro-batch; the reducer all-reduces the
 * gradient during the last one's backward. */
static status_t forward_backward(run_state *s, int64_t step, const double den[2], step_result *r) {
  const model_ops *m = s->mops;
  m->zero_grad(s->model);
  s->cur_step = step;
  for (int64_t k = 0; k < s->accum; k++) {
    model_batch b = model_batch_of(&s->mb[k]);
    status_t st = m->check_batch(s->model, &b);
    if (st) return st;
    model_run run = run_micro(s, step, k, den, true);
    m->forward(s->model, &b, &run, r->counters);
    reducer_begin(s->red, allreduce_in_backward(s, k), (uint64_t)step);
    m->backward(s->model);
  }
  return reducer_finish(s->red);
}

/* The optimizer step. ZeRO-1: reduce-scatter the gradient (unless backward
 * all-reduced it in shared memory), update this rank's slice, gather the
 * parameters. */
static status_t update(run_state *s, int64_t step, step_result *r) {
  float lr = (float)lr_at(&s->cfg.sched, step);
  float *params = s->mops->param_buf(s->model), *grads = s->mops->grad_buf(s->model);
  if (!s->cfg.zero) {
    optim_step(s->opt, params, grads, lr, &r->os);
    return STATUS_OK;
  }
  status_t st;
  double tc = core_now_s();
  const float *g = grads + s->lo;
  if (!s->shared_grads) {
    comm_set_context(s->comm, "step %lld gradient reduce-scatter", (long long)step);
    if ((st = comm_reduce_scatter(s->comm, grads, s->gslice, s->counts))) return st;
    g = s->gslice;
  }
  r->exposed_s += core_now_s() - tc;
  optim_step(s->opt, params, g, lr, &r->os);
  tc = core_now_s();
  comm_set_context(s->comm, "step %lld parameter all-gather", (long long)step);
  if ((st = comm_allgather(s->comm, params, s->counts))) return st;
  r->exposed_s += core_now_s() - tc;
  return STATUS_OK;
}

static status_t train_step(run_state *s, int64_t step, step_result *r) {
  memset(r, 0, sizeof *r);
  double t0 = core_now_s(), den[2];
  status_t st = run_fetch(s, s->data, step, den);
  if (st) return st;
  r->data_s = core_now_s() - t0;
  comm_set_context(s->comm, "step %lld loss normaliser", (long long)step);
  if ((st = comm_allreduce_f64(s->comm, den, 2))) return st;
  if ((st = forward_backward(s, step, den, r))) return st;
  r->exposed_s = reducer_exposed_s(s->red);
  if ((st = update(s, step, r))) return st;
  r->compute_s = core_now_s() - t0 - r->data_s - r->exposed_s;
  return STATUS_OK;
}

/* ---- The loop ----------------------------------------------------------------- */
/* Tells the batch source which slices this rank will ask for at a step. */
static void plan_step(run_state *s, int64_t step) {
  if (step >= s->cfg.steps) return;
  batch_slice slices[64];
  size_t n = 0;
  for (int64_t k = 0; k < s->accum && n < 64; k++)
    slices[n++] = (batch_slice){(uint64_t)step, run_first(s, k), (int)s->micro};
  batch_source_plan(s->data, slices, n);
}

/* The step's counters and the stop flag, summed over ranks in one go. */
static status_t reduce_metrics(run_state *s, int64_t step, const step_result *r, bool stop_here,
                               double *sums, bool *stop) {
  const int n = s->mops->n_counters;
  memcpy(sums, r->counters, (size_t)n * sizeof *sums);
  sums[n] = stop_here;
  comm_set_context(s->comm, "step %lld metrics", (long long)step);
  status_t st = comm_allreduce_f64(s->comm, sums, (size_t)n + 1);
  *stop = sums[n] > 0;
  return st;
}

/* Evaluation, checkpoint and stop after step `step`; *stop set when the
 * loop ends here. */
static status_t after_step(run_state *s, int64_t step, bool stop) {
  const train_config *c = &s->cfg;
  status_t st;
  if (c->eval_every && (step + 1) % c->eval_every == 0) {
    double values[MODEL_MAX_METRICS];
    if ((st = run_evaluate(s, values))) return st;
    run_log_eval(s, step, values);
    if (c->finetune && (st = ft_after_eval(s, step, values))) return st;
  }
  bool periodic = c->ckpt_every && (step + 1) % c->ckpt_every == 0;
  if (periodic || stop || step + 1 == c->steps)
    if ((st = run_save(s, step + 1))) return st;
  if (stop && s->rank == 0)
    LOG_INFO(TRAINER, "stopping after step %lld on a %s", (long long)step + 1,
             stop_requested ? "signal" : "time limit (train.time_limit_s)");
  return STATUS_OK;
}

static status_t loop(run_state *s, int64_t start) {
  const train_config *c = &s->cfg;
  int64_t step = start;
  const double t_start = s->t_start = core_now_s();
  for (int64_t k = 0; k < 4; k++) plan_step(s, start + k);
  for (bool stop = false; step < c->steps && !stop; step++) {
    plan_step(s, step + 4);
    double t0 = core_now_s(), sums[MODEL_MAX_COUNTERS + 1];
    step_result r;
    status_t st = train_step(s, step, &r);
    bool out_of_time = c->time_limit_s > 0 && core_now_s() - t_start >= c->time_limit_s;
    if (st || (st = reduce_metrics(s, step, &r, stop_requested || out_of_time, sums, &stop)))
      return st;
    if (s->rank == 0) run_log_step(s, step, &r, sums, core_now_s() - t0);
    if ((st = after_step(s, step, stop))) return st;
  }
  if (s->rank == 0 && s->tty) fputc('\n', stderr);
  if (s->rank == 0) LOG_INFO(TRAINER, "done: %lld steps", (long long)step);
  return STATUS_OK;
}

static status_t run(run_state *s, const char *init_from) {
  train_config *c = &s->cfg;
  status_t st = setup_batches(s);
  if (st == STATUS_OK) st = open_sources(s);
  if (st == STATUS_OK) st = setup_model(s);
  if ((st = agree_on_setup(s, st))) return st;
  s->uniform = true; /* the verdict of the job check is everyone's */
  if ((st = check_same_job(s))) return st;
  s->uniform = false;
  int64_t start;
  if ((st = run_init_weights(s, init_from, &start))) return st;
  if (s->rank == 0) {
    fprintf(stderr, "effective config:\n%s", s->cfg_text);
    LOG_INFO(TRAINER,
             "%zu parameters; %llu training instances; global batch %lld = %d rank(s) x %lld "
             "micro-batch(es) of %lld; %d gradient bucket(s)",
             s->mops->params(s->model)->total, (unsigned long long)batch_source_instances(s->data),
             (long long)c->global_batch, s->world, (long long)s->accum, (long long)s->micro,
             reducer_buckets(s->red));
    if ((st = run_open_logs(s, start))) return st;
  }
  return loop(s, start);
}

static void free_state(run_state *s) {
  run_close_logs(s);
  reducer_free(s->red);
  optim_free(s->opt);
  model_free(s->model);
  for (int64_t k = 0; s->mb && k < s->accum; k++) data_batch_free(&s->mb[k]);
  free(s->mb);
  free(s->counts);
  mem_free(s->gslice);
  batch_source_free(s->data);
  batch_source_free(s->holdout);
  ft_free(s);
  free(s->cfg_text);
}

status_t train_run(const train_config *cfg, comm_t *comm, int threads, const char *init_from,
                   bool *uniform) {
  run_state s = {.cfg = *cfg, .comm = comm, .rank = comm->rank, .world = comm->size};
  s.threads = threads;
  s.tty = isatty(STDERR_FILENO) && s.rank == 0;
  s.cfg_text = train_config_dump(cfg);
  status_t st = s.cfg_text ? STATUS_OK : status_set(STATUS_NOMEM, "out of memory");
  if (st == STATUS_OK && comm->ops->device_buffers && (s.uniform = true))
    st = status_set(STATUS_CONFIG,
                    "comm.backend = %s reduces GPU buffers, and this build's compute keeps the "
                    "model in host memory (fp32 on the CPU): use comm.backend = mpi",
                    comm->ops->name);
  if (st == STATUS_OK) st = run(&s, init_from);
  *uniform = st == STATUS_OK || s.uniform;
  /* After a failure only this rank met (a dead peer, say) the caller ends
   * the job at once: freeing could wait on the peer (the service client lets
   * requests in flight end), so the state goes with the process. */
  if (*uniform) free_state(&s);
  return st;
}
