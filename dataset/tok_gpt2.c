/* tok_gpt2.c: GPT-2 byte-level BPE (`vocab.json` + `merges.txt`), matching
 * js-tiktoken's "gpt2" encoding and gpt-3-encoder id for id: bytes mapped to
 * printable code points, the GPT-2 pre-tokenizer regex (PCRE2, JIT), then
 * merges by rank within each pre-token, with a per-thread cache of words. */
#include "tok_gpt2.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <cjson/cJSON.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* Invalid UTF-8 in the input is replaced by U+FFFD before anything else, one
 * replacement per maximal ill-formed subpart, exactly as the WHATWG decoder
 * does (node's TextDecoder; the Unicode standard's recommended practice): the
 * reference encoders take strings, and that is how a UTF-8 file becomes a
 * string there. Such input therefore does not survive decode(encode(x));
 * valid UTF-8 always does. A literal "<|endoftext|>" in the text is encoded as
 * ordinary text (tiktoken's encode_ordinary, gpt-3-encoder), never as the
 * special token: text cannot forge a document boundary.
 *
 * The pre-tokenizer is the GPT-2 pattern
 *   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * with \s spelt out as JavaScript defines it (the references are JavaScript):
 * tab, LF, VT, FF, CR, the Zs separators, U+2028, U+2029 and U+FEFF. PCRE2's
 * own \s differs (it has U+0085 and U+180E, lacks U+FEFF), and so does
 * Python's tiktoken, whose \s is Unicode White_Space (U+0085 in, U+FEFF out).
 * \p{L} and \p{N} come from PCRE2's Unicode tables, so code points assigned
 * after its Unicode version (14.0 for PCRE2 10.42) are classed as unassigned
 * ones. The pattern is compiled anchored: its alternatives cover every code
 * point, so each match starts where the previous one ended. */
#define WS "\\t\\n\\x{0B}\\f\\r\\p{Zs}\\x{2028}\\x{2029}\\x{FEFF}"
static const char pretok_pattern[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WS
                                     "\\p{L}\\p{N}]+|[" WS "]+(?![^" WS "])|[" WS "]+";

#define MAX_VOCAB (1 << 24)        /* ids are below this */
#define CACHE_SLOTS (1u << 16)     /* per thread (4 MiB, touched as used); at most half in use */
#define CACHE_KEY_BYTES (1u << 18) /* keys longer than a slot holds */
#define CACHE_IDS (1u << 16)       /* id lists longer than a slot holds */
#define CACHE_MAX_WORD 255         /* longer words are merged every time */
#define SCRATCH_KEEP (1u << 16)    /* BPE scratch kept per thread, in bytes of word */
#define SLOT_KEY 32
#define SLOT_IDS 6

typedef struct {
  int32_t a, b;     /* the pair's token ids */
  int32_t rank, id; /* its line among the merges; the merged token. rank -1: empty */
} merge_slot;

typedef struct {
  int32_t rank, pos, a, b, merged;
} heap_ent;

/* One cache line: a word and its ids, inline when short (most are), else
 * an offset into the thread's overflow arenas. */
typedef struct {
  uint32_t hash;
  uint8_t key_len, n_ids; /* key_len 0: empty */
  uint16_t unused;
  union {
    int32_t ids[SLOT_IDS];
    uint32_t ids_off;
  };
  union {
    uint8_t key[SLOT_KEY];
    uint32_t key_off;
  };
} cache_slot;
_Static_assert(sizeof(cache_slot) == 64, "a cache slot is one cache line");

/* What one thread needs to encode: match data, BPE scratch and the word
 * cache. Created on a thread's first encode with a model, owned by the model
 * and freed with it; used only by its thread. */
typedef struct tstate {
  struct tstate *next;
  const void *thread; /* the address of a thread-local: unique per live thread */
  pcre2_match_data *md;
  pcre2_match_context *mctx;
  pcre2_jit_stack *jstack;
  char *fix; /* the input with invalid UTF-8 replaced */
  size_t fix_cap;
  int32_t *sym_id, *sym_prev, *sym_next, *word; /* (sym_cap) each; sym_id -1: merged away */
  heap_ent *heap, *pend;                        /* (3 sym_cap), (2 sym_cap) */
  size_t sym_cap;
  cache_slot *slots; /* (CACHE_SLOTS), aligned to 64 bytes inside slots_mem */
  void *slots_mem;
  char *ckeys;   /* (CACHE_KEY_BYTES) */
  int32_t *cids; /* (CACHE_IDS) */
  uint32_t c_used, ckeys_used, cids_used;
} tstate;

typedef struct {
  int32_t n_vocab;                           /* largest id + 1 */
  char *pieces;                              /* every vocabulary string, NUL-terminated */
  uint8_t *bytes;                            /* every token's bytes */
  uint32_t *piece_off, *byte_off, *byte_len; /* (n_vocab) each */
  int32_t *piece_len;                        /* (n_vocab); -1: no token has this id */
  int32_t *vocab_slots;                      /* hash of strings to ids, -1 empty */
  uint32_t vocab_mask;
  merge_slot *merges;
  uint32_t merge_mask;
  int32_t byte_token[256];
  pcre2_code *re;
  bool jit;           /* re is JIT-compiled: matched with pcre2_jit_match (no UTF check) */
  uint64_t serial;    /* unique over the process's life: keys the thread-local lookup */
  pthread_mutex_t mu; /* guards states */
  tstate *states;
} gpt2;

/* ---- The byte map ---------------------------------------------------------
 * Bytes that are printable Latin-1 (! to ~, ¡ to ¬, ® to ÿ) stand for
 * themselves; the other 68 take U+0100 onwards in byte order. */
static int byte_to_cp(int b) {
  if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) return b;
  int n = 0;
  for (int c = 0; c < b; c++)
    if (!((c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF))) n++;
  return 256 + n;
}

/* Inverse of byte_to_cp over the 324 code points it uses; -1 elsewhere. */
static void build_cp_to_byte(int16_t cp_to_byte[324]) {
  for (int i = 0; i < 324; i++) cp_to_byte[i] = -1;
  for (int b = 0; b < 256; b++) cp_to_byte[byte_to_cp(b)] = (int16_t)b;
}

/* ---- Hashing --------------------------------------------------------------- */
static uint64_t hash_bytes(const void *p, size_t n) {
  const uint8_t *s = p;
  uint64_t h = 0x9e3779b97f4a7c15ull ^ n, v;
  for (; n >= 8; s += 8, n -= 8) {
    memcpy(&v, s, 8);
    h = (h ^ v) * 0xff51afd7ed558ccdull;
    h ^= h >> 32;
  }
  v = 0;
  memcpy(&v, s, n);
  h = (h ^ v) * 0xc4ceb9fe1a85ec53ull;
  return h ^ (h >> 29);
}

static uint32_t hash_pair(int32_t a, int32_t b) {
  uint64_t k = ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) * 0x9e3779b97f4a7c15ull;
  return (uint32_t)(k >> 32);
}

