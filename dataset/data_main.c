/* data_main.c: the mlmpi-data executable. Commands so far: encode and
 * decode (tokenizers). */
#include <getopt.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"

static const char usage[] =
    "usage: mlmpi-data <command> [options]\n"
    "\n"
    "commands:\n"
    "  encode --tokenizer PATH [--pieces] [--threads N] < text > ids\n"
    "      one line in, one line out: the line's token ids (or pieces) separated by spaces,\n"
    "      as `spm_encode --output_format=id` (piece) prints them\n"
    "  decode --tokenizer PATH < ids > text\n"
    "      one line of space-separated ids in, its text out (ids of appended special tokens,\n"
    "      see shard, as their names)\n"
    "  shard --tokenizer PATH --out DIR [--holdout-docs N] [--shard-mb M] [--no-add-specials]\n"
    "        FILE...\n"
    "      tokenizes text or JSON Lines corpora into shards (*.mlms); special tokens a\n"
    "      SentencePiece vocabulary lacks are appended after it (--no-add-specials: refused)\n"
    "  inspect FILE...\n"
    "      a shard's header and counts, with a full checksum check (BERT TFRecords: the\n"
    "      report of tfrecord-import)\n"
    "  dump FILE\n"
    "      every record of a shard as one JSON object per line\n"
    "  batches --data DIR --seq-len T --global-batch B --world W --rank R --step S ...\n"
    "      the batches a rank receives, as JSON lines (determinism checks)\n"
    "  serve --data DIR [--bind HOST] [--port P] [--workers N] [--token-file F]\n"
    "      the dataset service: streams batches to trainers over TCP\n"
    "  tfrecord-export --data DIR --out FILE --seq-len T [--count N | --steps S --global-batch B]\n"
    "      the batch stream's instances, masks included, as BERT pretraining TFRecords\n"
    "  tfrecord-import FILE|GLOB...\n"
    "      checks BERT pretraining TFRecords (read in place, not converted) and summarizes them\n"
    "\n"
    "`mlmpi-data <command> --help` describes each command.\n"
    "\n"
    "PATH is a SentencePiece .model file, a directory with vocab.json + merges.txt (GPT-2\n"
    "byte-level BPE), or a WordPiece vocab.txt (or a directory holding one).\n";

typedef struct {
  const char *tokenizer;
  bool pieces;
  int threads;
} tok_args;

