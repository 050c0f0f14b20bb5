/* shard_cmd.c: `mlmpi-data shard`, `inspect` and `dump`: tokenizing text
 * corpora into shards in parallel (output in input order), and checking and
 * printing shards. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "shard.h"
#include "tfexample.h"
#include "tokenizer.h"

/* One document: its sentences as text, then as token ids. */
typedef struct {
  tok_str text;     /* sentences separated by '\n' */
  tok_ids ids;      /* all tokens */
  tok_ids ends;     /* sentence ends (as int32) */
  tok_str wordbits; /* (n+7)/8 bytes */
} doc_slot;

typedef struct {
  FILE *f;
  const char *path;
  bool jsonl;
  char *line;
  size_t cap;
  uint64_t lineno, bytes;
} doc_source;

/* Reads the next document into d->text. Plain text: documents are separated
 * by blank lines, one sentence per line. JSON Lines: {"text": ...} per line,
 * its lines the sentences. Returns 1 for a document, 0 at the end. */
static int next_doc(doc_source *s, doc_slot *d, status_t *st) {
  d->text.n = 0;
  tok_str_append(&d->text, "", 0);
  for (;;) {
    ssize_t r = getline(&s->line, &s->cap, s->f);
    if (r < 0) return d->text.n > 0;
    s->lineno++;
    s->bytes += (uint64_t)r;
    size_t n = (size_t)r;
    while (n && (s->line[n - 1] == '\n' || s->line[n - 1] == '\r')) n--;
    if (s->jsonl) {
      if (!n) continue;
      cJSON *j = cJSON_ParseWithLength(s->line, n);
      const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "text");
      if (!cJSON_IsString(t)) {
        cJSON_Delete(j);
        *st = status_set(STATUS_FORMAT, "%s:%llu: not a JSON object with a string \"text\"",
                         s->path, (unsigned long long)s->lineno);
        return 0;
      }
      tok_str_append(&d->text, t->valuestring, strlen(t->valuestring));
      cJSON_Delete(j);
      return 1;
    }
    bool blank = true;
    for (size_t i = 0; i < n && blank; i++) blank = s->line[i] == ' ' || s->line[i] == '\t';
    if (blank) {
      if (d->text.n) return 1;
      continue;
    }
    if (d->text.n) tok_str_append(&d->text, "\n", 1);
    tok_str_append(&d->text, s->line, n);
  }
}

static bool piece_starts_word(const tokenizer *t, int32_t id) {
  size_t len = 0;
  const char *p = tok_piece(t, id, &len);
  switch (tok_get_kind(t)) {
    case TOK_SPM: return len >= 3 && !memcmp(p, "\xe2\x96\x81", 3);
    case TOK_GPT2: return len >= 2 && !memcmp(p, "\xc4\xa0", 2);
    case TOK_WORDPIECE: return !(len >= 2 && p[0] == '#' && p[1] == '#');
  }
  return false;
}

static status_t tokenize_doc(const tokenizer *t, doc_slot *d) {
  d->ids.n = d->ends.n = d->wordbits.n = 0;
  status_t st = STATUS_OK;
  const char *p = d->text.s, *end = d->text.s + d->text.n;
  while (p < end && st == STATUS_OK) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
    size_t before = d->ids.n;
    st = tok_encode(t, p, len, &d->ids);
    if (st == STATUS_OK && d->ids.n > before) st = tok_ids_push(&d->ends, (int32_t)d->ids.n);
    for (size_t i = before; i < d->ids.n && st == STATUS_OK; i++) {
      if (i % 8 == 0) st = tok_str_append(&d->wordbits, "", 1);
      if (i == before || piece_starts_word(t, d->ids.v[i]))
        d->wordbits.s[i / 8] |= (char)(1u << (i % 8));
    }
    p += len + 1;
  }
  return st;
}

/* Shards of one split, rolled over at a size. */
typedef struct {
  const char *dir, *split;
  shard_meta meta;
  uint64_t max_bytes;
  int index;
  shard_writer *w;
  uint64_t docs, tokens;
} shard_set;

