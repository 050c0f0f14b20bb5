/* tok_spm.c: the SentencePiece backend. Reads a `.model` file (a serialized
 * ModelProto) and encodes and decodes as sentencepiece 0.1.97's spm_encode and
 * spm_decode do: the precompiled-charsmap normalizer, unigram (Viterbi), BPE,
 * character and word segmentation, byte fallback, and the decoder.
 *
 * A loaded model is immutable; encode and decode keep their buffers per
 * thread, so any number of threads may use one model at once. Where the
 * reference gives up on a line (spm_encode aborts when a word or a BPE
 * symbol is spelled like a control piece), this backend emits the control
 * piece's id. */
#include <float.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sentencepiece_model.pb-c.h"
#include "tokenizer.h"

/* Piece types, numbered as in the ModelProto. */
enum {
  PIECE_NORMAL = 1,
  PIECE_UNKNOWN = 2,
  PIECE_CONTROL = 3,
  PIECE_USER = 4,
  PIECE_UNUSED = 5,
  PIECE_BYTE = 6,
};

enum { MODEL_UNIGRAM = 1, MODEL_BPE = 2, MODEL_WORD = 3, MODEL_CHAR = 4 };

static const char kSpace[] = "\xe2\x96\x81";       /* U+2581, what a space becomes */
static const char kReplacement[] = "\xef\xbf\xbd"; /* U+FFFD */

/* ---- A double-array trie over the pieces ----------------------------------
 * Node s's child for byte c sits at base + c when that cell's check is s.
 * `id` answers the segmenters, which see the pieces of type normal,
 * user-defined and unused: -1 where no such piece ends, the piece's id for a
 * normal piece, and -2 - id for the other two, so that the unigram search
 * needs no second look-up for the common case. A separate array per node
 * answers piece-to-id look-ups, where the reserved pieces (unknown, control,
 * byte) take precedence, as in the reference. */
typedef struct {
  int32_t base, check, id;
  float score; /* the piece's score where id != -1 */
} trie_node;

/* The segmenters' piece at a node (-1 for none), type tag removed. */
static inline int32_t node_piece(const trie_node *nd, int32_t s) {
  int32_t v = nd[s].id;
  return v >= -1 ? v : -2 - v;
}

static inline int32_t trie_next(const trie_node *nd, uint32_t n, int32_t s, uint8_t c) {
  uint32_t t = (uint32_t)(nd[s].base + (int32_t)c);
  return t < n && nd[t].check == s ? (int32_t)t : -1;
}

/* The node for key, or -1. */
static int32_t trie_find(const trie_node *nd, uint32_t n, const char *key, size_t len) {
  int32_t s = 0;
  for (size_t i = 0; i < len && s >= 0; i++) s = trie_next(nd, n, s, (uint8_t)key[i]);
  return s;
}

typedef struct {
  const char *s;
  uint32_t len;
  int32_t id, any;
} trie_key;

static int cmp_key(const void *a, const void *b) {
  const trie_key *x = a, *y = b;
  size_t n = x->len < y->len ? x->len : y->len;
  int c = memcmp(x->s, y->s, n);
  return c ? c : (x->len > y->len) - (x->len < y->len);
}

/* The builder's cells: check as above; id and any the two answers. */
typedef struct {
  int32_t base, check, id, any;
} trie_cell;

typedef struct {
  trie_cell *nd;
  uint32_t n, cap, first_free;
} trie_builder;

static bool trie_reserve(trie_builder *b, uint64_t need) {
  if (need <= b->cap) return true;
  if (need > INT32_MAX) return false;
  uint32_t c = b->cap ? b->cap : 1024;
  while (c < need) c = c > INT32_MAX / 2 ? INT32_MAX : c * 2;
  trie_cell *p = realloc(b->nd, (size_t)c * sizeof *p);
  if (!p) return false;
  for (uint32_t i = b->cap; i < c; i++) p[i] = (trie_cell){0, -1, -1, -1};
  b->nd = p;
  b->cap = c;
  return true;
}

/* A base at which every label in lab[0..k) (ascending) lands on a free
 * cell, searched from the first free cell; INT64_MIN when the array cannot
 * grow. Where the cells passed over are nearly all used, later searches start
 * past them (the classic double-array heuristic), which keeps building a
 * large vocabulary from going quadratic. */
static int64_t trie_find_base(trie_builder *b, const uint8_t *lab, int k) {
  uint32_t pos = b->first_free > 1 ? b->first_free : 1, used = 0;
  bool first = true;
  for (;; pos++) {
    if (!trie_reserve(b, (uint64_t)pos + 257)) return INT64_MIN;
    if (b->nd[pos].check != -1) {
      used++;
      continue;
    }
    if (first) b->first_free = pos, first = false;
    int64_t base = (int64_t)pos - lab[0];
    int i = 1;
    while (i < k && b->nd[base + lab[i]].check == -1) i++;
    if (i < k) continue;
    if (used >= 0.95 * (pos - b->first_free + 1)) b->first_free = pos;
    return base;
  }
}

typedef struct {
  int32_t node;
  uint32_t lo, hi, depth;
} trie_task;

/* Builds the trie of keys[0..n) (sorted, distinct) into *out. */
static bool trie_build(trie_key *keys, uint32_t n, trie_cell **out, uint32_t *out_n) {
  trie_builder b = {0};
  size_t qcap = 1, qh = 0, qt = 0; /* one task per node: at most 1 + all key bytes */
  for (uint32_t i = 0; i < n; i++) qcap += keys[i].len;
  trie_task *q = malloc(qcap * sizeof *q);
  bool ok = q && trie_reserve(&b, 1024);
  if (ok) {
    b.nd[0].check = -2;
    b.n = 1;
    b.first_free = 1;
    q[qt++] = (trie_task){0, 0, n, 0};
  }
  uint8_t lab[256];
  uint32_t start[257];
  while (ok && qh < qt) {
    trie_task t = q[qh++];
    uint32_t lo = t.lo;
    if (lo < t.hi && keys[lo].len == t.depth) {
      b.nd[t.node].id = keys[lo].id;
      b.nd[t.node].any = keys[lo].any;
      lo++;
    }
    int k = 0;
    for (uint32_t i = lo; i < t.hi; i++) {
      uint8_t c = (uint8_t)keys[i].s[t.depth];
      if (k == 0 || lab[k - 1] != c) start[k] = i, lab[k++] = c;
    }
    if (k == 0) continue;
    start[k] = t.hi;
    int64_t base = trie_find_base(&b, lab, k);
    if (base == INT64_MIN) {
      ok = false;
      break;
    }
    b.nd[t.node].base = (int32_t)base;
    for (int i = 0; i < k; i++) {
      uint32_t cell = (uint32_t)(base + lab[i]);
      b.nd[cell].check = t.node;
      if (cell + 1 > b.n) b.n = cell + 1;
      if (qt == qcap) {
        ok = false;
        break;
      }
      q[qt++] = (trie_task){(int32_t)cell, start[i], start[i + 1], t.depth + 1};
    }
  }
  free(q);
  if (!ok) {
    free(b.nd);
    return false;
  }
  *out = b.nd;
  *out_n = b.n;
  return true;
}

