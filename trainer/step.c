/* step.c: `mlmpi-train step`, the oracle hook: one forward and backward of
 * the model on given weights and a given batch, all outputs and every
 * parameter's gradient written to a safetensors file. */
#include <getopt.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trainer.h"

typedef struct {
  const char *model, *weights, *batch, *out;
  uint64_t seed;
  int threads;
} step_args;

static const char step_usage[] =
    "usage: mlmpi-train step --model CONFIG.json --weights W.safetensors --batch B.safetensors\n"
    "                        --out OUT.safetensors [--seed N] [--threads N]\n"
    "\n"
    "One forward and backward pass of the model in CONFIG.json (Hugging Face BertConfig) on the\n"
    "weights W (Hugging Face parameter names) and the batch B (input_ids, input_mask,\n"
    "segment_ids [B,T] I32; masked_lm_positions, masked_lm_ids [B,P] I32; masked_lm_weights [B,P]\n"
    "F32; next_sentence_labels [B,1] I32 with NSP). Writes loss, mlm_loss, nsp_loss, mlm_logits\n"
    "[B,P,V], nsp_logits [B,2] and grad.<name> for every parameter to OUT (the NSP outputs only\n"
    "when the model has an NSP head).\n"
    "  --seed N     dropout seed (dropout follows the config's probabilities; default 0)\n"
    "  --threads N  OpenMP/OpenBLAS threads (default: all cores)\n";

static int parse_args(int argc, char **argv, step_args *a) {
  static const struct option opts[] = {
      {"model", required_argument, 0, 'm'}, {"weights", required_argument, 0, 'w'},
      {"batch", required_argument, 0, 'b'}, {"out", required_argument, 0, 'o'},
      {"seed", required_argument, 0, 's'},  {"threads", required_argument, 0, 't'},
      {"help", no_argument, 0, 'h'},        {0, 0, 0, 0}};
  memset(a, 0, sizeof *a);
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
      if (*end || !*optarg) return fprintf(stderr, "mlmpi-train step: --seed needs a number, not '%s'\n", optarg), 2;
      break;
    case 't':
      a->threads = (int)strtol(optarg, &end, 10);
      if (*end || a->threads < 1) return fprintf(stderr, "mlmpi-train step: --threads needs a positive number, not '%s'\n", optarg), 2;
      break;
    case 'h': fputs(step_usage, stdout); return 1;
    default:
      fprintf(stderr, "mlmpi-train step: unknown or incomplete option '%s' (see --help)\n",
              argv[optind - 1]);
      return 2;
    }
  }
  if (optind < argc)
    return fprintf(stderr, "mlmpi-train step: unexpected argument '%s' (see --help)\n", argv[optind]), 2;
  if (!a->model || !a->weights || !a->batch || !a->out)
    return fprintf(stderr, "mlmpi-train step: --model, --weights, --batch and --out are required (see --help)\n"), 2;
  return 0;
}

static const char *const batch_fields[] = {"input_ids",           "input_mask",    "segment_ids",
                                           "masked_lm_positions", "masked_lm_ids", "masked_lm_weights",
                                           "next_sentence_labels"};

