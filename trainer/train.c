/* train.c: `mlmpi-train [--config FILE] [--set section.key=value ...]`: the
 * data-parallel training run. Every rank holds the whole model and takes
 * its contiguous slice of each global batch, in micro-batches; gradients
 * are all-reduced in buckets during the last micro-batch's backward; every
 * rank then takes the same LAMB (or AdamW) step. Loss normalisers are the
 * global batch's, so N ranks and one rank with accumulation compute the
 * same gradient. */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <mpi.h>
#include <omp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ckpt.h"
#include "comm.h"
#include "electra.h"
#include "service.h"
#include "tb.h"
#include "tfexample.h"
#include "train_config.h"

static volatile sig_atomic_t stop_requested;
static void on_signal(int sig) {
  (void)sig;
  stop_requested = 1;
}

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static uint64_t fnv_str(const char *s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (; s && *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
  return h;
}

/* Where batches come from: shards in-process (the default), BERT TFRecords
 * with static masks, or the dataset service. All three give the batch of a
 * (step, slice) as a pure function, so the trainer cannot tell them apart. */
typedef struct {
  dataset *ds;     /* shards: also the vocabulary and special ids */
  tfx_source *tfx; /* TFRecords */
  svc_client *svc; /* the service (ds, when set, checks its fingerprint) */
  uint64_t fingerprint;
  uint64_t instances;
} batch_src;

static status_t src_get(batch_src *b, uint64_t global_batch, uint64_t step, uint64_t first,
                        int count, data_batch *out) {
  if (b->svc) return svc_client_get(b->svc, step, first, count, out);
  if (b->tfx) return tfx_get_batch(b->tfx, global_batch, step, first, count, out);
  return dataset_get_batch(b->ds, global_batch, step, first, count, out);
}

static void src_free(batch_src *b) {
  svc_client_free(b->svc);
  tfx_free(b->tfx);
  dataset_free(b->ds);
}

static bool is_dir(const char *p) {
  struct stat sb;
  return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* The run's state, shared by the steps. */
typedef struct {
  train_config cfg;
  char *cfg_text;
  comm_t *comm;
  int rank, world;
  batch_src data;   /* training batches */
  dataset *holdout; /* evaluation batches */
  bert_config mcfg;
  bert_model *model;
  electra_config ecfg;   /* model.preset electra-* or an ELECTRA model.config */
  electra_model *emodel; /* set instead of model for ELECTRA */
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
  FILE *metrics;
  tb_writer *tb;
  bool tty;
} run_state;

static void on_grad_ready(void *ctx, int tensor) { reducer_ready(ctx, tensor); }

/* The parameter table and buffers of whichever model runs. */
static const param_table *model_params(const run_state *s) {
  return s->emodel ? electra_params(s->emodel) : bert_params(s->model);
}
static float *model_param_buf(run_state *s) {
  return s->emodel ? electra_param_buf(s->emodel) : bert_param_buf(s->model);
}
static float *model_grad_buf(run_state *s) {
  return s->emodel ? electra_grad_buf(s->emodel) : bert_grad_buf(s->model);
}

/* ELECTRA when model.config says "model_type": "electra", or with no
 * model.config a preset named electra-*. */
static bool wants_electra(const train_config *c) {
  return c->model_config[0] ? electra_config_is_electra(c->model_config)
                            : !strncmp(c->model_preset, "electra-", 8);
}

/* The optimizer's cross-rank sum under ZeRO-1. */
static status_t sum_across_ranks(void *ctx, double *buf, size_t n) {
  comm_t *c = ctx;
  comm_set_context(c, "optimizer norms");
  if (c->ops->allreduce_f64(c, buf, n)) comm_fail(c, status_message());
  return STATUS_OK;
}

static status_t mkdir_p(const char *path) {
  char p[CFG_PATH];
  snprintf(p, sizeof p, "%s", path);
  for (char *q = p + 1; *q; q++)
    if (*q == '/') {
      *q = 0;
      mkdir(p, 0755);
      *q = '/';
    }
  if (mkdir(p, 0755) != 0 && errno != EEXIST)
    return status_set(STATUS_IO, "cannot create %s: %s", path, strerror(errno));
  return STATUS_OK;
}

static const char train_usage[] =
    "usage: mlmpi-train [--config FILE] [--set section.key=value ...] [--init-from CKPT]\n"
    "       mlmpi-train step|demo ... (see mlmpi-train --help)\n"
    "\n"
    "Trains under mpirun/srun (or as one process). Config keys (INI sections) and defaults:\n";

/* ---- Set-up ------------------------------------------------------------------- */
/* data.masking before parsing: not given (the default then follows the model). */
#define MASKING_UNSET ((mask_style)0x7f)

static status_t parse_args(int argc, char **argv, train_config *c, const char **init_from,
                           bool *help) {
  static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                       {"set", required_argument, 0, 's'},
                                       {"init-from", required_argument, 0, 'i'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  train_config_default(c);
  c->data.masking = MASKING_UNSET;
  *init_from = NULL;
  *help = false;
  /* The file first, then every --set on top, whatever their order. */
  opterr = 0;
  optind = 1;
  for (int o; (o = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
    if (o == 'c') {
      status_t st = train_config_load(c, optarg);
      if (st) return st;
    } else if (o == 'h') {
      *help = true;
      return STATUS_OK;
    } else if (o == '?') {
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
  if (c->sched.total_steps == 0) c->sched.total_steps = c->steps;
  /* data.masking defaults to the model's scheme: ELECTRA's (85% [MASK],
   * 15% kept) for an ELECTRA model, BERT's (80/10/10) otherwise. */
  if (c->data.masking == MASKING_UNSET)
    c->data.masking = wants_electra(c) ? MASK_ELECTRA : MASK_BERT;
  return train_config_check(c);
}

static status_t bert_model_config(run_state *s, const shard_meta *meta) {
  train_config *c = &s->cfg;
  status_t st;
  if (c->model_config[0]) {
    if ((st = bert_config_load(c->model_config, &s->mcfg))) return st;
    if (meta && (uint32_t)s->mcfg.vocab_size < meta->vocab_size)
      return status_set(STATUS_CONFIG,
                        "%s: vocab_size %d is smaller than the data's tokenizer (%u)",
                        c->model_config, s->mcfg.vocab_size, meta->vocab_size);
  } else if (!meta) {
    return status_set(STATUS_CONFIG,
                      "model.config (a config.json with vocab_size) is needed when "
                      "the data are not shards (a preset takes its vocabulary from them)");
  } else {
    if ((st = bert_preset(c->model_preset, &s->mcfg))) return st;
    s->mcfg.vocab_size = (int)meta->vocab_size;
  }
  if (!s->data.tfx) s->mcfg.nsp = c->data.instances == INST_NSP;
  if (s->mcfg.max_position_embeddings < c->data.seq_len)
    return status_set(STATUS_CONFIG,
                      "data.seq_len %d exceeds the model's max_position_embeddings %d",
                      c->data.seq_len, s->mcfg.max_position_embeddings);
  return STATUS_OK;
}

/* As bert_model_config for ELECTRA (NSP labels, where the data have them,
 * are not used). */
static status_t electra_model_config(run_state *s, const shard_meta *meta) {
  train_config *c = &s->cfg;
  status_t st;
  if (c->model_config[0]) {
    if ((st = electra_config_load(c->model_config, &s->ecfg))) return st;
    if (meta && (uint32_t)s->ecfg.vocab_size < meta->vocab_size)
      return status_set(STATUS_CONFIG,
                        "%s: vocab_size %d is smaller than the data's tokenizer (%u)",
                        c->model_config, s->ecfg.vocab_size, meta->vocab_size);
  } else if (!meta) {
    return status_set(STATUS_CONFIG,
                      "model.config (a config.json with vocab_size) is needed when "
                      "the data are not shards (a preset takes its vocabulary from them)");
  } else {
    if ((st = electra_preset(c->model_preset, &s->ecfg))) return st;
    s->ecfg.vocab_size = (int)meta->vocab_size;
    if ((st = electra_config_check(&s->ecfg))) return st;
  }
  if (s->ecfg.max_position_embeddings < c->data.seq_len)
    return status_set(STATUS_CONFIG,
                      "data.seq_len %d exceeds the model's max_position_embeddings %d",
                      c->data.seq_len, s->ecfg.max_position_embeddings);
  return STATUS_OK;
}

/* Threads for a rank: the cores it owns. Slurm says so in
 * SLURM_CPUS_PER_TASK; a rank bound to some cores (mpirun's default) owns
 * those; an unbound rank shares the node's cores with the other local ranks. */
static int default_threads(int local_size, const char **why) {
  const char *spt = getenv("SLURM_CPUS_PER_TASK");
  if (spt && atoi(spt) > 0) {
    *why = "SLURM_CPUS_PER_TASK";
    return atoi(spt);
  }
  long online = sysconf(_SC_NPROCESSORS_ONLN);
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) < online) {
    *why = "the cores this rank is bound to";
    return CPU_COUNT(&set);
  }
  *why = "the node's cores divided among its ranks";
  long t = online / (local_size > 0 ? local_size : 1);
  return t > 0 ? (int)t : 1;
}

static status_t setup_model(run_state *s) {
  train_config *c = &s->cfg;
  const shard_meta *meta = s->data.ds ? dataset_meta(s->data.ds) : NULL;
  const bool electra = wants_electra(c);
  status_t st = electra ? electra_model_config(s, meta) : bert_model_config(s, meta);
  if (st) return st;
  const char *why = "train.threads";
  int threads = c->threads;
  if (!threads) threads = default_threads(s->comm->local_size, &why);
  omp_set_num_threads(threads);
  if (s->rank == 0)
    LOG_INFO(TRAINER, "%d rank(s), %d on this node, %d thread(s) each (from %s)", s->world,
             s->comm->local_size, threads, why);
  if (electra)
    st = electra_init(&s->emodel, &s->ecfg, (int)s->micro, c->data.seq_len, c->data.max_predictions,
                      threads);
  else
    st = bert_init(&s->model, &s->mcfg, (int)s->micro, c->data.seq_len, c->data.max_predictions,
                   threads);
  if (st) return st;
  const param_table *t = model_params(s);
  /* ZeRO-1 shards the optimizer state, not the gradients: in shared memory
   * the full gradient is all-reduced under backward as without ZeRO, and each
   * rank reads its slice of it; over MPI a reduce-scatter after backward
   * moves half the bytes of an all-reduce. */
  if (c->shared_memory) {
    float *shared = NULL;
    if ((st = comm_alloc_shared(s->comm, t->total, &shared))) return st;
    if (shared && s->emodel) electra_use_grad_buf(s->emodel, shared);
    if (shared && s->model) bert_use_grad_buf(s->model, shared);
    s->shared_grads = shared != NULL;
  }
  if (s->rank == 0)
    LOG_INFO(TRAINER, "gradient %s: %s",
             c->zero && !s->shared_grads ? "reduce-scatter" : "all-reduce",
             s->shared_grads ? "in shared memory on each node, MPI across nodes" : "MPI");
  if (c->zero) {
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
    st = optim_init_shard(&s->opt, &c->optim, t, s->lo, s->hi, sum_across_ranks, s->comm);
  } else {
    s->lo = 0;
    s->hi = t->total;
    st = optim_init(&s->opt, &c->optim, t);
  }
  if (st) return st;
  if ((st = reducer_init(&s->red, s->comm, model_params(s), model_grad_buf(s), c->first_bucket_mb,
                         c->bucket_mb)))
    return st;
  if (electra)
    electra_set_grad_ready(s->emodel, on_grad_ready, s->red);
  else
    bert_set_grad_ready(s->model, on_grad_ready, s->red);
  return STATUS_OK;
}

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

/* Every rank must run the same job: compare hashes of the effective config,
 * the parameter layout and the data with every other rank's. */
typedef struct {
  uint64_t config, layout, data;
  int64_t world;
} job_hash;

static status_t check_same_job(run_state *s) {
  job_hash mine = {fnv_str(s->cfg_text), param_table_hash(model_params(s)), s->data.fingerprint,
                   s->world};
  job_hash *all = calloc((size_t)s->world, sizeof *all);
  if (!all) return status_set(STATUS_NOMEM, "out of memory");
  status_t st = s->comm->ops->allgather_bytes(s->comm, &mine, all, sizeof mine);
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
typedef struct {
  double loss, mlm_loss, nsp_loss, mlm_correct, mlm_wsum, nsp_correct;
  /* ELECTRA's discriminator: loss, real tokens, correct, replaced,
   * predicted replaced, both. */
  double disc_loss, disc_tokens, disc_correct, replaced, predicted, true_positive;
  double data_s, compute_s, exposed_s;
  optim_stats os;
} step_result;

/* The model's view of a micro-batch (the same arrays). */
static bert_batch bert_batch_of(const data_batch *b) {
  return (bert_batch){b->n,
                      b->T,
                      b->P,
                      b->input_ids,
                      b->input_mask,
                      b->segment_ids,
                      b->masked_lm_positions,
                      b->masked_lm_ids,
                      b->masked_lm_weights,
                      b->next_sentence_labels};
}

static electra_batch electra_batch_of(const data_batch *b) {
  return (electra_batch){b->n,
                         b->T,
                         b->P,
                         b->input_ids,
                         b->input_mask,
                         b->segment_ids,
                         b->masked_lm_positions,
                         b->masked_lm_ids,
                         b->masked_lm_weights,
                         NULL};
}

/* Whether backward all-reduces the gradient (bucket by bucket) during
 * micro-batch k: on the last micro-batch of a step, unless ZeRO-1 reduce-
 * scatters it over MPI afterwards. */
static bool allreduce_in_backward(const run_state *s, int64_t k) {
  return (!s->cfg.zero || s->shared_grads) && k == s->accum - 1;
}

/* One ELECTRA micro-batch k of this rank: forward (samples keyed by the
 * global sample index), backward into the reducer. den: the global batch's
 * Σ masked_lm_weights and real-token count. */
static status_t electra_micro_step(run_state *s, int64_t step, int64_t k, const double den[2],
                                   step_result *r) {
  const train_config *c = &s->cfg;
  const data_batch *b = &s->mb[k];
  electra_batch eb = electra_batch_of(b);
  status_t st = electra_check_batch(s->emodel, &eb);
  if (st) return st;
  electra_run run = electra_run_default();
  run.seed = (uint64_t)c->seed;
  run.step = (uint32_t)step;
  run.sample_base = (uint32_t)(s->rank * s->per_rank + k * s->micro);
  run.mlm_denominator = den[0];
  run.disc_denominator = den[1];
  electra_losses ls;
  electra_forward(s->emodel, &eb, &run, &ls);
  reducer_begin(s->red, allreduce_in_backward(s, k), (uint64_t)step);
  electra_backward(s->emodel);
  r->loss += ls.loss;
  r->mlm_loss += ls.mlm_loss;
  r->mlm_correct += ls.mlm_correct;
  r->mlm_wsum += ls.mlm_weight_sum;
  r->disc_loss += ls.disc_loss;
  r->disc_tokens += ls.disc_tokens;
  r->disc_correct += ls.disc_correct;
  r->replaced += ls.replaced;
  r->predicted += ls.predicted;
  r->true_positive += ls.true_positive;
  return STATUS_OK;
}

static status_t train_step(run_state *s, int64_t step, step_result *r) {
  train_config *c = &s->cfg;
  bert_model *m = s->model;
  memset(r, 0, sizeof *r);
  double t0 = now_s();
  double wsum[2] = {0, 0}; /* Σ masked_lm_weights; real tokens (ELECTRA) */
  for (int64_t k = 0; k < s->accum; k++) {
    uint64_t first = (uint64_t)(s->rank * s->per_rank + k * s->micro);
    status_t st = src_get(&s->data, (uint64_t)c->global_batch, (uint64_t)step, first, (int)s->micro,
                          &s->mb[k]);
    if (st) return st;
    for (int64_t i = 0; i < s->micro * c->data.max_predictions; i++)
      wsum[0] += s->mb[k].masked_lm_weights[i];
    if (s->emodel)
      for (int64_t i = 0; i < s->micro * c->data.seq_len; i++) wsum[1] += s->mb[k].input_mask[i];
  }
  r->data_s = now_s() - t0;
  comm_set_context(s->comm, "step %lld loss normaliser", (long long)step);
  status_t st = s->comm->ops->allreduce_f64(s->comm, wsum, 2);
  if (st) comm_fail(s->comm, status_message());
  if (s->emodel)
    electra_zero_grad(s->emodel);
  else
    bert_zero_grad(m);
  for (int64_t k = 0; k < s->accum; k++) {
    if (s->emodel) {
      if ((st = electra_micro_step(s, step, k, wsum, r))) return st;
      continue;
    }
    const data_batch *b = &s->mb[k];
    bert_batch bb = bert_batch_of(b);
    if ((st = bert_check_batch(m, &bb))) return st;
    bert_run run = bert_run_default();
    run.seed = (uint64_t)c->seed;
    run.step = (uint32_t)step;
    run.sample_base = (uint32_t)(s->rank * s->per_rank + k * s->micro);
    run.mlm_denominator = wsum[0];
    run.nsp_denominator = (double)c->global_batch;
    bert_losses ls;
    bert_forward(m, &bb, &run, &ls);
    reducer_begin(s->red, allreduce_in_backward(s, k), (uint64_t)step);
    bert_backward(m);
    r->loss += ls.loss;
    r->mlm_loss += ls.mlm_loss;
    r->nsp_loss += ls.nsp_loss;
    r->mlm_correct += ls.mlm_correct;
    r->mlm_wsum += ls.mlm_weight_sum;
    r->nsp_correct += ls.nsp_correct;
  }
  if ((st = reducer_finish(s->red))) comm_fail(s->comm, status_message());
  r->exposed_s = reducer_exposed_s(s->red);
  float lr = (float)lr_at(&c->sched, step);
  if (c->zero) {
    /* Reduce-scatter the gradient (unless backward all-reduced it in shared
     * memory), update this rank's slice, gather the parameters. */
    double tc = now_s();
    const float *g = model_grad_buf(s) + s->lo;
    if (!s->shared_grads) {
      comm_set_context(s->comm, "step %lld gradient reduce-scatter", (long long)step);
      if (s->comm->ops->reduce_scatter(s->comm, model_grad_buf(s), s->gslice, s->counts))
        comm_fail(s->comm, status_message());
      g = s->gslice;
    }
    r->exposed_s += now_s() - tc;
    optim_step(s->opt, model_param_buf(s), g, lr, &r->os);
    tc = now_s();
    comm_set_context(s->comm, "step %lld parameter all-gather", (long long)step);
    if (s->comm->ops->allgather(s->comm, model_param_buf(s), s->counts))
      comm_fail(s->comm, status_message());
    r->exposed_s += now_s() - tc;
  } else {
    optim_step(s->opt, model_param_buf(s), model_grad_buf(s), lr, &r->os);
  }
  r->compute_s = now_s() - t0 - r->data_s - r->exposed_s;
  return STATUS_OK;
}

/* ELECTRA's evaluation of micro-batch k of eval step e: no dropout; the
 * samples keyed by (train.seed, e, global sample index). Adds to acc. */
static void electra_eval_micro(run_state *s, int64_t e, int64_t k, const double den[2],
                               double acc[6]) {
  const data_batch *b = &s->mb[k];
  electra_batch eb = electra_batch_of(b);
  electra_run run = electra_run_default();
  run.train = false;
  run.seed = (uint64_t)s->cfg.seed;
  run.step = (uint32_t)e;
  run.sample_base = (uint32_t)(s->rank * s->per_rank + k * s->micro);
  run.mlm_denominator = den[0];
  run.disc_denominator = den[1];
  electra_losses ls;
  electra_forward(s->emodel, &eb, &run, &ls);
  acc[0] += ls.loss;
  acc[1] += ls.mlm_correct;
  acc[2] += ls.mlm_weight_sum;
  acc[3] += ls.disc_correct;
  acc[4] += ls.disc_tokens;
  acc[5] += ls.replaced;
}

/* Held-out loss and accuracy on a fixed set of batches (eval steps 0..k-1):
 * out = loss, MLM accuracy, NSP accuracy (BERT) or discriminator accuracy
 * (ELECTRA), and (ELECTRA) the fraction of tokens replaced. */
static status_t evaluate(run_state *s, double out[4]) {
  train_config *c = &s->cfg;
  /* loss, mlm correct, mlm weights, nsp (disc) correct, disc tokens, replaced */
  double acc[6] = {0, 0, 0, 0, 0, 0};
  for (int64_t e = 0; e < c->eval_batches; e++) {
    double wsum[2] = {0, 0};
    for (int64_t k = 0; k < s->accum; k++) {
      uint64_t first = (uint64_t)(s->rank * s->per_rank + k * s->micro);
      status_t st = dataset_get_batch(s->holdout, (uint64_t)c->global_batch, (uint64_t)e, first,
                                      (int)s->micro, &s->mb[k]);
      if (st) return st;
      for (int64_t i = 0; i < s->micro * c->data.max_predictions; i++)
        wsum[0] += s->mb[k].masked_lm_weights[i];
      if (s->emodel)
        for (int64_t i = 0; i < s->micro * c->data.seq_len; i++) wsum[1] += s->mb[k].input_mask[i];
    }
    comm_set_context(s->comm, "evaluation");
    if (s->comm->ops->allreduce_f64(s->comm, wsum, 2)) comm_fail(s->comm, status_message());
    for (int64_t k = 0; k < s->accum; k++) {
      if (s->emodel) {
        electra_eval_micro(s, e, k, wsum, acc);
        continue;
      }
      const data_batch *b = &s->mb[k];
      bert_batch bb = bert_batch_of(b);
      bert_run run = bert_run_default();
      run.train = false;
      run.mlm_denominator = wsum[0];
      run.nsp_denominator = (double)c->global_batch;
      bert_losses ls;
      bert_forward(s->model, &bb, &run, &ls);
      acc[0] += ls.loss;
      acc[1] += ls.mlm_correct;
      acc[2] += ls.mlm_weight_sum;
      acc[3] += ls.nsp_correct;
    }
  }
  if (s->comm->ops->allreduce_f64(s->comm, acc, 6)) comm_fail(s->comm, status_message());
  out[0] = acc[0] / (double)c->eval_batches;
  out[1] = acc[2] > 0 ? acc[1] / acc[2] : 0;
  out[2] = s->emodel ? (acc[4] > 0 ? acc[3] / acc[4] : 0)
                     : acc[3] / (double)(c->eval_batches * c->global_batch);
  out[3] = acc[4] > 0 ? acc[5] / acc[4] : 0;
  return STATUS_OK;
}

static double peak_rss_mb(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_maxrss / 1024.0;
}

/* ELECTRA's discriminator metrics from the reduced g[]: accuracy, precision
 * and recall on replaced tokens, the fraction replaced. */
static void disc_metrics(const double g[13], double m[4]) {
  m[0] = g[8] > 0 ? g[9] / g[8] : 0;
  m[1] = g[11] > 0 ? g[12] / g[11] : 0;
  m[2] = g[10] > 0 ? g[12] / g[10] : 0;
  m[3] = g[8] > 0 ? g[10] / g[8] : 0;
}

/* g: loss, mlm_loss, mlm correct, mlm weights, nsp correct, nsp_loss, stop,
 * disc_loss, disc tokens, disc correct, replaced, predicted, both. */
static void log_step(run_state *s, int64_t step, const step_result *r, const double g[13],
                     double step_s) {
  train_config *c = &s->cfg;
  double tokens = (double)c->global_batch * c->data.seq_len;
  double acc = g[3] > 0 ? g[2] / g[3] : 0, dm[4];
  disc_metrics(g, dm);
  if (s->metrics && s->emodel)
    fprintf(s->metrics,
            "{\"step\":%lld,\"loss\":%.6f,\"mlm_loss\":%.6f,\"disc_loss\":%.6f,\"mlm_acc\":%.5f,"
            "\"disc_acc\":%.5f,\"disc_precision\":%.5f,\"disc_recall\":%.5f,"
            "\"replaced_frac\":%.5f,",
            (long long)step + 1, g[0], g[1], g[7], acc, dm[0], dm[1], dm[2], dm[3]);
  else if (s->metrics)
    fprintf(s->metrics,
            "{\"step\":%lld,\"loss\":%.6f,\"mlm_loss\":%.6f,\"nsp_loss\":%.6f,\"mlm_acc\":%.5f,"
            "\"nsp_acc\":%.5f,",
            (long long)step + 1, g[0], g[1], g[5], acc, g[4] / (double)c->global_batch);
  if (s->metrics)
    fprintf(s->metrics,
            "\"lr\":%.6g,\"grad_norm\":%.6g,\"clip\":%.4g,\"skipped\":%s,"
            "\"trust_min\":%.5g,\"trust_median\":%.5g,\"trust_max\":%.5g,\"tokens_per_s\":%.1f,"
            "\"step_s\":%.4f,\"data_s\":%.4f,\"compute_s\":%.4f,\"exposed_comm_s\":%.4f,"
            "\"peak_rss_mb\":%.1f}\n",
            (double)r->os.lr, r->os.grad_norm, r->os.clip, r->os.skipped ? "true" : "false",
            (double)r->os.trust_min, (double)r->os.trust_median, (double)r->os.trust_max,
            tokens / step_s, step_s, r->data_s, r->compute_s, r->exposed_s, peak_rss_mb());
  if (s->metrics) fflush(s->metrics);
  if (s->tb) {
    static const char *const tags[] = {"train/loss",          "train/mlm_accuracy",
                                       "train/learning_rate", "train/grad_norm",
                                       "train/tokens_per_s",  "train/trust_ratio_median"};
    const float v[] = {
        (float)g[0],       (float)acc, r->os.lr, (float)r->os.grad_norm, (float)(tokens / step_s),
        r->os.trust_median};
    static const char *const etags[] = {"train/mlm_loss", "train/disc_loss", "train/disc_accuracy",
                                        "train/disc_precision", "train/disc_recall"};
    const float ev[] = {(float)g[1], (float)g[7], (float)dm[0], (float)dm[1], (float)dm[2]};
    if (tb_scalars(s->tb, step + 1, tags, v, 6) ||
        (s->emodel && tb_scalars(s->tb, step + 1, etags, ev, 5)) || tb_flush(s->tb)) {
      LOG_WARN(TRAINER, "%s; no more TensorBoard events", status_message());
      tb_close(s->tb);
      s->tb = NULL;
    }
  }
  if ((step + 1) % c->log_every && step + 1 != c->steps) return;
  double eta = step_s * (double)(c->steps - step - 1);
  if (s->tty)
    fprintf(stderr, "\rstep %lld/%lld  loss %.4f  mlm acc %.3f  lr %.2e  %.0f tok/s  ETA %.0f s   ",
            (long long)step + 1, (long long)c->steps, g[0], acc, (double)r->os.lr, tokens / step_s,
            eta);
  else {
    char disc[32] = "";
    if (s->emodel) snprintf(disc, sizeof disc, " disc_acc %.3f", dm[0]);
    LOG_INFO(TRAINER, "step %lld/%lld loss %.4f mlm_acc %.3f%s lr %.3g grad_norm %.3g %.0f tok/s",
             (long long)step + 1, (long long)c->steps, g[0], acc, disc, (double)r->os.lr,
             r->os.grad_norm, tokens / step_s);
  }
}

/* The optimizer state in the whole layout: the optimizer's own buffers, or
 * (ZeRO-1) every rank's slice gathered into new ones (freed by the caller
 * when *owned). */
static status_t gather_optim(run_state *s, ckpt_optim *o, bool *owned) {
  const param_table *t = model_params(s);
  o->taken = optim_steps_taken(s->opt);
  o->skipped = optim_steps_skipped(s->opt);
  *owned = s->cfg.zero != 0;
  if (!*owned) {
    o->m = optim_moment1(s->opt);
    o->v = optim_moment2(s->opt);
    return STATUS_OK;
  }
  o->m = mem_alloc(t->total * sizeof(float), "gathered moments");
  o->v = mem_alloc(t->total * sizeof(float), "gathered moments");
  if (!o->m || !o->v) return STATUS_NOMEM;
  memcpy(o->m + s->lo, optim_moment1(s->opt), (s->hi - s->lo) * sizeof(float));
  memcpy(o->v + s->lo, optim_moment2(s->opt), (s->hi - s->lo) * sizeof(float));
  comm_set_context(s->comm, "gathering optimizer state");
  if (s->comm->ops->allgather(s->comm, o->m, s->counts) ||
      s->comm->ops->allgather(s->comm, o->v, s->counts))
    comm_fail(s->comm, status_message());
  return STATUS_OK;
}

static status_t save(run_state *s, int64_t steps_done) {
  if (!s->cfg.ckpt_dir[0]) return STATUS_OK;
  ckpt_optim o = {0};
  bool owned;
  status_t st = gather_optim(s, &o, &owned);
  if (st == STATUS_OK && s->rank == 0) {
    ckpt_info info = {steps_done, s->world, s->data.fingerprint, s->cfg.seed};
    st = ckpt_save(s->cfg.ckpt_dir, &info, model_params(s), model_param_buf(s), &o, s->cfg_text,
                   s->cfg.ckpt_keep);
    if (st == STATUS_OK)
      LOG_INFO(TRAINER, "checkpoint: %s/step-%lld", s->cfg.ckpt_dir, (long long)steps_done);
  }
  if (owned) {
    mem_free(o.m);
    mem_free(o.v);
  }
  /* Every rank learns whether rank 0's write worked. */
  double ok[1] = {st == STATUS_OK};
  comm_set_context(s->comm, "checkpoint at step %lld", (long long)steps_done);
  if (s->comm->ops->broadcast(s->comm, ok, sizeof ok, 0)) comm_fail(s->comm, status_message());
  if (!ok[0] && s->rank) st = status_set(STATUS_IO, "rank 0 could not write the checkpoint");
  return st;
}

/* Weights: resumed, initialised from a checkpoint's weights, or fresh. Rank
 * 0 reads; everything is broadcast, so ranks need not share a file system. */
static status_t init_weights(run_state *s, const char *init_from, int64_t *start) {
  train_config *c = &s->cfg;
  const param_table *t = model_params(s);
  const size_t bytes = t->total * sizeof(float);
  ckpt_optim o = {0};
  /* What rank 0 found: ok, resumed, step, steps taken, steps skipped. */
  double head[5] = {1, 0, 0, 0, 0};
  char path[4096] = "";
  status_t st = STATUS_OK;
  *start = 0;
  if (s->rank == 0) {
    if (!strcmp(c->ckpt_resume, "auto")) {
      if (!c->ckpt_dir[0])
        st = status_set(STATUS_CONFIG, "ckpt.resume = auto needs ckpt.dir");
      else
        st = ckpt_find_latest(c->ckpt_dir, path, sizeof path);
    } else if (strcmp(c->ckpt_resume, "none")) {
      snprintf(path, sizeof path, "%s", c->ckpt_resume);
    }
    ckpt_info info;
    if (st == STATUS_OK && path[0]) {
      o.m = mem_alloc(bytes, "checkpoint moments");
      o.v = mem_alloc(bytes, "checkpoint moments");
      st = !o.m || !o.v ? STATUS_NOMEM : ckpt_load(path, &info, t, model_param_buf(s), &o);
      if (st == STATUS_OK && info.data_fingerprint != s->data.fingerprint)
        st = status_set(STATUS_CONFIG, "checkpoint %s was made on other data or data settings",
                        path);
      if (st == STATUS_OK) {
        head[1] = 1;
        head[2] = (double)info.step;
        head[3] = (double)o.taken;
        head[4] = (double)o.skipped;
        LOG_INFO(TRAINER, "resuming from %s (step %lld, written by %d rank(s))", path,
                 (long long)info.step, info.world_size);
      }
    } else if (st == STATUS_OK && init_from) {
      st = ckpt_load(init_from, &info, t, model_param_buf(s), NULL);
      if (st == STATUS_OK)
        LOG_INFO(TRAINER, "weights from %s; fresh optimizer and schedule", init_from);
    } else if (st == STATUS_OK) {
      if (s->emodel)
        electra_init_weights(s->emodel, (uint64_t)c->seed);
      else
        bert_init_weights(s->model, (uint64_t)c->seed);
    }
    head[0] = st == STATUS_OK;
  }
  s->uniform = true; /* rank 0's verdict reaches everyone */
  comm_set_context(s->comm, "start-up weight broadcast");
  if (s->comm->ops->broadcast(s->comm, head, sizeof head, 0)) comm_fail(s->comm, status_message());
  if (!head[0]) {
    if (s->rank) st = status_set(STATUS_IO, "rank 0 could not load the weights");
    goto out;
  }
  if ((st = s->comm->ops->broadcast(s->comm, model_param_buf(s), bytes, 0))) goto out;
  if (head[1]) {
    if (s->rank) {
      o.m = mem_alloc(bytes, "checkpoint moments");
      o.v = mem_alloc(bytes, "checkpoint moments");
      if (!o.m || !o.v) comm_fail(s->comm, "out of memory receiving the optimizer state");
    }
    if ((st = s->comm->ops->broadcast(s->comm, o.m, bytes, 0)) ||
        (st = s->comm->ops->broadcast(s->comm, o.v, bytes, 0)))
      goto out;
    memcpy(optim_moment1(s->opt), o.m + s->lo, (s->hi - s->lo) * sizeof(float));
    memcpy(optim_moment2(s->opt), o.v + s->lo, (s->hi - s->lo) * sizeof(float));
    optim_set_counters(s->opt, (int64_t)head[3], (uint64_t)head[4]);
    *start = (int64_t)head[2];
  }
out:
  mem_free(o.m);
  mem_free(o.v);
  if (st == STATUS_OK) s->uniform = false;
  return st;
}

static status_t open_source(run_state *s) {
  train_config *c = &s->cfg;
  batch_src *b = &s->data;
  status_t st;
  if (c->data_path[0] && is_dir(c->data_path)) {
    if ((st = dataset_open(&b->ds, c->data_path, "train", &c->data))) return st;
    b->fingerprint = dataset_fingerprint(b->ds);
    b->instances = dataset_instances(b->ds);
  } else if (c->data_path[0]) {
    const char *paths[1] = {c->data_path};
    if ((st = tfx_open(paths, 1, c->data.seq_len, c->data.max_predictions, c->data.seed, &b->tfx)))
      return st;
    b->fingerprint = tfx_fingerprint(b->tfx);
    b->instances = tfx_records(b->tfx);
  }
  if (c->data_service[0]) {
    if (b->tfx)
      return status_set(STATUS_CONFIG, "data.service serves shards, not TFRecords (data.path)");
    svc_client_options o = svc_client_options_default();
    o.addresses = c->data_service;
    o.config = c->data;
    o.global_batch = (uint64_t)c->global_batch;
    o.fingerprint = b->ds ? b->fingerprint : 0;
    o.timeout_ms = (int)(c->timeout_s * 1000);
    char *token = NULL;
    if (c->data_token_file[0] && (st = svc_read_token(c->data_token_file, &token))) return st;
    o.token = token;
    st = svc_client_open(&b->svc, &o);
    free(token);
    if (st) return st;
  }
  return STATUS_OK;
}

/* Tells the service client which slices this rank will ask for at a step. */
static void plan_step(run_state *s, int64_t step) {
  if (!s->data.svc || step >= s->cfg.steps) return;
  svc_key keys[64];
  int n = 0;
  for (int64_t k = 0; k < s->accum && n < 64; k++)
    keys[n++] =
        (svc_key){(uint64_t)step, (uint64_t)(s->rank * s->per_rank + k * s->micro), (int)s->micro};
  svc_client_plan(s->data.svc, keys, (size_t)n);
}

static status_t run(run_state *s, const char *init_from) {
  train_config *c = &s->cfg;
  status_t st;
  if ((st = setup_batches(s))) return st;
  if ((st = open_source(s))) return st;
  if (c->eval_every) {
    if (!s->data.ds)
      return status_set(STATUS_CONFIG,
                        "train.eval_every needs data.path to be a directory of shards "
                        "with a holdout split");
    if ((st = dataset_open(&s->holdout, c->data_path, "holdout", &c->data))) return st;
  }
  if ((st = setup_model(s))) return st;
  s->uniform = true; /* the verdict of the job check is everyone's */
  if ((st = check_same_job(s))) return st;
  s->uniform = false;
  int64_t start;
  if ((st = init_weights(s, init_from, &start))) return st;
  if (s->rank == 0) {
    fprintf(stderr, "effective config:\n%s", s->cfg_text);
    LOG_INFO(TRAINER,
             "%zu parameters; %llu training instances; global batch %lld = %d rank(s) x %lld "
             "micro-batch(es) of %lld; %d gradient bucket(s)",
             model_params(s)->total, (unsigned long long)s->data.instances,
             (long long)c->global_batch, s->world, (long long)s->accum, (long long)s->micro,
             reducer_buckets(s->red));
    if (c->log_dir[0]) {
      char p[CFG_PATH + 32];
      if ((st = mkdir_p(c->log_dir))) return st;
      snprintf(p, sizeof p, "%s/metrics.jsonl", c->log_dir);
      s->metrics = fopen(p, start ? "a" : "w");
      if (!s->metrics) return status_set(STATUS_IO, "cannot open %s: %s", p, strerror(errno));
      if ((st = tb_open(&s->tb, c->log_dir))) return st;
    }
  }
  int64_t step = start;
  const double t_start = now_s();
  for (int64_t k = 0; k < 4; k++) plan_step(s, start + k);
  for (; step < c->steps; step++) {
    plan_step(s, step + 4);
    double t0 = now_s();
    step_result r;
    if ((st = train_step(s, step, &r))) return st;
    /* One reduction carries the metrics and the stop flag. */
    bool out_of_time = c->time_limit_s > 0 && now_s() - t_start >= c->time_limit_s;
    double g[13] = {r.loss,
                    r.mlm_loss,
                    r.mlm_correct,
                    r.mlm_wsum,
                    r.nsp_correct,
                    r.nsp_loss,
                    (double)(stop_requested || out_of_time),
                    r.disc_loss,
                    r.disc_tokens,
                    r.disc_correct,
                    r.replaced,
                    r.predicted,
                    r.true_positive};
    comm_set_context(s->comm, "step %lld metrics", (long long)step);
    if (s->comm->ops->allreduce_f64(s->comm, g, 13)) comm_fail(s->comm, status_message());
    if (s->rank == 0) log_step(s, step, &r, g, now_s() - t0);
    bool stop = g[6] > 0;
    if (c->eval_every && (step + 1) % c->eval_every == 0) {
      double e[4];
      if ((st = evaluate(s, e))) return st;
      if (s->rank == 0) {
        if (s->metrics && s->emodel)
          fprintf(
              s->metrics,
              "{\"eval_step\":%lld,\"eval_loss\":%.6f,\"eval_mlm_acc\":%.5f,\"eval_disc_acc\":%.5f,"
              "\"eval_replaced_frac\":%.5f}\n",
              (long long)step + 1, e[0], e[1], e[2], e[3]);
        else if (s->metrics)
          fprintf(s->metrics,
                  "{\"eval_step\":%lld,\"eval_loss\":%.6f,\"eval_mlm_acc\":%.5f,\"eval_nsp_acc\":%."
                  "5f}\n",
                  (long long)step + 1, e[0], e[1], e[2]);
        if (s->tb) {
          static const char *const tags[] = {"eval/loss", "eval/mlm_accuracy"};
          const float v[] = {(float)e[0], (float)e[1]};
          tb_scalars(s->tb, step + 1, tags, v, 2);
        }
        if (s->tty) fputc('\n', stderr);
        LOG_INFO(TRAINER, "eval at step %lld: held-out loss %.4f, MLM accuracy %.4f",
                 (long long)step + 1, e[0], e[1]);
      }
    }
    bool periodic = c->ckpt_every && (step + 1) % c->ckpt_every == 0;
    if (periodic || stop || step + 1 == c->steps)
      if ((st = save(s, step + 1))) return st;
    if (stop) {
      if (s->rank == 0)
        LOG_INFO(TRAINER, "stopping after step %lld on a %s", (long long)step + 1,
                 stop_requested ? "signal" : "time limit (train.time_limit_s)");
      step++;
      break;
    }
  }
  if (s->rank == 0 && s->tty) fputc('\n', stderr);
  if (s->rank == 0) LOG_INFO(TRAINER, "done: %lld steps", (long long)step);
  return STATUS_OK;
}

int trainer_train_main(int argc, char **argv) {
  /* Open MPI's non-blocking all-reduce (libnbc) uses a binomial tree
   * through rank 0 unless told otherwise; the gradient buckets want the
   * bandwidth-optimal ring. An explicit setting by the user wins. */
  setenv("OMPI_MCA_coll_libnbc_iallreduce_algorithm", "1", 0);
  int provided; /* FUNNELED suffices: only the main thread calls MPI */
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  (void)provided;
  run_state s = {0};
  int rc = 0;
  bool help;
  const char *init_from;
  MPI_Comm_rank(MPI_COMM_WORLD, &s.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &s.world);
  log_set_rank(s.world > 1 ? s.rank : -1);
  status_t st = parse_args(argc, argv, &s.cfg, &init_from, &help);
  if (help) {
    if (s.rank == 0) {
      fputs(train_usage, stdout);
      fputs(train_config_help(), stdout);
    }
    MPI_Finalize();
    return 0;
  }
  struct sigaction sa = {.sa_handler = on_signal};
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGUSR1, &sa, NULL);
  s.tty = isatty(STDERR_FILENO) && s.rank == 0;
  if (st == STATUS_OK) {
    s.cfg_text = train_config_dump(&s.cfg);
    st = comm_mpi_init(&s.comm, s.cfg.timeout_s);
  }
  bool uniform = true; /* argument and config errors are found alike everywhere */
  if (st == STATUS_OK) {
    st = run(&s, init_from);
    uniform = s.uniform;
  }
  if (st != STATUS_OK) {
    /* One line: from rank 0 when every rank failed alike, else from the rank
     * that failed (which then ends the job so nobody waits for it). */
    if (!uniform || s.rank == 0) LOG_ERROR(TRAINER, "%s", status_message());
    rc = 1;
  }
  if (s.metrics) fclose(s.metrics);
  tb_close(s.tb);
  reducer_free(s.red);
  optim_free(s.opt);
  bert_free(s.model);
  electra_free(s.emodel);
  for (int64_t k = 0; s.mb && k < s.accum; k++) data_batch_free(&s.mb[k]);
  free(s.mb);
  free(s.counts);
  mem_free(s.gslice);
  src_free(&s.data);
  dataset_free(s.holdout);
  free(s.cfg_text);
  if (rc && !uniform && s.world > 1) MPI_Abort(MPI_COMM_WORLD, rc);
  comm_free(s.comm);
  MPI_Finalize();
  return rc;
}