/* ---- The normalizer --------------------------------------------------------
 * The precompiled charsmap is a double array in the format of the darts-clone
 * library (32-bit units) whose values are offsets of NUL-terminated
 * replacement strings; the longest rule matching a prefix of the input wins. */
typedef struct {
  uint32_t *units; /* the double array, NULL for identity normalization */
  uint32_t n_units;
  char *repl; /* replacement strings, NUL-terminated */
  uint32_t repl_len;
  uint8_t first[32]; /* bitmap: bytes that start a rule */
  uint8_t plain[32]; /* bitmap: ASCII bytes that start no rule and no user-defined piece */
  bool add_dummy_prefix, remove_extra_ws, escape_ws, ws_suffix, user_matcher;
} spm_normalizer;

static inline uint32_t da_offset(uint32_t u) { return (u >> 10) << ((u & (1u << 9)) >> 6); }
static inline uint32_t da_label(uint32_t u) { return u & (0x80000000u | 0xFFu); }
static inline bool da_has_leaf(uint32_t u) { return (u >> 8) & 1u; }
static inline uint32_t da_value(uint32_t u) { return u & 0x7FFFFFFFu; }
static inline bool bit_get(const uint8_t *m, uint8_t c) { return (m[c >> 3] >> (c & 7)) & 1; }
static inline void bit_set(uint8_t *m, uint8_t c) { m[c >> 3] |= (uint8_t)(1u << (c & 7)); }

/* The length of the longest rule matching a prefix of s[0..n) (0 if none) and
 * its replacement's offset in *val. */
static size_t charsmap_match(const spm_normalizer *nm, const uint8_t *s, size_t n, uint32_t *val) {
  const uint32_t *a = nm->units;
  uint32_t id = da_offset(a[0]);
  size_t best = 0;
  for (size_t i = 0; i < n; i++) {
    id ^= s[i];
    if (id >= nm->n_units) break;
    uint32_t u = a[id];
    if (da_label(u) != s[i]) break;
    id ^= da_offset(u);
    if (da_has_leaf(u)) {
      if (id >= nm->n_units) break;
      uint32_t v = da_value(a[id]);
      if (v >= nm->repl_len) break;
      best = i + 1;
      *val = v;
    }
  }
  return best;
}

/* The length of the UTF-8 character at s[0..n) when it is well formed by the
 * reference's rules (shortest form, no surrogates, at most U+10FFFF), else 0. */
static size_t utf8_valid_len(const uint8_t *s, size_t n) {
  uint8_t c = s[0];
  if (c < 0x80) return 1;
#define TRAIL(x) (((x)&0xC0) == 0x80)
  if (n >= 2 && (c & 0xE0) == 0xC0) {
    uint32_t cp = ((uint32_t)(c & 0x1F) << 6) | (s[1] & 0x3F);
    return TRAIL(s[1]) && cp >= 0x80 ? 2 : 0;
  } else if (n >= 3 && (c & 0xF0) == 0xE0) {
    uint32_t cp = ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    return TRAIL(s[1]) && TRAIL(s[2]) && cp >= 0x800 && (cp < 0xD800 || cp >= 0xE000) ? 3 : 0;
  } else if (n >= 4 && (c & 0xF8) == 0xF0) {
    uint32_t cp = ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) |
                  ((uint32_t)(s[2] & 0x3F) << 6) | (s[3] & 0x3F);
    return TRAIL(s[1]) && TRAIL(s[2]) && TRAIL(s[3]) && cp >= 0x10000 && cp <= 0x10FFFF ? 4 : 0;
  }
#undef TRAIL
  return 0;
}

/* The byte length of the character starting with byte c, judged by c alone. */
static inline size_t one_char_len(uint8_t c) { return "\1\1\1\1\1\1\1\1\1\1\1\1\2\2\3\4"[c >> 4]; }

/* ---- The model ------------------------------------------------------------- */
typedef struct {
  uint32_t off, len; /* in spm_model.strings */
  float score;
  int32_t type;
} spm_piece;

typedef struct {
  spm_piece *pieces;
  char *strings;
  int32_t n_pieces;
  int32_t *canon; /* id -> PieceToId(IdToPiece(id)), as the decoder sees it */
  trie_node *trie;
  int32_t *trie_any; /* per node: PieceToId's answer, or -1 */
  uint32_t trie_n;
  int model_type;
  bool byte_fallback, has_user;
  bool bpe_words;         /* BPE may run word by word, with a cache (see bpe_words_ok) */
  uint64_t uid;           /* tells the word caches of different models apart */
  uint8_t user_first[32]; /* bitmap: first bytes of user-defined pieces */
  int32_t unk_id;
  float min_score, max_score;
  int32_t byte_id[256]; /* PieceToId("<0xXX>") */
  char *unk_surface;
  size_t unk_surface_len;
  spm_normalizer norm, denorm;
  bool has_denorm;
} spm_model;

/* PieceToId: a reserved piece first, then a segmenter's piece, else unk. */
static int32_t piece_to_id(const spm_model *m, const char *s, size_t len) {
  int32_t t = trie_find(m->trie, m->trie_n, s, len);
  int32_t id = t >= 0 ? m->trie_any[t] : -1;
  return id >= 0 ? id : m->unk_id;
}

/* The length of the longest user-defined piece that is a prefix of s[0..n),
 * 0 when none is. */
static size_t user_match(const spm_model *m, const uint8_t *s, size_t n) {
  if (!m->has_user || !bit_get(m->user_first, s[0])) return 0;
  size_t best = 0;
  int32_t t = 0;
  for (size_t i = 0; i < n; i++) {
    t = trie_next(m->trie, m->trie_n, t, s[i]);
    if (t < 0) break;
    int32_t id = node_piece(m->trie, t);
    if (id >= 0 && m->pieces[id].type == PIECE_USER) best = i + 1;
  }
  return best;
}

/* ---- Per-thread scratch -------------------------------------------------------
 * Encoding reuses these buffers; each thread has its own, freed when the
 * thread exits, so encode needs no lock and does not allocate once warm. */
typedef struct {
  float score;
  int32_t start, id;
} best_node;

typedef struct {
  uint32_t off, len;
  int32_t id;
} seg;

/* A BPE symbol: a span of the normalized text, linked to its neighbours;
 * node is where the span's bytes lead in the trie (-1 if nowhere), so that a
 * pair is looked up by walking only the right symbol's bytes. */
typedef struct {
  int32_t prev, next;
  uint32_t off, len;
  int32_t node;
  bool freeze;
} bpe_sym;

/* A candidate merge of symbol `left` with its right neighbour; `size` (the
 * pair's byte length then) tells whether it still stands when popped. The
 * key orders candidates as the reference does, higher score first, then
 * leftmost: the score's bits made monotonic, then the complement of left. */
typedef struct {
  uint64_t key;
  uint32_t size;
  int32_t node;
} bpe_pair;

static inline uint64_t pair_key(float score, int32_t left) {
  uint32_t u;
  score += 0.0f; /* -0 sorts with +0, as they compare equal */
  memcpy(&u, &score, sizeof u);
  u = (u & 0x80000000u) ? ~u : u | 0x80000000u;
  return (uint64_t)u << 32 | (uint32_t) ~(uint32_t)left;
}

