/* dataset.c: the batch function. Opening a data set cuts its documents into
 * instances once (packed sequences, or BERT segment pairs as
 * create_pretraining_data.py makes them); a batch then reads its instances
 * through an epoch permutation and masks them dynamically, everything keyed
 * by the seed so that any process computes the same bytes. */
#include "dataset.h"

#include <cjson/cJSON.h>
#include <glob.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shard.h"
#include "tokenizer.h"

/* Philox streams of the data path (see core.h rng_key). */
enum { STREAM_PERM = 1, STREAM_NSP = 2, STREAM_TRUNC = 3, STREAM_MASK = 4 };

typedef struct {
  uint64_t doc; /* global document index */
  uint32_t tok; /* token offset in it */
} inst_start;

typedef struct {
  uint64_t a_doc, b_doc;
  uint32_t a0, a1, b0, b1; /* sentence ranges [a0,a1), [b0,b1) */
  uint32_t label;          /* 1: B is a random segment */
} inst_pair;

struct dataset {
  data_config cfg;
  shard_reader **shards;
  int n_shards;
  uint64_t *doc_base; /* n_shards + 1 cumulative document counts */
  shard_meta meta;
  uint64_t n_inst;
  inst_start *starts; /* packed: n_inst + 1 (the last is the end) */
  inst_pair *pairs;   /* nsp: n_inst */
  /* clm: where each document starts in the token stream (n_docs + 1; the
   * last is the stream's length L) and the end-of-text id after each. */
  uint64_t *stream_base;
  int32_t eot_id;
  uint64_t fingerprint;
};

data_config data_config_default(void) {
  return (data_config){.seq_len = 128,
                       .max_predictions = 20,
                       .mask_prob = 0.15f,
                       .masking = MASK_BERT,
                       .instances = INST_PACKED,
                       .short_seq_prob = 0.1f,
                       .seed = 12345};
}

const char *data_option_key(int option, const char **value) {
  switch (option) {
    case 'T': return "seq_len";
    case 's': return "seed";
    case 'P': return "max_predictions";
    case 'm': return "mask_prob";
    case 'M': return "masking";
    case 'i': return "instances";
    case 'q': return "short_seq_prob";
    case 'w': *value = "true"; return "whole_word";
    default: return NULL;
  }
}

status_t data_set_key(data_config *c, const char *key, const char *v) {
  char *end;
  if (!strcmp(key, "seq_len") || !strcmp(key, "max_predictions") || !strcmp(key, "seed")) {
    unsigned long long x = strtoull(v, &end, 10);
    bool seed = !strcmp(key, "seed");
    if (!*v || *end || *v == '-' || (!seed && (x < 1 || x > 65536)))
      return status_set(STATUS_CONFIG, "data.%s: '%s' is not a valid %s", key, v,
                        seed ? "seed" : "count (1..65536)");
    if (seed)
      c->seed = x;
    else if (!strcmp(key, "seq_len"))
      c->seq_len = (int)x;
    else
      c->max_predictions = (int)x;
    return STATUS_OK;
  }
  if (!strcmp(key, "mask_prob") || !strcmp(key, "short_seq_prob")) {
    double x = strtod(v, &end);
    if (!*v || *end || !(x >= 0 && x <= 1))
      return status_set(STATUS_CONFIG, "data.%s: '%s' is not a probability", key, v);
    *(key[0] == 'm' ? &c->mask_prob : &c->short_seq_prob) = (float)x;
    return STATUS_OK;
  }
  if (!strcmp(key, "masking")) {
    if (!strcmp(v, "bert"))
      c->masking = MASK_BERT;
    else if (!strcmp(v, "electra"))
      c->masking = MASK_ELECTRA;
    else
      return status_set(STATUS_CONFIG, "data.masking: '%s' is not bert or electra", v);
    return STATUS_OK;
  }
  if (!strcmp(key, "instances")) {
    if (!strcmp(v, "packed"))
      c->instances = INST_PACKED;
    else if (!strcmp(v, "nsp"))
      c->instances = INST_NSP;
    else
      return status_set(STATUS_CONFIG, "data.instances: '%s' is not packed or nsp", v);
    return STATUS_OK;
  }
  if (!strcmp(key, "objective")) {
    if (!strcmp(v, "mlm"))
      c->objective = OBJECTIVE_MLM;
    else if (!strcmp(v, "clm"))
      c->objective = OBJECTIVE_CLM;
    else
      return status_set(STATUS_CONFIG, "data.objective: '%s' is not mlm or clm", v);
    return STATUS_OK;
  }
  if (!strcmp(key, "whole_word")) {
    if (!core_parse_bool(v, &c->whole_word))
      return status_set(STATUS_CONFIG, "data.whole_word: '%s' is not true or false", v);
    return STATUS_OK;
  }
  return status_set(STATUS_CONFIG, "unknown config key 'data.%s'", key);
}

