/* tok_wordpiece.c: BERT WordPiece from a `vocab.txt`, matching the
 * BasicTokenizer + WordpieceTokenizer of BERT's reference tokenization.py:
 * clean the text, space out CJK ideographs, split on whitespace, optionally
 * lower-case and strip accents, split on punctuation, then greedy
 * longest-match-first sub-words with "##" continuations.
 *
 * Settings. A `tokenizer_config.json` beside the vocabulary is read for
 * "do_lower_case", "strip_accents" (null: follow do_lower_case, as
 * transformers' BertTokenizer does) and "tokenize_chinese_chars" (default
 * true). Where the file or do_lower_case is absent, the casing is inferred:
 * uncased when no piece, bracketed special tokens ([CLS], <s>) aside, holds a
 * letter that lower-cases to another letter, cased otherwise.
 *
 * Vocabulary file. One piece per line, id = line number (from 0); the "\n"
 * and one "\r" before it are removed, nothing else (a piece holding
 * whitespace can never match, as text is split on whitespace). A blank line
 * is the piece "" and keeps its id. A piece listed twice keeps both ids for
 * decoding; looking the text up gives the later id, as the reference's
 * `vocab[token] = index` does. Invalid UTF-8 or a NUL byte is a format error.
 *
 * Input text. Invalid UTF-8 is dropped (the reference decodes with errors
 * "ignore"): each maximal ill-formed subsequence is skipped without touching
 * the bytes after it. Words are matched with "[UNK]" (or the configured
 * "unk_token") for a word no pieces cover and for a word over 200 code
 * points. Special-token spellings in the text ("[CLS]") are split like any
 * other text, as the reference does. Lower-casing is Python's str.lower():
 * simple case mapping, with U+0130 to "i" + U+0307 and the final-sigma rule
 * (its Cased and Case_Ignorable properties approximated from the general
 * category, see is_cased).
 *
 * Thread-safe: the loaded model is immutable and encode keeps its state on
 * the stack. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "tokenizer.h"

/* The reference's max_input_chars_per_word. */
#define WP_MAX_WORD_CHARS 200
/* Worst-case UTF-8 bytes of a word the matcher sees. */
#define WP_MAX_WORD_BYTES (4 * WP_MAX_WORD_CHARS)

typedef struct {
  uint32_t tag; /* high half of the key's hash */
  int32_t id;   /* -1: empty slot */
} wp_slot;

typedef struct {
  char *blob;        /* the file's bytes; each piece NUL-terminated in place */
  size_t *off;       /* (n) start of piece id in blob */
  uint32_t *len;     /* (n) bytes of piece id */
  int32_t n;         /* pieces (lines) */
  wp_slot *slots;    /* open addressing on (is "##" piece, text after "##") */
  uint64_t mask;     /* slot count - 1 */
  int max_chars[2];  /* longest key in code points: word-start pieces, "##" pieces */
  int32_t unk;       /* id of unk_name, -1 when the vocabulary lacks it */
  char unk_name[64]; /* "[UNK]" unless configured */
  bool lower, strip, chinese;
} wordpiece;

/* ---- Hashing -------------------------------------------------------------
 * Keys are (kind, bytes): kind 1 for "##" pieces with the "##" removed, so
 * the matcher hashes a continuation without building "##" + text. FNV-1a
 * runs byte by byte, so every prefix of a word hashes in one pass. */
static const uint64_t fnv_seed[2] = {0xcbf29ce484222325ull, 0x84222325cbf29ce4ull};

static inline uint64_t fnv_step(uint64_t h, unsigned char b) { return (h ^ b) * 0x100000001b3ull; }

static inline uint64_t hash_mix(uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  return h;
}

static uint64_t hash_key(int kind, const char *p, size_t n) {
  uint64_t h = fnv_seed[kind];
  for (size_t i = 0; i < n; i++) h = fnv_step(h, (unsigned char)p[i]);
  return hash_mix(h);
}

