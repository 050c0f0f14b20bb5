/* demo.c: `mlmpi-train demo`: builds a small BERT (or the one in a given
 * config.json), makes a synthetic masked-LM batch whose masked tokens can be
 * read off the unmasked context, and trains on it with LAMB, printing the
 * loss each step. It shows the model learning end to end before the
 * data pipeline and the distributed trainer exist. */
#include <getopt.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "optim.h"
#include "trainer.h"

static const char demo_usage[] =
    "usage: mlmpi-train demo [--model CONFIG.json] [--steps N] [--batch B] [--seq-len T]\n"
    "                        [--lr X] [--seed N] [--threads N]\n"
    "\n"
    "Trains a BERT model (default: 2 layers, hidden 128, 2 heads, vocab 1000, NSP on) on one\n"
    "synthetic batch with LAMB (linear warmup over 10% of the steps, then linear decay) and\n"
    "prints the loss every step. Each sequence repeats a random motif, so masked tokens are\n"
    "predictable from their context and the loss must fall.\n"
    "  --steps N (60)  --batch B (16)  --seq-len T (64)  --lr X (0.03)  --seed N (1)\n";

typedef struct {
  int32_t *ids, *mask, *seg, *pos, *mids, *nsp;
  float *w;
} demo_batch;

/* Sequence b repeats a motif of period 3..8 drawn from the vocabulary
 * (ids >= 5; 0 is padding, 4 stands for [MASK]); 15% of positions are
 * replaced by [MASK] and predicted. NSP label: whether the period is even. */
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
      int t = 1 + (int)(u[20 + p % 40] * (float)(T - 1));
      d->pos[b * P + p] = t;
      d->mids[b * P + p] = d->ids[b * T + t];
      d->w[b * P + p] = 1.0f;
    }
    for (int p = 0; p < P; p++) d->ids[b * T + d->pos[b * P + p]] = 4;
    d->nsp[b] = period % 2 == 0;
  }
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
  const char *model = NULL;
  int steps = 60, B = 16, T = 64, threads = 0;
  double lr = 0.03;
  uint64_t seed = 1;
  opterr = 0;
  optind = 1;
  for (int c, li = 0; (c = getopt_long(argc, argv, "", opts, &li)) != -1;) {
    char *end = NULL;
    switch (c) {
      case 'm': model = optarg; break;
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
  bert_config cfg = bert_config_default();
  cfg.vocab_size = 1000;
  cfg.hidden_size = 128;
  cfg.num_hidden_layers = 2;
  cfg.num_attention_heads = 2;
  cfg.intermediate_size = 512;
  cfg.max_position_embeddings = 128;
  cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0f;
  status_t st = model ? bert_config_load(model, &cfg) : STATUS_OK;
  int P = (T * 15 + 99) / 100;
  bert_model *m = NULL;
  if (st == STATUS_OK) st = bert_init(&m, &cfg, B, T, P, threads);
  if (st != STATUS_OK) {
    fprintf(stderr, "mlmpi-train demo: %s\n", status_message());
    return 1;
  }
  bert_init_weights(m, seed);
  size_t N = (size_t)B * T, M = (size_t)B * P;
  demo_batch d = {calloc(N, 4), calloc(N, 4),         calloc(N, 4), calloc(M, 4),
                  calloc(M, 4), calloc((size_t)B, 4), calloc(M, 4)};
  if (!d.ids || !d.mask || !d.seg || !d.pos || !d.mids || !d.nsp || !d.w) {
    fprintf(stderr, "mlmpi-train demo: out of memory\n");
    return 1;
  }
  make_batch(&d, B, T, P, cfg.vocab_size, seed);
  bert_batch b = {B, T, P, d.ids, d.mask, d.seg, d.pos, d.mids, d.w, d.nsp};
  const param_table *tab = bert_params(m);
  printf(
      "demo: BERT %d layers, hidden %d, %d heads, vocab %d, %zu parameters; batch %d x %d, "
      "%d masked per sequence; LAMB lr %g\n",
      cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.vocab_size, tab->total,
      B, T, P, lr);
  optim_config oc = optim_config_default();
  lr_schedule sched = lr_schedule_default();
  sched.lr = lr;
  sched.warmup = 0.1;
  sched.total_steps = steps;
  optim *opt = NULL;
  if (optim_init(&opt, &oc, tab) != STATUS_OK) {
    fprintf(stderr, "mlmpi-train demo: %s\n", status_message());
    return 1;
  }
  for (int s = 0; s < steps; s++) {
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    bert_run run = bert_run_default();
    run.seed = seed;
    run.step = (uint32_t)s;
    bert_losses ls;
    bert_zero_grad(m);
    bert_forward(m, &b, &run, &ls);
    bert_backward(m);
    optim_stats os;
    optim_step(opt, bert_param_buf(m), bert_grad_buf(m), (float)lr_at(&sched, s), &os);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    printf("step %3d  loss %.4f  (mlm %.4f, nsp %.4f)  mlm acc %.3f  lr %.2e  |g| %.3f  %.0f ms\n",
           s + 1, ls.loss, ls.mlm_loss, ls.nsp_loss,
           ls.mlm_correct / (ls.mlm_weight_sum > 0 ? ls.mlm_weight_sum : 1), os.lr, os.grad_norm,
           ms);
    fflush(stdout);
  }
  optim_free(opt);
  bert_free(m);
  free(d.ids);
  free(d.mask);
  free(d.seg);
  free(d.pos);
  free(d.mids);
  free(d.nsp);
  free(d.w);
  return 0;
}