/* ---- Batches ---------------------------------------------------------------- */
/* calloc(0) may give NULL, which is no failure: a batch without masked
 * slots (P 0, fine-tuning) still gets a pointer for each field. */
static void *calloc_field(size_t n) { return calloc(n ? n : 1, 4); }

status_t data_batch_alloc(data_batch *b, int n, int T, int P) {
  memset(b, 0, sizeof *b);
  size_t nt = (size_t)n * T, np = (size_t)n * P;
  b->input_ids = calloc_field(nt);
  b->input_mask = calloc_field(nt);
  b->segment_ids = calloc_field(nt);
  b->masked_lm_positions = calloc_field(np);
  b->masked_lm_ids = calloc_field(np);
  b->masked_lm_weights = calloc_field(np);
  b->next_sentence_labels = calloc_field((size_t)n);
  b->target_ids = calloc_field(nt);
  b->target_weights = calloc_field(nt);
  if (!b->input_ids || !b->input_mask || !b->segment_ids || !b->masked_lm_positions ||
      !b->masked_lm_ids || !b->masked_lm_weights || !b->next_sentence_labels || !b->target_ids ||
      !b->target_weights) {
    data_batch_free(b);
    return status_set(STATUS_NOMEM, "out of memory allocating a batch");
  }
  b->n = n;
  b->T = T;
  b->P = P;
  return STATUS_OK;
}

void data_batch_free(data_batch *b) {
  free(b->input_ids);
  free(b->input_mask);
  free(b->segment_ids);
  free(b->masked_lm_positions);
  free(b->masked_lm_ids);
  free(b->masked_lm_weights);
  free(b->next_sentence_labels);
  free(b->target_ids);
  free(b->target_weights);
  memset(b, 0, sizeof *b);
}

/* ---- Randomness ------------------------------------------------------------- */
/* A sequential stream of uniforms from one Philox key. */
typedef struct {
  rng_key key;
  uint32_t next;
} rng_seq;

static float seq_u(rng_seq *s) {
  float u;
  rng_uniform(s->key, s->next++, 1, &u);
  return u;
}

/* Uniform integer in [lo, hi] (inclusive, as Python's randint). */
static uint64_t seq_int(rng_seq *s, uint64_t lo, uint64_t hi) {
  uint32_t a[4];
  uint32_t ctr[4] = {s->next++, s->key.stream | 0x80000000u, s->key.sample, s->key.step};
  uint32_t k[2] = {(uint32_t)s->key.seed, (uint32_t)(s->key.seed >> 32)};
  philox4x32_10(ctr, k, a);
  uint64_t r = (uint64_t)a[0] << 32 | a[1], span = hi - lo + 1;
  return span ? lo + r % span : lo;
}

/* Feistel round function: 32 bits of Philox of (value, round, key). */
static uint32_t feistel_f(uint64_t key, uint32_t round, uint32_t x) {
  uint32_t ctr[4] = {x, round, STREAM_PERM, 0}, k[2] = {(uint32_t)key, (uint32_t)(key >> 32)}, o[4];
  philox4x32_10(ctr, k, o);
  return o[0];
}

uint64_t data_permute(uint64_t i, uint64_t n, uint64_t key) {
  if (n <= 1) return 0;
  int bits = 0;
  while (bits < 64 && (1ull << bits) < n) bits++;
  int lo_bits = bits / 2, hi_bits = bits - lo_bits;
  uint64_t lo_mask = (1ull << lo_bits) - 1, hi_mask = hi_bits == 64 ? ~0ull : (1ull << hi_bits) - 1;
  uint64_t x = i;
  /* Unbalanced Feistel over `bits` bits; cycle-walk until inside [0, n). */
  do {
    uint64_t l = x >> lo_bits, r = x & lo_mask;
    for (uint32_t round = 0; round < 6; round++) {
      /* Alternate the halves' roles; keep widths fixed by masking. */
      if (round % 2 == 0)
        l = (l ^ feistel_f(key, round, (uint32_t)r)) & hi_mask;
      else
        r = (r ^ feistel_f(key, round, (uint32_t)l)) & lo_mask;
    }
    x = l << lo_bits | r;
  } while (x >= n);
  return x;
}

/* ---- Opening ---------------------------------------------------------------- */
static status_t doc_locate(const dataset *d, uint64_t g, const shard_reader **r, uint64_t *local) {
  int lo = 0, hi = d->n_shards - 1;
  while (lo < hi) {
    int mid = (lo + hi + 1) / 2;
    if (d->doc_base[mid] <= g)
      lo = mid;
    else
      hi = mid - 1;
  }
  *r = d->shards[lo];
  *local = g - d->doc_base[lo];
  return STATUS_OK;
}