/* The key of piece id: whether it is a "##" piece, and its text after that. */
static int piece_key(const wordpiece *wp, int32_t id, const char **p, size_t *n) {
  const char *s = wp->blob + wp->off[id];
  size_t len = wp->len[id];
  int kind = len >= 2 && s[0] == '#' && s[1] == '#';
  *p = s + 2 * kind;
  *n = len - 2 * (size_t)kind;
  return kind;
}

/* The slot holding key (kind, p, n), or the empty slot where it belongs. */
static wp_slot *find_slot(const wordpiece *wp, uint64_t h, int kind, const char *p, size_t n) {
  uint32_t tag = (uint32_t)(h >> 32);
  for (uint64_t i = h & wp->mask;; i = (i + 1) & wp->mask) {
    wp_slot *s = &wp->slots[i];
    if (s->id < 0) return s;
    if (s->tag != tag) continue;
    const char *q;
    size_t m;
    if (piece_key(wp, s->id, &q, &m) == kind && m == n && !memcmp(p, q, n)) return s;
  }
}

static int32_t lookup(const wordpiece *wp, uint64_t h, int kind, const char *p, size_t n) {
  return find_slot(wp, h, kind, p, n)->id;
}

/* ---- UTF-8 --------------------------------------------------------------- */

/* Decodes the code point at s[*i], advancing *i. Returns -1 for an ill-formed
 * sequence, after skipping its maximal ill-formed prefix (never a byte that
 * could start a well-formed sequence). */
static int32_t utf8_next(const unsigned char *s, size_t n, size_t *i) {
  unsigned char b = s[(*i)++];
  if (b < 0x80) return b;
  int need;
  int32_t cp;
  unsigned char lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
  if (b >= 0xc2 && b <= 0xdf)
    need = 1, cp = b & 0x1f;
  else if (b >= 0xe0 && b <= 0xef) {
    need = 2, cp = b & 0x0f;
    if (b == 0xe0) lo = 0xa0;
    if (b == 0xed) hi = 0x9f;
  } else if (b >= 0xf0 && b <= 0xf4) {
    need = 3, cp = b & 0x07;
    if (b == 0xf0) lo = 0x90;
    if (b == 0xf4) hi = 0x8f;
  } else
    return -1;
  for (int k = 0; k < need; k++, lo = 0x80, hi = 0xbf) {
    if (*i >= n || s[*i] < lo || s[*i] > hi) return -1;
    cp = (cp << 6) | (s[(*i)++] & 0x3f);
  }
  return cp;
}

static int utf8_put(int32_t cp, char *out) {
  if (cp < 0x80) return out[0] = (char)cp, 1;
  if (cp < 0x800) {
    out[0] = (char)(0xc0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3f));
    return 2;
  }
  if (cp < 0x10000) {
    out[0] = (char)(0xe0 | (cp >> 12));
    out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[2] = (char)(0x80 | (cp & 0x3f));
    return 3;
  }
  out[0] = (char)(0xf0 | (cp >> 18));
  out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
  out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
  out[3] = (char)(0x80 | (cp & 0x3f));
  return 4;
}

/* Code points in s[0..n), or -1 where it is not well-formed UTF-8. */
static long utf8_count(const char *s, size_t n) {
  long count = 0;
  for (size_t i = 0; i < n; count++)
    if (utf8_next((const unsigned char *)s, n, &i) < 0) return -1;
  return count;
}

/* ---- Character classes (the reference's _is_control, _is_whitespace,
 * _is_punctuation, _is_chinese_char) ------------------------------------- */

typedef enum { CH_REMOVED, CH_SPACE, CH_CJK, CH_OTHER } char_class;

static int category(int32_t cp) { return utf8proc_get_property(cp)->category; }