static inline int32_t pair_left(const bpe_pair *p) { return (int32_t) ~(uint32_t)p->key; }

typedef struct {
  int32_t id;
  uint32_t left_len;
} bpe_rev;

/* The BPE word cache: a word's pieces, as (length, id) runs, by the word's
 * bytes. Owned by one thread and tagged with the model it was filled for. */
typedef struct {
  uint64_t hash;
  uint32_t key_off, key_len, val_off, val_n; /* key_len 0: an empty slot */
} cache_slot;

typedef struct {
  uint32_t len;
  int32_t id;
} cache_val;

typedef struct {
  uint64_t owner; /* the model's uid, 0 when empty */
  cache_slot *slot;
  uint32_t cap, used;
  char *keys;
  size_t keys_n, keys_cap;
  cache_val *vals;
  size_t vals_n, vals_cap;
} word_cache;

typedef struct {
  char *norm;
  size_t norm_n, norm_cap;
  word_cache cache;
  best_node *best;
  size_t best_cap;
  seg *seg;
  size_t seg_n, seg_cap;
  bpe_sym *sym;
  size_t sym_cap;
  bpe_pair *heap;
  size_t heap_n, heap_cap;
  bpe_rev *rev;
  size_t rev_n, rev_cap;
} spm_scratch;

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static bool scratch_key_ok;

static void scratch_free(void *p) {
  spm_scratch *s = p;
  if (!s) return;
  free(s->norm);
  free(s->best);
  free(s->seg);
  free(s->sym);
  free(s->heap);
  free(s->rev);
  free(s->cache.slot);
  free(s->cache.keys);
  free(s->cache.vals);
  free(s);
}

static void scratch_key_init(void) {
  scratch_key_ok = pthread_key_create(&scratch_key, scratch_free) == 0;
}

static spm_scratch *scratch_get(void) {
  pthread_once(&scratch_once, scratch_key_init);
  if (!scratch_key_ok) return NULL;
  spm_scratch *s = pthread_getspecific(scratch_key);
  if (s) return s;
  s = calloc(1, sizeof *s);
  if (s && pthread_setspecific(scratch_key, s) != 0) {
    free(s);
    s = NULL;
  }
  return s;
}

/* Grows *p to hold at least need elements of elem bytes. */
static bool grow(void **p, size_t *cap, size_t need, size_t elem) {
  if (need <= *cap) return true;
  size_t c = *cap ? *cap : 256;
  while (c < need) c *= 2;
  void *q = realloc(*p, c * elem);
  if (!q) return false;
  *p = q;
  *cap = c;
  return true;
}

#define GROW(buf, cap, need) grow((void **)&(buf), &(cap), (need), sizeof *(buf))

static status_t nomem(void) { return status_set(STATUS_NOMEM, "out of memory encoding a line"); }

/* ---- Normalization -------------------------------------------------------- */
typedef struct {
  char *s;
  size_t n, cap;
} norm_buf;

static inline bool nb_put(norm_buf *b, const char *p, size_t n) {
  if (!GROW(b->s, b->cap, b->n + n + 1)) return false;
  memcpy(b->s + b->n, p, n);
  b->n += n;
  return true;
}

/* Normalizes one prefix of s[0..n): returns the bytes consumed and points
 * *rep at what they become (*rep_len bytes). */
static size_t norm_prefix(const spm_model *m, const spm_normalizer *nm, const uint8_t *s, size_t n,
                          const char **rep, size_t *rep_len) {
  if (nm->user_matcher) {
    size_t k = user_match(m, s, n);
    if (k) {
      *rep = (const char *)s;
      *rep_len = k;
      return k;
    }
  }
  if (nm->units && bit_get(nm->first, s[0])) {
    uint32_t v = 0;
    size_t k = charsmap_match(nm, s, n, &v);
    if (k) {
      *rep = nm->repl + v;
      *rep_len = strlen(nm->repl + v);
      return k;
    }
  }
  size_t k = utf8_valid_len(s, n);
  if (!k) {
    *rep = kReplacement;
    *rep_len = 3;
    return 1;
  }
  *rep = (const char *)s;
  *rep_len = k;
  return k;
}

static bool norm_put_ws(const spm_normalizer *nm, norm_buf *b) {
  return nm->escape_ws ? nb_put(b, kSpace, 3) : nb_put(b, " ", 1);
}

/* Normalizes in[0..n) into b (replacing b's contents), as the reference's
 * Normalizer::Normalize: rules, then dummy prefix, whitespace folding and
 * escaping. */
static bool normalize(const spm_model *m, const spm_normalizer *nm, const char *in, size_t n,
                      norm_buf *b) {
  const uint8_t *s = (const uint8_t *)in;
  const char *rep;
  size_t rl, k;
  b->n = 0;
  if (!GROW(b->s, b->cap, n * 3 + 8)) return false;
  if (nm->remove_extra_ws) {
    while (n) {
      k = norm_prefix(m, nm, s, n, &rep, &rl);
      if (rl != 1 || rep[0] != ' ') break;
      s += k, n -= k;
    }
  }
  if (!n) return true;
  if (!nm->ws_suffix && nm->add_dummy_prefix && !norm_put_ws(nm, b)) return false;
  bool prev_space = nm->remove_extra_ws;
  while (n) {
    if (bit_get(nm->plain, *s)) { /* the common case, inline */
      if (b->n + 3 > b->cap && !GROW(b->s, b->cap, b->n + 3)) return false;
      if (*s != ' ') {
        b->s[b->n++] = (char)*s;
        prev_space = false;
      } else {
        if (!prev_space) {
          if (nm->escape_ws)
            memcpy(b->s + b->n, kSpace, 3), b->n += 3;
          else
            b->s[b->n++] = ' ';
        }
        prev_space = nm->remove_extra_ws;
      }
      s++, n--;
      continue;
    }
    k = norm_prefix(m, nm, s, n, &rep, &rl);
    if (prev_space)
      while (rl && rep[0] == ' ') rep++, rl--;
    if (rl) {
      if (!GROW(b->s, b->cap, b->n + rl * 3 + 4)) return false;
      char *o = b->s + b->n;
      for (size_t i = 0; i < rl; i++) {
        if (rep[i] == ' ' && nm->escape_ws) {
          memcpy(o, kSpace, 3);
          o += 3;
        } else {
          *o++ = rep[i];
        }
      }
      b->n = (size_t)(o - b->s);
      prev_space = rep[rl - 1] == ' ';
    }
    s += k, n -= k;
    if (!nm->remove_extra_ws) prev_space = false;
  }
  if (nm->remove_extra_ws) {
    const char *sp = nm->escape_ws ? kSpace : " ";
    size_t sl = nm->escape_ws ? 3 : 1;
    while (b->n >= sl && !memcmp(b->s + b->n - sl, sp, sl)) b->n -= sl;
  }
  if (nm->ws_suffix && nm->add_dummy_prefix && !norm_put_ws(nm, b)) return false;
  return true;
}