static status_t read_doc(const dataset *d, uint64_t g, shard_doc *out) {
  const shard_reader *r;
  uint64_t local;
  doc_locate(d, g, &r, &local);
  return shard_read_doc(r, local, out);
}

/* Sentence k of a document as [a, b); the tail after the last recorded end
 * counts as one more sentence. */
static uint32_t doc_sentences(const shard_doc *doc) {
  uint32_t n = (uint32_t)doc->n_sentences;
  uint32_t last = n ? doc->sentence_ends[n - 1] : 0;
  return n + (last < doc->n_ids);
}
static void sentence_range(const shard_doc *doc, uint32_t k, uint32_t *a, uint32_t *b) {
  *a = k ? doc->sentence_ends[k - 1] : 0;
  *b = k < doc->n_sentences ? doc->sentence_ends[k] : (uint32_t)doc->n_ids;
}

typedef struct {
  void *p;
  size_t n, cap, elem;
} vec;
static void *vec_push(vec *v) {
  if (v->n == v->cap) {
    size_t c = v->cap ? 2 * v->cap : 1024;
    void *q = realloc(v->p, c * v->elem);
    if (!q) return NULL;
    v->p = q;
    v->cap = c;
  }
  return (char *)v->p + v->elem * v->n++;
}

static status_t cut_packed(dataset *d, uint64_t n_docs) {
  const uint32_t budget = (uint32_t)d->cfg.seq_len - 2;
  vec v = {.elem = sizeof(inst_start)};
  uint32_t cur = 0;
  uint64_t last_doc = UINT64_MAX;
  bool empty = true;
  status_t st = STATUS_OK;
#define START(D, T)                                                     \
  do {                                                                  \
    inst_start *s = vec_push(&v);                                       \
    if (!s) {                                                           \
      st = status_set(STATUS_NOMEM, "out of memory cutting instances"); \
      goto out;                                                         \
    }                                                                   \
    *s = (inst_start){(D), (T)};                                        \
  } while (0)
  for (uint64_t g = 0; g < n_docs; g++) {
    shard_doc doc;
    if ((st = read_doc(d, g, &doc))) goto out;
    uint32_t ns = doc_sentences(&doc);
    for (uint32_t k = 0; k < ns; k++) {
      uint32_t a, b;
      sentence_range(&doc, k, &a, &b);
      while (a < b) {
        uint32_t sep = !empty && g != last_doc;
        if (!empty && cur + sep + (b - a) <= budget) {
          cur += sep + (b - a);
          last_doc = g;
          a = b;
          continue;
        }
        if (!empty) empty = true; /* the instance is full: this sentence starts the next */
        START(g, a);
        uint32_t take = b - a < budget ? b - a : budget;
        cur = take;
        last_doc = g;
        empty = false;
        a += take;
      }
    }
    shard_doc_free(&doc);
  }
  START(n_docs, 0);
#undef START
  d->starts = v.p;
  d->n_inst = v.n - 1;
  return STATUS_OK;
out:
  free(v.p);
  return st;
}

/* BERT's create_instances_from_document, with Philox keyed by the document
 * in place of Python's random. Pairs are kept as sentence ranges; the
 * truncation happens when the batch is built. */
