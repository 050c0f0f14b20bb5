/* step.c: `mlmpi-train step`, the oracle hook: one forward and backward of
 * the model a config.json names (through the model table) on given weights
 * and a given batch, all outputs and every parameter's gradient written to
 * a safetensors file. */
#include <getopt.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "optim.h"

typedef struct {
  const char *model, *weights, *batch, *out;
  const char *precision; /* the compute backend (NULL: fp32) */
  uint64_t seed;
  int threads;
  int steps;  /* optimizer steps after the first forward/backward (0: none) */
  int timing; /* --timing: print the time of the steps after the first */
  optim_config optim;
  lr_schedule sched;
} step_args;

static const char step_usage[] =
    "usage: mlmpi-train step --model CONFIG.json --weights W.safetensors --batch B.safetensors\n"
    "                        --out OUT.safetensors [--seed N] [--threads N] [--precision P]\n"
    "                        [--steps K --optim lamb|adamw --lr X --weight-decay X --beta1 X\n"
    "                         --beta2 X --eps X --max-grad-norm X --adapt-all "
    "--no-bias-correction\n"
    "                         --trust-min X --trust-max X] [--timing]\n"
    "\n"
    "One forward and backward pass of the model in CONFIG.json (a Hugging Face config; its\n"
    "model_type picks the model) on the weights W (Hugging Face parameter names) and the batch\n"
    "B; writes the model's outputs and grad.<name> for every parameter to OUT.\n"
    "  --seed N     dropout (and ELECTRA sampling) seed; dropout follows the config's\n"
    "               probabilities (default 0)\n"
    "  --threads N  OpenMP/OpenBLAS threads (default: all cores)\n"
    "  --precision P  fp32 (default) or bf16: the model.precision the matrix products run in\n"
    "  --steps K    then take K optimizer steps on the same batch at constant lr and also write\n"
    "               the final weights under their parameter names, `losses` [K] (the loss before\n"
    "               each step) and `grad_norms` [K] (the global gradient norm before clipping).\n"
    "               Optimizer flags as the optim.* config keys (defaults: LAMB, lr 1e-3, weight\n"
    "               decay 0.01, beta1 0.9, beta2 0.999, eps 1e-6, max grad norm 1.0).\n"
    "  --timing     print one JSON line to stdout: the first forward/backward's milliseconds\n"
    "               and, with --steps K > 1, the mean of the K - 1 whole steps after it\n"
    "               (forward, backward and optimizer; what benchmarks time)\n"
    "\n"
    "The batch and the outputs of each model:\n";

static void print_help(void) {
  fputs(step_usage, stdout);
  for (int i = 0; model_at(i); i++) fputs(model_at(i)->step_help, stdout);
}