static bool is_cjk(int32_t cp) {
  return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) ||
         (cp >= 0x20000 && cp <= 0x2A6DF) || (cp >= 0x2A700 && cp <= 0x2B73F) ||
         (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B820 && cp <= 0x2CEAF) ||
         (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

/* Removed: NUL, U+FFFD and category C* (Cc Cf Cs Co Cn) other than \t \n \r.
 * Space: \t \n \r, ' ' and Zs (cleaning turns them into ' '), and Zl, Zp,
 * which survive cleaning but which the reference's str.split() splits on. */
static char_class classify(int32_t cp, bool chinese) {
  if (cp < 0) return CH_REMOVED;
  if (cp < 0x80) {
    if (cp == ' ' || cp == '\t' || cp == '\n' || cp == '\r') return CH_SPACE;
    return (cp < 0x20 || cp == 0x7f) ? CH_REMOVED : CH_OTHER;
  }
  if (cp == 0xFFFD) return CH_REMOVED;
  switch (category(cp)) {
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO:
    case UTF8PROC_CATEGORY_CN: return CH_REMOVED;
    case UTF8PROC_CATEGORY_ZS:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP: return CH_SPACE;
    default: return chinese && is_cjk(cp) ? CH_CJK : CH_OTHER;
  }
}

static bool is_punctuation(int32_t cp) {
  if (cp < 0x80)
    return (cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) ||
           (cp >= 123 && cp <= 126);
  int c = category(cp);
  return c >= UTF8PROC_CATEGORY_PC && c <= UTF8PROC_CATEGORY_PO;
}

/* Unicode's Cased, approximated: a letter of category Lu/Ll/Lt, anything with
 * a case mapping (circled letters, Roman numerals) and the two ordinal
 * indicators. */
static bool is_cased(int32_t cp) {
  if (cp < 0x80) return (cp | 32) >= 'a' && (cp | 32) <= 'z';
  int c = category(cp);
  return c == UTF8PROC_CATEGORY_LU || c == UTF8PROC_CATEGORY_LL || c == UTF8PROC_CATEGORY_LT ||
         utf8proc_tolower(cp) != cp || utf8proc_toupper(cp) != cp || cp == 0xAA || cp == 0xBA;
}

/* Unicode's Case_Ignorable: Mn Me Cf Lm Sk and the Word_Break classes
 * MidLetter, MidNumLet and Single_Quote. */
static bool is_case_ignorable(int32_t cp) {
  static const int32_t mid[] = {0x27,   0x2E,   0x3A,   0x5E,   0x60,   0xB7,   0x387,
                                0x55F,  0x5F4,  0x2018, 0x2019, 0x2024, 0x2027, 0xFE13,
                                0xFE52, 0xFE55, 0xFF07, 0xFF0E, 0xFF1A};
  for (size_t i = 0; i < sizeof mid / sizeof mid[0]; i++)
    if (cp == mid[i]) return true;
  if (cp < 0x80) return false;
  int c = category(cp);
  return c == UTF8PROC_CATEGORY_MN || c == UTF8PROC_CATEGORY_ME || c == UTF8PROC_CATEGORY_CF ||
         c == UTF8PROC_CATEGORY_LM || c == UTF8PROC_CATEGORY_SK;
}

/* Whether the capital sigma that ends at text[i] is word-final: nothing cased
 * follows it in its whitespace-delimited token once case-ignorable characters
 * are skipped (the preceding half of the rule is the caller's). Characters
 * that cleaning removes are skipped as the reference never sees them. */
static bool sigma_is_final(const unsigned char *s, size_t n, size_t i, bool chinese) {
  while (i < n) {
    int32_t cp = utf8_next(s, n, &i);
    char_class k = classify(cp, chinese);
    if (k == CH_REMOVED) continue;
    if (k != CH_OTHER) return true;
    if (!is_case_ignorable(cp)) return !is_cased(cp);
  }
  return true;
}

/* ---- Encoding ------------------------------------------------------------ */

/* One word between punctuation and whitespace, as normalised code points. */
typedef struct {
  const wordpiece *wp;
  tok_ids *out;
  int32_t cp[WP_MAX_WORD_CHARS]; /* the first n (up to the cap) code points */
  int n;                         /* code points seen, which may pass the cap */
} word_buf;

/* Appends [UNK] for the word of n code points held in w. */
static status_t push_unk(const word_buf *w, int n) {
  const wordpiece *wp = w->wp;
  if (wp->unk < 0) {
    char text[WP_MAX_WORD_BYTES + 1];
    int len = 0;
    for (int i = 0; i < n && i < WP_MAX_WORD_CHARS && len < 64; i++)
      len += utf8_put(w->cp[i], text + len);
    return status_set(STATUS_ARG,
                      "the WordPiece vocabulary has no %s token, needed for the word '%.*s'",
                      wp->unk_name, len, text);
  }
  return tok_ids_push(w->out, wp->unk);
}

/* Greedy longest-match-first over the word's code points, the reference's
 * WordpieceTokenizer.tokenize for one token. */
static status_t flush_word(word_buf *w) {
  const wordpiece *wp = w->wp;
  if (w->n == 0) return STATUS_OK;
  int n = w->n;
  w->n = 0;
  if (n > WP_MAX_WORD_CHARS) return push_unk(w, n);
  char bytes[WP_MAX_WORD_BYTES];
  int off[WP_MAX_WORD_CHARS + 1];
  off[0] = 0;
  for (int i = 0; i < n; i++) off[i + 1] = off[i] + utf8_put(w->cp[i], bytes + off[i]);
  int32_t ids[WP_MAX_WORD_CHARS];
  uint64_t h[WP_MAX_WORD_CHARS + 1];
  int nids = 0;
  for (int start = 0; start < n;) {
    int kind = start > 0;
    int end_max = n - start > wp->max_chars[kind] ? start + wp->max_chars[kind] : n;
    uint64_t acc = fnv_seed[kind];
    for (int e = start; e < end_max; e++) {
      for (int b = off[e]; b < off[e + 1]; b++) acc = fnv_step(acc, (unsigned char)bytes[b]);
      h[e + 1] = acc;
    }
    int32_t id = -1;
    int end = end_max;
    for (; end > start; end--) {
      id = lookup(wp, hash_mix(h[end]), kind, bytes + off[start], (size_t)(off[end] - off[start]));
      if (id >= 0) break;
    }
    if (id < 0) return push_unk(w, n); /* the whole word, as the reference's is_bad */
    ids[nids++] = id;
    start = end;
  }
  for (int i = 0; i < nids; i++)
    if (tok_ids_push(w->out, ids[i]) != STATUS_OK) return STATUS_NOMEM;
  return STATUS_OK;
}

/* Appends one normalised code point: punctuation is a word of its own. */
static status_t word_add(word_buf *w, int32_t cp) {
  if (is_punctuation(cp)) {
    status_t st = flush_word(w);
    if (st != STATUS_OK) return st;
    w->cp[0] = cp;
    w->n = 1;
    return flush_word(w);
  }
  if (w->n < WP_MAX_WORD_CHARS) {
    /* NFD puts combining marks in canonical order; only marks that survive
     * accent stripping (not Mn) get here, and only after a decomposition. */
    int i = w->n;
    int ccc = cp < 0x300 || !w->wp->strip ? 0 : utf8proc_get_property(cp)->combining_class;
    if (ccc > 0)
      for (; i > 0 && utf8proc_get_property(w->cp[i - 1])->combining_class > ccc; i--)
        w->cp[i] = w->cp[i - 1];
    w->cp[i] = cp;
  }
  w->n++;
  return STATUS_OK;
}

/* Lower-cases (when set) and strips accents (NFD, drop Mn; when set) one
 * code point of the cleaned text, then adds the result to the word. */
static status_t normalise_add(word_buf *w, int32_t cp, bool final_sigma) {
  const wordpiece *wp = w->wp;
  int32_t low[2] = {cp, 0};
  int nlow = 1;
  if (wp->lower) {
    if (cp < 0x80)
      low[0] = (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
    else if (cp == 0x130)
      low[0] = 'i', low[1] = 0x307, nlow = 2;
    else if (cp == 0x3A3)
      low[0] = final_sigma ? 0x3C2 : 0x3C3;
    else
      low[0] = utf8proc_tolower(cp);
  }
  for (int k = 0; k < nlow; k++) {
    if (!wp->strip || low[k] < 0x80) {
      status_t st = word_add(w, low[k]);
      if (st != STATUS_OK) return st;
      continue;
    }
    int32_t d[16];
    utf8proc_ssize_t nd = utf8proc_decompose_char(low[k], d, 16, UTF8PROC_DECOMPOSE, NULL);
    CORE_ASSERT(nd > 0 && nd <= 16);
    for (utf8proc_ssize_t j = 0; j < nd; j++) {
      if (category(d[j]) == UTF8PROC_CATEGORY_MN) continue;
      status_t st = word_add(w, d[j]);
      if (st != STATUS_OK) return st;
    }
  }
  return STATUS_OK;
}

static status_t wp_encode(const void *impl, const char *text, size_t n, tok_ids *out) {
  const wordpiece *wp = impl;
  const unsigned char *s = (const unsigned char *)text;
  word_buf w;
  w.wp = wp;
  w.out = out;
  w.n = 0;
  bool prev_cased = false; /* the last non-case-ignorable character of the token was cased */
  status_t st = STATUS_OK;
  for (size_t i = 0; i < n && st == STATUS_OK;) {
    int32_t cp = utf8_next(s, n, &i);
    switch (classify(cp, wp->chinese)) {
      case CH_REMOVED: break;
      case CH_SPACE:
        st = flush_word(&w);
        prev_cased = false;
        break;
      case CH_CJK:
        st = flush_word(&w);
        if (st == STATUS_OK) st = normalise_add(&w, cp, false);
        if (st == STATUS_OK) st = flush_word(&w);
        prev_cased = false;
        break;
      case CH_OTHER: {
        bool final_sigma = false;
        if (wp->lower) {
          if (cp == 0x3A3) final_sigma = prev_cased && sigma_is_final(s, n, i, wp->chinese);
          if (!is_case_ignorable(cp)) prev_cased = is_cased(cp);
        }
        st = normalise_add(&w, cp, final_sigma);
        break;
      }
    }
  }
  if (st == STATUS_OK) st = flush_word(&w);
  return st;
}

/* Pieces joined by spaces, a "##" piece glued to the one before it without
 * its "##" (the first piece is kept as it is). Lossy: it gives the
 * normalised, split text, not the input. */
static status_t wp_decode(const void *impl, const int32_t *ids, size_t n, tok_str *out) {
  const wordpiece *wp = impl;
  status_t st = tok_str_append(out, "", 0);
  for (size_t i = 0; i < n && st == STATUS_OK; i++) {
    const char *p = wp->blob + wp->off[ids[i]];
    size_t len = wp->len[ids[i]];
    if (i > 0 && len >= 2 && p[0] == '#' && p[1] == '#')
      p += 2, len -= 2;
    else if (i > 0)
      st = tok_str_append(out, " ", 1);
    if (st == STATUS_OK) st = tok_str_append(out, p, len);
  }
  return st;
}

static const char *wp_piece(const void *impl, int32_t id, size_t *len) {
  const wordpiece *wp = impl;
  if (id < 0 || id >= wp->n) {
    if (len) *len = 0;
    return NULL;
  }
  if (len) *len = wp->len[id];
  return wp->blob + wp->off[id];
}

static int32_t wp_piece_id(const void *impl, const char *piece) {
  const wordpiece *wp = impl;
  size_t n = strlen(piece);
  int kind = n >= 2 && piece[0] == '#' && piece[1] == '#';
  const char *p = piece + 2 * kind;
  n -= 2 * (size_t)kind;
  return lookup(wp, hash_key(kind, p, n), kind, p, n);
}

static int32_t wp_vocab_size(const void *impl) { return ((const wordpiece *)impl)->n; }

static void wp_free(void *impl) {
  wordpiece *wp = impl;
  if (!wp) return;
  free(wp->blob);
  free(wp->off);
  free(wp->len);
  free(wp->slots);
  free(wp);
}

static const tok_ops wordpiece_ops = {
    .name = "wordpiece",
    .encode = wp_encode,
    .decode = wp_decode,
    .piece = wp_piece,
    .piece_id = wp_piece_id,
    .vocab_size = wp_vocab_size,
    .free = wp_free,
};

/* ---- Loading ------------------------------------------------------------- */

/* Splits the file into pieces in place and checks each is UTF-8. */
static status_t split_lines(wordpiece *wp, size_t size, const char *path) {
  size_t lines = 0;
  for (size_t i = 0; i < size; i++) lines += wp->blob[i] == '\n';
  lines += wp->blob[size - 1] != '\n';
  if (lines > INT32_MAX) return status_set(STATUS_FORMAT, "tokenizer %s: too many lines", path);
  wp->off = malloc(lines * sizeof *wp->off);
  wp->len = malloc(lines * sizeof *wp->len);
  if (!wp->off || !wp->len) return status_set(STATUS_NOMEM, "tokenizer %s: out of memory", path);
  size_t start = 0;
  for (int32_t id = 0; id < (int32_t)lines; id++) {
    char *nl = memchr(wp->blob + start, '\n', size - start);
    size_t end = nl ? (size_t)(nl - wp->blob) : size;
    size_t len = end - start;
    if (len > 0 && wp->blob[end - 1] == '\r') len--;
    if (memchr(wp->blob + start, 0, len))
      return status_set(STATUS_FORMAT, "tokenizer %s: line %d holds a NUL byte", path, id + 1);
    long chars = utf8_count(wp->blob + start, len);
    if (chars < 0)
      return status_set(STATUS_FORMAT, "tokenizer %s: line %d is not valid UTF-8", path, id + 1);
    if (len > UINT32_MAX)
      return status_set(STATUS_FORMAT, "tokenizer %s: line %d is too long", path, id + 1);
    wp->blob[start + len] = 0;
    wp->off[id] = start;
    wp->len[id] = (uint32_t)len;
    start = end + 1;
  }
  wp->n = (int32_t)lines;
  return STATUS_OK;
}

static status_t build_table(wordpiece *wp, const char *path) {
  uint64_t cap = 16;
  while (cap < 2 * (uint64_t)wp->n) cap *= 2;
  wp->slots = malloc(cap * sizeof *wp->slots);
  if (!wp->slots) return status_set(STATUS_NOMEM, "tokenizer %s: out of memory", path);
  for (uint64_t i = 0; i < cap; i++) wp->slots[i] = (wp_slot){0, -1};
  wp->mask = cap - 1;
  for (int32_t id = 0; id < wp->n; id++) {
    const char *p;
    size_t n;
    int kind = piece_key(wp, id, &p, &n);
    uint64_t h = hash_key(kind, p, n);
    /* A repeated piece takes the later id, as the reference's dict does. */
    *find_slot(wp, h, kind, p, n) = (wp_slot){(uint32_t)(h >> 32), id};
    int chars = (int)utf8_count(p, n);
    if (chars > wp->max_chars[kind]) wp->max_chars[kind] = chars;
  }
  return STATUS_OK;
}

/* Whether any piece other than bracketed special tokens has a letter whose
 * lower case differs: then the vocabulary was built from cased text. */
static bool vocab_has_upper(const wordpiece *wp) {
  for (int32_t id = 0; id < wp->n; id++) {
    const unsigned char *s = (const unsigned char *)wp->blob + wp->off[id];
    size_t n = wp->len[id];
    if (n >= 3 && ((s[0] == '[' && s[n - 1] == ']') || (s[0] == '<' && s[n - 1] == '>'))) continue;
    for (size_t i = 0; i < n;) {
      int32_t cp = utf8_next(s, n, &i);
      if (cp >= 0 && utf8proc_tolower(cp) != cp) return true;
    }
  }
  return false;
}

/* Reads a true/false/null key: returns 1 or 0, -1 when absent or null, -2
 * when it is something else. */
static int json_flag(const cJSON *root, const char *key) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
  if (!v || cJSON_IsNull(v)) return -1;
  if (!cJSON_IsBool(v)) return -2;
  return cJSON_IsTrue(v);
}

/* Applies tokenizer_config.json beside the vocabulary when there is one.
 * Sets *lower to -1 when the file does not say. */
static status_t read_config(wordpiece *wp, const char *vocab_txt, int *lower, int *strip) {
  *lower = *strip = -1;
  char path[4096];
  const char *slash = strrchr(vocab_txt, '/');
  int dir = slash ? (int)(slash - vocab_txt) : 0;
  snprintf(path, sizeof path, "%.*s%stokenizer_config.json", dir, vocab_txt, slash ? "/" : "");
  FILE *f = fopen(path, "rb");
  if (!f) return STATUS_OK;
  fclose(f);
  char *text;
  size_t size;
  status_t st = core_read_file("tokenizer", path, 0, &text, &size);
  if (st != STATUS_OK) return st;
  cJSON *root = cJSON_ParseWithLength(text, size);
  free(text);
  if (!cJSON_IsObject(root)) {
    cJSON_Delete(root);
    return status_set(STATUS_FORMAT, "tokenizer %s: not a JSON object", path);
  }
  static const char *const flags[] = {"do_lower_case", "strip_accents", "tokenize_chinese_chars"};
  int v[3];
  for (int i = 0; i < 3; i++) {
    v[i] = json_flag(root, flags[i]);
    if (v[i] == -2) {
      cJSON_Delete(root);
      return status_set(STATUS_FORMAT, "tokenizer %s: \"%s\" must be true, false or null", path,
                        flags[i]);
    }
  }
  *lower = v[0];
  *strip = v[1];
  if (v[2] >= 0) wp->chinese = v[2];
  /* unk_token is a string or, in newer files, {"content": "..."}. */
  const cJSON *unk = cJSON_GetObjectItemCaseSensitive(root, "unk_token");
  if (cJSON_IsObject(unk)) unk = cJSON_GetObjectItemCaseSensitive(unk, "content");
  if (cJSON_IsString(unk)) {
    if (strlen(unk->valuestring) >= sizeof wp->unk_name) {
      cJSON_Delete(root);
      return status_set(STATUS_FORMAT, "tokenizer %s: \"unk_token\" is too long", path);
    }
    strcpy(wp->unk_name, unk->valuestring);
  }
  cJSON_Delete(root);
  return STATUS_OK;
}

status_t tok_wordpiece_load(const char *vocab_txt, void **impl, const tok_ops **ops) {
  *impl = NULL;
  *ops = &wordpiece_ops;
  wordpiece *wp = calloc(1, sizeof *wp);
  if (!wp) return status_set(STATUS_NOMEM, "tokenizer %s: out of memory", vocab_txt);
  strcpy(wp->unk_name, "[UNK]");
  wp->chinese = true;
  size_t size;
  status_t st = core_read_file("tokenizer", vocab_txt, 0, &wp->blob, &size);
  if (st != STATUS_OK) goto fail;
  if (size == 0) {
    st = status_set(STATUS_FORMAT, "tokenizer %s: the vocabulary file is empty", vocab_txt);
    goto fail;
  }
  if ((st = split_lines(wp, size, vocab_txt)) != STATUS_OK) goto fail;
  if ((st = build_table(wp, vocab_txt)) != STATUS_OK) goto fail;
  int lower, strip;
  if ((st = read_config(wp, vocab_txt, &lower, &strip)) != STATUS_OK) goto fail;
  const char *why = "tokenizer_config.json";
  if (lower < 0) {
    lower = !vocab_has_upper(wp);
    why = lower ? "inferred: no upper-case pieces" : "inferred: upper-case pieces";
  }
  wp->lower = lower;
  wp->strip = strip < 0 ? lower : strip;
  wp->unk = wp_piece_id(wp, wp->unk_name);
  LOG_INFO(DATASET, "wordpiece %s: %d pieces, %s (%s)%s%s", vocab_txt, wp->n,
           wp->lower ? "lower-cased" : "cased", why, wp->strip ? ", accents stripped" : "",
           wp->chinese ? "" : ", CJK ideographs not split");
  *impl = wp;
  return STATUS_OK;
fail:
  wp_free(wp);
  return st;
}