static status_t cut_pairs(dataset *d, uint64_t n_docs) {
  const uint64_t max_tokens = (uint64_t)d->cfg.seq_len - 3;
  vec v = {.elem = sizeof(inst_pair)};
  status_t st = STATUS_OK;
  shard_doc doc = {0}, other = {0};
  for (uint64_t g = 0; g < n_docs && st == STATUS_OK; g++) {
    if ((st = read_doc(d, g, &doc))) break;
    rng_seq rs = {.key = {.seed = d->cfg.seed,
                          .sample = (uint32_t)g,
                          .step = (uint32_t)(g >> 32),
                          .stream = STREAM_NSP}};
    uint64_t target = max_tokens;
    if (seq_u(&rs) < d->cfg.short_seq_prob) target = seq_int(&rs, 2, max_tokens);
    uint32_t ns = doc_sentences(&doc), chunk0 = 0;
    uint64_t len = 0;
    for (uint32_t i = 0; i < ns; i++) {
      uint32_t a, b;
      sentence_range(&doc, i, &a, &b);
      len += b - a;
      if (i != ns - 1 && len < target) continue;
      uint32_t nchunk = i - chunk0 + 1, a_end = 1;
      if (nchunk >= 2) a_end = (uint32_t)seq_int(&rs, 1, nchunk - 1);
      inst_pair p = {.a_doc = g, .a0 = chunk0, .a1 = chunk0 + a_end};
      uint32_t pa0, pa1, ta, tb;
      sentence_range(&doc, p.a0, &pa0, &ta);
      sentence_range(&doc, p.a1 - 1, &ta, &pa1);
      uint64_t len_a = pa1 - pa0;
      if (nchunk == 1 || seq_u(&rs) < 0.5f) {
        p.label = 1;
        uint64_t rd = g;
        for (int tries = 0; tries < 10 && n_docs > 1 && rd == g; tries++)
          rd = seq_int(&rs, 0, n_docs - 1);
        if ((st = read_doc(d, rd, &other))) break;
        uint32_t ons = doc_sentences(&other);
        uint64_t need = target > len_a ? target - len_a : 1;
        p.b_doc = rd;
        p.b0 = ons ? (uint32_t)seq_int(&rs, 0, ons - 1) : 0;
        uint64_t lb = 0;
        uint32_t j = p.b0;
        for (; j < ons; j++) {
          sentence_range(&other, j, &ta, &tb);
          lb += tb - ta;
          if (lb >= need) {
            j++;
            break;
          }
        }
        p.b1 = j;
        shard_doc_free(&other);
        /* The chunk's unused sentences go back to be used again. */
        i -= nchunk - a_end;
      } else {
        p.label = 0;
        p.b_doc = g;
        p.b0 = p.a1;
        p.b1 = chunk0 + nchunk;
      }
      if (p.b1 > p.b0 && len_a > 0) {
        inst_pair *q = vec_push(&v);
        if (!q) {
          st = status_set(STATUS_NOMEM, "out of memory cutting instances");
          break;
        }
        *q = p;
      }
      chunk0 = i + 1;
      len = 0;
    }
    shard_doc_free(&doc);
  }
  shard_doc_free(&doc);
  if (st) {
    free(v.p);
    return st;
  }
  d->pairs = v.p;
  d->n_inst = v.n;
  return STATUS_OK;
}

/* Causal LM: the stream is every non-empty document followed by the
 * end-of-text id, in document order; instance k is the window of T + 1
 * tokens from k * T (windows overlap by one token, so every stream token
 * after the first is a target exactly once). */
static status_t cut_clm(dataset *d, uint64_t n_docs) {
  d->stream_base = malloc((n_docs + 1) * sizeof *d->stream_base);
  if (!d->stream_base) return status_set(STATUS_NOMEM, "out of memory cutting instances");
  uint64_t L = 0;
  for (uint64_t g = 0; g < n_docs; g++) {
    shard_doc doc;
    status_t st = read_doc(d, g, &doc);
    if (st) return st;
    d->stream_base[g] = L;
    L += doc.n_ids ? doc.n_ids + 1 : 0;
    shard_doc_free(&doc);
  }
  d->stream_base[n_docs] = L;
  const uint64_t T = (uint64_t)d->cfg.seq_len;
  d->n_inst = L >= 2 ? (L - 1 + T - 1) / T : 0;
  return STATUS_OK;
}

/* The end-of-text id of the shards' tokenizer: GPT-2 BPE's <|endoftext|>
 * and SentencePiece's </s>, looked up in the tokenizer `mlmpi-data shard`
 * recorded beside the shards (mlmpi-tokenizer.json, used only when its
 * fingerprint is the shards'); WordPiece, which has none, uses [SEP]. */
static status_t find_eot(dataset *d, const char *dir) {
  const char *piece = !strcmp(d->meta.tokenizer_kind, "gpt2")            ? tok_eot_piece(TOK_GPT2)
                      : !strcmp(d->meta.tokenizer_kind, "sentencepiece") ? tok_eot_piece(TOK_SPM)
                                                                         : NULL;
  if (!piece) {
    d->eot_id = d->meta.sep_id;
    if (d->eot_id < 0)
      return status_set(STATUS_FORMAT,
                        "%s: data.objective clm needs a [SEP] token (the end of text) in the "
                        "shards' tokenizer",
                        dir);
    return STATUS_OK;
  }
  char path[4096], *text = NULL;
  size_t len = 0;
  snprintf(path, sizeof path, "%s/mlmpi-tokenizer.json", dir);
  d->eot_id = -1;
  if (access(path, F_OK) == 0 && core_read_file("", path, 1 << 20, &text, &len) == STATUS_OK) {
    cJSON *j = cJSON_ParseWithLength(text, len);
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "path");
    tokenizer *t = NULL;
    if (cJSON_IsString(p) && tok_load(p->valuestring, &t) == STATUS_OK) {
      if (tok_fingerprint(t) != d->meta.tokenizer_fingerprint) tok_add_specials(t);
      if (tok_fingerprint(t) == d->meta.tokenizer_fingerprint) d->eot_id = tok_piece_id(t, piece);
    }
    tok_free(t);
    cJSON_Delete(j);
    free(text);
  }
  if (d->eot_id < 0)
    return status_set(STATUS_FORMAT,
                      "%s: data.objective clm needs the shards' tokenizer, recorded in %s (with "
                      "their fingerprint), for its end-of-text piece %s",
                      dir, path, piece);
  return STATUS_OK;
}