static int parse_args(int argc, char **argv, step_args *a) {
  static const struct option opts[] = {
      {"model", required_argument, 0, 'm'},    {"weights", required_argument, 0, 'w'},
      {"batch", required_argument, 0, 'b'},    {"out", required_argument, 0, 'o'},
      {"seed", required_argument, 0, 's'},     {"threads", required_argument, 0, 't'},
      {"help", no_argument, 0, 'h'},           {"precision", required_argument, 0, 'p'},
      {"steps", required_argument, 0, 'K'},    {"optim", required_argument, 0, 1},
      {"lr", required_argument, 0, 2},         {"weight-decay", required_argument, 0, 3},
      {"beta1", required_argument, 0, 4},      {"beta2", required_argument, 0, 5},
      {"eps", required_argument, 0, 6},        {"max-grad-norm", required_argument, 0, 7},
      {"adapt-all", no_argument, 0, 8},        {"no-bias-correction", no_argument, 0, 9},
      {"trust-min", required_argument, 0, 10}, {"trust-max", required_argument, 0, 11},
      {"timing", no_argument, 0, 12},          {0, 0, 0, 0}};
  /* Long options 1..11 map onto these optim.* keys. */
  static const char *const optim_keys[] = {
      NULL,  "name",          "lr",        "weight_decay",    "beta1",     "beta2",
      "eps", "max_grad_norm", "adapt_all", "bias_correction", "trust_min", "trust_max"};
  memset(a, 0, sizeof *a);
  a->optim = optim_config_default();
  a->sched = lr_schedule_default();
  a->sched.kind = SCHED_CONSTANT;
  opterr = 0;
  optind = 1;
  for (;;) {
    int c = getopt_long(argc, argv, "", opts, NULL);
    if (c == -1) break;
    char *end;
    switch (c) {
      case 'm': a->model = optarg; break;
      case 'w': a->weights = optarg; break;
      case 'b': a->batch = optarg; break;
      case 'o': a->out = optarg; break;
      case 'p': a->precision = optarg; break;
      case 's':
        a->seed = strtoull(optarg, &end, 10);
        if (*end || !*optarg)
          return fprintf(stderr, "mlmpi-train step: --seed needs a number, not '%s'\n", optarg), 2;
        break;
      case 't':
        a->threads = (int)strtol(optarg, &end, 10);
        if (*end || a->threads < 1)
          return fprintf(stderr, "mlmpi-train step: --threads needs a positive number, not '%s'\n",
                         optarg),
                 2;
        break;
      case 'K':
        a->steps = (int)strtol(optarg, &end, 10);
        if (*end || a->steps < 0)
          return fprintf(stderr, "mlmpi-train step: --steps needs a count, not '%s'\n", optarg), 2;
        break;
      case 'h': print_help(); return 1;
      case 12: a->timing = 1; break;
      case 1:
      case 2:
      case 3:
      case 4:
      case 5:
      case 6:
      case 7:
      case 8:
      case 9:
      case 10:
      case 11: {
        const char *v = c == 8 ? "true" : c == 9 ? "false" : optarg;
        if (optim_set_key(&a->optim, &a->sched, optim_keys[c], v) != STATUS_OK)
          return fprintf(stderr, "mlmpi-train step: %s\n", status_message()), 2;
        break;
      }
      default:
        fprintf(stderr, "mlmpi-train step: unknown or incomplete option '%s' (see --help)\n",
                argv[optind - 1]);
        return 2;
    }
  }
  if (optind < argc)
    return fprintf(stderr, "mlmpi-train step: unexpected argument '%s' (see --help)\n",
                   argv[optind]),
           2;
  if (!a->model || !a->weights || !a->batch || !a->out)
    return fprintf(stderr,
                   "mlmpi-train step: --model, --weights, --batch and --out are required (see "
                   "--help)\n"),
           2;
  return 0;
}

static const char *const batch_fields[] = {
    "input_ids",     "input_mask",        "segment_ids",          "masked_lm_positions",
    "masked_lm_ids", "masked_lm_weights", "next_sentence_labels", "sampled_ids",
    "labels",        "target_ids",        "target_weights"};
enum {
  N_BATCH_FIELDS = 11,
  FIELD_SEG = 2,
  FIELD_MLM = 3,
  FIELD_NSP = 6,
  FIELD_SAMPLED = 7,
  FIELD_LABELS = 8,
  FIELD_CLM = 9
};

/* Whether field k may be in a batch of a model allowing `allowed`. */
static bool field_allowed(int k, unsigned allowed) {
  if (k == FIELD_SEG) return !(allowed & MODEL_FIELD_CLM);
  if (k >= FIELD_CLM && k < FIELD_CLM + 2) return allowed & MODEL_FIELD_CLM;
  if (k >= FIELD_MLM && k < FIELD_MLM + 3) return allowed & MODEL_FIELD_MLM;
  if (k == FIELD_NSP) return allowed & MODEL_FIELD_NSP;
  if (k == FIELD_SAMPLED) return allowed & MODEL_FIELD_SAMPLED;
  if (k == FIELD_LABELS) return allowed & MODEL_FIELD_LABELS;
  return k < N_BATCH_FIELDS;
}

