/* step.c: `mlmpi-train step`, the oracle hook: one forward and backward of
 * the model (BERT, or ELECTRA when the config says "model_type": "electra")
 * on given weights and a given batch, all outputs and every parameter's
 * gradient written to a safetensors file. */
#include <getopt.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "electra.h"
#include "optim.h"
#include "trainer.h"

typedef struct {
  const char *model, *weights, *batch, *out;
  uint64_t seed;
  int threads;
  int steps; /* optimizer steps after the first forward/backward (0: none) */
  optim_config optim;
  lr_schedule sched;
} step_args;

static const char step_usage[] =
    "usage: mlmpi-train step --model CONFIG.json --weights W.safetensors --batch B.safetensors\n"
    "                        --out OUT.safetensors [--seed N] [--threads N]\n"
    "                        [--steps K --optim lamb|adamw --lr X --weight-decay X --beta1 X\n"
    "                         --beta2 X --eps X --max-grad-norm X --adapt-all "
    "--no-bias-correction\n"
    "                         --trust-min X --trust-max X]\n"
    "\n"
    "One forward and backward pass of the model in CONFIG.json (Hugging Face BertConfig) on the\n"
    "weights W (Hugging Face parameter names) and the batch B (input_ids, input_mask,\n"
    "segment_ids [B,T] I32; masked_lm_positions, masked_lm_ids [B,P] I32; masked_lm_weights [B,P]\n"
    "F32; next_sentence_labels [B,1] I32 with NSP). Writes loss, mlm_loss, nsp_loss, mlm_logits\n"
    "[B,P,V], nsp_logits [B,2] and grad.<name> for every parameter to OUT (the NSP outputs only\n"
    "when the model has an NSP head).\n"
    "With an ELECTRA config (\"model_type\": \"electra\": the discriminator's ElectraConfig with "
    "a\n"
    "\"generator\" object and gen_weight, disc_weight) the batch has no next_sentence_labels and "
    "may\n"
    "carry sampled_ids [B,P] I32, the generator's samples (otherwise drawn from --seed); OUT gets\n"
    "loss, mlm_loss, disc_loss, generator_logits [B,P,V], discriminator_logits [B,T], sampled_ids\n"
    "[B,P] and grad.<name>.\n"
    "  --seed N     dropout (and ELECTRA sampling) seed; dropout follows the config's\n"
    "               probabilities (default 0)\n"
    "  --threads N  OpenMP/OpenBLAS threads (default: all cores)\n"
    "  --steps K    then take K optimizer steps on the same batch at constant lr and also write\n"
    "               the final weights under their parameter names, `losses` [K] (the loss before\n"
    "               each step) and `grad_norms` [K] (the global gradient norm before clipping).\n"
    "               Optimizer flags as the optim.* config keys (defaults: LAMB, lr 1e-3, weight\n"
    "               decay 0.01, beta1 0.9, beta2 0.999, eps 1e-6, max grad norm 1.0).\n";

static int parse_args(int argc, char **argv, step_args *a) {
  static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                       {"weights", required_argument, 0, 'w'},
                                       {"batch", required_argument, 0, 'b'},
                                       {"out", required_argument, 0, 'o'},
                                       {"seed", required_argument, 0, 's'},
                                       {"threads", required_argument, 0, 't'},
                                       {"help", no_argument, 0, 'h'},
                                       {"steps", required_argument, 0, 'K'},
                                       {"optim", required_argument, 0, 1},
                                       {"lr", required_argument, 0, 2},
                                       {"weight-decay", required_argument, 0, 3},
                                       {"beta1", required_argument, 0, 4},
                                       {"beta2", required_argument, 0, 5},
                                       {"eps", required_argument, 0, 6},
                                       {"max-grad-norm", required_argument, 0, 7},
                                       {"adapt-all", no_argument, 0, 8},
                                       {"no-bias-correction", no_argument, 0, 9},
                                       {"trust-min", required_argument, 0, 10},
                                       {"trust-max", required_argument, 0, 11},
                                       {0, 0, 0, 0}};
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
      case 'h': fputs(step_usage, stdout); return 1;
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
    "masked_lm_ids", "masked_lm_weights", "next_sentence_labels", "sampled_ids"};