/* ---- Segmentation ------------------------------------------------------------ */
static inline bool seg_push(spm_scratch *sc, uint32_t off, uint32_t len, int32_t id) {
  if (sc->seg_n == sc->seg_cap && !GROW(sc->seg, sc->seg_cap, sc->seg_n + 1)) return false;
  sc->seg[sc->seg_n++] = (seg){off, len, id};
  return true;
}

/* The unigram model's Viterbi search, in the reference's one-pass form: the
 * best path ending at each byte offset, candidates visited in the order the
 * reference visits them so that ties resolve the same way. */
static bool unigram_segment(const spm_model *m, const char *t, size_t size, spm_scratch *sc) {
  if (!GROW(sc->best, sc->best_cap, size + 1)) return false;
  best_node *best = sc->best;
  for (size_t i = 0; i <= size; i++) best[i] = (best_node){0.0f, -1, -1};
  const float unk_score = m->min_score - 10.0f;
  const trie_node *nd = m->trie;
  const uint32_t nn = m->trie_n;
  size_t start = 0;
  while (start < size) {
    const float here = best[start].score;
    size_t mblen = one_char_len((uint8_t)t[start]);
    if (mblen > size - start) mblen = size - start;
    bool has_single = false;
    int32_t s = 0;
    for (size_t key = start; key < size;) {
      s = trie_next(nd, nn, s, (uint8_t)t[key]);
      if (s < 0) break;
      key++;
      int32_t id = nd[s].id;
      if (id == -1) continue;
      size_t length = key - start;
      double score;
      if (id >= 0) {
        score = (double)nd[s].score;
      } else {
        /* User-defined pieces get a bonus that makes them win (the
         * reference's formula, byte length times the best score less 0.1);
         * unused pieces are not candidates. */
        id = -2 - id;
        if (m->pieces[id].type == PIECE_UNUSED) continue;
        score = (double)((float)length * m->max_score) - 0.1;
      }
      double cand = score + (double)here;
      best_node *tn = &best[key];
      if (tn->start == -1 || cand > (double)tn->score) {
        tn->score = (float)cand;
        tn->start = (int32_t)start;
        tn->id = id;
      }
      if (length == mblen) has_single = true;
    }
    if (!has_single) {
      best_node *tn = &best[start + mblen];
      float cand = unk_score + here;
      if (tn->start == -1 || cand > tn->score) {
        tn->score = cand;
        tn->start = (int32_t)start;
        tn->id = m->unk_id;
      }
    }
    start += mblen;
  }
  /* Backtrack, writing the pieces in reverse, then flip them. */
  size_t first = sc->seg_n;
  for (size_t end = size; end > 0;) {
    const best_node *b = &best[end];
    if (!seg_push(sc, (uint32_t)b->start, (uint32_t)(end - (size_t)b->start), b->id)) return false;
    end = (size_t)b->start;
  }
  seg *g = sc->seg + first;
  size_t n = sc->seg_n - first;
  for (size_t i = 0; i < n / 2; i++) {
    seg x = g[i];
    g[i] = g[n - 1 - i];
    g[n - 1 - i] = x;
  }
  return true;
}

static inline bool pair_before(const bpe_pair *a, const bpe_pair *b) { return a->key > b->key; }

static bool heap_push(spm_scratch *sc, bpe_pair p) {
  if (sc->heap_n == sc->heap_cap && !GROW(sc->heap, sc->heap_cap, sc->heap_n + 1)) return false;
  bpe_pair *h = sc->heap;
  size_t i = sc->heap_n++;
  while (i > 0) {
    size_t up = (i - 1) / 2;
    if (!pair_before(&p, &h[up])) break;
    h[i] = h[up];
    i = up;
  }
  h[i] = p;
  return true;
}

static bpe_pair heap_pop(spm_scratch *sc) {
  bpe_pair *h = sc->heap;
  bpe_pair top = h[0], last = h[--sc->heap_n];
  size_t n = sc->heap_n, i = 0;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= n) break;
    if (c + 1 < n && pair_before(&h[c + 1], &h[c])) c++;
    if (!pair_before(&h[c], &last)) break;
    h[i] = h[c];
    i = c;
  }
  if (n) h[i] = last;
  return top;
}

/* Queues the merge of symbols l and r when their concatenation is a piece;
 * remembers how an unused piece was last formed, for resegmentation. */
static bool bpe_maybe_add(const spm_model *m, const char *t, spm_scratch *sc, int32_t l,
                          int32_t r) {
  if (l < 0 || r < 0) return true;
  const bpe_sym *a = &sc->sym[l], *b = &sc->sym[r];
  if (a->freeze || b->freeze || a->node < 0) return true;
  int32_t s = a->node;
  for (uint32_t i = 0; i < b->len && s >= 0; i++)
    s = trie_next(m->trie, m->trie_n, s, (uint8_t)t[b->off + i]);
  if (s < 0 || m->trie[s].id == -1) return true;
  if (!heap_push(sc, (bpe_pair){pair_key(m->trie[s].score, l), a->len + b->len, s})) return false;
  int32_t id = node_piece(m->trie, s);
  if (m->pieces[id].type == PIECE_UNUSED) {
    size_t i = 0;
    while (i < sc->rev_n && sc->rev[i].id != id) i++;
    if (i == sc->rev_n) {
      if (!GROW(sc->rev, sc->rev_cap, sc->rev_n + 1)) return false;
      sc->rev_n++;
    }
    sc->rev[i] = (bpe_rev){id, a->len};
  }
  return true;
}

/* Splits an unused piece back into the two symbols it was formed from. */
static bool bpe_resegment(const spm_model *m, const char *t, spm_scratch *sc, uint32_t off,
                          uint32_t len) {
  int32_t id = piece_to_id(m, t + off, len);
  if (m->pieces[id].type == PIECE_UNUSED) {
    for (size_t i = 0; i < sc->rev_n; i++)
      if (sc->rev[i].id == id) {
        uint32_t left = sc->rev[i].left_len;
        return bpe_resegment(m, t, sc, off, left) &&
               bpe_resegment(m, t, sc, off + left, len - left);
      }
  }
  return seg_push(sc, off, len, id);
}

static bool bpe_segment(const spm_model *m, const char *t, size_t size, spm_scratch *sc) {
  if (!GROW(sc->sym, sc->sym_cap, size + 1)) return false;
  sc->heap_n = 0;
  sc->rev_n = 0;
  bpe_sym *sym = sc->sym;
  int32_t n = 0;
  for (size_t off = 0; off < size; n++) {
    size_t k = user_match(m, (const uint8_t *)t + off, size - off);
    bool freeze = k > 0;
    if (!k) {
      k = one_char_len((uint8_t)t[off]);
      if (k > size - off) k = size - off;
    }
    int32_t node = trie_find(m->trie, m->trie_n, t + off, k);
    sym[n] =
        (bpe_sym){n - 1, off + k < size ? n + 1 : -1, (uint32_t)off, (uint32_t)k, node, freeze};
    off += k;
  }
  if (!n) return true;
  for (int32_t i = 1; i < n; i++)
    if (!bpe_maybe_add(m, t, sc, i - 1, i)) return false;
  while (sc->heap_n) {
    bpe_pair top = heap_pop(sc);
    const int32_t left = pair_left(&top);
    bpe_sym *l = &sym[left];
    if (!l->len || l->next < 0) continue;
    bpe_sym *r = &sym[l->next];
    /* Stale when either side has changed since: a symbol only grows, or
     * empties when merged into its left neighbour. */
    if (!r->len || l->len + r->len != top.size) continue;
    l->len += r->len;
    l->node = top.node;
    l->next = r->next;
    if (r->next >= 0) sym[r->next].prev = left;
    r->len = 0;
    if (!bpe_maybe_add(m, t, sc, l->prev, left) || !bpe_maybe_add(m, t, sc, left, l->next))
      return false;
  }
  for (int32_t i = 0; i != -1; i = sym[i].next)
    if (!bpe_resegment(m, t, sc, sym[i].off, sym[i].len)) return false;
  return true;
}