/* B, T and P of the batch in f (input_ids [B,T], masked_lm_positions [B,P];
 * P = 0 without it: load_batch then says whether the model needs it). */
static status_t batch_shape(const st_file *f, const char *path, int64_t *B, int64_t *T,
                            int64_t *P) {
  const st_tensor *ids = st_find(f, "input_ids"), *pos = st_find(f, "masked_lm_positions");
  bool mlm = pos != NULL;
  if (!ids) return status_set(STATUS_ARG, "%s: tensor 'input_ids' is missing", path);
  if (ids->ndim != 2 || ids->shape[0] < 1 || ids->shape[1] < 1 || ids->shape[0] > (1 << 20) ||
      ids->shape[1] > (1 << 20))
    return status_set(STATUS_ARG, "%s: tensor 'input_ids' must be [B,T]", path);
  if (mlm && (pos->ndim != 2 || pos->shape[0] != ids->shape[0] || pos->shape[1] < 1 ||
              pos->shape[1] > (1 << 20)))
    return status_set(STATUS_ARG, "%s: tensor 'masked_lm_positions' must be [B,P] with B = %lld",
                      path, (long long)ids->shape[0]);
  *B = ids->shape[0];
  *T = ids->shape[1];
  *P = mlm ? pos->shape[1] : 0;
  return STATUS_OK;
}

/* Points b at the tensors of f after checking names, dtypes and shapes:
 * input_ids, input_mask and segment_ids (target_ids and target_weights
 * instead for a causal LM); the masked-LM fields,
 * next_sentence_labels [B,1] and labels [B] where the model requires them;
 * sampled_ids where it allows it and f has it; any other tensor is an
 * error. */
static status_t load_batch(const st_file *f, const char *path, unsigned required, unsigned allowed,
                           model_batch *b) {
  int64_t B, T, P;
  status_t st = batch_shape(f, path, &B, &T, &P);
  if (st) return st;
  int64_t bt[2] = {B, T}, bp[2] = {B, P}, b1[2] = {B, 1}, bl[1] = {B};
  const st_tensor *t[N_BATCH_FIELDS] = {0};
  if ((st = st_expect(f, path, "input_ids", DTYPE_I32, 2, bt, &t[0])) ||
      (st = st_expect(f, path, "input_mask", DTYPE_I32, 2, bt, &t[1])))
    return st;
  if (!(required & MODEL_FIELD_CLM) &&
      (st = st_expect(f, path, "segment_ids", DTYPE_I32, 2, bt, &t[FIELD_SEG])))
    return st;
  if ((required & MODEL_FIELD_CLM) &&
      ((st = st_expect(f, path, "target_ids", DTYPE_I32, 2, bt, &t[FIELD_CLM])) ||
       (st = st_expect(f, path, "target_weights", DTYPE_F32, 2, bt, &t[FIELD_CLM + 1]))))
    return st;
  if ((required & MODEL_FIELD_MLM) &&
      ((st = st_expect(f, path, "masked_lm_positions", DTYPE_I32, 2, bp, &t[3])) ||
       (st = st_expect(f, path, "masked_lm_ids", DTYPE_I32, 2, bp, &t[4])) ||
       (st = st_expect(f, path, "masked_lm_weights", DTYPE_F32, 2, bp, &t[5]))))
    return st;
  if ((required & MODEL_FIELD_NSP) &&
      (st = st_expect(f, path, "next_sentence_labels", DTYPE_I32, 2, b1, &t[FIELD_NSP])))
    return st;
  if ((required & MODEL_FIELD_LABELS) &&
      (st = st_expect(f, path, "labels", DTYPE_I32, 1, bl, &t[FIELD_LABELS])))
    return st;
  if ((allowed & MODEL_FIELD_SAMPLED) && st_find(f, "sampled_ids") &&
      (st = st_expect(f, path, "sampled_ids", DTYPE_I32, 2, bp, &t[FIELD_SAMPLED])))
    return st;
  for (int i = 0; i < f->n; i++) {
    int k = 0;
    while (k < N_BATCH_FIELDS && strcmp(f->tensors[i].name, batch_fields[k])) k++;
    if (!field_allowed(k, allowed | required))
      return status_set(STATUS_ARG, "%s: tensor '%s' is not a batch field of this model", path,
                        f->tensors[i].name);
  }
  const st_tensor *labels = t[FIELD_LABELS] ? t[FIELD_LABELS] : t[FIELD_NSP];
  *b = (model_batch){.B = (int)B,
                     .T = (int)T,
                     .P = (int)P,
                     .input_ids = t[0]->data,
                     .input_mask = t[1]->data,
                     .segment_ids = t[FIELD_SEG] ? t[FIELD_SEG]->data : NULL,
                     .masked_lm_positions = t[3] ? t[3]->data : NULL,
                     .masked_lm_ids = t[4] ? t[4]->data : NULL,
                     .masked_lm_weights = t[5] ? t[5]->data : NULL,
                     .next_sentence_labels = labels ? labels->data : NULL,
                     .sampled_ids = t[FIELD_SAMPLED] ? t[FIELD_SAMPLED]->data : NULL,
                     .target_ids = t[FIELD_CLM] ? t[FIELD_CLM]->data : NULL,
                     .target_weights = t[FIELD_CLM + 1] ? t[FIELD_CLM + 1]->data : NULL};
  return STATUS_OK;
}