static uint32_t table_size(size_t n) {
  uint32_t s = 1024;
  while (s < 2 * n) s *= 2;
  return s;
}

static const merge_slot *merge_find(const gpt2 *g, int32_t a, int32_t b) {
  for (uint32_t i = hash_pair(a, b) & g->merge_mask;; i = (i + 1) & g->merge_mask) {
    const merge_slot *m = &g->merges[i];
    if (m->rank < 0) return NULL;
    if (m->a == a && m->b == b) return m;
  }
}

static int32_t vocab_find(const gpt2 *g, const char *s, size_t n) {
  for (uint32_t i = (uint32_t)hash_bytes(s, n) & g->vocab_mask;; i = (i + 1) & g->vocab_mask) {
    int32_t id = g->vocab_slots[i];
    if (id < 0) return -1;
    if ((size_t)g->piece_len[id] == n && !memcmp(g->pieces + g->piece_off[id], s, n)) return id;
  }
}

/* ---- UTF-8 ------------------------------------------------------------------
 * Length of the well-formed sequence at s[0..n), or 0 when it is ill-formed,
 * with *bad the length of its maximal subpart (what one U+FFFD replaces). */
static size_t utf8_seq(const uint8_t *s, size_t n, size_t *bad) {
  uint8_t c = s[0], lo = 0x80, hi = 0xBF;
  size_t need;
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF)
    need = 1;
  else if (c >= 0xE0 && c <= 0xEF) {
    need = 2;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 3;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    *bad = 1;
    return 0;
  }
  for (size_t i = 1; i <= need; i++, lo = 0x80, hi = 0xBF)
    if (i >= n || s[i] < lo || s[i] > hi) {
      *bad = i;
      return 0;
    }
  return need + 1;
}

/* Offset of the first ill-formed sequence, or n. */
static size_t utf8_valid_prefix(const uint8_t *s, size_t n) {
  size_t i = 0, bad;
  while (i < n) {
    uint64_t v;
    if (i + 8 <= n && (memcpy(&v, s + i, 8), !(v & 0x8080808080808080ull))) {
      i += 8;
      continue;
    }
    size_t k = utf8_seq(s + i, n - i, &bad);
    if (!k) return i;
    i += k;
  }
  return n;
}