enum { CACHE_SLOTS = 1 << 16, CACHE_KEY_BYTES = 4 << 20, CACHE_MAX_WORD = 96 };

static void cache_reset(word_cache *c, uint64_t owner) {
  if (c->slot) memset(c->slot, 0, (size_t)c->cap * sizeof *c->slot);
  c->used = 0;
  c->keys_n = c->vals_n = 0;
  c->owner = owner;
}

static uint64_t hash_bytes(const char *p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)p[i]) * 0x100000001b3ull;
  return h ^ (h >> 29);
}

/* The slot of word w: its entry, or the empty slot where it would go. */
static cache_slot *cache_find(word_cache *c, const char *w, uint32_t n, uint64_t h) {
  for (uint32_t i = (uint32_t)h & (c->cap - 1);; i = (i + 1) & (c->cap - 1)) {
    cache_slot *s = &c->slot[i];
    if (!s->key_len || (s->hash == h && s->key_len == n && !memcmp(c->keys + s->key_off, w, n)))
      return s;
  }
}

/* Segments t[off..off+n) alone, pieces placed at their offsets in t. */
static bool bpe_span(const spm_model *m, const char *t, size_t off, size_t n, spm_scratch *sc) {
  size_t first = sc->seg_n;
  if (!bpe_segment(m, t + off, n, sc)) return false;
  for (size_t i = first; i < sc->seg_n; i++) sc->seg[i].off += (uint32_t)off;
  return true;
}

/* Segments the word t[off..off+n) through the cache. */
static bool bpe_word(const spm_model *m, const char *t, size_t off, size_t n, spm_scratch *sc) {
  word_cache *c = &sc->cache;
  const char *w = t + off;
  if (n > CACHE_MAX_WORD) return bpe_span(m, t, off, n, sc);
  if (!c->slot) {
    c->slot = calloc(CACHE_SLOTS, sizeof *c->slot);
    if (!c->slot) return bpe_span(m, t, off, n, sc);
    c->cap = CACHE_SLOTS;
  }
  if (c->owner != m->uid || c->used >= c->cap / 2 || c->keys_n > CACHE_KEY_BYTES)
    cache_reset(c, m->uid);
  uint64_t h = hash_bytes(w, n);
  cache_slot *s = cache_find(c, w, (uint32_t)n, h);
  if (s->key_len) {
    uint32_t at = (uint32_t)off;
    for (uint32_t i = 0; i < s->val_n; i++) {
      const cache_val *v = &c->vals[s->val_off + i];
      if (!seg_push(sc, at, v->len, v->id)) return false;
      at += v->len;
    }
    return true;
  }
  size_t first = sc->seg_n;
  if (!bpe_span(m, t, off, n, sc)) return false;
  size_t k = sc->seg_n - first;
  /* A failed allocation here only leaves the word out of the cache. */
  if (GROW(c->keys, c->keys_cap, c->keys_n + n) && GROW(c->vals, c->vals_cap, c->vals_n + k)) {
    memcpy(c->keys + c->keys_n, w, n);
    for (size_t i = 0; i < k; i++)
      c->vals[c->vals_n + i] = (cache_val){sc->seg[first + i].len, sc->seg[first + i].id};
    *s = (cache_slot){h, (uint32_t)c->keys_n, (uint32_t)n, (uint32_t)c->vals_n, (uint32_t)k};
    c->keys_n += n;
    c->vals_n += k;
    c->used++;
  }
  return true;
}

/* BPE word by word: a merge never joins across a space symbol (see
 * bpe_words_ok), so each word merges as it would in the whole line, and
 * words repeat. */
static bool bpe_segment_words(const spm_model *m, const char *t, size_t size, spm_scratch *sc) {
  size_t word = 0;
  for (size_t off = 1; off + 3 <= size; off++) {
    if (t[off] == kSpace[0] && t[off + 1] == kSpace[1] && t[off + 2] == kSpace[2]) {
      if (!bpe_word(m, t, word, off - word, sc)) return false;
      word = off;
      off += 2;
    }
  }
  return bpe_word(m, t, word, size - word, sc);
}

/* The character model: each character (or user-defined piece) on its own. */
static bool char_segment(const spm_model *m, const char *t, size_t size, spm_scratch *sc) {
  for (size_t off = 0; off < size;) {
    size_t k = user_match(m, (const uint8_t *)t + off, size - off);
    if (!k) {
      k = one_char_len((uint8_t)t[off]);
      if (k > size - off) k = size - off;
    }
    if (!seg_push(sc, (uint32_t)off, (uint32_t)k, piece_to_id(m, t + off, k))) return false;
    off += k;
  }
  return true;
}

/* The word model: the text split before each space symbol, each word looked
 * up whole. The reference splits so even when whitespace is a suffix. */
static bool word_segment(const spm_model *m, const char *t, size_t size, spm_scratch *sc) {
  size_t word = 0;
  for (size_t off = 0; off < size;) {
    size_t k = one_char_len((uint8_t)t[off]);
    if (k > size - off) k = size - off;
    if (off > 0 && k == 3 && !memcmp(t + off, kSpace, 3)) {
      if (!seg_push(sc, (uint32_t)word, (uint32_t)(off - word),
                    piece_to_id(m, t + word, off - word)))
        return false;
      word = off;
    }
    off += k;
  }
  return seg_push(sc, (uint32_t)word, (uint32_t)(size - word),
                  piece_to_id(m, t + word, size - word));
}

/* Normalizes and segments text into the scratch's pieces. */
static status_t spm_segment(const spm_model *m, const char *text, size_t n, spm_scratch *sc) {
  norm_buf b = {sc->norm, sc->norm_n, sc->norm_cap};
  bool ok = normalize(m, &m->norm, text, n, &b);
  sc->norm = b.s;
  sc->norm_n = b.n;
  sc->norm_cap = b.cap;
  if (!ok) return nomem();
  if (sc->norm_n > UINT32_MAX / 2)
    return status_set(STATUS_ARG, "a line of %zu bytes is too long to encode", n);
  sc->seg_n = 0;
  if (!sc->norm_n) return STATUS_OK;
  switch (m->model_type) {
    case MODEL_UNIGRAM: ok = unigram_segment(m, sc->norm, sc->norm_n, sc); break;
    case MODEL_BPE:
      ok = m->bpe_words ? bpe_segment_words(m, sc->norm, sc->norm_n, sc)
                        : bpe_segment(m, sc->norm, sc->norm_n, sc);
      break;
    case MODEL_CHAR: ok = char_segment(m, sc->norm, sc->norm_n, sc); break;
    default: ok = word_segment(m, sc->norm, sc->norm_n, sc); break;
  }
  if (!ok) return nomem();
  /* Consecutive unknown pieces become one, whatever the model type. */
  size_t w = 0;
  for (size_t i = 0; i < sc->seg_n; i++) {
    if (w && sc->seg[i].id == m->unk_id && sc->seg[w - 1].id == m->unk_id)
      sc->seg[w - 1].len += sc->seg[i].len;
    else
      sc->seg[w++] = sc->seg[i];
  }
  sc->seg_n = w;
  return STATUS_OK;
}