status_t dataset_open(dataset **out, const char *dir, const char *split, const data_config *cfg) {
  *out = NULL;
  /* Causal-LM batches have no masked slots: max_predictions only sizes
   * their (zero) masked_lm_* rows. */
  if (cfg->seq_len < 8 || cfg->max_predictions < 1 ||
      (cfg->max_predictions > cfg->seq_len && cfg->objective != OBJECTIVE_CLM))
    return status_set(STATUS_CONFIG,
                      "data: seq_len must be >= 8 and max_predictions in [1, seq_len]");
  char pattern[4096];
  snprintf(pattern, sizeof pattern, "%s/%s-*.mlms", dir, split);
  glob_t gl;
  int gr = glob(pattern, 0, NULL, &gl);
  if (gr != 0) {
    if (gr != GLOB_NOMATCH) globfree(&gl);
    return status_set(STATUS_IO, "no %s shards (%s-*.mlms) in %s", split, split, dir);
  }
  dataset *d = calloc(1, sizeof *d);
  status_t st = STATUS_OK;
  if (!d) {
    globfree(&gl);
    return status_set(STATUS_NOMEM, "out of memory opening %s", dir);
  }
  d->cfg = *cfg;
  d->shards = calloc(gl.gl_pathc, sizeof *d->shards);
  d->doc_base = calloc(gl.gl_pathc + 1, sizeof *d->doc_base);
  if (!d->shards || !d->doc_base) {
    st = status_set(STATUS_NOMEM, "out of memory opening %s", dir);
    goto fail;
  }
  uint64_t h = CORE_FNV_OFFSET;
  for (size_t i = 0; i < gl.gl_pathc; i++) {
    if ((st = shard_open(gl.gl_pathv[i], &d->shards[i]))) goto fail;
    d->n_shards++;
    const shard_reader *r = d->shards[i];
    if (i == 0)
      d->meta = r->meta;
    else if (r->meta.tokenizer_fingerprint != d->meta.tokenizer_fingerprint) {
      st = status_set(STATUS_FORMAT, "%s: made with another tokenizer than %s", gl.gl_pathv[i],
                      gl.gl_pathv[0]);
      goto fail;
    }
    d->doc_base[i + 1] = d->doc_base[i] + r->n_docs;
    h = core_fnv1a(h, &r->meta.tokenizer_fingerprint, 8);
    h = core_fnv1a(h, &r->n_docs, 8);
    h = core_fnv1a(h, &r->n_tokens, 8);
  }
  if (cfg->objective == OBJECTIVE_CLM) {
    if (cfg->instances != INST_PACKED) {
      st = status_set(STATUS_CONFIG,
                      "data.objective clm cuts its own windows: data.instances "
                      "must be packed");
      goto fail;
    }
    if ((st = find_eot(d, dir))) goto fail;
  } else if (d->meta.cls_id < 0 || d->meta.sep_id < 0 || d->meta.mask_id < 0 ||
             d->meta.pad_id < 0) {
    st = status_set(STATUS_FORMAT,
                    "%s: the shards' tokenizer lacks one of the [CLS] [SEP] [MASK] [PAD] tokens",
                    gl.gl_pathv[0]);
    goto fail;
  }
  uint64_t n_docs = d->doc_base[d->n_shards];
  st = cfg->objective == OBJECTIVE_CLM ? cut_clm(d, n_docs)
       : cfg->instances == INST_PACKED ? cut_packed(d, n_docs)
                                       : cut_pairs(d, n_docs);
  if (st) goto fail;
  if (d->n_inst == 0) {
    st = status_set(STATUS_FORMAT, "%s: the %s shards hold no usable text", dir, split);
    goto fail;
  }
  h = core_fnv1a(h, &d->n_inst, 8);
  const int32_t cfgv[] = {cfg->seq_len, cfg->max_predictions, (int32_t)cfg->masking,
                          cfg->whole_word, (int32_t)cfg->instances};
  const float cfgf[] = {cfg->mask_prob, cfg->short_seq_prob};
  h = core_fnv1a(h, cfgv, sizeof cfgv);
  h = core_fnv1a(h, cfgf, sizeof cfgf);
  h = core_fnv1a(h, &cfg->seed, 8);
  /* Masked-LM fingerprints stay what they were before the objective existed. */
  if (cfg->objective == OBJECTIVE_CLM) {
    h = core_fnv1a(h, "objective=clm", 13);
    h = core_fnv1a(h, &d->eot_id, 4);
  }
  d->fingerprint = h;
  globfree(&gl);
  *out = d;
  return STATUS_OK;
fail:
  globfree(&gl);
  dataset_free(d);
  return st;
}