/* Points *text at a well-formed copy when it is not well-formed. */
static status_t utf8_repair(tstate *st, const char **text, size_t *n) {
  const uint8_t *s = (const uint8_t *)*text;
  size_t i = utf8_valid_prefix(s, *n);
  if (i == *n) return STATUS_OK;
  size_t cap = 3 * *n + 1; /* each byte becomes at most one U+FFFD */
  if (cap > st->fix_cap) {
    char *p = realloc(st->fix, cap);
    if (!p) return status_set(STATUS_NOMEM, "out of memory repairing invalid UTF-8");
    st->fix = p;
    st->fix_cap = cap;
  }
  size_t o = i, bad;
  memcpy(st->fix, s, i);
  while (i < *n) {
    size_t k = utf8_seq(s + i, *n - i, &bad);
    if (k) {
      memcpy(st->fix + o, s + i, k);
      o += k;
      i += k;
    } else {
      memcpy(st->fix + o, "\xEF\xBF\xBD", 3);
      o += 3;
      i += bad;
    }
  }
  *text = st->fix;
  *n = o;
  return STATUS_OK;
}

/* ---- Per-thread state ------------------------------------------------------ */
static _Thread_local struct {
  uint64_t serial;
  tstate *st;
} tls_states[4];
static _Thread_local unsigned tls_next;
static atomic_uint_fast64_t next_serial = 1;

static void tstate_shrink(tstate *st);

static void tstate_free(tstate *st) {
  if (!st) return;
  pcre2_match_data_free(st->md);
  pcre2_match_context_free(st->mctx);
  pcre2_jit_stack_free(st->jstack);
  free(st->fix);
  tstate_shrink(st);
  free(st->slots_mem);
  free(st->ckeys);
  free(st->cids);
  free(st);
}

static tstate *tstate_new(const gpt2 *g) {
  tstate *st = calloc(1, sizeof *st);
  if (!st) return NULL;
  st->thread = &tls_next;
  st->md = pcre2_match_data_create_from_pattern(g->re, NULL);
  st->mctx = pcre2_match_context_create(NULL);
  st->jstack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, NULL);
  /* calloc: the pages are touched only as the cache fills. */
  st->slots_mem = calloc(CACHE_SLOTS + 1, sizeof *st->slots);
  st->slots = (cache_slot *)(((uintptr_t)st->slots_mem + 63) & ~(uintptr_t)63);
  st->ckeys = malloc(CACHE_KEY_BYTES);
  st->cids = malloc(CACHE_IDS * sizeof *st->cids);
  if (!st->md || !st->mctx || !st->jstack || !st->slots_mem || !st->ckeys || !st->cids) {
    tstate_free(st);
    return NULL;
  }
  pcre2_jit_stack_assign(st->mctx, NULL, st->jstack);
  return st;
}

/* This thread's state for g, created on first use. */
static tstate *tstate_get(const gpt2 *cg) {
  for (int i = 0; i < 4; i++)
    if (tls_states[i].serial == cg->serial) return tls_states[i].st;
  gpt2 *g = (gpt2 *)cg; /* the state list is the model's only mutable part */
  pthread_mutex_lock(&g->mu);
  tstate *st = g->states;
  while (st && st->thread != &tls_next) st = st->next;
  if (!st && (st = tstate_new(g))) {
    st->next = g->states;
    g->states = st;
  }
  pthread_mutex_unlock(&g->mu);
  if (!st) {
    status_set(STATUS_NOMEM, "out of memory for a GPT-2 encoder's thread state");
    return NULL;
  }
  unsigned k = tls_next++ & 3;
  tls_states[k].serial = g->serial;
  tls_states[k].st = st;
  return st;
}

static void tstate_shrink(tstate *st) {
  free(st->sym_id);
  free(st->sym_prev);
  free(st->sym_next);
  free(st->word);
  free(st->heap);
  free(st->pend);
  st->sym_id = st->sym_prev = st->sym_next = st->word = NULL;
  st->heap = st->pend = NULL;
  st->sym_cap = 0;
}

static status_t tstate_reserve(tstate *st, size_t n) {
  if (n <= st->sym_cap) return STATUS_OK;
  size_t c = st->sym_cap ? st->sym_cap : 64;
  while (c < n) c *= 2;
  int32_t *a = realloc(st->sym_id, c * sizeof *a);
  if (a) st->sym_id = a;
  int32_t *b = realloc(st->sym_prev, c * sizeof *b);
  if (b) st->sym_prev = b;
  int32_t *d = realloc(st->sym_next, c * sizeof *d);
  if (d) st->sym_next = d;
  int32_t *w = realloc(st->word, c * sizeof *w);
  if (w) st->word = w;
  heap_ent *h = realloc(st->heap, 3 * c * sizeof *h);
  if (h) st->heap = h;
  heap_ent *p = realloc(st->pend, 2 * c * sizeof *p);
  if (p) st->pend = p;
  if (!a || !b || !d || !w || !h || !p)
    return status_set(STATUS_NOMEM, "out of memory merging a %zu-byte word", n);
  st->sym_cap = c;
  return STATUS_OK;
}