/* The state of one `step` run, freed by free_run. */
typedef struct {
  st_file *wf, *bf;
  model *m;
  model_batch b;
  model_output out[MODEL_MAX_OUTPUTS]; /* the first forward's, copied */
  int n_out;
  /* --steps K: the first step's gradients, the losses and norms, the optimizer. */
  float *grads0, *losses, *norms;
  optim *opt;
  double first_s, steps_s; /* --timing: the first forward/backward, steps 1..K-1 */
} step_run;

static void free_run(step_run *x) {
  model_outputs_free(x->out, x->n_out);
  mem_free(x->grads0);
  mem_free(x->losses);
  mem_free(x->norms);
  optim_free(x->opt);
  model_free(x->m);
  st_free(x->wf);
  st_free(x->bf);
}

/* One forward and backward at step k (gradients zeroed first); returns the
 * loss and leaves the counters in g. */
static double forward_backward(step_run *x, const step_args *a, uint32_t k, double *g) {
  model *m = x->m;
  model_run run = model_run_default();
  run.seed = a->seed;
  run.step = k;
  memset(g, 0, MODEL_MAX_COUNTERS * sizeof *g);
  m->ops->zero_grad(m);
  m->ops->forward(m, &x->b, &run, g);
  m->ops->backward(m);
  return g[0];
}

/* --steps K: the first forward/backward has been done (its gradients are in
 * the model); keep them, then update and recompute K times on the batch. */
static status_t run_steps(step_run *x, const step_args *a, double loss0) {
  const model_ops *ops = x->m->ops;
  const param_table *t = ops->params(x->m);
  float *params = ops->param_buf(x->m), *grads = ops->grad_buf(x->m);
  x->grads0 = mem_alloc(t->total * sizeof(float), "step-0 gradients");
  x->losses = mem_alloc((size_t)a->steps * sizeof(float), "losses");
  x->norms = mem_alloc((size_t)a->steps * sizeof(float), "gradient norms");
  if (!x->grads0 || !x->losses || !x->norms) return STATUS_NOMEM;
  status_t st = optim_init(&x->opt, &a->optim, t);
  if (st != STATUS_OK) return st;
  memcpy(x->grads0, grads, t->total * sizeof(float));
  x->losses[0] = (float)loss0;
  double g[MODEL_MAX_COUNTERS], t1 = 0;
  for (int k = 0; k < a->steps; k++) {
    if (k == 1) t1 = core_now_s();
    if (k > 0) x->losses[k] = (float)forward_backward(x, a, (uint32_t)k, g);
    optim_stats os;
    optim_step(x->opt, params, grads, (float)lr_at(&a->sched, k), &os);
    x->norms[k] = (float)os.grad_norm;
  }
  if (a->steps > 1) x->steps_s = core_now_s() - t1;
  return STATUS_OK;
}