/* Points b at the tensors of f after checking names, dtypes and shapes. */
static status_t load_batch(const st_file *f, const char *path, bool nsp, bert_batch *b) {
  const st_tensor *ids = st_find(f, "input_ids"), *pos = st_find(f, "masked_lm_positions");
  if (!ids) return status_set(STATUS_ARG, "%s: tensor 'input_ids' is missing", path);
  if (!pos) return status_set(STATUS_ARG, "%s: tensor 'masked_lm_positions' is missing", path);
  if (ids->ndim != 2 || ids->shape[0] < 1 || ids->shape[1] < 1 || ids->shape[0] > (1 << 20) ||
      ids->shape[1] > (1 << 20))
    return status_set(STATUS_ARG, "%s: tensor 'input_ids' must be [B,T]", path);
  if (pos->ndim != 2 || pos->shape[0] != ids->shape[0] || pos->shape[1] < 1 || pos->shape[1] > (1 << 20))
    return status_set(STATUS_ARG, "%s: tensor 'masked_lm_positions' must be [B,P] with B = %lld",
                      path, (long long)ids->shape[0]);
  int64_t bt[2] = {ids->shape[0], ids->shape[1]}, bp[2] = {ids->shape[0], pos->shape[1]},
          b1[2] = {ids->shape[0], 1};
  const st_tensor *t[7];
  status_t st;
  if ((st = st_expect(f, path, "input_ids", DTYPE_I32, 2, bt, &t[0])) ||
      (st = st_expect(f, path, "input_mask", DTYPE_I32, 2, bt, &t[1])) ||
      (st = st_expect(f, path, "segment_ids", DTYPE_I32, 2, bt, &t[2])) ||
      (st = st_expect(f, path, "masked_lm_positions", DTYPE_I32, 2, bp, &t[3])) ||
      (st = st_expect(f, path, "masked_lm_ids", DTYPE_I32, 2, bp, &t[4])) ||
      (st = st_expect(f, path, "masked_lm_weights", DTYPE_F32, 2, bp, &t[5])))
    return st;
  t[6] = NULL;
  if (nsp && (st = st_expect(f, path, "next_sentence_labels", DTYPE_I32, 2, b1, &t[6]))) return st;
  for (int i = 0; i < f->n; i++) {
    int k = 0;
    while (k < 7 && strcmp(f->tensors[i].name, batch_fields[k])) k++;
    if (k == 7 || (k == 6 && !nsp))
      return status_set(STATUS_ARG, "%s: tensor '%s' is not a batch field of this model", path,
                        f->tensors[i].name);
  }
  *b = (bert_batch){.B = (int)bt[0], .T = (int)bt[1], .P = (int)bp[1],
                    .input_ids = t[0]->data, .input_mask = t[1]->data, .segment_ids = t[2]->data,
                    .masked_lm_positions = t[3]->data, .masked_lm_ids = t[4]->data,
                    .masked_lm_weights = t[5]->data,
                    .next_sentence_labels = t[6] ? t[6]->data : NULL};
  return STATUS_OK;
}

static status_t write_outputs(bert_model *m, const bert_batch *b, const bert_losses *ls,
                              const char *path) {
  const bert_config *c = bert_get_config(m);
  const param_table *t = bert_params(m);
  float loss = (float)ls->loss, mlm = (float)ls->mlm_loss, nsp = (float)ls->nsp_loss;
  int64_t lshape[3] = {b->B, b->P, c->vocab_size}, nshape[2] = {b->B, 2};
  st_writer *w = st_writer_init();
  if (!w) return STATUS_NOMEM;
  status_t st;
  if ((st = st_writer_add(w, "loss", DTYPE_F32, 0, NULL, &loss)) ||
      (st = st_writer_add(w, "mlm_loss", DTYPE_F32, 0, NULL, &mlm)) ||
      (st = st_writer_add(w, "mlm_logits", DTYPE_F32, 3, lshape, bert_mlm_logits(m))))
    goto out;
  if (c->nsp && ((st = st_writer_add(w, "nsp_loss", DTYPE_F32, 0, NULL, &nsp)) ||
                 (st = st_writer_add(w, "nsp_logits", DTYPE_F32, 2, nshape, bert_nsp_logits(m)))))
    goto out;
  if ((st = param_add_to_writer(t, bert_grad_buf(m), "grad.", w))) goto out;
  st = st_writer_write(w, path);
out:
  st_writer_free(w);
  return st;
}

int trainer_step_main(int argc, char **argv) {
  step_args a;
  int rc = parse_args(argc, argv, &a);
  if (rc) return rc == 1 ? 0 : rc;
  if (a.threads) omp_set_num_threads(a.threads);
  bert_config cfg;
  st_file *wf = NULL, *bf = NULL;
  bert_model *m = NULL;
  bert_batch b;
  status_t st;
  if ((st = bert_config_load(a.model, &cfg)) || (st = st_read(a.batch, &bf)) ||
      (st = load_batch(bf, a.batch, cfg.nsp, &b)) || (st = st_read(a.weights, &wf)) ||
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
  st = write_outputs(m, &b, &ls, a.out);
done:
  if (st != STATUS_OK) fprintf(stderr, "mlmpi-train step: %s\n", status_message());
  bert_free(m);
  st_free(wf);
  st_free(bf);
  return st == STATUS_OK ? 0 : 1;
}