/* Short keys: faster inline than a call to memcmp. */
static bool bytes_equal(const void *x, const void *y, size_t n) {
  const uint8_t *a = x, *b = y;
  for (uint64_t u, v; n >= 8; a += 8, b += 8, n -= 8)
    if (memcpy(&u, a, 8), memcpy(&v, b, 8), u != v) return false;
  while (n--)
    if (*a++ != *b++) return false;
  return true;
}

/* ---- The word cache --------------------------------------------------------
 * Open addressing, at most half full; when full (or its arenas are) it is
 * emptied and starts again, which bounds it without bookkeeping. */
static const uint8_t *slot_key(const tstate *st, const cache_slot *s) {
  return s->key_len <= SLOT_KEY ? s->key : (const uint8_t *)st->ckeys + s->key_off;
}

static const int32_t *slot_ids(const tstate *st, const cache_slot *s) {
  return s->n_ids <= SLOT_IDS ? s->ids : st->cids + s->ids_off;
}

static cache_slot *cache_find(tstate *st, const uint8_t *w, size_t n, uint32_t h) {
  for (uint32_t i = h & (CACHE_SLOTS - 1);; i = (i + 1) & (CACHE_SLOTS - 1)) {
    cache_slot *s = &st->slots[i];
    if (!s->key_len) return s;
    if (s->hash == h && s->key_len == n && bytes_equal(slot_key(st, s), w, n)) return s;
  }
}

static void cache_put(tstate *st, cache_slot *s, const uint8_t *w, size_t n, uint32_t h,
                      const int32_t *ids, size_t n_ids) {
  size_t key_extra = n > SLOT_KEY ? n : 0, ids_extra = n_ids > SLOT_IDS ? n_ids : 0;
  if (st->c_used >= CACHE_SLOTS / 2 || st->ckeys_used + key_extra > CACHE_KEY_BYTES ||
      st->cids_used + ids_extra > CACHE_IDS) {
    memset(st->slots, 0, CACHE_SLOTS * sizeof *st->slots);
    st->c_used = st->ckeys_used = st->cids_used = 0;
    s = cache_find(st, w, n, h);
  }
  s->hash = h;
  s->key_len = (uint8_t)n;
  s->n_ids = (uint8_t)n_ids;
  if (key_extra) {
    s->key_off = st->ckeys_used;
    memcpy(st->ckeys + st->ckeys_used, w, n);
    st->ckeys_used += (uint32_t)n;
  } else
    memcpy(s->key, w, n);
  if (ids_extra) {
    s->ids_off = st->cids_used;
    memcpy(st->cids + st->cids_used, ids, n_ids * sizeof *ids);
    st->cids_used += (uint32_t)n_ids;
  } else
    memcpy(s->ids, ids, n_ids * sizeof *ids);
  st->c_used++;
}

/* ---- BPE ------------------------------------------------------------------- */
static bool heap_less(const heap_ent *x, const heap_ent *y) {
  return x->rank < y->rank || (x->rank == y->rank && x->pos < y->pos);
}

static void heap_push(heap_ent *h, size_t *n, heap_ent e) {
  size_t i = (*n)++;
  while (i > 0 && heap_less(&e, &h[(i - 1) / 2])) {
    h[i] = h[(i - 1) / 2];
    i = (i - 1) / 2;
  }
  h[i] = e;
}

static heap_ent heap_pop(heap_ent *h, size_t *n) {
  heap_ent top = h[0], last = h[--*n];
  size_t i = 0;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= *n) break;
    if (c + 1 < *n && heap_less(&h[c + 1], &h[c])) c++;
    if (!heap_less(&h[c], &last)) break;
    h[i] = h[c];
    i = c;
  }
  if (*n) h[i] = last;
  return top;
}

static void pair_note(const gpt2 *g, const int32_t *id, int32_t pos, int32_t right, heap_ent *list,
                      size_t *n) {
  const merge_slot *m = merge_find(g, id[pos], id[right]);
  if (m) list[(*n)++] = (heap_ent){m->rank, pos, m->a, m->b, m->id};
}

/* Merges w[0..n) into st->word[0..*n_out). As GPT-2's own encoder: each
 * round takes the lowest-ranked pair present and merges every occurrence of
 * it left to right; pairs a round creates compete from the next round on.
 * A heap ordered by (rank, position) does the same in O(n log n): pairs
 * created during a round wait in `pend` until the round's rank is done. */
