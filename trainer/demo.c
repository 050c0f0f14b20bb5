/* demo.c: `mlmpi-train demo`: builds a small BERT (or the model a given
 * config.json names, through the model table), makes a synthetic masked-LM
 * batch whose masked tokens can be read off the unmasked context, and trains
 * on it with LAMB, printing the loss each step. It shows a model learning
 * end to end without the data pipeline or the distributed trainer. */
#include <getopt.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "optim.h"

static const char demo_usage[] =
    "usage: mlmpi-train demo [--model CONFIG.json] [--steps N] [--batch B] [--seq-len T]\n"
    "                        [--lr X] [--seed N] [--threads N]\n"
    "\n"
    "Trains a model (default: BERT, 2 layers, hidden 128, 2 heads, vocab 1000, NSP on; or the\n"
    "one CONFIG.json names: BERT, ELECTRA) on one\n"
    "synthetic batch with LAMB (linear warmup over 10% of the steps, then linear decay) and\n"
    "prints the loss every step. Each sequence repeats a random motif, so masked tokens are\n"
    "predictable from their context and the loss must fall.\n"
    "  --steps N (60)  --batch B (16)  --seq-len T (64)  --lr X (0.03)  --seed N (1)\n";

typedef struct {
  int32_t *ids, *mask, *seg, *pos, *mids, *nsp;
  float *w;
} demo_batch;

/* Sequence b repeats a motif of period 3..8 drawn from the vocabulary
 * (ids >= 5; 0 is padding, 4 stands for [MASK]); 15% of positions (distinct)
 * are replaced by [MASK] and predicted. NSP label: whether the period is even. */
static void make_batch(demo_batch *d, int B, int T, int P, int V, uint64_t seed) {
  for (int b = 0; b < B; b++) {
    float u[64];
    rng_uniform((rng_key){.seed = seed, .sample = (uint32_t)b, .stream = 1}, 0, 64, u);
    int period = 3 + (int)(u[0] * 6);
    for (int t = 0; t < T; t++) {
      d->ids[b * T + t] = 5 + (int)(u[1 + t % period] * (float)(V - 5));
      d->mask[b * T + t] = 1;
      d->seg[b * T + t] = t >= T / 2;
    }
    for (int p = 0; p < P; p++) {
      /* Distinct positions (ELECTRA replaces each at most once). */
      int t = 1 + (int)(u[20 + p % 40] * (float)(T - 1));
      for (int q = 0; q < p; q++)
        if (d->pos[b * P + q] == t) {
          t = 1 + t % (T - 1);
          q = -1;
        }
      d->pos[b * P + p] = t;
      d->mids[b * P + p] = d->ids[b * T + t];
      d->w[b * P + p] = 1.0f;
    }
    for (int p = 0; p < P; p++) d->ids[b * T + d->pos[b * P + p]] = 4;
    d->nsp[b] = period % 2 == 0;
  }
}

/* Trains m on the synthetic batch for `steps` LAMB steps, printing each. */
static status_t demo_run(model *m, demo_batch *d, int B, int T, int P, int steps, double lr,
                         uint64_t seed, optim **opt) {
  const model_ops *ops = m->ops;
  size_t N = (size_t)B * T, M = (size_t)B * P;
  *d = (demo_batch){calloc(N, 4), calloc(N, 4),         calloc(N, 4), calloc(M, 4),
                    calloc(M, 4), calloc((size_t)B, 4), calloc(M, 4)};
  if (!d->ids || !d->mask || !d->seg || !d->pos || !d->mids || !d->nsp || !d->w)
    return status_set(STATUS_NOMEM, "out of memory");
  make_batch(d, B, T, P, ops->vocab_size(m), seed);
  model_batch b = {.B = B,
                   .T = T,
                   .P = P,
                   .input_ids = d->ids,
                   .input_mask = d->mask,
                   .segment_ids = d->seg,
                   .masked_lm_positions = d->pos,
                   .masked_lm_ids = d->mids,
                   .masked_lm_weights = d->w,
                   .next_sentence_labels = d->nsp};
  status_t st = ops->check_batch(m, &b);
  if (st) return st;
  ops->init_weights(m, seed);
  const param_table *tab = ops->params(m);
  char what[256];
  ops->describe(m, what, sizeof what);
  printf("demo: %s, %zu parameters; batch %d x %d, %d masked per sequence; LAMB lr %g\n", what,
         tab->total, B, T, P, lr);
  optim_config oc = optim_config_default();
  lr_schedule sched = lr_schedule_default();
  sched.lr = lr;
  sched.warmup = 0.1;
  sched.total_steps = steps;
  if ((st = optim_init(opt, &oc, tab))) return st;
  for (int s = 0; s < steps; s++) {
    double t0 = core_now_s(), g[MODEL_MAX_COUNTERS] = {0}, v[MODEL_MAX_METRICS];
    model_run run = model_run_default();
    run.seed = seed;
    run.step = (uint32_t)s;
    ops->zero_grad(m);
    ops->forward(m, &b, &run, g);
    ops->backward(m);
    optim_stats os;
    optim_step(*opt, ops->param_buf(m), ops->grad_buf(m), (float)lr_at(&sched, s), &os);
    ops->train_values(g, B, v);
    printf("step %3d ", s + 1);
    for (int i = 0; i < ops->n_train_metrics; i++)
      printf(" %s %.4f", ops->train_metrics[i].key, v[i]);
    printf("  lr %.2e  |g| %.3f  %.0f ms\n", os.lr, os.grad_norm, (core_now_s() - t0) * 1e3);
    fflush(stdout);
  }
  return STATUS_OK;
}