enum { N_BATCH_FIELDS = 8, FIELD_NSP = 6, FIELD_SAMPLED = 7 };

/* Points b at the tensors of f after checking names, dtypes and shapes.
 * next_sentence_labels is required with nsp; sampled_ids is allowed (and
 * then returned in *sampled) only where sampled is given. */
static status_t load_batch(const st_file *f, const char *path, bool nsp, bert_batch *b,
                           const int32_t **sampled) {
  const st_tensor *ids = st_find(f, "input_ids"), *pos = st_find(f, "masked_lm_positions");
  if (!ids) return status_set(STATUS_ARG, "%s: tensor 'input_ids' is missing", path);
  if (!pos) return status_set(STATUS_ARG, "%s: tensor 'masked_lm_positions' is missing", path);
  if (ids->ndim != 2 || ids->shape[0] < 1 || ids->shape[1] < 1 || ids->shape[0] > (1 << 20) ||
      ids->shape[1] > (1 << 20))
    return status_set(STATUS_ARG, "%s: tensor 'input_ids' must be [B,T]", path);
  if (pos->ndim != 2 || pos->shape[0] != ids->shape[0] || pos->shape[1] < 1 ||
      pos->shape[1] > (1 << 20))
    return status_set(STATUS_ARG, "%s: tensor 'masked_lm_positions' must be [B,P] with B = %lld",
                      path, (long long)ids->shape[0]);
  int64_t bt[2] = {ids->shape[0], ids->shape[1]}, bp[2] = {ids->shape[0], pos->shape[1]},
          b1[2] = {ids->shape[0], 1};
  const st_tensor *t[N_BATCH_FIELDS] = {0};
  status_t st;
  if ((st = st_expect(f, path, "input_ids", DTYPE_I32, 2, bt, &t[0])) ||
      (st = st_expect(f, path, "input_mask", DTYPE_I32, 2, bt, &t[1])) ||
      (st = st_expect(f, path, "segment_ids", DTYPE_I32, 2, bt, &t[2])) ||
      (st = st_expect(f, path, "masked_lm_positions", DTYPE_I32, 2, bp, &t[3])) ||
      (st = st_expect(f, path, "masked_lm_ids", DTYPE_I32, 2, bp, &t[4])) ||
      (st = st_expect(f, path, "masked_lm_weights", DTYPE_F32, 2, bp, &t[5])))
    return st;
  if (nsp && (st = st_expect(f, path, "next_sentence_labels", DTYPE_I32, 2, b1, &t[FIELD_NSP])))
    return st;
  if (sampled && st_find(f, "sampled_ids") &&
      (st = st_expect(f, path, "sampled_ids", DTYPE_I32, 2, bp, &t[FIELD_SAMPLED])))
    return st;
  for (int i = 0; i < f->n; i++) {
    int k = 0;
    while (k < N_BATCH_FIELDS && strcmp(f->tensors[i].name, batch_fields[k])) k++;
    if (k == N_BATCH_FIELDS || (k == FIELD_NSP && !nsp) || (k == FIELD_SAMPLED && !sampled))
      return status_set(STATUS_ARG, "%s: tensor '%s' is not a batch field of this model", path,
                        f->tensors[i].name);
  }
  *b = (bert_batch){.B = (int)bt[0],
                    .T = (int)bt[1],
                    .P = (int)bp[1],
                    .input_ids = t[0]->data,
                    .input_mask = t[1]->data,
                    .segment_ids = t[2]->data,
                    .masked_lm_positions = t[3]->data,
                    .masked_lm_ids = t[4]->data,
                    .masked_lm_weights = t[5]->data,
                    .next_sentence_labels = t[FIELD_NSP] ? t[FIELD_NSP]->data : NULL};
  if (sampled) *sampled = t[FIELD_SAMPLED] ? t[FIELD_SAMPLED]->data : NULL;
  return STATUS_OK;
}

/* What --steps adds to OUT: the final weights, per-step losses and norms. */
typedef struct {
  int K;
  const float *weights;             /* table layout, or NULL without --steps */
  const float *losses, *grad_norms; /* [K] */
} step_extra;