static status_t set_add(shard_set *s, const doc_slot *d) {
  status_t st;
  if (s->w && shard_writer_bytes(s->w) >= s->max_bytes) {
    st = shard_writer_close(s->w);
    s->w = NULL;
    if (st) return st;
  }
  if (!s->w) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s-%05d.mlms", s->dir, s->split, s->index++);
    snprintf(s->meta.split, sizeof s->meta.split, "%s", s->split);
    if ((st = shard_writer_open(&s->w, path, &s->meta))) return st;
  }
  s->docs++;
  s->tokens += d->ids.n;
  return shard_writer_add(s->w, d->ids.v, d->ids.n, (const uint32_t *)d->ends.v, d->ends.n,
                          (const uint8_t *)d->wordbits.s);
}

static const char shard_usage[] =
    "usage: mlmpi-data shard --tokenizer PATH --out DIR [--holdout-docs N] [--shard-mb M]\n"
    "                        [--threads N] [--no-add-specials] FILE...\n"
    "  Tokenizes plain text (documents separated by blank lines, one sentence per line) or\n"
    "  JSON Lines ({\"text\": ...} per document; files ending .jsonl) into DIR/train-NNNNN.mlms\n"
    "  (and DIR/holdout-NNNNN.mlms: the first N documents, default 0). Shards roll over at\n"
    "  M MB (default 256). Empty documents are skipped.\n"
    "  A SentencePiece vocabulary that lacks any of [CLS] [SEP] [MASK] [PAD] (<s> </s> <mask>\n"
    "  <pad> count as them), as spm_train's defaults make it, gets the missing ones appended after "
    "its\n"
    "  last id (said once on stderr; the shards' vocab_size counts them, text never encodes\n"
    "  to them); --no-add-specials refuses such a vocabulary instead.\n";

/* Appends the special tokens a SentencePiece vocabulary lacks, saying so
 * once, or refuses them (--no-add-specials). GPT-2's byte-level vocabulary
 * is left as it is (its models want no [MASK]; masked-LM batches refuse it
 * later, naming what is missing). */
static status_t add_specials(tokenizer *t, const char *path, bool refuse, int *added) {
  char names[64];
  *added = 0;
  if (tok_get_kind(t) != TOK_SPM) return STATUS_OK;
  int n = tok_missing_specials(t, names, sizeof names);
  if (!n) return STATUS_OK;
  if (refuse)
    return status_set(STATUS_ARG, "%s has no %s (not appended: --no-add-specials)", path, names);
  const int32_t first = tok_vocab_size(t);
  *added = tok_add_specials(t);
  if (n == 1)
    fprintf(stderr, "mlmpi-data shard: %s has no %s: appended as id %d\n", path, names, first);
  else
    fprintf(stderr, "mlmpi-data shard: %s has no %s: appended as ids %d..%d\n", path, names, first,
            first + n - 1);
  return STATUS_OK;
}

/* Records the tokenizer beside the shards (mlmpi-tokenizer.json), so that
 * a job fine-tuning from a model pretrained on them finds the same one.
 * Written to a temporary file and renamed: a reader sees all or nothing. */
static status_t write_tokenizer_record(const char *dir, const char *tk, const shard_meta *m,
                                       int added) {
  char path[4096], tmp[4200], fp[17];
  snprintf(path, sizeof path, "%s/mlmpi-tokenizer.json", dir);
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  snprintf(fp, sizeof fp, "%016llx", (unsigned long long)m->tokenizer_fingerprint);
  char *abs = realpath(tk, NULL);
  cJSON *j = cJSON_CreateObject();
  cJSON_AddStringToObject(j, "path", abs ? abs : tk);
  cJSON_AddStringToObject(j, "kind", m->tokenizer_kind);
  cJSON_AddStringToObject(j, "fingerprint", fp);
  cJSON_AddNumberToObject(j, "vocab_size", m->vocab_size);
  cJSON_AddNumberToObject(j, "added_specials", added);
  char *text = cJSON_Print(j);
  cJSON_Delete(j);
  free(abs);
  if (!text) return status_set(STATUS_NOMEM, "out of memory writing %s", path);
  FILE *f = fopen(tmp, "wb");
  bool ok = f && fputs(text, f) >= 0 && fputc('\n', f) != EOF;
  ok = (f && fclose(f) == 0) && ok && rename(tmp, path) == 0;
  int err = errno;
  cJSON_free(text);
  if (ok) return STATUS_OK;
  status_t st = status_set(STATUS_IO, "cannot write %s: %s", path, strerror(err));
  remove(tmp);
  return st;
}

