/* generate.c: `mlmpi-train generate`: a GPT-2 checkpoint's continuation of a
 * prompt, greedy or sampled (temperature, top-k) from mlmpi's Philox
 * stream, with a key/value cache so that each new token runs only its own
 * position (gpt2_kv_append); --no-cache recomputes the whole prefix through
 * the model table's forward for every token (the cache's reference). */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ckpt.h"
#include "gpt2.h"
#include "model_impl.h"

static const char generate_usage[] =
    "usage: mlmpi-train generate --checkpoint DIR (--prompt TEXT | --prompt-ids \"ID ...\")\n"
    "                            [--max-tokens N] [--temperature X] [--top-k K] [--seed S]\n"
    "                            [--tokenizer PATH] [--print-ids] [--no-cache] [--threads N]\n"
    "                            [--precision P] [--eos-id ID|none]\n"
    "  Prints the GPT-2 model's continuation of the prompt on standard output: the text, or\n"
    "  with --print-ids the new token ids on one line. DIR: a training checkpoint (step-N, or a\n"
    "  ckpt.dir: its newest; the tokenizer is the one meta.json records) or a Hugging Face\n"
    "  directory (config.json with model_type gpt2 + model.safetensors, as export writes; the\n"
    "  tokenizer is DIR itself when it holds vocab.json + merges.txt). --tokenizer overrides\n"
    "  either; --prompt-ids and --print-ids need none.\n"
    "  --max-tokens 64 new tokens; generation also stops after the end-of-text token (--eos-id;\n"
    "  default: the tokenizer's <|endoftext|>, </s> or [SEP] when it has one; none without a\n"
    "  tokenizer), which --print-ids prints last and the text leaves out, and when the\n"
    "  sequence reaches the model's n_positions (said on standard error). --temperature 0 "
    "(default): greedy (the most\n"
    "  likely token, ties to the lowest id); X > 0 samples from softmax(logits / X), from the\n"
    "  K most likely tokens when --top-k K > 0, with Philox keyed by --seed (default 0): the\n"
    "  same seed gives the same tokens. --no-cache recomputes the whole prefix for every token\n"
    "  (slow; the key/value cache's reference). --precision fp32 (default), bf16 or\n"
    "  fp32-onednn.\n";

typedef struct {
  const char *ckpt, *prompt, *prompt_ids, *tokenizer, *precision;
  int max_tokens, top_k, threads;
  int eos_id; /* -1: none; -2: the tokenizer's end of text (the default) */
  double temperature;
  uint64_t seed;
  bool print_ids, no_cache;
} gen_args;

static int bad_flag(const char *flag, const char *what) {
  fprintf(stderr, "mlmpi-train generate: --%s needs %s\n", flag, what);
  return 2;
}