/* Every parameter's gradient and what --steps adds; the buffers must
 * outlive w. */
static status_t add_grads_and_steps(st_writer *w, const param_table *t, const float *grads,
                                    const step_extra *x) {
  status_t st = param_add_to_writer(t, grads, "grad.", w);
  if (st || !x->weights) return st;
  int64_t k[1] = {x->K};
  if ((st = param_add_to_writer(t, x->weights, "", w)) ||
      (st = st_writer_add(w, "losses", DTYPE_F32, 1, k, x->losses)) ||
      (st = st_writer_add(w, "grad_norms", DTYPE_F32, 1, k, x->grad_norms)))
    return st;
  return STATUS_OK;
}

/* The logits are step 0's: with --steps the model has run more forwards
 * since, so the caller passes copies. */
static status_t write_outputs(bert_model *m, const bert_batch *b, const bert_losses *ls,
                              const float *mlm_logits, const float *nsp_logits, const float *grads,
                              const step_extra *x, const char *path) {
  const bert_config *c = bert_get_config(m);
  const param_table *t = bert_params(m);
  float loss = (float)ls->loss, mlm = (float)ls->mlm_loss, nsp = (float)ls->nsp_loss;
  int64_t lshape[3] = {b->B, b->P, c->vocab_size}, nshape[2] = {b->B, 2};
  st_writer *w = st_writer_init();
  if (!w) return STATUS_NOMEM;
  status_t st;
  if ((st = st_writer_add(w, "loss", DTYPE_F32, 0, NULL, &loss)) ||
      (st = st_writer_add(w, "mlm_loss", DTYPE_F32, 0, NULL, &mlm)) ||
      (st = st_writer_add(w, "mlm_logits", DTYPE_F32, 3, lshape, mlm_logits)))
    goto out;
  if (c->nsp && ((st = st_writer_add(w, "nsp_loss", DTYPE_F32, 0, NULL, &nsp)) ||
                 (st = st_writer_add(w, "nsp_logits", DTYPE_F32, 2, nshape, nsp_logits))))
    goto out;
  if ((st = add_grads_and_steps(w, t, grads, x))) goto out;
  st = st_writer_write(w, path);
out:
  st_writer_free(w);
  return st;
}

/* --steps K: the first forward/backward has been done (its gradients are in
 * the model); keep them, then update and recompute K times on the batch. */
typedef struct {
  step_extra out;
  float *grads0, *losses, *norms;
  optim *opt;
} step_run;

static void free_steps(step_run *x) {
  mem_free(x->grads0);
  mem_free(x->losses);
  mem_free(x->norms);
  optim_free(x->opt);
}

/* One forward and backward of the model at step k (gradients zeroed
 * first); returns the loss. */
typedef double (*step_fn)(void *model, const void *batch, const step_args *a, uint32_t k);

static status_t run_steps(const param_table *t, float *params, float *grads, step_fn f, void *model,
                          const void *batch, const step_args *a, double loss0, step_run *x) {
  x->grads0 = mem_alloc(t->total * sizeof(float), "step-0 gradients");
  x->losses = mem_alloc((size_t)a->steps * sizeof(float), "losses");
  x->norms = mem_alloc((size_t)a->steps * sizeof(float), "gradient norms");
  if (!x->grads0 || !x->losses || !x->norms) return STATUS_NOMEM;
  status_t st = optim_init(&x->opt, &a->optim, t);
  if (st != STATUS_OK) return st;
  memcpy(x->grads0, grads, t->total * sizeof(float));
  x->losses[0] = (float)loss0;
  for (int k = 0; k < a->steps; k++) {
    if (k > 0) x->losses[k] = (float)f(model, batch, a, (uint32_t)k);
    optim_stats os;
    optim_step(x->opt, params, grads, (float)lr_at(&a->sched, k), &os);
    x->norms[k] = (float)os.grad_norm;
  }
  x->out =
      (step_extra){.K = a->steps, .weights = params, .losses = x->losses, .grad_norms = x->norms};
  return STATUS_OK;
}