void dataset_free(dataset *d) {
  if (!d) return;
  for (int i = 0; i < d->n_shards; i++) shard_close(d->shards[i]);
  free(d->shards);
  free(d->doc_base);
  free(d->starts);
  free(d->pairs);
  free(d->stream_base);
  free(d);
}

uint64_t dataset_instances(const dataset *d) { return d->n_inst; }
uint64_t dataset_documents(const dataset *d) { return d->doc_base[d->n_shards]; }
const shard_meta *dataset_meta(const dataset *d) { return &d->meta; }
uint64_t dataset_fingerprint(const dataset *d) { return d->fingerprint; }
int32_t dataset_eot_id(const dataset *d) {
  return d->cfg.objective == OBJECTIVE_CLM ? d->eot_id : -1;
}

/* ---- Building one sequence --------------------------------------------------- */
/* A row under construction: ids and word-start marks. */
typedef struct {
  int32_t *ids, *seg;
  uint8_t *word; /* 1 where a word starts; special tokens 0 */
  int n, cap;
} row;

static void row_push(row *r, int32_t id, int32_t seg, uint8_t word) {
  if (r->n < r->cap) {
    r->ids[r->n] = id;
    r->seg[r->n] = seg;
    r->word[r->n] = word;
    r->n++;
  }
}

static void row_push_doc(row *r, const shard_doc *doc, uint32_t a, uint32_t b, int32_t seg) {
  for (uint32_t t = a; t < b; t++)
    row_push(r, doc->ids[t], seg, doc->word_starts ? (doc->word_starts[t / 8] >> (t % 8)) & 1 : 1);
}

static status_t fill_packed(const dataset *d, uint64_t inst, row *r) {
  const inst_start s = d->starts[inst], e = d->starts[inst + 1];
  row_push(r, d->meta.cls_id, 0, 0);
  bool any = false;
  for (uint64_t g = s.doc; g <= e.doc && g < dataset_documents(d); g++) {
    uint32_t from = g == s.doc ? s.tok : 0;
    if (g == e.doc && e.tok == 0) break;
    shard_doc doc;
    status_t st = read_doc(d, g, &doc);
    if (st) return st;
    uint32_t to = g == e.doc ? e.tok : (uint32_t)doc.n_ids;
    if (to > from) {
      if (any) row_push(r, d->meta.sep_id, 0, 0);
      row_push_doc(r, &doc, from, to, 0);
      any = true;
    }
    shard_doc_free(&doc);
  }
  row_push(r, d->meta.sep_id, 0, 0);
  return STATUS_OK;
}

/* Tokens of a sentence range of a document, appended to buf. */
static status_t gather_range(const dataset *d, uint64_t g, uint32_t s0, uint32_t s1, row *buf,
                             int32_t seg) {
  shard_doc doc;
  status_t st = read_doc(d, g, &doc);
  if (st) return st;
  uint32_t a = 0, b = 0, t;
  if (s1 > s0) {
    sentence_range(&doc, s0, &a, &t);
    sentence_range(&doc, s1 - 1, &t, &b);
  }
  row_push_doc(buf, &doc, a, b, seg);
  shard_doc_free(&doc);
  return STATUS_OK;
}