static int parse_tok_args(const char *cmd, int argc, char **argv, tok_args *a) {
  static const struct option opts[] = {{"tokenizer", required_argument, 0, 'k'},
                                       {"pieces", no_argument, 0, 'p'},
                                       {"threads", required_argument, 0, 't'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  memset(a, 0, sizeof *a);
  opterr = 0;
  optind = 1;
  for (int c; (c = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
    char *end;
    switch (c) {
      case 'k': a->tokenizer = optarg; break;
      case 'p': a->pieces = true; break;
      case 't':
        a->threads = (int)strtol(optarg, &end, 10);
        if (*end || a->threads < 1)
          return fprintf(stderr, "mlmpi-data %s: --threads needs a positive number\n", cmd), 2;
        break;
      case 'h': fputs(usage, stdout); return 1;
      default:
        fprintf(stderr, "mlmpi-data %s: unknown or incomplete option '%s' (see --help)\n", cmd,
                argv[optind - 1]);
        return 2;
    }
  }
  if (optind < argc)
    return fprintf(stderr, "mlmpi-data %s: unexpected argument '%s'\n", cmd, argv[optind]), 2;
  if (!a->tokenizer)
    return fprintf(stderr, "mlmpi-data %s: --tokenizer PATH is required\n", cmd), 2;
  return 0;
}

/* Lines are read in blocks, encoded in parallel, and written in order. */
#define BLOCK_LINES 4096

typedef struct {
  char **line;
  size_t *len, *cap;
  tok_str *out;
} line_block;

/* The ids of one line; --pieces lines come from tok_encode_pieces, which
 * prints pieces the way the tokenizer's own tool does. */
static status_t format_line(const tok_ids *ids, tok_str *o) {
  char num[16];
  o->n = 0;
  status_t st = tok_str_append(o, "", 0);
  for (size_t i = 0; i < ids->n && st == STATUS_OK; i++) {
    /* Digits written backwards from the end of num, after a separator. */
    char *p = num + sizeof num;
    int64_t v = ids->v[i];
    bool neg = v < 0;
    if (neg) v = -v;
    do *--p = (char)('0' + v % 10);
    while (v /= 10);
    if (neg) *--p = '-';
    if (i) *--p = ' ';
    st = tok_str_append(o, p, (size_t)(num + sizeof num - p));
  }
  if (st == STATUS_OK) st = tok_str_append(o, "\n", 1);
  return st;
}

static int cmd_encode(int argc, char **argv) {
  tok_args a;
  int rc = parse_tok_args("encode", argc, argv, &a);
  if (rc) return rc == 1 ? 0 : rc;
  if (a.threads) omp_set_num_threads(a.threads);
  tokenizer *t;
  if (tok_load(a.tokenizer, &t) != STATUS_OK) {
    fprintf(stderr, "mlmpi-data encode: %s\n", status_message());
    return 1;
  }
  line_block b = {calloc(BLOCK_LINES, sizeof(char *)), calloc(BLOCK_LINES, sizeof(size_t)),
                  calloc(BLOCK_LINES, sizeof(size_t)), calloc(BLOCK_LINES, sizeof(tok_str))};
  status_t st = (b.line && b.len && b.cap && b.out) ? STATUS_OK : STATUS_NOMEM;
  if (st) status_set(st, "out of memory");
  for (bool eof = false; !eof && st == STATUS_OK;) {
    int n = 0;
    while (n < BLOCK_LINES) {
      ssize_t r = getline(&b.line[n], &b.cap[n], stdin);
      if (r < 0) {
        eof = true;
        break;
      }
      b.len[n] = (size_t)r - (r > 0 && b.line[n][r - 1] == '\n');
      n++;
    }
    int failed = -1;
    char why[512] = "";
#pragma omp parallel
    {
      tok_ids ids = {0};
#pragma omp for schedule(dynamic, 16)
      for (int i = 0; i < n; i++) {
        ids.n = 0;
        b.out[i].n = 0;
        status_t est = a.pieces ? tok_encode_pieces(t, b.line[i], b.len[i], &ids, &b.out[i])
                                : tok_encode(t, b.line[i], b.len[i], &ids);
        if (est == STATUS_OK)
          est = a.pieces ? tok_str_append(&b.out[i], "\n", 1) : format_line(&ids, &b.out[i]);
        if (est != STATUS_OK) {
#pragma omp critical
          if (failed < 0 || i < failed) {
            failed = i;
            snprintf(why, sizeof why, "%s", status_message());
          }
        }
      }
      tok_ids_free(&ids);
    }
    if (failed >= 0) {
      st = status_set(STATUS_ARG, "cannot encode an input line: %s", why);
      break;
    }
    for (int i = 0; i < n; i++) fwrite(b.out[i].s, 1, b.out[i].n, stdout);
  }
  if (st == STATUS_OK && (fflush(stdout) != 0 || ferror(stdout)))
    st = status_set(STATUS_IO, "cannot write the output");
  if (st) fprintf(stderr, "mlmpi-data encode: %s\n", status_message());
  for (int i = 0; i < BLOCK_LINES && b.line && b.out; i++) {
    free(b.line[i]);
    tok_str_free(&b.out[i]);
  }
  free(b.line);
  free(b.len);
  free(b.cap);
  free(b.out);
  tok_free(t);
  return st == STATUS_OK ? 0 : 1;
}

static int cmd_decode(int argc, char **argv) {
  tok_args a;
  int rc = parse_tok_args("decode", argc, argv, &a);
  if (rc) return rc == 1 ? 0 : rc;
  tokenizer *t;
  if (tok_load(a.tokenizer, &t) != STATUS_OK) {
    fprintf(stderr, "mlmpi-data decode: %s\n", status_message());
    return 1;
  }
  /* The ids of shards made with specials appended (mlmpi-data shard, for
   * SentencePiece models) decode too. */
  if (tok_get_kind(t) == TOK_SPM) tok_add_specials(t);
  char *line = NULL;
  size_t cap = 0, lineno = 0;
  tok_ids ids = {0};
  tok_str out = {0};
  status_t st = STATUS_OK;
  while (st == STATUS_OK && getline(&line, &cap, stdin) >= 0) {
    lineno++;
    ids.n = 0;
    for (char *p = line, *end;; p = end) {
      while (*p == ' ' || *p == '\t') p++;
      if (!*p || *p == '\n' || *p == '\r') break;
      long v = strtol(p, &end, 10);
      if (end == p || (*end && *end != ' ' && *end != '\t' && *end != '\n' && *end != '\r') ||
          v < 0 || v > INT32_MAX) {
        st = status_set(STATUS_ARG, "line %zu: '%.*s' is not a token id", lineno,
                        (int)strcspn(p, " \t\r\n"), p);
        break;
      }
      st = tok_ids_push(&ids, (int32_t)v);
      if (st) break;
    }
    out.n = 0;
    if (st == STATUS_OK) st = tok_decode(t, ids.v, ids.n, &out);
    if (st == STATUS_OK) st = tok_str_append(&out, "\n", 1);
    if (st == STATUS_OK)
      fwrite(out.s, 1, out.n, stdout);
    else if (strncmp(status_message(), "line ", 5) != 0)
      status_prefix("line %zu", lineno);
  }
  if (st) fprintf(stderr, "mlmpi-data decode: %s\n", status_message());
  free(line);
  tok_ids_free(&ids);
  tok_str_free(&out);
  tok_free(t);
  return st == STATUS_OK ? 0 : 1;
}

int data_shard_main(int argc, char **argv);
int data_inspect_main(int argc, char **argv);
int data_dump_main(int argc, char **argv);
int data_batches_main(int argc, char **argv);
int data_serve_main(int argc, char **argv);
int data_tfrecord_export_main(int argc, char **argv);
int data_tfrecord_import_main(int argc, char **argv);

int main(int argc, char **argv) {
  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    fputs(usage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  if (!strcmp(argv[1], "encode")) return cmd_encode(argc - 1, argv + 1);
  if (!strcmp(argv[1], "decode")) return cmd_decode(argc - 1, argv + 1);
  if (!strcmp(argv[1], "shard")) return data_shard_main(argc - 1, argv + 1);
  if (!strcmp(argv[1], "inspect")) return data_inspect_main(argc - 1, argv + 1);
  if (!strcmp(argv[1], "dump")) return data_dump_main(argc - 1, argv + 1);
  if (!strcmp(argv[1], "batches")) return data_batches_main(argc - 1, argv + 1);
  if (!strcmp(argv[1], "serve")) return data_serve_main(argc - 1, argv + 1);
  if (!strcmp(argv[1], "tfrecord-export")) return data_tfrecord_export_main(argc - 1, argv + 1);
  if (!strcmp(argv[1], "tfrecord-import")) return data_tfrecord_import_main(argc - 1, argv + 1);
  fprintf(stderr, "mlmpi-data: unknown command '%s' (see mlmpi-data --help)\n", argv[1]);
  return 2;
}