/* The outputs, every parameter's gradient and what --steps adds. */
static status_t write_outputs(const step_run *x, const step_args *a) {
  const model_ops *ops = x->m->ops;
  const param_table *t = ops->params(x->m);
  st_writer *w = st_writer_init();
  if (!w) return STATUS_NOMEM;
  status_t st = STATUS_OK;
  for (int i = 0; i < x->n_out && st == STATUS_OK; i++)
    st = st_writer_add(w, x->out[i].name, x->out[i].dtype, x->out[i].ndim, x->out[i].shape,
                       x->out[i].data);
  if (st == STATUS_OK)
    st = param_add_to_writer(t, x->grads0 ? x->grads0 : ops->grad_buf(x->m), "grad.", w);
  int64_t k[1] = {a->steps};
  if (st == STATUS_OK && a->steps > 0 &&
      ((st = param_add_to_writer(t, ops->param_buf(x->m), "", w)) ||
       (st = st_writer_add(w, "losses", DTYPE_F32, 1, k, x->losses)) ||
       (st = st_writer_add(w, "grad_norms", DTYPE_F32, 1, k, x->norms))))
    goto out;
  if (st == STATUS_OK) st = st_writer_write(w, a->out);
out:
  st_writer_free(w);
  return st;
}

static status_t step_run_all(step_run *x, const step_args *a) {
  const model_ops *ops;
  int64_t B, T, P;
  status_t st;
  if ((st = model_lookup(a->model, NULL, &ops)) || (st = st_read(a->batch, &x->bf)) ||
      (st = batch_shape(x->bf, a->batch, &B, &T, &P)))
    return st;
  model_spec spec = {.config_path = a->model, .nsp = -1};
  model_shape shape = {(int)B, (int)T, (int)P, a->threads};
  if ((st = ops->create(&x->m, &spec, &shape)) || (st = model_set_precision(x->m, a->precision)) ||
      (st = load_batch(x->bf, a->batch, ops->required_fields(x->m), ops->allowed_fields(x->m),
                       &x->b)) ||
      (st = st_read(a->weights, &x->wf)) ||
      (st = param_load_safetensors(ops->params(x->m), ops->param_buf(x->m), x->wf, a->weights,
                                   true)) ||
      (st = ops->check_batch(x->m, &x->b)))
    return st;
  st_free(x->wf);
  x->wf = NULL;
  double g[MODEL_MAX_COUNTERS];
  double t0 = core_now_s();
  double loss = forward_backward(x, a, 0, g);
  x->first_s = core_now_s() - t0;
  if ((x->n_out = ops->outputs(x->m, &x->b, g, x->out)) < 0) {
    x->n_out = 0;
    return STATUS_NOMEM;
  }
  if (a->steps > 0 && (st = run_steps(x, a, loss))) return st;
  if (a->timing) {
    printf("{\"first_ms\": %.3f", 1e3 * x->first_s);
    if (a->steps > 1)
      printf(", \"timed_steps\": %d, \"step_ms\": %.3f", a->steps - 1,
             1e3 * x->steps_s / (a->steps - 1));
    printf(", \"threads\": %d}\n", omp_get_max_threads());
    fflush(stdout);
  }
  return write_outputs(x, a);
}

int trainer_step_main(int argc, char **argv) {
  step_args a;
  int rc = parse_args(argc, argv, &a);
  if (rc) return rc == 1 ? 0 : rc;
  if (a.threads) omp_set_num_threads(a.threads);
  step_run x = {0};
  status_t st = step_run_all(&x, &a);
  if (st != STATUS_OK) fprintf(stderr, "mlmpi-train step: %s\n", status_message());
  free_run(&x);
  return st == STATUS_OK ? 0 : 1;
}