static status_t fill_pair(const dataset *d, uint64_t inst, row *r, int32_t *label) {
  const inst_pair *p = &d->pairs[inst];
  int cap = r->cap;
  /* Gather A and B unbounded into scratch rows, truncate as BERT does, then
   * lay out [CLS] A [SEP] B [SEP]. */
  size_t n = 0;
  row a = {0}, b = {0};
  /* The segments can exceed seq_len before truncation: size from the docs. */
  shard_doc da, db;
  status_t st = read_doc(d, p->a_doc, &da);
  if (st) return st;
  if ((st = read_doc(d, p->b_doc, &db))) {
    shard_doc_free(&da);
    return st;
  }
  n = da.n_ids + db.n_ids + 1;
  shard_doc_free(&da);
  shard_doc_free(&db);
  a.ids = malloc(n * 4);
  a.seg = malloc(n * 4);
  a.word = malloc(n);
  b.ids = malloc(n * 4);
  b.seg = malloc(n * 4);
  b.word = malloc(n);
  a.cap = b.cap = (int)n;
  if (!a.ids || !a.seg || !a.word || !b.ids || !b.seg || !b.word) {
    st = status_set(STATUS_NOMEM, "out of memory building a batch");
    goto out;
  }
  if ((st = gather_range(d, p->a_doc, p->a0, p->a1, &a, 0)) ||
      (st = gather_range(d, p->b_doc, p->b0, p->b1, &b, 1)))
    goto out;
  {
    rng_seq rs = {.key = {.seed = d->cfg.seed,
                          .sample = (uint32_t)inst,
                          .step = (uint32_t)(inst >> 32),
                          .stream = STREAM_TRUNC}};
    int a0 = 0, a1 = a.n, b0 = 0, b1 = b.n, max = cap - 3;
    while ((a1 - a0) + (b1 - b0) > max) {
      bool take_a = (a1 - a0) > (b1 - b0);
      if (seq_u(&rs) < 0.5f) {
        if (take_a)
          a0++;
        else
          b0++;
      } else {
        if (take_a)
          a1--;
        else
          b1--;
      }
    }
    row_push(r, d->meta.cls_id, 0, 0);
    for (int i = a0; i < a1; i++) row_push(r, a.ids[i], 0, a.word[i]);
    row_push(r, d->meta.sep_id, 0, 0);
    for (int i = b0; i < b1; i++) row_push(r, b.ids[i], 1, b.word[i]);
    row_push(r, d->meta.sep_id, 1, 0);
    *label = (int32_t)p->label;
  }
out:
  free(a.ids);
  free(a.seg);
  free(a.word);
  free(b.ids);
  free(b.seg);
  free(b.word);
  return st;
}

/* Causal LM: the window of instance inst into w (up to T + 1 tokens);
 * returns how many it holds (2 or more). */
static status_t fill_clm(const dataset *d, uint64_t inst, int32_t *w, int *m) {
  const uint64_t T = (uint64_t)d->cfg.seq_len, n_docs = dataset_documents(d);
  const uint64_t L = d->stream_base[n_docs], p0 = inst * T;
  const uint64_t p1 = p0 + T + 1 < L ? p0 + T + 1 : L;
  /* The document holding p0: the last g with stream_base[g] <= p0. */
  uint64_t lo = 0, hi = n_docs - 1;
  while (lo < hi) {
    uint64_t mid = lo + (hi - lo + 1) / 2;
    if (d->stream_base[mid] <= p0)
      lo = mid;
    else
      hi = mid - 1;
  }
  int n = 0;
  for (uint64_t g = lo, p = p0; p < p1 && g < n_docs; g++) {
    uint64_t base = d->stream_base[g], end = d->stream_base[g + 1];
    if (end <= p) continue;
    shard_doc doc;
    status_t st = read_doc(d, g, &doc);
    if (st) return st;
    for (; p < p1 && p < end; p++) {
      uint64_t t = p - base;
      w[n++] = t < doc.n_ids ? doc.ids[t] : d->eot_id;
    }
    shard_doc_free(&doc);
  }
  *m = n;
  return STATUS_OK;
}

/* Dynamic masking of one row, as create_pretraining_data's
 * create_masked_lm_predictions (whole-word groups optional). */
static void mask_row(const dataset *d, uint64_t step, uint64_t j, row *r, int32_t *pos,
                     int32_t *mids, float *w, int32_t *tmp) {
  const data_config *c = &d->cfg;
  const int P = c->max_predictions;
  /* Groups of candidate positions: a group starts at a word start (or at
   * every token without whole-word masking). tmp holds group starts, then
   * the group of each candidate. */
  int ng = 0, ncand = 0;
  int32_t *gstart = tmp, *gend = tmp + r->n;
  for (int i = 0; i < r->n; i++) {
    int32_t id = r->ids[i];
    bool special = id == d->meta.cls_id || id == d->meta.sep_id || id == d->meta.pad_id;
    if (special) continue;
    ncand++;
    if (ng == 0 || !c->whole_word || r->word[i] || gend[ng - 1] != i) {
      gstart[ng] = i;
      gend[ng] = i + 1;
      ng++;
    } else {
      gend[ng - 1] = i + 1;
    }
  }
  /* As BERT: round(len(tokens) * masked_lm_prob), specials counted, ties
   * to even as Python's round. */
  (void)ncand;
  int want = (int)nearbyint((double)r->n * (double)c->mask_prob);
  if (want < 1) want = 1;
  if (want > P) want = P;
  rng_seq rs = {.key = {.seed = c->seed,
                        .step = (uint32_t)step,
                        .sample = (uint32_t)j,
                        .stream = STREAM_MASK | (uint32_t)(step >> 32) << 8}};
  /* Fisher-Yates over the groups. */
  for (int i = ng - 1; i > 0; i--) {
    int k = (int)seq_int(&rs, 0, (uint64_t)i);
    int32_t s = gstart[i], e = gend[i];
    gstart[i] = gstart[k];
    gend[i] = gend[k];
    gstart[k] = s;
    gend[k] = e;
  }
  int np = 0;
  for (int gi = 0; gi < ng && np < want; gi++) {
    int len = gend[gi] - gstart[gi];
    if (np + len > want) continue;
    for (int i = gstart[gi]; i < gend[gi]; i++) pos[np++] = i;
  }
  /* Sorted by position, as BERT writes them. */
  for (int i = 1; i < np; i++)
    for (int k = i; k > 0 && pos[k - 1] > pos[k]; k--) {
      int32_t t = pos[k];
      pos[k] = pos[k - 1];
      pos[k - 1] = t;
    }
  for (int i = 0; i < np; i++) {
    int32_t at = pos[i], orig = r->ids[at];
    float u = seq_u(&rs);
    int32_t repl = d->meta.mask_id;
    if (c->masking == MASK_BERT) {
      if (u >= 0.8f) repl = u < 0.9f ? orig : (int32_t)seq_int(&rs, 0, d->meta.vocab_size - 1);
    } else if (u >= 0.85f) {
      repl = orig;
    }
    r->ids[at] = repl;
    mids[i] = orig;
    w[i] = 1.0f;
  }
  for (int i = np; i < P; i++) pos[i] = mids[i] = 0, w[i] = 0.0f;
}