static status_t bpe(const gpt2 *g, tstate *st, const uint8_t *w, size_t n, size_t *n_out) {
  status_t s = tstate_reserve(st, n);
  if (s) return s;
  int32_t *id = st->sym_id, *prev = st->sym_prev, *next = st->sym_next;
  heap_ent *heap = st->heap, *pend = st->pend;
  size_t nh = 0, np = 0;
  for (size_t i = 0; i < n; i++) {
    id[i] = g->byte_token[w[i]];
    prev[i] = (int32_t)i - 1;
    next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
  }
  for (size_t i = 0; i + 1 < n; i++) pair_note(g, id, (int32_t)i, (int32_t)i + 1, pend, &np);
  for (size_t i = 0; i < np; i++) heap_push(heap, &nh, pend[i]);
  np = 0;
  for (int32_t round = -1;;) {
    if (!nh || (np && heap[0].rank != round)) {
      if (!np) break;
      for (size_t i = 0; i < np; i++) heap_push(heap, &nh, pend[i]);
      np = 0;
      continue;
    }
    heap_ent e = heap_pop(heap, &nh);
    round = e.rank;
    int32_t j = next[e.pos];
    if (id[e.pos] != e.a || j < 0 || id[j] != e.b) continue; /* stale */
    id[e.pos] = e.merged;
    id[j] = -1;
    next[e.pos] = next[j];
    if (next[j] >= 0) prev[next[j]] = e.pos;
    if (prev[e.pos] >= 0) pair_note(g, id, prev[e.pos], e.pos, pend, &np);
    if (next[e.pos] >= 0) pair_note(g, id, e.pos, next[e.pos], pend, &np);
  }
  size_t k = 0;
  for (int32_t i = 0; i >= 0; i = next[i]) st->word[k++] = id[i];
  *n_out = k;
  return STATUS_OK;
}

static status_t push_ids(tok_ids *out, const int32_t *ids, size_t k) {
  if (out->n + k <= out->cap) {
    memcpy(out->v + out->n, ids, k * sizeof *ids);
    out->n += k;
    return STATUS_OK;
  }
  for (size_t i = 0; i < k; i++)
    if (tok_ids_push(out, ids[i])) return STATUS_NOMEM;
  return STATUS_OK;
}

static status_t encode_word(const gpt2 *g, tstate *st, const uint8_t *w, size_t n, tok_ids *out) {
  if (n == 1) return tok_ids_push(out, g->byte_token[w[0]]);
  cache_slot *slot = NULL;
  uint32_t h = 0;
  if (n <= CACHE_MAX_WORD) {
    h = (uint32_t)hash_bytes(w, n);
    slot = cache_find(st, w, n, h);
    if (slot->key_len) return push_ids(out, slot_ids(st, slot), slot->n_ids);
  }
  size_t k;
  status_t s = bpe(g, st, w, n, &k);
  if (s) return s;
  if (slot) cache_put(st, slot, w, n, h, st->word, k);
  s = push_ids(out, st->word, k);
  if (st->sym_cap > SCRATCH_KEEP) tstate_shrink(st); /* a freak word: give its ~100 B/byte back */
  return s;
}

/* ---- Pre-tokenizing ----------------------------------------------------------
 * *end: where the pre-token starting at off ends. text is well-formed. */
static status_t pretoken_end(const gpt2 *g, tstate *st, const char *text, size_t n, size_t off,
                             size_t *end) {
  int rc = g->jit
               ? pcre2_jit_match(g->re, (PCRE2_SPTR)text, n, off, 0, st->md, st->mctx)
               : pcre2_match(g->re, (PCRE2_SPTR)text, n, off, PCRE2_NO_UTF_CHECK, st->md, st->mctx);
  if (rc < 0) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(rc, msg, sizeof msg);
    return status_set(STATUS_ARG, "GPT-2 pre-tokenizer at byte %zu: %s", off, (char *)msg);
  }
  const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(st->md);
  CORE_ASSERT(ov[0] == off && ov[1] > off); /* anchored, and no alternative is empty */
  *end = ov[1];
  return STATUS_OK;
}

status_t tok_gpt2_pretokenize(const void *impl, const char *text, size_t n, tok_gpt2_piece_fn fn,
                              void *ctx) {
  const gpt2 *g = impl;
  tstate *st = tstate_get(g);
  if (!st) return STATUS_NOMEM;
  status_t s = utf8_repair(st, &text, &n);
  for (size_t off = 0, end; s == STATUS_OK && off < n; off = end)
    if ((s = pretoken_end(g, st, text, n, off, &end)) == STATUS_OK) fn(ctx, text + off, end - off);
  return s;
}

