/* tokenizer.c: loading a tokenizer by path, the shared buffers, special
 * tokens and the fingerprint; the backends do the encoding. */
#include "tokenizer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct tokenizer {
  tok_kind kind;
  void *impl;
  const tok_ops *ops;
  tok_specials sp;
  uint64_t fingerprint;
};

static status_t grow(void **p, size_t *cap, size_t need, size_t elem) {
  if (need <= *cap) return STATUS_OK;
  size_t c = *cap ? *cap : 64;
  while (c < need) c *= 2;
  void *q = realloc(*p, c * elem);
  if (!q) return status_set(STATUS_NOMEM, "out of memory growing a token buffer");
  *p = q;
  *cap = c;
  return STATUS_OK;
}

status_t tok_ids_push(tok_ids *a, int32_t id) {
  if (a->n == a->cap && grow((void **)&a->v, &a->cap, a->n + 1, sizeof *a->v)) return STATUS_NOMEM;
  a->v[a->n++] = id;
  return STATUS_OK;
}

status_t tok_str_append(tok_str *s, const char *p, size_t n) {
  if (grow((void **)&s->s, &s->cap, s->n + n + 1, 1)) return STATUS_NOMEM;
  memcpy(s->s + s->n, p, n);
  s->n += n;
  s->s[s->n] = 0;
  return STATUS_OK;
}

void tok_ids_free(tok_ids *a) {
  free(a->v);
  memset(a, 0, sizeof *a);
}

void tok_str_free(tok_str *s) {
  free(s->s);
  memset(s, 0, sizeof *s);
}