status_t dataset_get_batch(const dataset *d, uint64_t global_batch, uint64_t step, uint64_t first,
                           int count, data_batch *out) {
  const int T = d->cfg.seq_len, P = d->cfg.max_predictions;
  if (out->T != T || out->P != P || count > out->n || count < 0 ||
      first + (uint64_t)count > global_batch)
    return status_set(STATUS_ARG,
                      "batch request: instances %llu..%llu of %llu (T %d, P %d) do not fit",
                      (unsigned long long)first, (unsigned long long)(first + (uint64_t)count),
                      (unsigned long long)global_batch, T, P);
  int32_t *tmp = malloc((size_t)4 * T * sizeof(int32_t));
  uint8_t *word = malloc((size_t)T);
  if (!tmp || !word) {
    free(tmp);
    free(word);
    return status_set(STATUS_NOMEM, "out of memory building a batch");
  }
  status_t st = STATUS_OK;
  for (int k = 0; k < count && st == STATUS_OK; k++) {
    uint64_t j = first + (uint64_t)k, g = step * global_batch + j;
    uint64_t epoch = g / d->n_inst;
    uint64_t inst =
        data_permute(g % d->n_inst, d->n_inst, d->cfg.seed ^ (epoch * 0x9e3779b97f4a7c15ull));
    if (d->cfg.objective == OBJECTIVE_CLM) {
      int m = 0;
      if ((st = fill_clm(d, inst, tmp, &m))) break;
      size_t o = (size_t)k * T;
      for (int i = 0; i < T; i++) {
        bool real = i < m - 1;
        out->input_ids[o + i] = real ? tmp[i] : d->eot_id;
        out->target_ids[o + i] = real ? tmp[i + 1] : d->eot_id;
        out->target_weights[o + i] = real ? 1.0f : 0.0f;
        out->input_mask[o + i] = real;
        out->segment_ids[o + i] = 0;
      }
      out->next_sentence_labels[k] = 0;
      memset(out->masked_lm_positions + (size_t)k * P, 0, (size_t)P * 4);
      memset(out->masked_lm_ids + (size_t)k * P, 0, (size_t)P * 4);
      memset(out->masked_lm_weights + (size_t)k * P, 0, (size_t)P * 4);
      continue;
    }
    row r = {out->input_ids + (size_t)k * T, out->segment_ids + (size_t)k * T, word, 0, T};
    int32_t label = 0;
    st =
        d->cfg.instances == INST_PACKED ? fill_packed(d, inst, &r) : fill_pair(d, inst, &r, &label);
    if (st) break;
    int32_t *mask = out->input_mask + (size_t)k * T;
    for (int i = 0; i < T; i++) mask[i] = i < r.n;
    for (int i = r.n; i < T; i++) r.ids[i] = d->meta.pad_id, r.seg[i] = 0;
    out->next_sentence_labels[k] = label;
    memset(out->target_ids + (size_t)k * T, 0, (size_t)T * 4);
    memset(out->target_weights + (size_t)k * T, 0, (size_t)T * 4);
    mask_row(d, step, j, &r, out->masked_lm_positions + (size_t)k * P,
             out->masked_lm_ids + (size_t)k * P, out->masked_lm_weights + (size_t)k * P, tmp);
  }
  free(tmp);
  free(word);
  return st;
}