/* ---- The operations -------------------------------------------------------- */
static status_t gpt2_encode(const void *impl, const char *text, size_t n, tok_ids *out) {
  const gpt2 *g = impl;
  tstate *st = tstate_get(g);
  if (!st) return STATUS_NOMEM;
  status_t s = utf8_repair(st, &text, &n);
  for (size_t off = 0, end; s == STATUS_OK && off < n; off = end)
    if ((s = pretoken_end(g, st, text, n, off, &end)) == STATUS_OK)
      s = encode_word(g, st, (const uint8_t *)text + off, end - off, out);
  if (st->fix_cap > 3 * SCRATCH_KEEP) { /* the repaired copy of a freak line */
    free(st->fix);
    st->fix = NULL;
    st->fix_cap = 0;
  }
  return s;
}

static status_t gpt2_decode(const void *impl, const int32_t *ids, size_t n, tok_str *out) {
  const gpt2 *g = impl;
  for (size_t i = 0; i < n; i++) {
    int32_t id = ids[i];
    if (id < 0 || id >= g->n_vocab || g->piece_len[id] < 0)
      return status_set(STATUS_ARG, "id %d is not a token of this GPT-2 vocabulary", id);
    if (tok_str_append(out, (const char *)g->bytes + g->byte_off[id], g->byte_len[id]))
      return STATUS_NOMEM;
  }
  return STATUS_OK;
}

static const char *gpt2_piece(const void *impl, int32_t id, size_t *len) {
  const gpt2 *g = impl;
  if (id < 0 || id >= g->n_vocab || g->piece_len[id] < 0) {
    *len = 0;
    return "";
  }
  *len = (size_t)g->piece_len[id];
  return g->pieces + g->piece_off[id];
}

static int32_t gpt2_piece_id(const void *impl, const char *piece) {
  return vocab_find(impl, piece, strlen(piece));
}

static int32_t gpt2_vocab_size(const void *impl) { return ((const gpt2 *)impl)->n_vocab; }

static void gpt2_free(void *impl) {
  gpt2 *g = impl;
  if (!g) return;
  for (tstate *st = g->states, *nx; st; st = nx) {
    nx = st->next;
    tstate_free(st);
  }
  pthread_mutex_destroy(&g->mu);
  pcre2_code_free(g->re);
  free(g->pieces);
  free(g->bytes);
  free(g->piece_off);
  free(g->byte_off);
  free(g->byte_len);
  free(g->piece_len);
  free(g->vocab_slots);
  free(g->merges);
  free(g);
}

static const tok_ops gpt2_ops = {
    .name = "gpt2",
    .encode = gpt2_encode,
    .decode = gpt2_decode,
    .piece = gpt2_piece,
    .piece_id = gpt2_piece_id,
    .vocab_size = gpt2_vocab_size,
    .free = gpt2_free,
};

/* ---- Loading ----------------------------------------------------------------- */
/* The code point at *p (before end), moving *p past it. cJSON passes a
 * key's bytes through unchecked, so a malformed or truncated sequence is
 * possible: it gives UINT32_MAX (no character of the byte map) and moves
 * one byte. */
static uint32_t utf8_next(const uint8_t **p, const uint8_t *end) {
  utf8proc_int32_t c;
  utf8proc_ssize_t k = utf8proc_iterate(*p, end - *p, &c);
  *p += k > 0 ? k : 1;
  return k > 0 ? (uint32_t)c : UINT32_MAX;
}

/* A token's bytes: each character through the inverse byte map. A token
 * with characters outside the map (an added token such as "<|im_start|>"
 * written in plain Unicode) decodes to its own UTF-8. */
static size_t token_bytes(const int16_t cp_to_byte[324], const char *s, size_t n, uint8_t *out) {
  const uint8_t *p = (const uint8_t *)s, *end = p + n;
  size_t k = 0;
  while (p < end) {
    uint32_t c = utf8_next(&p, end);
    if (c >= 324 || cp_to_byte[c] < 0) {
      memcpy(out, s, n);
      return n;
    }
    out[k++] = (uint8_t)cp_to_byte[c];
  }
  return k;
}

static size_t line_of(const char *buf, const char *at) {
  size_t line = 1;
  for (const char *p = buf; p < at; p++) line += *p == '\n';
  return line;
}