static double bert_step_fn(void *model, const void *batch, const step_args *a, uint32_t k) {
  bert_model *m = model;
  bert_run run = bert_run_default();
  run.seed = a->seed;
  run.step = k;
  bert_losses ls;
  bert_zero_grad(m);
  bert_forward(m, batch, &run, &ls);
  bert_backward(m);
  return ls.loss;
}

/* ---- ELECTRA ------------------------------------------------------------------ */
/* The first step's outputs, copied: --steps runs more forwards. */
typedef struct {
  electra_losses ls;
  float *gen_logits, *disc_logits;
  int32_t *sampled;
} electra_out;

static double electra_step_fn(void *model, const void *batch, const step_args *a, uint32_t k) {
  electra_model *m = model;
  electra_run run = electra_run_default();
  run.seed = a->seed;
  run.step = k;
  electra_losses ls;
  electra_zero_grad(m);
  electra_forward(m, batch, &run, &ls);
  electra_backward(m);
  return ls.loss;
}

static status_t keep_electra_outputs(const electra_model *m, const electra_batch *b,
                                     electra_out *o) {
  size_t M = (size_t)b->B * b->P, N = (size_t)b->B * b->T,
         V = (size_t)electra_get_config(m)->vocab_size;
  o->gen_logits = mem_alloc(M * V * sizeof(float), "generator logits");
  o->disc_logits = mem_alloc(N * sizeof(float), "discriminator logits");
  o->sampled = mem_alloc(M * sizeof(int32_t), "sampled ids");
  if (!o->gen_logits || !o->disc_logits || !o->sampled) return STATUS_NOMEM;
  memcpy(o->gen_logits, electra_generator_logits(m), M * V * sizeof(float));
  memcpy(o->disc_logits, electra_discriminator_logits(m), N * sizeof(float));
  memcpy(o->sampled, electra_sampled_ids(m), M * sizeof(int32_t));
  return STATUS_OK;
}

static status_t write_electra_outputs(const electra_model *m, const electra_batch *b,
                                      const electra_out *o, const float *grads, const step_extra *x,
                                      const char *path) {
  float loss = (float)o->ls.loss, mlm = (float)o->ls.mlm_loss, disc = (float)o->ls.disc_loss;
  int64_t gshape[3] = {b->B, b->P, electra_get_config(m)->vocab_size}, dshape[2] = {b->B, b->T},
          sshape[2] = {b->B, b->P};
  st_writer *w = st_writer_init();
  if (!w) return STATUS_NOMEM;
  status_t st;
  if (!(st = st_writer_add(w, "loss", DTYPE_F32, 0, NULL, &loss)) &&
      !(st = st_writer_add(w, "mlm_loss", DTYPE_F32, 0, NULL, &mlm)) &&
      !(st = st_writer_add(w, "disc_loss", DTYPE_F32, 0, NULL, &disc)) &&
      !(st = st_writer_add(w, "generator_logits", DTYPE_F32, 3, gshape, o->gen_logits)) &&
      !(st = st_writer_add(w, "discriminator_logits", DTYPE_F32, 2, dshape, o->disc_logits)) &&
      !(st = st_writer_add(w, "sampled_ids", DTYPE_I32, 2, sshape, o->sampled)) &&
      !(st = add_grads_and_steps(w, electra_params(m), grads, x)))
    st = st_writer_write(w, path);
  st_writer_free(w);
  return st;
}