static status_t spm_encode(const void *impl, const char *text, size_t n, tok_ids *out) {
  const spm_model *m = impl;
  spm_scratch *sc = scratch_get();
  if (!sc) return nomem();
  status_t st = spm_segment(m, text, n, sc);
  for (size_t i = 0; i < sc->seg_n && st == STATUS_OK; i++) {
    const seg *g = &sc->seg[i];
    if (g->id == m->unk_id && m->byte_fallback) {
      for (uint32_t j = 0; j < g->len && st == STATUS_OK; j++)
        st = tok_ids_push(out, m->byte_id[(uint8_t)sc->norm[g->off + j]]);
    } else {
      st = tok_ids_push(out, g->id);
    }
  }
  return st;
}

/* Appends the pieces of text as spm_encode --output_format=piece prints them:
 * each piece's text as it stands in the normalized line (so an unknown piece
 * shows what it covers), a byte piece as <0xXX>, separated by spaces. */
static status_t spm_encode_pieces(const void *impl, const char *text, size_t n, tok_str *out) {
  const spm_model *m = impl;
  spm_scratch *sc = scratch_get();
  if (!sc) return nomem();
  status_t st = spm_segment(m, text, n, sc);
  bool first = true;
  char byte[8];
  for (size_t i = 0; i < sc->seg_n && st == STATUS_OK; i++) {
    const seg *g = &sc->seg[i];
    if (g->id == m->unk_id && m->byte_fallback) {
      for (uint32_t j = 0; j < g->len && st == STATUS_OK; j++) {
        snprintf(byte, sizeof byte, "<0x%02X>", (uint8_t)sc->norm[g->off + j]);
        if (!first) st = tok_str_append(out, " ", 1);
        if (st == STATUS_OK) st = tok_str_append(out, byte, 6);
        first = false;
      }
    } else {
      if (!first) st = tok_str_append(out, " ", 1);
      if (st == STATUS_OK) st = tok_str_append(out, sc->norm + g->off, g->len);
      first = false;
    }
  }
  return st;
}

/* ---- Decoding ------------------------------------------------------------- */

/* Appends the bytes of a run of byte pieces: each well-formed UTF-8
 * character as it is, each other byte as U+FFFD. */
static status_t put_bytes(const uint8_t *b, size_t n, tok_str *out) {
  status_t st = STATUS_OK;
  for (size_t i = 0; i < n && st == STATUS_OK;) {
    size_t k = utf8_valid_len(b + i, n - i);
    if (k) {
      st = tok_str_append(out, (const char *)b + i, k);
      i += k;
    } else {
      st = tok_str_append(out, kReplacement, 3);
      i++;
    }
  }
  return st;
}

/* Appends piece with each space symbol turned back into a space. */
static status_t put_unescaped(const char *p, size_t n, tok_str *out) {
  status_t st = STATUS_OK;
  size_t from = 0;
  for (size_t i = 0; i + 3 <= n && st == STATUS_OK;) {
    if (!memcmp(p + i, kSpace, 3)) {
      st = tok_str_append(out, p + from, i - from);
      if (st == STATUS_OK) st = tok_str_append(out, " ", 1);
      i += 3;
      from = i;
    } else {
      i++;
    }
  }
  return st == STATUS_OK ? tok_str_append(out, p + from, n - from) : st;
}

static status_t spm_decode(const void *impl, const int32_t *ids, size_t n, tok_str *out) {
  const spm_model *m = impl;
  const size_t start = out->n;
  const bool strip_bos_ws = m->norm.add_dummy_prefix || m->norm.remove_extra_ws;
  spm_scratch *sc = scratch_get();
  if (!sc) return nomem();
  size_t nb = 0; /* a run of byte pieces collects in sc->norm */
  status_t st = tok_str_append(out, "", 0);
  for (size_t i = 0; i < n && st == STATUS_OK; i++) {
    if (ids[i] < 0 || ids[i] >= m->n_pieces)
      return status_set(STATUS_ARG, "id %d is outside the vocabulary (size %d)", ids[i],
                        m->n_pieces);
    int32_t id = m->canon[ids[i]];
    const spm_piece *p = &m->pieces[id];
    if (p->type == PIECE_BYTE) {
      if (!GROW(sc->norm, sc->norm_cap, nb + 1)) return nomem();
      sc->norm[nb++] = (char)strtoul(m->strings + p->off + 3, NULL, 16);
      continue;
    }
    if (nb) {
      st = put_bytes((const uint8_t *)sc->norm, nb, out);
      nb = 0;
      if (st) break;
    }
    if (p->type == PIECE_CONTROL) continue;
    if (p->type == PIECE_UNKNOWN) {
      st = tok_str_append(out, m->unk_surface, m->unk_surface_len);
      continue;
    }
    /* As 0.1.97 does: while the text is still empty, each piece loses a
     * leading space symbol (later versions drop only the first). */
    const char *s = m->strings + p->off;
    size_t len = p->len;
    if (out->n == start && strip_bos_ws && len >= 3 && !memcmp(s, kSpace, 3)) s += 3, len -= 3;
    st = put_unescaped(s, len, out);
  }
  if (st == STATUS_OK && nb) st = put_bytes((const uint8_t *)sc->norm, nb, out);
  if (st == STATUS_OK && m->has_denorm) {
    norm_buf b = {0};
    if (!normalize(m, &m->denorm, out->s + start, out->n - start, &b)) {
      free(b.s);
      return status_set(STATUS_NOMEM, "out of memory decoding");
    }
    out->n = start;
    st = tok_str_append(out, b.s ? b.s : "", b.n);
    free(b.s);
  }
  return st;
}

/* ---- Lookups and lifetime ----------------------------------------------------- */
static const char *spm_piece_str(const void *impl, int32_t id, size_t *len) {
  const spm_model *m = impl;
  if (id < 0 || id >= m->n_pieces) {
    if (len) *len = 0;
    return NULL;
  }
  if (len) *len = m->pieces[id].len;
  return m->strings + m->pieces[id].off;
}

static int32_t spm_piece_id(const void *impl, const char *piece) {
  const spm_model *m = impl;
  int32_t t = trie_find(m->trie, m->trie_n, piece, strlen(piece));
  return t >= 0 ? m->trie_any[t] : -1;
}

static int32_t spm_vocab_size(const void *impl) { return ((const spm_model *)impl)->n_pieces; }