int data_shard_main(int argc, char **argv) {
  static const struct option opts[] = {{"tokenizer", required_argument, 0, 'k'},
                                       {"out", required_argument, 0, 'o'},
                                       {"holdout-docs", required_argument, 0, 'H'},
                                       {"shard-mb", required_argument, 0, 'm'},
                                       {"threads", required_argument, 0, 't'},
                                       {"no-add-specials", no_argument, 0, 'n'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  const char *tk = NULL, *out = NULL;
  long long holdout = 0, shard_mb = 256, threads = 0;
  bool no_add_specials = false;
  int added = 0;
  opterr = 0;
  optind = 1;
  for (int c; (c = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
    char *e = NULL;
    switch (c) {
      case 'k': tk = optarg; break;
      case 'o': out = optarg; break;
      case 'H': holdout = strtoll(optarg, &e, 10); break;
      case 'm': shard_mb = strtoll(optarg, &e, 10); break;
      case 't': threads = strtoll(optarg, &e, 10); break;
      case 'n': no_add_specials = true; break;
      case 'h': fputs(shard_usage, stdout); return 0;
      default:
        fprintf(stderr, "mlmpi-data shard: unknown or incomplete option '%s' (see --help)\n",
                argv[optind - 1]);
        return 2;
    }
    if (e && (*e || e == optarg || holdout < 0 || shard_mb < 1 || threads < 0)) {
      fprintf(stderr, "mlmpi-data shard: bad number '%s'\n", optarg);
      return 2;
    }
  }
  if (!tk || !out || optind >= argc) {
    fprintf(stderr,
            "mlmpi-data shard: --tokenizer, --out and at least one input FILE are needed\n");
    return 2;
  }
  if (threads) omp_set_num_threads((int)threads);
  tokenizer *t = NULL;
  status_t st = tok_load(tk, &t);
  if (st == STATUS_OK) st = add_specials(t, tk, no_add_specials, &added);
  if (st == STATUS_OK && mkdir(out, 0755) != 0 && errno != EEXIST)
    st = status_set(STATUS_IO, "cannot create %s: %s", out, strerror(errno));
  if (st) {
    fprintf(stderr, "mlmpi-data shard: %s\n", status_message());
    tok_free(t);
    return 1;
  }
  tok_specials sp = tok_get_specials(t);
  shard_meta meta = {.tokenizer_fingerprint = tok_fingerprint(t),
                     .vocab_size = (uint32_t)tok_vocab_size(t),
                     .cls_id = sp.cls,
                     .sep_id = sp.sep,
                     .mask_id = sp.mask,
                     .pad_id = sp.pad,
                     .unk_id = sp.unk};
  static const char *kinds[] = {"sentencepiece", "gpt2", "wordpiece"};
  snprintf(meta.tokenizer_kind, sizeof meta.tokenizer_kind, "%s", kinds[tok_get_kind(t)]);
  shard_set train = {out, "train", meta, (uint64_t)shard_mb << 20, 0, NULL, 0, 0};
  shard_set hold = {out, "holdout", meta, (uint64_t)shard_mb << 20, 0, NULL, 0, 0};
  enum { BLOCK = 512 };
  doc_slot *slots = calloc(BLOCK, sizeof *slots);
  bool tty = isatty(STDERR_FILENO);
  const double t0 = core_now_s();
  uint64_t in_bytes = 0, seen = 0;
  double last = 0;
  for (int fi = optind; fi < argc && st == STATUS_OK && slots; fi++) {
    doc_source src = {.path = argv[fi]};
    size_t pl = strlen(argv[fi]);
    src.jsonl = pl > 6 && !strcmp(argv[fi] + pl - 6, ".jsonl");
    src.f = fopen(argv[fi], "rb");
    if (!src.f) {
      st = status_set(STATUS_IO, "cannot open %s: %s", argv[fi], strerror(errno));
      break;
    }
    for (bool more = true; more && st == STATUS_OK;) {
      int n = 0;
      while (n < BLOCK && (more = next_doc(&src, &slots[n], &st))) n++;
      int bad = -1;
      char why[512] = "";
#pragma omp parallel for schedule(dynamic, 4)
      for (int i = 0; i < n; i++)
        if (tokenize_doc(t, &slots[i]) != STATUS_OK) {
#pragma omp critical
          if (bad < 0) {
            bad = i;
            snprintf(why, sizeof why, "%s", status_message());
          }
        }
      if (bad >= 0) st = status_set(STATUS_ARG, "%s: %s", argv[fi], why);
      for (int i = 0; i < n && st == STATUS_OK; i++) {
        if (!slots[i].ids.n) continue;
        st = set_add(seen < (uint64_t)holdout ? &hold : &train, &slots[i]);
        seen++;
      }
      double el = core_now_s() - t0;
      if (tty && el - last > 0.5) {
        last = el;
        fprintf(stderr, "\r%llu documents, %llu tokens, %.1f MB/s   ", (unsigned long long)seen,
                (unsigned long long)(train.tokens + hold.tokens),
                (double)(in_bytes + src.bytes) / 1e6 / el);
      }
    }
    in_bytes += src.bytes;
    free(src.line);
    fclose(src.f);
  }
  if (!slots) st = status_set(STATUS_NOMEM, "out of memory");
  for (int i = 0; slots && i < BLOCK; i++) {
    tok_str_free(&slots[i].text);
    tok_ids_free(&slots[i].ids);
    tok_ids_free(&slots[i].ends);
    tok_str_free(&slots[i].wordbits);
  }
  free(slots);
  status_t c1 = train.w ? shard_writer_close(train.w) : STATUS_OK;
  status_t c2 = hold.w ? shard_writer_close(hold.w) : STATUS_OK;
  if (st == STATUS_OK) st = c1 ? c1 : c2;
  if (st == STATUS_OK) st = write_tokenizer_record(out, tk, &meta, added);
  double el = core_now_s() - t0;
  if (tty) fputc('\n', stderr);
  if (st) {
    fprintf(stderr, "mlmpi-data shard: %s\n", status_message());
  } else {
    fprintf(stderr,
            "mlmpi-data shard: %llu train documents (%llu tokens) in %d shard(s), %llu held out "
            "(%llu tokens); %.1f MB in %.1f s\n",
            (unsigned long long)train.docs, (unsigned long long)train.tokens, train.index,
            (unsigned long long)hold.docs, (unsigned long long)hold.tokens, (double)in_bytes / 1e6,
            el);
  }
  tok_free(t);
  return st == STATUS_OK ? 0 : 1;
}

/* ---- inspect and dump -------------------------------------------------------- */

/* Whether shard_open's failure says the file holds records but no shard
 * header: perhaps TFRecords of tf.train.Example (BERT's records). */
static bool not_a_shard(void) { return strstr(status_message(), "not an mlmpi shard") != NULL; }

int data_tfrecord_report(const char *cmd, const char *const *paths, int n_paths, int T, int P,
                         uint64_t seed, bool rows); /* tfrecord_cmd.c */

int data_inspect_main(int argc, char **argv) {
  if (argc < 2 || !strcmp(argv[1], "--help")) {
    fputs(
        "usage: mlmpi-data inspect FILE...\n  Prints each shard's header and counts and checks "
        "every record's CRC; damage is reported with the file and byte offset.\n  A TFRecord "
        "file of tf.train.Example (BERT's pretraining records) gets the report of\n  "
        "`mlmpi-data tfrecord-import FILE`.\n",
        argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  int bad = 0;
  for (int i = 1; i < argc; i++) {
    shard_reader *r;
    status_t st = shard_open(argv[i], &r);
    if (st && not_a_shard()) {
      const char *path = argv[i];
      bad |= data_tfrecord_report("inspect", &path, 1, 0, 0, data_config_default().seed, false);
      continue;
    }
    if (st == STATUS_OK) st = shard_verify(r);
    if (st) {
      fprintf(stderr, "mlmpi-data inspect: %s\n", status_message());
      bad = 1;
      if (r) shard_close(r);
      continue;
    }
    printf(
        "%s: split %s, tokenizer %s (fingerprint %016llx, vocab %u), ids cls %d sep %d mask %d "
        "pad %d unk %d; %llu documents, %llu tokens, %zu bytes; all checksums ok\n",
        argv[i], r->meta.split, r->meta.tokenizer_kind,
        (unsigned long long)r->meta.tokenizer_fingerprint, r->meta.vocab_size, r->meta.cls_id,
        r->meta.sep_id, r->meta.mask_id, r->meta.pad_id, r->meta.unk_id,
        (unsigned long long)r->n_docs, (unsigned long long)r->n_tokens, r->file.size);
    shard_close(r);
  }
  return bad;
}

static void print_ints(const char *key, const int32_t *v, size_t n, bool first) {
  printf("%s\"%s\":[", first ? "" : ",", key);
  for (size_t i = 0; i < n; i++) printf(i ? ",%d" : "%d", v[i]);
  putchar(']');
}

int data_dump_main(int argc, char **argv) {
  if (argc != 2 || !strcmp(argv[1], "--help")) {
    fputs(
        "usage: mlmpi-data dump FILE\n  Prints the shard's header and then every document as "
        "one JSON object per line; a TFRecord file of tf.train.Example prints each record's\n"
        "  feature map: {\"record\":i,\"offset\":byte,\"features\":{name: values}}.\n",
        argc != 2 ? stderr : stdout);
    return argc != 2 ? 2 : 0;
  }
  shard_reader *r;
  if (shard_open(argv[1], &r) != STATUS_OK) {
    if (not_a_shard() && tfx_dump(argv[1], stdout) == STATUS_OK) return fflush(stdout) == 0 ? 0 : 1;
    fflush(stdout);
    fprintf(stderr, "mlmpi-data dump: %s\n", status_message());
    return 1;
  }
  printf(
      "{\"header\":{\"split\":\"%s\",\"tokenizer_kind\":\"%s\",\"tokenizer_fingerprint\":\"%"
      "016llx\","
      "\"vocab_size\":%u,\"cls_id\":%d,\"sep_id\":%d,\"mask_id\":%d,\"pad_id\":%d,\"unk_id\":%d,"
      "\"documents\":%llu,\"tokens\":%llu}}\n",
      r->meta.split, r->meta.tokenizer_kind, (unsigned long long)r->meta.tokenizer_fingerprint,
      r->meta.vocab_size, r->meta.cls_id, r->meta.sep_id, r->meta.mask_id, r->meta.pad_id,
      r->meta.unk_id, (unsigned long long)r->n_docs, (unsigned long long)r->n_tokens);
  int rc = 0;
  for (uint64_t i = 0; i < r->n_docs; i++) {
    shard_doc d;
    if (shard_read_doc(r, i, &d) != STATUS_OK) {
      fflush(stdout);
      fprintf(stderr, "mlmpi-data dump: %s\n", status_message());
      rc = 1;
      break;
    }
    printf("{\"document\":%llu,", (unsigned long long)i);
    print_ints("ids", d.ids, d.n_ids, true);
    print_ints("sentence_ends", (const int32_t *)d.sentence_ends, d.n_sentences, false);
    if (d.word_starts) {
      printf(",\"word_starts\":[");
      for (size_t k = 0; k < d.n_ids; k++)
        printf(k ? ",%d" : "%d", (d.word_starts[k / 8] >> (k % 8)) & 1);
      putchar(']');
    }
    puts("}");
    shard_doc_free(&d);
  }
  shard_close(r);
  if (fflush(stdout) != 0) rc = 1;
  return rc;
}