static int parse_args(int argc, char **argv, gen_args *a) {
  static const struct option opts[] = {{"checkpoint", required_argument, 0, 'c'},
                                       {"prompt", required_argument, 0, 'p'},
                                       {"prompt-ids", required_argument, 0, 'i'},
                                       {"max-tokens", required_argument, 0, 'n'},
                                       {"temperature", required_argument, 0, 'T'},
                                       {"top-k", required_argument, 0, 'k'},
                                       {"seed", required_argument, 0, 's'},
                                       {"tokenizer", required_argument, 0, 'z'},
                                       {"print-ids", no_argument, 0, 'P'},
                                       {"no-cache", no_argument, 0, 'N'},
                                       {"threads", required_argument, 0, 't'},
                                       {"precision", required_argument, 0, 'r'},
                                       {"eos-id", required_argument, 0, 'e'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  *a = (gen_args){.max_tokens = 64, .eos_id = -2};
  opterr = 0;
  optind = 1;
  for (int c; (c = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
    char *end = NULL;
    errno = 0;
    switch (c) {
      case 'c': a->ckpt = optarg; break;
      case 'p': a->prompt = optarg; break;
      case 'i': a->prompt_ids = optarg; break;
      case 'z': a->tokenizer = optarg; break;
      case 'r': a->precision = optarg; break;
      case 'P': a->print_ids = true; break;
      case 'N': a->no_cache = true; break;
      case 'n':
      case 'k':
      case 't': {
        long v = strtol(optarg, &end, 10);
        const char *name = c == 'n' ? "max-tokens" : c == 'k' ? "top-k" : "threads";
        long lo = c == 'k' ? 0 : c == 'n' ? 0 : 1;
        if (end == optarg || *end || errno || v < lo || v > (1 << 24))
          return bad_flag(name,
                          c == 't' ? "a number from 1 to 16777216" : "a number from 0 to 16777216");
        if (c == 'n') a->max_tokens = (int)v;
        if (c == 'k') a->top_k = (int)v;
        if (c == 't') a->threads = (int)v;
        break;
      }
      case 'T':
        a->temperature = strtod(optarg, &end);
        if (end == optarg || *end || !isfinite(a->temperature) || a->temperature < 0)
          return bad_flag("temperature", "a number >= 0");
        break;
      case 's':
        a->seed = strtoull(optarg, &end, 10);
        if (end == optarg || *end || errno || optarg[0] == '-')
          return bad_flag("seed", "a non-negative integer");
        break;
      case 'e': {
        long v = strtol(optarg, &end, 10);
        if (!strcmp(optarg, "none"))
          a->eos_id = -1;
        else if (end == optarg || *end || errno || v < 0 || v > INT32_MAX)
          return bad_flag("eos-id", "a token id or 'none'");
        else
          a->eos_id = (int)v;
        break;
      }
      case 'h': fputs(generate_usage, stdout); return 1;
      default:
        fprintf(stderr, "mlmpi-train generate: unknown or incomplete option '%s'\n",
                argv[optind - 1]);
        return 2;
    }
  }
  if (optind < argc)
    return fprintf(stderr, "mlmpi-train generate: unexpected argument '%s'\n", argv[optind]), 2;
  if (!a->ckpt) return fprintf(stderr, "mlmpi-train generate: --checkpoint is required\n"), 2;
  if (!a->prompt == !a->prompt_ids)
    return fprintf(stderr, "mlmpi-train generate: give one of --prompt and --prompt-ids\n"), 2;
  return 0;
}

/* The state of one run, freed by free_run. */
typedef struct {
  cJSON *meta;
  model *m;
  gpt2_kv *kv;
  text_codec *tok;
  int32_t *ids; /* prompt then output, cap entries */
  int n_prompt, n, cap;
  int32_t eos;   /* the end-of-text id generation stops after (-1: none) */
  bool at_eos;   /* the last token is eos */
  float *logits; /* [V] */
  float *probs;  /* [V] */
  char tok_path[4096 + 32];
} gen_run;

static void free_run(gen_run *x) {
  mem_free(x->probs);
  mem_free(x->logits);
  free(x->ids);
  text_codec_free(x->tok);
  gpt2_kv_free(x->kv);
  model_free(x->m);
  cJSON_Delete(x->meta);
}

static bool is_file(const char *p) {
  struct stat sb;
  return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* A Hugging Face directory: config.json + model.safetensors, no meta.json. */
static status_t load_hf(gen_run *x, const char *dir, const model_shape *shape) {
  char config[4096 + 32], wpath[4096 + 32];
  const model_ops *ops;
  st_file *w = NULL;
  snprintf(config, sizeof config, "%s/config.json", dir);
  snprintf(wpath, sizeof wpath, "%s/model.safetensors", dir);
  model_spec spec = {.config_path = config, .preset = "", .nsp = -1};
  status_t st = model_lookup(config, "", &ops);
  if (st == STATUS_OK && strcmp(ops->name, "gpt2"))
    return status_set(STATUS_CONFIG, "%s is a %s model: generate needs a GPT-2 one", dir,
                      ops->name);
  if (st == STATUS_OK) st = st_read(wpath, &w);
  if (st == STATUS_OK) st = ops->spec_from_weights(w, wpath, &spec);
  if (st == STATUS_OK) st = ops->create(&x->m, &spec, shape);
  if (st == STATUS_OK)
    st = param_load_safetensors(ops->params(x->m), ops->param_buf(x->m), w, wpath, true);
  st_free(w);
  snprintf(x->tok_path, sizeof x->tok_path, "%s/vocab.json", dir);
  if (is_file(x->tok_path))
    snprintf(x->tok_path, sizeof x->tok_path, "%s", dir);
  else
    x->tok_path[0] = 0;
  return st;
}

/* The model of DIR (a checkpoint or a Hugging Face directory) for
 * sequences of up to seq_len. */
static status_t load_model(gen_run *x, const gen_args *a, int seq_len) {
  char path[4096], config[4096 + 32];
  model_shape shape = {1, seq_len, 0, a->threads};
  status_t st;
  snprintf(config, sizeof config, "%s/config.json", a->ckpt);
  snprintf(path, sizeof path, "%s/meta.json", a->ckpt);
  if (!is_file(path) && is_file(config)) {
    if ((st = load_hf(x, a->ckpt, &shape))) return st;
  } else {
    if ((st = ckpt_resolve(a->ckpt, path, sizeof path)) || (st = ckpt_read_meta(path, &x->meta)))
      return st;
    if (cJSON_GetObjectItem(x->meta, "task"))
      return status_set(STATUS_CONFIG, "%s is a fine-tuned classifier: generate needs GPT-2", path);
    char cfg[4096] = "", preset[64] = "bert-mini";
    const model_ops *ops;
    ckpt_config_value(x->meta, "model.config", cfg, sizeof cfg);
    ckpt_config_value(x->meta, "model.preset", preset, sizeof preset);
    if ((st = model_lookup(cfg, preset, &ops))) return st;
    if (strcmp(ops->name, "gpt2"))
      return status_set(STATUS_CONFIG, "%s is a %s checkpoint: generate needs a GPT-2 one", path,
                        ops->name);
    if ((st = model_from_checkpoint(path, x->meta, &shape, &x->m))) return st;
    const cJSON *tok = cJSON_GetObjectItem(x->meta, "tokenizer");
    const char *tp = cJSON_GetStringValue(cJSON_GetObjectItem(tok, "path"));
    snprintf(x->tok_path, sizeof x->tok_path, "%s", tp ? tp : "");
  }
  return model_set_precision(x->m, a->precision);
}

/* The prompt's ids: --prompt-ids, or --prompt through the tokenizer. */
static status_t read_prompt(gen_run *x, const gen_args *a, int P) {
  size_t n = 0, cap = 16;
  int32_t *ids = malloc(cap * sizeof *ids);
  if (!ids) return status_set(STATUS_NOMEM, "out of memory");
  if (a->prompt_ids) {
    for (const char *p = a->prompt_ids;;) {
      while (*p == ' ' || *p == ',' || *p == '\t') p++;
      if (!*p) break;
      char *end;
      errno = 0;
      long v = strtol(p, &end, 10);
      if (end == p || errno || v < 0 || v > INT32_MAX) {
        free(ids);
        return status_set(STATUS_ARG, "--prompt-ids: '%s' is not a token id", p);
      }
      if (n == cap) {
        int32_t *g = realloc(ids, (cap *= 2) * sizeof *ids);
        if (!g) return free(ids), status_set(STATUS_NOMEM, "out of memory");
        ids = g;
      }
      ids[n++] = (int32_t)v;
      p = end;
    }
  } else {
    free(ids);
    status_t st = text_codec_encode(x->tok, a->prompt, &ids, &n);
    if (st) return st;
  }
  if (n < 1 || n > (size_t)P) {
    free(ids);
    return status_set(STATUS_ARG, "the prompt has %zu tokens: it needs 1 to n_positions (%d)", n,
                      P);
  }
  x->n_prompt = x->n = (int)n;
  x->cap = (int)n + a->max_tokens < P ? (int)n + a->max_tokens : P;
  x->ids = realloc(ids, (size_t)(x->cap > (int)n ? x->cap : (int)n) * sizeof *ids);
  if (!x->ids) return free(ids), status_set(STATUS_NOMEM, "out of memory");
  return STATUS_OK;
}

/* The next token from logits [V]: the first maximum at temperature 0, else
 * a draw (uniform u from Philox: token number `draw` of the seed's stream)
 * from softmax(logits / temperature) over the top_k largest (0: all). */
static int32_t pick(float *probs, const float *logits, int V, const gen_args *a, uint32_t draw) {
  int best = 0;
  for (int i = 1; i < V; i++)
    if (logits[i] > logits[best]) best = i;
  if (a->temperature <= 0) return best;
  /* The k-th largest logit: the cut (ties at it are kept, as torch.topk's
   * masking keeps them). */
  float cut = -INFINITY;
  if (a->top_k > 0 && a->top_k < V) {
    memcpy(probs, logits, (size_t)V * sizeof(float));
    for (int r = 0; r < a->top_k; r++) { /* k passes of selection: k is small */
      int j = r;
      for (int i = r + 1; i < V; i++)
        if (probs[i] > probs[j]) j = i;
      float t = probs[r];
      probs[r] = probs[j];
      probs[j] = t;
    }
    cut = probs[a->top_k - 1];
  }
  const double inv_t = 1.0 / a->temperature, mx = logits[best];
  double sum = 0.0;
  for (int i = 0; i < V; i++) {
    double p = logits[i] >= cut ? exp(((double)logits[i] - mx) * inv_t) : 0.0;
    probs[i] = (float)p;
    sum += p;
  }
  float u;
  rng_uniform((rng_key){.seed = a->seed, .stream = rng_stream(0, 15)}, draw, 1, &u);
  double target = (double)u * sum, acc = 0.0;
  int last = best;
  for (int i = 0; i < V; i++) {
    if (probs[i] <= 0) continue;
    last = i;
    acc += probs[i];
    if (acc > target) return i;
  }
  return last; /* rounding left the draw past the sum: the last candidate */
}

/* The logits of the next position after x->ids[0..n): with the cache, the
 * tokens it has not seen yet; without, the whole prefix again. */
static status_t next_logits(gen_run *x, const gen_args *a, int V) {
  gpt2_model *g = x->m->impl;
  if (!a->no_cache) {
    int seen = gpt2_kv_len(x->kv);
    return gpt2_kv_append(g, x->kv, x->ids + seen, x->n - seen, x->logits);
  }
  int32_t *mask = malloc((size_t)x->n * sizeof *mask), *tgt = calloc((size_t)x->n, sizeof *tgt);
  float *tw = calloc((size_t)x->n, sizeof *tw);
  status_t st = STATUS_OK;
  if (!mask || !tgt || !tw) st = status_set(STATUS_NOMEM, "out of memory");
  if (st == STATUS_OK) {
    for (int i = 0; i < x->n; i++) mask[i] = 1;
    model_batch b = {.B = 1,
                     .T = x->n,
                     .input_ids = x->ids,
                     .input_mask = mask,
                     .target_ids = tgt,
                     .target_weights = tw};
    st = x->m->ops->check_batch(x->m, &b);
    if (st == STATUS_OK) {
      double counters[MODEL_MAX_COUNTERS] = {0};
      model_run run = model_run_default();
      run.train = false;
      x->m->ops->forward(x->m, &b, &run, counters);
      memcpy(x->logits, gpt2_logits(g) + (size_t)(x->n - 1) * V, (size_t)V * sizeof(float));
    }
  }
  free(mask);
  free(tgt);
  free(tw);
  return st;
}

static status_t print_output(const gen_run *x, const gen_args *a) {
  const int32_t *out = x->ids + x->n_prompt;
  const int n = x->n - x->n_prompt;
  if (a->print_ids) {
    for (int i = 0; i < n; i++) printf(i ? " %d" : "%d", (int)out[i]);
    putchar('\n');
  } else {
    char *text = NULL;
    status_t st = text_codec_decode(x->tok, out, (size_t)(n - x->at_eos), &text);
    if (st) return st;
    fputs(text, stdout);
    putchar('\n');
    free(text);
  }
  fflush(stdout);
  return ferror(stdout) ? status_set(STATUS_IO, "cannot write the output") : STATUS_OK;
}

static status_t run_generate(gen_run *x, const gen_args *a) {
  /* Without the cache the model's batches hold the whole sequence: sized
   * once the prompt is known, so a first model (one position) reads the
   * config. */
  status_t st = load_model(x, a, 1);
  if (st) return st;
  const gpt2_config *c = gpt2_get_config(x->m->impl);
  const int V = c->vocab_size, P = c->n_positions;
  if (a->tokenizer) snprintf(x->tok_path, sizeof x->tok_path, "%s", a->tokenizer);
  const bool need_tok = a->prompt || !a->print_ids;
  if (need_tok && !x->tok_path[0])
    return status_set(STATUS_CONFIG,
                      "%s names no tokenizer: give --tokenizer (or use "
                      "--prompt-ids and --print-ids)",
                      a->ckpt);
  if (x->tok_path[0] && (need_tok || a->eos_id == -2)) {
    /* Ids in and out need the tokenizer only for its end of text: one that
     * is gone then costs the stop, not the run. */
    if ((st = text_codec_open(x->tok_path, &x->tok)) && need_tok) return st;
    if (st)
      LOG_WARN(TRAINER, "%s; generating without an end-of-text stop (give --eos-id)",
               status_message());
    if (x->tok && text_codec_vocab_size(x->tok) > V)
      return status_set(STATUS_CONFIG, "tokenizer %s has %d tokens, more than the model's %d",
                        x->tok_path, (int)text_codec_vocab_size(x->tok), V);
  }
  x->eos = a->eos_id != -2 ? a->eos_id : x->tok ? text_codec_eot_id(x->tok) : -1;
  if ((st = read_prompt(x, a, P))) return st;
  for (int i = 0; i < x->n; i++)
    if (x->ids[i] >= V)
      return status_set(STATUS_ARG, "prompt token %d (id %d) is outside the vocabulary (%d)", i,
                        (int)x->ids[i], V);
  if (a->no_cache) {
    model_free(x->m);
    x->m = NULL;
    cJSON_Delete(x->meta);
    x->meta = NULL;
    if ((st = load_model(x, a, x->cap))) return st;
  } else if ((st = gpt2_kv_init(&x->kv, x->m->impl))) {
    return st;
  }
  x->logits = mem_alloc((size_t)V * sizeof(float), "logits");
  x->probs = mem_alloc((size_t)V * sizeof(float), "probabilities");
  if (!x->logits || !x->probs) return STATUS_NOMEM;
  double t0 = core_now_s(), t_first = 0;
  while (x->n < x->cap) {
    if ((st = next_logits(x, a, V))) return st;
    if (x->n == x->n_prompt) t_first = core_now_s() - t0;
    x->ids[x->n] = pick(x->probs, x->logits, V, a, (uint32_t)(x->n - x->n_prompt));
    if ((x->at_eos = x->ids[x->n++] == x->eos)) break;
  }
  double dt = core_now_s() - t0;
  int made = x->n - x->n_prompt;
  if (made < a->max_tokens && !x->at_eos)
    fprintf(stderr,
            "mlmpi-train generate: stopped after %d of %d new tokens: the sequence reached "
            "n_positions (%d)\n",
            made, a->max_tokens, P);
  LOG_INFO(TRAINER,
           "generated %d tokens after a %d-token prompt in %.3f s (prompt %.3f s; %.1f tokens/s "
           "after it, %s)%s",
           made, x->n_prompt, dt, t_first, made > 1 ? (made - 1) / (dt - t_first) : 0.0,
           a->no_cache ? "no cache" : "key/value cache",
           x->at_eos ? "; stopped at end of text" : "");
  return print_output(x, a);
}

int trainer_generate_main(int argc, char **argv) {
  gen_args a;
  int rc = parse_args(argc, argv, &a);
  if (rc) return rc == 1 ? 0 : rc;
  if (a.threads) omp_set_num_threads(a.threads);
  gen_run x = {0};
  status_t st = run_generate(&x, &a);
  if (st) fprintf(stderr, "mlmpi-train generate: %s\n", status_message());
  free_run(&x);
  return st ? 1 : 0;
}