static void spm_free(void *impl) {
  spm_model *m = impl;
  if (!m) return;
  free(m->pieces);
  free(m->strings);
  free(m->canon);
  free(m->trie);
  free(m->trie_any);
  free(m->unk_surface);
  free(m->norm.units);
  free(m->norm.repl);
  free(m->denorm.units);
  free(m->denorm.repl);
  free(m);
}

static const tok_ops spm_ops = {
    .name = "sentencepiece",
    .encode = spm_encode,
    .encode_pieces = spm_encode_pieces,
    .decode = spm_decode,
    .piece = spm_piece_str,
    .piece_id = spm_piece_id,
    .vocab_size = spm_vocab_size,
    .free = spm_free,
};

/* ---- Loading ---------------------------------------------------------------- */
static status_t normalizer_init(spm_normalizer *nm, const Mlmpi__Spm__NormalizerSpec *spec,
                                const char *path, const char *which) {
  nm->add_dummy_prefix = spec ? spec->add_dummy_prefix : true;
  nm->remove_extra_ws = spec ? spec->remove_extra_whitespaces : true;
  nm->escape_ws = spec ? spec->escape_whitespaces : true;
  if (!spec || !spec->has_precompiled_charsmap || spec->precompiled_charsmap.len == 0)
    return STATUS_OK;
  const uint8_t *blob = spec->precompiled_charsmap.data;
  size_t len = spec->precompiled_charsmap.len;
  uint32_t trie_size = len > 4 ? (uint32_t)blob[0] | (uint32_t)blob[1] << 8 |
                                     (uint32_t)blob[2] << 16 | (uint32_t)blob[3] << 24
                               : 0;
  if (len <= 4 || trie_size < 4 || trie_size >= len - 4 || blob[len - 1] != 0)
    return status_set(STATUS_FORMAT,
                      "tokenizer %s: the %s's precompiled charsmap is broken (%zu bytes, trie of "
                      "%u bytes)",
                      path, which, len, trie_size);
  nm->n_units = trie_size / 4;
  nm->repl_len = (uint32_t)(len - 4 - trie_size);
  nm->units = malloc((size_t)nm->n_units * sizeof *nm->units);
  nm->repl = malloc(nm->repl_len);
  if (!nm->units || !nm->repl)
    return status_set(STATUS_NOMEM, "tokenizer %s: out of memory loading the charsmap", path);
  for (uint32_t i = 0; i < nm->n_units; i++) {
    const uint8_t *u = blob + 4 + 4 * (size_t)i;
    nm->units[i] =
        (uint32_t)u[0] | (uint32_t)u[1] << 8 | (uint32_t)u[2] << 16 | (uint32_t)u[3] << 24;
  }
  memcpy(nm->repl, blob + 4 + trie_size, nm->repl_len);
  uint32_t root = da_offset(nm->units[0]);
  for (int c = 0; c < 256; c++) {
    uint32_t id = root ^ (uint32_t)c;
    if (id < nm->n_units && da_label(nm->units[id]) == (uint32_t)c) bit_set(nm->first, (uint8_t)c);
  }
  return STATUS_OK;
}

/* Marks the ASCII bytes that normalize to themselves whatever follows: no
 * rule and (given user_first) no user-defined piece starts with them. */
static void normalizer_set_plain(spm_normalizer *nm, const uint8_t *user_first) {
  for (int c = 0; c < 0x80; c++)
    if (!bit_get(nm->first, (uint8_t)c) && !(user_first && bit_get(user_first, (uint8_t)c)))
      bit_set(nm->plain, (uint8_t)c);
}

/* Copies the pieces out of the message and checks them as the reference does. */
static status_t pieces_init(spm_model *m, const Mlmpi__Spm__ModelProto *mp, const char *path) {
  size_t total = 0;
  for (size_t i = 0; i < mp->n_pieces; i++) {
    const char *s = mp->pieces[i]->piece;
    size_t len = s ? strlen(s) : 0;
    if (!len) return status_set(STATUS_FORMAT, "tokenizer %s: piece %zu is empty", path, i);
    total += len + 1;
  }
  m->pieces = calloc(mp->n_pieces, sizeof *m->pieces);
  m->strings = malloc(total);
  m->canon = malloc(mp->n_pieces * sizeof *m->canon);
  if (!m->pieces || !m->strings || !m->canon)
    return status_set(STATUS_NOMEM, "tokenizer %s: out of memory loading the pieces", path);
  m->n_pieces = (int32_t)mp->n_pieces;
  m->unk_id = -1;
  m->min_score = FLT_MAX;
  m->max_score = FLT_MIN;
  bool any_byte = false;
  size_t off = 0;
  for (int32_t i = 0; i < m->n_pieces; i++) {
    const Mlmpi__Spm__ModelProto__SentencePiece *sp = mp->pieces[i];
    size_t len = strlen(sp->piece);
    memcpy(m->strings + off, sp->piece, len + 1);
    int32_t type = sp->has_type ? (int32_t)sp->type : PIECE_NORMAL;
    if (type < PIECE_NORMAL || type > PIECE_BYTE)
      return status_set(STATUS_FORMAT, "tokenizer %s: piece %d has an unknown type %d", path, i,
                        type);
    m->pieces[i] = (spm_piece){(uint32_t)off, (uint32_t)len, sp->score, type};
    off += len + 1;
    if (type == PIECE_NORMAL) {
      if (sp->score < m->min_score) m->min_score = sp->score;
      if (sp->score > m->max_score) m->max_score = sp->score;
    }
    if (type == PIECE_UNKNOWN) {
      if (m->unk_id >= 0)
        return status_set(STATUS_FORMAT, "tokenizer %s: more than one unknown piece", path);
      m->unk_id = i;
    }
    if (type == PIECE_BYTE) {
      if (!m->byte_fallback)
        return status_set(STATUS_FORMAT,
                          "tokenizer %s: byte piece '%s' in a model without byte_fallback", path,
                          sp->piece);
      unsigned v;
      char tail;
      if (len != 6 || sscanf(sp->piece, "<0x%2x%c", &v, &tail) != 2 || tail != '>')
        return status_set(STATUS_FORMAT, "tokenizer %s: byte piece '%s' is not <0xXX>", path,
                          sp->piece);
      any_byte = true;
    }
    if (type == PIECE_USER) {
      m->has_user = true;
      bit_set(m->user_first, (uint8_t)sp->piece[0]);
    }
  }
  if (m->unk_id < 0)
    return status_set(STATUS_FORMAT, "tokenizer %s: the model defines no unknown piece", path);
  if (m->byte_fallback && !any_byte)
    return status_set(STATUS_FORMAT,
                      "tokenizer %s: byte_fallback is set but there are no byte pieces", path);
  if (m->min_score == FLT_MAX) m->min_score = 0.0f;
  return STATUS_OK;
}

static bool is_reserved(int32_t type) {
  return type == PIECE_UNKNOWN || type == PIECE_CONTROL || type == PIECE_BYTE;
}

/* Builds the trie over every piece string; a string may be one reserved and
 * one segmenter piece at once, but not two of the same kind. */