static int electra_step_main(const step_args *a) {
  electra_config cfg;
  st_file *wf = NULL, *bf = NULL;
  electra_model *m = NULL;
  bert_batch bb;
  electra_batch b;
  electra_out o = {0};
  step_run x = {0};
  status_t st;
  if ((st = electra_config_load(a->model, &cfg)) || (st = st_read(a->batch, &bf)) ||
      (st = load_batch(bf, a->batch, false, &bb, &b.sampled_ids)))
    goto done;
  b = (electra_batch){bb.B,
                      bb.T,
                      bb.P,
                      bb.input_ids,
                      bb.input_mask,
                      bb.segment_ids,
                      bb.masked_lm_positions,
                      bb.masked_lm_ids,
                      bb.masked_lm_weights,
                      b.sampled_ids};
  if ((st = st_read(a->weights, &wf)) || (st = electra_init(&m, &cfg, b.B, b.T, b.P, a->threads)) ||
      (st =
           param_load_safetensors(electra_params(m), electra_param_buf(m), wf, a->weights, true)) ||
      (st = electra_check_batch(m, &b)))
    goto done;
  st_free(wf);
  wf = NULL;
  electra_run run = electra_run_default();
  run.seed = a->seed;
  electra_zero_grad(m);
  electra_forward(m, &b, &run, &o.ls);
  electra_backward(m);
  if ((st = keep_electra_outputs(m, &b, &o))) goto done;
  const float *grads = electra_grad_buf(m);
  if (a->steps > 0) {
    if ((st = run_steps(electra_params(m), electra_param_buf(m), electra_grad_buf(m),
                        electra_step_fn, m, &b, a, o.ls.loss, &x)))
      goto done;
    grads = x.grads0;
  }
  st = write_electra_outputs(m, &b, &o, grads, &x.out, a->out);
done:
  if (st != STATUS_OK) fprintf(stderr, "mlmpi-train step: %s\n", status_message());
  free_steps(&x);
  mem_free(o.gen_logits);
  mem_free(o.disc_logits);
  mem_free(o.sampled);
  electra_free(m);
  st_free(wf);
  st_free(bf);
  return st == STATUS_OK ? 0 : 1;
}

int trainer_step_main(int argc, char **argv) {
  step_args a;
  int rc = parse_args(argc, argv, &a);
  if (rc) return rc == 1 ? 0 : rc;
  if (a.threads) omp_set_num_threads(a.threads);
  if (electra_config_is_electra(a.model)) return electra_step_main(&a);
  bert_config cfg;
  st_file *wf = NULL, *bf = NULL;
  bert_model *m = NULL;
  bert_batch b;
  status_t st;
  if ((st = bert_config_load(a.model, &cfg)) || (st = st_read(a.batch, &bf)) ||
      (st = load_batch(bf, a.batch, cfg.nsp, &b, NULL)) || (st = st_read(a.weights, &wf)) ||
      (st = bert_init(&m, &cfg, b.B, b.T, b.P, a.threads)) ||
      (st = param_load_safetensors(bert_params(m), bert_param_buf(m), wf, a.weights, true)) ||
      (st = bert_check_batch(m, &b)))
    goto done;
  st_free(wf);
  wf = NULL;
  bert_run run = bert_run_default();
  run.seed = a.seed;
  bert_losses ls;
  bert_zero_grad(m);
  bert_forward(m, &b, &run, &ls);
  bert_backward(m);
  step_run x = {0};
  if (a.steps > 0) {
    size_t nm = (size_t)b.B * b.P * (size_t)cfg.vocab_size, nn = (size_t)b.B * 2;
    float *ml = mem_alloc(nm * sizeof(float), "step-0 logits"),
          *nl = mem_alloc(nn * sizeof(float), "step-0 logits");
    st = ml && nl ? STATUS_OK : STATUS_NOMEM;
    if (st == STATUS_OK) {
      memcpy(ml, bert_mlm_logits(m), nm * sizeof(float));
      if (cfg.nsp) memcpy(nl, bert_nsp_logits(m), nn * sizeof(float));
      st = run_steps(bert_params(m), bert_param_buf(m), bert_grad_buf(m), bert_step_fn, m, &b, &a,
                     ls.loss, &x);
    }
    if (st == STATUS_OK) st = write_outputs(m, &b, &ls, ml, nl, x.grads0, &x.out, a.out);
    mem_free(ml);
    mem_free(nl);
    free_steps(&x);
  } else {
    st = write_outputs(m, &b, &ls, bert_mlm_logits(m), bert_nsp_logits(m), bert_grad_buf(m), &x.out,
                       a.out);
  }
done:
  if (st != STATUS_OK) fprintf(stderr, "mlmpi-train step: %s\n", status_message());
  bert_free(m);
  st_free(wf);
  st_free(bf);
  return st == STATUS_OK ? 0 : 1;
}
