/* tokenizer.c: loading a tokenizer by path, the shared buffers, special
 * tokens and the fingerprint; the backends do the encoding. */
#include "tokenizer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "dataset.h"

struct tokenizer {
  tok_kind kind;
  void *impl;
  const tok_ops *ops;
  tok_specials sp;
  uint64_t fingerprint;
  int32_t n_base;       /* pieces read from the files: ids 0 .. n_base-1 */
  int n_added;          /* specials appended after them (tok_add_specials) */
  const char *added[4]; /* their names, for ids n_base .. n_base+n_added-1 */
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

/* The spellings that count as each special token, in tok_specials' order;
 * the first is the one tok_add_specials appends. */
enum { N_SPECIALS = 5, N_NEEDED = 4 }; /* [UNK] is not needed and never appended */
static const char *const kSpellings[N_SPECIALS][4] = {{"[CLS]", "<s>", "<cls>", NULL},
                                                      {"[SEP]", "</s>", "<sep>", NULL},
                                                      {"[MASK]", "<mask>", NULL},
                                                      {"[PAD]", "<pad>", NULL},
                                                      {"[UNK]", "<unk>", NULL}};

static int32_t *special_slot(tok_specials *sp, int i) {
  int32_t *slots[N_SPECIALS] = {&sp->cls, &sp->sep, &sp->mask, &sp->pad, &sp->unk};
  return slots[i];
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
  for (int i = 0; i < N_SPECIALS; i++) *special_slot(&t->sp, i) = find_special(t, kSpellings[i]);
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
  t->n_base = t->ops->vocab_size(t->impl);
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

const char *tok_eot_piece(tok_kind k) {
  return k == TOK_GPT2 ? "<|endoftext|>" : k == TOK_SPM ? "</s>" : NULL;
}
int32_t tok_vocab_size(const tokenizer *t) { return t->n_base + t->n_added; }

static bool is_added(const tokenizer *t, int32_t id) {
  return id >= t->n_base && id < t->n_base + t->n_added;
}

const char *tok_piece(const tokenizer *t, int32_t id, size_t *len) {
  if (!is_added(t, id)) return t->ops->piece(t->impl, id, len);
  const char *p = t->added[id - t->n_base];
  if (len) *len = strlen(p);
  return p;
}

int32_t tok_piece_id(const tokenizer *t, const char *piece) {
  int32_t id = t->ops->piece_id(t->impl, piece);
  for (int i = 0; id < 0 && i < t->n_added; i++)
    if (!strcmp(piece, t->added[i])) id = t->n_base + i;
  return id;
}
tok_specials tok_get_specials(const tokenizer *t) { return t->sp; }
uint64_t tok_fingerprint(const tokenizer *t) { return t->fingerprint; }

int tok_missing_specials(const tokenizer *t, char *names, size_t cap) {
  int n = 0;
  size_t at = 0;
  if (cap) names[0] = 0;
  tok_specials sp = t->sp;
  for (int i = 0; i < N_NEEDED; i++) {
    if (*special_slot(&sp, i) >= 0) continue;
    int w =
        snprintf(names + at, cap > at ? cap - at : 0, "%s%s", n++ ? ", " : "", kSpellings[i][0]);
    at += w > 0 ? (size_t)w : 0;
  }
  return n;
}

status_t tok_require_specials(const tokenizer *t) {
  char names[64];
  if (tok_missing_specials(t, names, sizeof names))
    return status_set(STATUS_ARG, "the tokenizer's vocabulary has no %s", names);
  return STATUS_OK;
}

/* The appended names extend the fingerprint, which so stays a function of
 * the files: what is appended follows from the vocabulary. */
int tok_add_specials(tokenizer *t) {
  int before = t->n_added;
  for (int i = 0; i < N_NEEDED; i++) {
    int32_t *slot = special_slot(&t->sp, i);
    if (*slot >= 0) continue;
    const char *name = kSpellings[i][0];
    *slot = t->n_base + t->n_added;
    t->added[t->n_added++] = name;
    t->fingerprint = core_fnv1a(t->fingerprint, name, strlen(name));
    t->fingerprint = core_fnv1a(t->fingerprint, "\xff", 1);
  }
  return t->n_added - before;
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

/* Each run of the files' own ids decodes as the backend decodes it alone,
 * each appended special as its name; non-empty parts are joined by one
 * space, so a row reads "[CLS] In the beginning [SEP]". */
static status_t decode_with_added(const tokenizer *t, const int32_t *ids, size_t n, tok_str *out) {
  const size_t start = out->n;
  status_t st = tok_str_append(out, "", 0);
  for (size_t i = 0, j; i < n && st == STATUS_OK; i = j) {
    const bool special = is_added(t, ids[i]);
    for (j = i + 1; !special && j < n && !is_added(t, ids[j]); j++) continue;
    const size_t sep = out->n;
    if (sep > start) st = tok_str_append(out, " ", 1);
    const size_t part = out->n;
    if (st == STATUS_OK && special) {
      const char *name = t->added[ids[i] - t->n_base];
      st = tok_str_append(out, name, strlen(name));
    } else if (st == STATUS_OK) {
      st = t->ops->decode(t->impl, ids + i, j - i, out);
    }
    if (st == STATUS_OK && out->n == part) { /* an empty part takes back its separator */
      out->n = sep;
      out->s[sep] = 0;
    }
  }
  return st;
}

status_t tok_decode(const tokenizer *t, const int32_t *ids, size_t n, tok_str *out) {
  int32_t v = tok_vocab_size(t);
  for (size_t i = 0; i < n; i++)
    if (ids[i] < 0 || ids[i] >= v)
      return status_set(STATUS_ARG, "id %d is outside the vocabulary (size %d)", ids[i], v);
  if (!t->n_added) return t->ops->decode(t->impl, ids, n, out);
  return decode_with_added(t, ids, n, out);
}

/* ---- text_codec: the public wrapper (dataset.h) ------------------------------------ */
struct text_codec {
  tokenizer *t;
};

status_t text_codec_open(const char *path, text_codec **out) {
  *out = NULL;
  text_codec *c = calloc(1, sizeof *c);
  if (!c) return status_set(STATUS_NOMEM, "out of memory loading tokenizer %s", path);
  status_t st = tok_load(path, &c->t);
  if (st) {
    free(c);
    return st;
  }
  *out = c;
  return STATUS_OK;
}

void text_codec_free(text_codec *c) {
  if (!c) return;
  tok_free(c->t);
  free(c);
}

int32_t text_codec_vocab_size(const text_codec *c) { return tok_vocab_size(c->t); }
uint64_t text_codec_fingerprint(const text_codec *c) { return tok_fingerprint(c->t); }

int32_t text_codec_eot_id(const text_codec *c) {
  const char *piece = tok_eot_piece(tok_get_kind(c->t));
  return piece ? tok_piece_id(c->t, piece) : tok_get_specials(c->t).sep;
}

status_t text_codec_encode(const text_codec *c, const char *text, int32_t **ids, size_t *n) {
  tok_ids a = {0};
  status_t st = tok_encode(c->t, text, strlen(text), &a);
  if (st) {
    tok_ids_free(&a);
    return st;
  }
  *ids = a.v;
  *n = a.n;
  return STATUS_OK;
}

status_t text_codec_decode(const text_codec *c, const int32_t *ids, size_t n, char **text) {
  tok_str s = {0};
  status_t st = tok_str_append(&s, "", 0);
  if (st == STATUS_OK) st = tok_decode(c->t, ids, n, &s);
  if (st) {
    tok_str_free(&s);
    return st;
  }
  *text = s.s;
  return STATUS_OK;
}