static status_t load_vocab(gpt2 *g, const char *path) {
  char *buf;
  size_t len;
  status_t s = core_read_file("", path, 0, &buf, &len);
  if (s) return s;
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(buf, len, &end, false);
  cJSON *item;
  int16_t cp_to_byte[324];
  size_t total = 0, n = 0;
  if (!root) {
    s = status_set(STATUS_FORMAT, "%s: not valid JSON (line %zu)", path,
                   end ? line_of(buf, end) : (size_t)0);
    goto fail;
  }
  if (!cJSON_IsObject(root)) {
    s = status_set(STATUS_FORMAT, "%s: not a JSON object of token -> id", path);
    goto fail;
  }
  g->n_vocab = 0;
  cJSON_ArrayForEach(item, root) {
    double v = item->valuedouble;
    if (!cJSON_IsNumber(item) || !(v >= 0 && v < MAX_VOCAB) || v != (double)(int32_t)v) {
      s = status_set(STATUS_FORMAT, "%s: token \"%s\" has id %s; ids are integers in [0, %d)", path,
                     item->string, cJSON_IsNumber(item) ? "out of range" : "that is no number",
                     MAX_VOCAB);
      goto fail;
    }
    if ((int32_t)v >= g->n_vocab) g->n_vocab = (int32_t)v + 1;
    total += strlen(item->string) + 1;
    n++;
  }
  if (!n) {
    s = status_set(STATUS_FORMAT, "%s: the vocabulary is empty", path);
    goto fail;
  }
  size_t nv = (size_t)g->n_vocab;
  g->vocab_mask = table_size(n) - 1;
  g->pieces = malloc(total);
  g->bytes = malloc(total);
  g->piece_off = calloc(nv, sizeof *g->piece_off);
  g->byte_off = calloc(nv, sizeof *g->byte_off);
  g->byte_len = calloc(nv, sizeof *g->byte_len);
  g->piece_len = malloc(nv * sizeof *g->piece_len);
  g->vocab_slots = malloc((g->vocab_mask + 1) * sizeof *g->vocab_slots);
  if (!g->pieces || !g->bytes || !g->piece_off || !g->byte_off || !g->byte_len || !g->piece_len ||
      !g->vocab_slots) {
    s = status_set(STATUS_NOMEM, "%s: out of memory loading it", path);
    goto fail;
  }
  memset(g->piece_len, -1, nv * sizeof *g->piece_len);
  memset(g->vocab_slots, -1, (g->vocab_mask + 1) * sizeof *g->vocab_slots);
  build_cp_to_byte(cp_to_byte);
  size_t po = 0, bo = 0;
  cJSON_ArrayForEach(item, root) {
    int32_t id = (int32_t)item->valuedouble;
    size_t k = strlen(item->string);
    if (g->piece_len[id] >= 0) {
      s = status_set(STATUS_FORMAT, "%s: id %d is given to both \"%s\" and \"%s\"", path, id,
                     g->pieces + g->piece_off[id], item->string);
      goto fail;
    }
    int32_t other = vocab_find(g, item->string, k);
    if (other >= 0) {
      s = status_set(STATUS_FORMAT, "%s: token \"%s\" appears twice", path, item->string);
      goto fail;
    }
    memcpy(g->pieces + po, item->string, k + 1);
    g->piece_off[id] = (uint32_t)po;
    g->piece_len[id] = (int32_t)k;
    po += k + 1;
    g->byte_off[id] = (uint32_t)bo;
    g->byte_len[id] = (uint32_t)token_bytes(cp_to_byte, item->string, k, g->bytes + bo);
    bo += g->byte_len[id];
    uint32_t i = (uint32_t)hash_bytes(item->string, k) & g->vocab_mask;
    while (g->vocab_slots[i] >= 0) i = (i + 1) & g->vocab_mask;
    g->vocab_slots[i] = id;
  }
  for (int b = 0; b < 256; b++) {
    char ch[3];
    int cp = byte_to_cp(b), k = cp < 0x80 ? 1 : 2;
    if (k == 1)
      ch[0] = (char)cp;
    else {
      ch[0] = (char)(0xC0 | cp >> 6);
      ch[1] = (char)(0x80 | (cp & 0x3F));
    }
    ch[k] = 0;
    if ((g->byte_token[b] = vocab_find(g, ch, (size_t)k)) < 0) {
      s = status_set(STATUS_FORMAT,
                     "%s: no token for byte 0x%02X (\"%s\"); a byte-level "
                     "vocabulary has all 256",
                     path, b, ch);
      goto fail;
    }
  }
fail:
  cJSON_Delete(root);
  free(buf);
  return s;
}

static status_t merge_token(const gpt2 *g, const char *path, size_t line, const char *s, size_t n,
                            int32_t *id) {
  if ((*id = vocab_find(g, s, n)) >= 0) return STATUS_OK;
  return status_set(STATUS_FORMAT, "%s:%zu: \"%.*s\" is not a token of vocab.json", path, line,
                    (int)n, s);
}

/* One merge per line, "a b", ranked by order; a first line "#version..." and
 * empty lines are skipped. a, b and ab must all be tokens. A pair listed
 * twice keeps its later rank, as GPT-2's encoder (a dict built from the
 * list) does. */