static bool is_dir(const char *p) {
  struct stat sb;
  return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static bool exists(const char *p) {
  struct stat sb;
  return stat(p, &sb) == 0;
}

static bool ends_with(const char *s, const char *suffix) {
  size_t a = strlen(s), b = strlen(suffix);
  return a >= b && !strcmp(s + a - b, suffix);
}

/* Looks up the first spelling present. */
static int32_t find_special(const tokenizer *t, const char *const *names) {
  for (; *names; names++) {
    int32_t id = t->ops->piece_id(t->impl, *names);
    if (id >= 0) return id;
  }
  return -1;
}

static void resolve_specials(tokenizer *t) {
  static const char *const cls[] = {"[CLS]", "<s>", "<cls>", NULL};
  static const char *const sep[] = {"[SEP]", "</s>", "<sep>", NULL};
  static const char *const mask[] = {"[MASK]", "<mask>", NULL};
  static const char *const pad[] = {"[PAD]", "<pad>", NULL};
  static const char *const unk[] = {"[UNK]", "<unk>", NULL};
  t->sp = (tok_specials){find_special(t, cls), find_special(t, sep), find_special(t, mask),
                         find_special(t, pad), find_special(t, unk)};
}

/* Adds a file's bytes to h (a missing file adds nothing). */
static uint64_t fnv_file(uint64_t h, const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return h;
  unsigned char buf[1 << 15];
  for (size_t n; (n = fread(buf, 1, sizeof buf, f)) > 0;) h = core_fnv1a(h, buf, n);
  fclose(f);
  return core_fnv1a(h, "\xfe", 1);
}

/* The kind, every piece in id order, and the bytes of the files the
 * tokenizer was read from: the vocabulary alone would not tell apart two
 * models with the same pieces but other normalisation, merges or casing. */
static uint64_t compute_fingerprint(const tokenizer *t, const char *const *files, int nfiles) {
  uint64_t h = CORE_FNV_OFFSET;
  h = core_fnv1a(h, &t->kind, sizeof t->kind);
  int32_t n = t->ops->vocab_size(t->impl);
  for (int32_t i = 0; i < n; i++) {
    size_t len = 0;
    const char *p = t->ops->piece(t->impl, i, &len);
    h = core_fnv1a(h, p ? p : "", p ? len : 0);
    h = core_fnv1a(h, "\xff", 1);
  }
  for (int i = 0; i < nfiles; i++) h = fnv_file(h, files[i]);
  return h;
}

status_t tok_load(const char *path, tokenizer **out) {
  *out = NULL;
  if (!exists(path)) return status_set(STATUS_IO, "tokenizer %s: %s", path, strerror(ENOENT));
  tokenizer *t = calloc(1, sizeof *t);
  if (!t) return status_set(STATUS_NOMEM, "out of memory loading tokenizer %s", path);
  status_t st;
  char buf[4096], f1[4096] = "", f2[4096] = "";
  if (is_dir(path)) {
    snprintf(buf, sizeof buf, "%s/vocab.json", path);
    if (exists(buf)) {
      t->kind = TOK_GPT2;
      st = tok_gpt2_load(path, &t->impl, &t->ops);
      snprintf(f1, sizeof f1, "%s/vocab.json", path);
      snprintf(f2, sizeof f2, "%s/merges.txt", path);
    } else {
      snprintf(buf, sizeof buf, "%s/vocab.txt", path);
      if (!exists(buf)) {
        free(t);
        return status_set(STATUS_IO,
                          "tokenizer %s: the directory has neither vocab.json + merges.txt nor "
                          "vocab.txt",
                          path);
      }
      t->kind = TOK_WORDPIECE;
      st = tok_wordpiece_load(buf, &t->impl, &t->ops);
      snprintf(f1, sizeof f1, "%s", buf);
      snprintf(f2, sizeof f2, "%s/tokenizer_config.json", path);
    }
  } else if (ends_with(path, ".txt")) {
    t->kind = TOK_WORDPIECE;
    st = tok_wordpiece_load(path, &t->impl, &t->ops);
    snprintf(f1, sizeof f1, "%s", path ? path : "");
    const char *slash = strrchr(path, '/');
    snprintf(f2, sizeof f2, "%.*s%stokenizer_config.json", slash ? (int)(slash - path + 1) : 0,
             path, "");
  } else {
    t->kind = TOK_SPM;
    st = tok_spm_load(path, &t->impl, &t->ops);
    snprintf(f1, sizeof f1, "%s", path ? path : "");
  }
  if (st != STATUS_OK) {
    free(t);
    return st;
  }
  resolve_specials(t);
  const char *files[2] = {f1, f2};
  t->fingerprint = compute_fingerprint(t, files, 2);
  *out = t;
  return STATUS_OK;
}

void tok_free(tokenizer *t) {
  if (!t) return;
  t->ops->free(t->impl);
  free(t);
}

tok_kind tok_get_kind(const tokenizer *t) { return t->kind; }
int32_t tok_vocab_size(const tokenizer *t) { return t->ops->vocab_size(t->impl); }
const char *tok_piece(const tokenizer *t, int32_t id, size_t *len) {
  return t->ops->piece(t->impl, id, len);
}
int32_t tok_piece_id(const tokenizer *t, const char *piece) {
  return t->ops->piece_id(t->impl, piece);
}
tok_specials tok_get_specials(const tokenizer *t) { return t->sp; }
uint64_t tok_fingerprint(const tokenizer *t) { return t->fingerprint; }

status_t tok_require_specials(const tokenizer *t) {
  const bool bert = t->kind == TOK_WORDPIECE;
  const struct {
    int32_t id;
    const char *bert_name, *other_name;
  } need[] = {{t->sp.cls, "[CLS]", "<s>"},
              {t->sp.sep, "[SEP]", "</s>"},
              {t->sp.mask, "[MASK]", "<mask>"},
              {t->sp.pad, "[PAD]", "<pad>"}};
  for (size_t i = 0; i < sizeof need / sizeof need[0]; i++)
    if (need[i].id < 0)
      return status_set(STATUS_ARG, "the tokenizer's vocabulary has no %s token",
                        bert ? need[i].bert_name : need[i].other_name);
  return STATUS_OK;
}

status_t tok_encode(const tokenizer *t, const char *text, size_t n, tok_ids *out) {
  return t->ops->encode(t->impl, text, n, out);
}

status_t tok_encode_pieces(const tokenizer *t, const char *text, size_t n, tok_ids *ids,
                           tok_str *out) {
  if (t->ops->encode_pieces) return t->ops->encode_pieces(t->impl, text, n, out);
  ids->n = 0;
  status_t st = t->ops->encode(t->impl, text, n, ids);
  for (size_t i = 0; i < ids->n && st == STATUS_OK; i++) {
    size_t len = 0;
    const char *p = t->ops->piece(t->impl, ids->v[i], &len);
    if (i) st = tok_str_append(out, " ", 1);
    if (st == STATUS_OK) st = tok_str_append(out, p ? p : "", p ? len : 0);
  }
  return st;
}

status_t tok_decode(const tokenizer *t, const int32_t *ids, size_t n, tok_str *out) {
  int32_t v = tok_vocab_size(t);
  for (size_t i = 0; i < n; i++)
    if (ids[i] < 0 || ids[i] >= v)
      return status_set(STATUS_ARG, "id %d is outside the vocabulary (size %d)", ids[i], v);
  return t->ops->decode(t->impl, ids, n, out);
}