static status_t trie_init(spm_model *m, const char *path) {
  trie_key *k = malloc((size_t)m->n_pieces * sizeof *k);
  if (!k) return status_set(STATUS_NOMEM, "tokenizer %s: out of memory building the trie", path);
  for (int32_t i = 0; i < m->n_pieces; i++) {
    const spm_piece *p = &m->pieces[i];
    bool r = is_reserved(p->type);
    k[i] = (trie_key){m->strings + p->off, p->len, r ? -1 : i, r ? i : -1};
  }
  qsort(k, (size_t)m->n_pieces, sizeof *k, cmp_key);
  uint32_t w = 0;
  bool any_normal = false;
  for (int32_t i = 0; i < m->n_pieces; i++) {
    any_normal |= k[i].id >= 0;
    if (w && !cmp_key(&k[w - 1], &k[i])) {
      trie_key *a = &k[w - 1];
      if ((a->id >= 0 && k[i].id >= 0) || (a->any >= 0 && k[i].any >= 0)) {
        status_t st = status_set(STATUS_FORMAT, "tokenizer %s: piece '%.*s' is defined twice", path,
                                 (int)k[i].len, k[i].s);
        free(k);
        return st;
      }
      if (k[i].id >= 0) a->id = k[i].id;
      if (k[i].any >= 0) a->any = k[i].any;
    } else {
      k[w++] = k[i];
    }
  }
  for (uint32_t i = 0; i < w; i++)
    if (k[i].any < 0) k[i].any = k[i].id;
  if (!any_normal) {
    free(k);
    return status_set(STATUS_FORMAT, "tokenizer %s: the model has no normal pieces", path);
  }
  trie_cell *cell = NULL;
  bool ok = trie_build(k, w, &cell, &m->trie_n);
  free(k);
  if (ok) {
    m->trie = malloc((size_t)m->trie_n * sizeof *m->trie);
    m->trie_any = malloc((size_t)m->trie_n * sizeof *m->trie_any);
    ok = m->trie && m->trie_any;
  }
  for (uint32_t i = 0; ok && i < m->trie_n; i++) {
    int32_t id = cell[i].id;
    trie_node *t = &m->trie[i];
    *t = (trie_node){cell[i].base, cell[i].check, id, 0.0f};
    if (id >= 0) {
      t->score = m->pieces[id].score;
      if (m->pieces[id].type != PIECE_NORMAL) t->id = -2 - id;
    }
    m->trie_any[i] = cell[i].any;
  }
  free(cell);
  if (!ok) return status_set(STATUS_NOMEM, "tokenizer %s: out of memory building the trie", path);
  for (int32_t i = 0; i < m->n_pieces; i++)
    m->canon[i] = piece_to_id(m, m->strings + m->pieces[i].off, m->pieces[i].len);
  char name[8];
  for (int b = 0; b < 256; b++) {
    snprintf(name, sizeof name, "<0x%02X>", b);
    m->byte_id[b] = piece_to_id(m, name, 6);
  }
  return STATUS_OK;
}

/* Whether BPE can run word by word with the same result: when no piece the
 * segmenter may form holds a space symbol after its first byte, no merge
 * joins across one, and the words merge independently, in the same order as
 * in the whole line. Not with whitespace as a suffix, user-defined pieces
 * (frozen spans that may hold a space symbol) or unused pieces (whose
 * resegmentation remembers the line's last merge of that piece). */
static bool bpe_words_ok(const spm_model *m) {
  if (m->model_type != MODEL_BPE || m->norm.ws_suffix || m->has_user) return false;
  for (int32_t i = 0; i < m->n_pieces; i++) {
    const spm_piece *p = &m->pieces[i];
    if (p->type == PIECE_UNUSED) return false;
    if (p->type != PIECE_NORMAL) continue;
    const char *s = m->strings + p->off;
    for (uint32_t j = 1; j + 3 <= p->len; j++)
      if (!memcmp(s + j, kSpace, 3)) return false;
  }
  return true;
}

static status_t model_init(spm_model *m, const Mlmpi__Spm__ModelProto *mp, const char *path) {
  const Mlmpi__Spm__TrainerSpec *ts = mp->trainer_spec;
  if (mp->n_pieces == 0)
    return status_set(STATUS_FORMAT, "tokenizer %s: the model has no pieces (empty vocabulary)",
                      path);
  if (mp->n_pieces > INT32_MAX / 2)
    return status_set(STATUS_FORMAT, "tokenizer %s: too many pieces (%zu)", path, mp->n_pieces);
  m->model_type = ts ? (int)ts->model_type : MODEL_UNIGRAM;
  if (m->model_type < MODEL_UNIGRAM || m->model_type > MODEL_CHAR)
    return status_set(STATUS_FORMAT, "tokenizer %s: unknown model type %d", path, m->model_type);
  m->byte_fallback = ts && ts->byte_fallback;
  const char *unk = ts && ts->unk_surface ? ts->unk_surface : " \xe2\x81\x87 ";
  m->unk_surface_len = strlen(unk);
  m->unk_surface = malloc(m->unk_surface_len + 1);
  if (!m->unk_surface) return status_set(STATUS_NOMEM, "tokenizer %s: out of memory", path);
  memcpy(m->unk_surface, unk, m->unk_surface_len + 1);
  status_t st = pieces_init(m, mp, path);
  if (st == STATUS_OK) st = trie_init(m, path);
  if (st == STATUS_OK) st = normalizer_init(&m->norm, mp->normalizer_spec, path, "normalizer");
  m->norm.ws_suffix = ts && ts->treat_whitespace_as_suffix;
  m->norm.user_matcher = m->has_user;
  normalizer_set_plain(&m->norm, m->user_first);
  if (st == STATUS_OK && mp->denormalizer_spec &&
      mp->denormalizer_spec->precompiled_charsmap.len > 0) {
    st = normalizer_init(&m->denorm, mp->denormalizer_spec, path, "denormalizer");
    m->has_denorm = true;
    normalizer_set_plain(&m->denorm, NULL);
  }
  static _Atomic uint64_t next_uid = 1;
  m->uid = next_uid++;
  m->bpe_words = st == STATUS_OK && bpe_words_ok(m);
  return st;
}

status_t tok_spm_load(const char *path, void **impl, const tok_ops **ops) {
  *impl = NULL;
  *ops = NULL;
  char *buf = NULL;
  size_t len = 0;
  status_t st = core_read_file("tokenizer", path, 0, &buf, &len);
  if (st) return st;
  Mlmpi__Spm__ModelProto *mp = mlmpi__spm__model_proto__unpack(NULL, len, (const uint8_t *)buf);
  free(buf);
  if (!mp)
    return status_set(STATUS_FORMAT,
                      "tokenizer %s: not a SentencePiece model (it does not parse as a ModelProto)",
                      path);
  spm_model *m = calloc(1, sizeof *m);
  st = m ? model_init(m, mp, path) : status_set(STATUS_NOMEM, "tokenizer %s: out of memory", path);
  mlmpi__spm__model_proto__free_unpacked(mp, NULL);
  if (st) {
    spm_free(m);
    return st;
  }
  *impl = m;
  *ops = &spm_ops;
  return STATUS_OK;
}