static status_t load_merges(gpt2 *g, const char *path) {
  char *buf, *cat = NULL;
  size_t len, cat_cap = 0, n_lines = 0;
  status_t s = core_read_file("", path, 0, &buf, &len);
  if (s) return s;
  for (size_t i = 0; i < len; i++) n_lines += buf[i] == '\n';
  g->merge_mask = table_size(n_lines + 1) - 1;
  g->merges = malloc((g->merge_mask + 1) * sizeof *g->merges);
  if (!g->merges) {
    s = status_set(STATUS_NOMEM, "%s: out of memory loading it", path);
    goto fail;
  }
  for (uint32_t i = 0; i <= g->merge_mask; i++) g->merges[i].rank = -1;
  int32_t rank = 0;
  size_t line = 0;
  for (char *p = buf, *eol; p < buf + len; p = eol + 1) {
    eol = memchr(p, '\n', (size_t)(buf + len - p));
    if (!eol) eol = buf + len;
    line++;
    size_t k = (size_t)(eol - p);
    if (k && p[k - 1] == '\r') k--;
    if (line == 1 && k >= 8 && !memcmp(p, "#version", 8)) continue;
    const char *f[3];
    size_t fl[3], nf = 0;
    for (size_t i = 0; i < k;) {
      while (i < k && (p[i] == ' ' || p[i] == '\t')) i++;
      if (i == k) break;
      size_t j = i;
      while (j < k && p[j] != ' ' && p[j] != '\t') j++;
      if (nf < 3) f[nf] = p + i, fl[nf] = j - i;
      nf++;
      i = j;
    }
    if (!nf) continue;
    if (nf != 2) {
      s = status_set(STATUS_FORMAT,
                     "%s:%zu: a merge is two tokens separated by a space, not "
                     "\"%.*s\"",
                     path, line, (int)(k > 80 ? 80 : k), p);
      goto fail;
    }
    int32_t a, b, ab;
    if ((s = merge_token(g, path, line, f[0], fl[0], &a)) ||
        (s = merge_token(g, path, line, f[1], fl[1], &b)))
      goto fail;
    if (fl[0] + fl[1] > cat_cap) {
      free(cat);
      cat_cap = 2 * (fl[0] + fl[1]);
      if (!(cat = malloc(cat_cap))) {
        s = status_set(STATUS_NOMEM, "%s: out of memory loading it", path);
        goto fail;
      }
    }
    memcpy(cat, f[0], fl[0]);
    memcpy(cat + fl[0], f[1], fl[1]);
    if ((ab = vocab_find(g, cat, fl[0] + fl[1])) < 0) {
      s = status_set(STATUS_FORMAT,
                     "%s:%zu: merging \"%.*s\" and \"%.*s\" gives \"%.*s\", "
                     "which is not a token of vocab.json",
                     path, line, (int)fl[0], f[0], (int)fl[1], f[1], (int)(fl[0] + fl[1]), cat);
      goto fail;
    }
    uint32_t i = hash_pair(a, b) & g->merge_mask;
    while (g->merges[i].rank >= 0 && (g->merges[i].a != a || g->merges[i].b != b))
      i = (i + 1) & g->merge_mask;
    g->merges[i] = (merge_slot){a, b, rank++, ab};
  }
fail:
  free(cat);
  free(buf);
  return s;
}

static status_t compile_pattern(gpt2 *g) {
  int err;
  PCRE2_SIZE at;
  g->re = pcre2_compile((PCRE2_SPTR)pretok_pattern, PCRE2_ZERO_TERMINATED,
                        PCRE2_UTF | PCRE2_UCP | PCRE2_ANCHORED, &err, &at, NULL);
  if (!g->re) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    return status_set(STATUS_CONFIG,
                      "the GPT-2 pre-tokenizer pattern does not compile at %zu: "
                      "%s (PCRE2 built without Unicode?)",
                      (size_t)at, (char *)msg);
  }
  /* Without JIT (a platform PCRE2 has none for) the interpreter gives the
   * same matches, slower. */
  g->jit = pcre2_jit_compile(g->re, PCRE2_JIT_COMPLETE) == 0;
  if (!g->jit) LOG_DEBUG(DATASET, "PCRE2 JIT unavailable: the GPT-2 pre-tokenizer is interpreted");
  return STATUS_OK;
}

status_t tok_gpt2_load(const char *dir, void **impl, const tok_ops **ops) {
  char path[4096];
  gpt2 *g = calloc(1, sizeof *g);
  if (!g) return status_set(STATUS_NOMEM, "out of memory loading tokenizer %s", dir);
  pthread_mutex_init(&g->mu, NULL);
  g->serial = atomic_fetch_add(&next_serial, 1);
  status_t s;
  snprintf(path, sizeof path, "%s/vocab.json", dir);
  if ((s = load_vocab(g, path))) goto fail;
  snprintf(path, sizeof path, "%s/merges.txt", dir);
  if ((s = load_merges(g, path))) goto fail;
  if ((s = compile_pattern(g))) goto fail;
  *impl = g;
  *ops = &gpt2_ops;
  return STATUS_OK;
fail:
  gpt2_free(g);
  return s;
}