int trainer_demo_main(int argc, char **argv) {
  static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                       {"steps", required_argument, 0, 'n'},
                                       {"batch", required_argument, 0, 'b'},
                                       {"seq-len", required_argument, 0, 'T'},
                                       {"lr", required_argument, 0, 'l'},
                                       {"seed", required_argument, 0, 's'},
                                       {"threads", required_argument, 0, 't'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  const char *config = NULL;
  int steps = 60, B = 16, T = 64, threads = 0;
  double lr = 0.03;
  uint64_t seed = 1;
  opterr = 0;
  optind = 1;
  for (int c, li = 0; (c = getopt_long(argc, argv, "", opts, &li)) != -1;) {
    char *end = NULL;
    switch (c) {
      case 'm': config = optarg; break;
      case 'n': steps = (int)strtol(optarg, &end, 10); break;
      case 'b': B = (int)strtol(optarg, &end, 10); break;
      case 'T': T = (int)strtol(optarg, &end, 10); break;
      case 'l': lr = strtod(optarg, &end); break;
      case 's': seed = strtoull(optarg, &end, 10); break;
      case 't': threads = (int)strtol(optarg, &end, 10); break;
      case 'h': fputs(demo_usage, stdout); return 0;
      default:
        fprintf(stderr, "mlmpi-train demo: unknown or incomplete option '%s' (see --help)\n",
                argv[optind - 1]);
        return 2;
    }
    if (end && (*end || end == optarg)) {
      fprintf(stderr, "mlmpi-train demo: bad value '%s' for --%s\n", optarg, opts[li].name);
      return 2;
    }
  }
  if (steps < 1 || B < 1 || T < 8 || !(lr > 0)) {
    fprintf(stderr,
            "mlmpi-train demo: --steps and --batch must be >= 1, --seq-len >= 8, --lr > 0\n");
    return 2;
  }
  if (threads) omp_set_num_threads(threads);
  int P = (T * 15 + 99) / 100;
  /* Without --model: bert-tiny with a vocabulary of 1000, 128 positions and
   * no dropout. */
  model_spec spec = {.config_path = config, .preset = "bert-tiny", .nsp = -1, .seq_len = T};
  if (!config)
    spec = (model_spec){.preset = "bert-tiny",
                        .vocab_size = 1000,
                        .nsp = 1,
                        .seq_len = T,
                        .max_positions = 128,
                        .no_dropout = true};
  model *m = NULL;
  optim *opt = NULL;
  demo_batch d = {0};
  status_t st = model_create(&m, &spec, &(model_shape){B, T, P, threads});
  if (st == STATUS_OK) st = demo_run(m, &d, B, T, P, steps, lr, seed, &opt);
  if (st != STATUS_OK) fprintf(stderr, "mlmpi-train demo: %s\n", status_message());
  optim_free(opt);
  model_free(m);
  free(d.ids);
  free(d.mask);
  free(d.seg);
  free(d.pos);
  free(d.mids);
  free(d.nsp);
  free(d.w);
  return st == STATUS_OK ? 0 : 1;
}
