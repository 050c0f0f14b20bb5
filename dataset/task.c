/* task.c: labelled tasks for fine-tuning (dataset.h): a JSON Lines file of
 * texts and labels, read, tokenized and truncated once at open; batches are
 * then rows of [CLS] a [SEP] (b [SEP]) filled by example index. */
#include "task.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataset.h"
#include "tokenizer.h"

/* One example: its truncated texts a and b at ids[off, off + la + lb). */
typedef struct {
  uint64_t off;
  int32_t la, lb, label; /* label: an index into labels; -1 unlabelled */
} task_example;

/* A power of two at least twice the labels, so probing always ends. */
enum { LABEL_SLOTS = 2 * TASK_MAX_LABELS };

struct task_data {
  task_example *ex; /* [n] */
  uint64_t n, ex_cap;
  tok_ids ids;                   /* every example's truncated texts, back to back */
  char *labels[TASK_MAX_LABELS]; /* [n_labels], id order; owned */
  int n_labels;
  int16_t slot[LABEL_SLOTS]; /* task_open's label lookup: index + 1, 0 empty */
  bool pair;
  int seq_len, vocab_size;
  tok_specials sp;
  uint64_t tok_fingerprint, fingerprint;
  char *tokenizer; /* its path, resolved */
};

/* What task_open keeps while it reads the file. */
typedef struct {
  const char *path, *text, *pair, *label; /* the file and the field names */
  uint64_t line;
  bool given, unlabelled;
  bool all_int; /* every label so far a JSON integer (then sorted by value) */
  const tokenizer *tok;
  tok_ids a, b;
} task_reader;

static bool is_set(const char *s) { return s && s[0]; }

/* ---- Labels ------------------------------------------------------------------ */

/* The slot that holds name, or the empty one where it would go. */
static int label_slot(const task_data *t, const char *name) {
  size_t h = (size_t)core_fnv1a_str(name) & (LABEL_SLOTS - 1);
  while (t->slot[h] && strcmp(t->labels[t->slot[h] - 1], name) != 0)
    h = (h + 1) & (LABEL_SLOTS - 1);
  return (int)h;
}

/* Appends name as the next label id at its empty slot; the caller checked
 * that there is room. */
static status_t label_add(task_data *t, const char *name, int at) {
  char *copy = strdup(name);
  if (!copy) return status_set(STATUS_NOMEM, "out of memory reading a task's labels");
  t->labels[t->n_labels++] = copy;
  t->slot[at] = (int16_t)t->n_labels;
  return STATUS_OK;
}

/* The label as messages print it: one line, at most about 60 bytes. */
static const char *printable(const char *s, char *buf, size_t cap) {
  size_t n = 0;
  for (; *s && n + 4 < cap; s++) buf[n++] = (unsigned char)*s < 0x20 || *s == 0x7f ? '?' : *s;
  if (((unsigned char)*s & 0xc0) == 0x80) { /* cut before a character, not inside it */
    while (n && ((unsigned char)buf[n - 1] & 0xc0) == 0x80) n--;
    if (n && ((unsigned char)buf[n - 1] & 0xc0) == 0xc0) n--;
  }
  if (*s) memcpy(buf + n, "...", 3), n += 3;
  buf[n] = 0;
  return buf;
}

static status_t given_labels(task_data *t, const task_options *o) {
  if (o->n_labels < 1 || o->n_labels > TASK_MAX_LABELS)
    return status_set(STATUS_ARG, "a task's label set has %d labels (1 to %d)", o->n_labels,
                      TASK_MAX_LABELS);
  for (int i = 0; i < o->n_labels; i++) {
    if (!o->labels[i]) return status_set(STATUS_ARG, "a task's label %d is NULL", i);
    int at = label_slot(t, o->labels[i]);
    char q[64];
    if (t->slot[at])
      return status_set(STATUS_ARG, "a task's label set has '%s' twice",
                        printable(o->labels[i], q, sizeof q));
    status_t st = label_add(t, o->labels[i], at);
    if (st) return st;
  }
  return STATUS_OK;
}

typedef struct {
  char *name;
  int old;
  long long value;
} label_key;

static int by_value(const void *x, const void *y) {
  long long a = ((const label_key *)x)->value, b = ((const label_key *)y)->value;
  return (a > b) - (a < b);
}

static int by_bytes(const void *x, const void *y) {
  return strcmp(((const label_key *)x)->name, ((const label_key *)y)->name);
}

/* Puts the file's own labels in their documented order (numerically when
 * every label was an integer, else by bytes) and renumbers the examples.
 * The lookup slots are task_open's and are stale afterwards. */
static void sort_labels(task_data *t, bool numeric) {
  label_key k[TASK_MAX_LABELS];
  int32_t to[TASK_MAX_LABELS];
  for (int i = 0; i < t->n_labels; i++)
    k[i] = (label_key){t->labels[i], i, numeric ? strtoll(t->labels[i], NULL, 10) : 0};
  qsort(k, (size_t)t->n_labels, sizeof *k, numeric ? by_value : by_bytes);
  for (int i = 0; i < t->n_labels; i++) {
    t->labels[i] = k[i].name;
    to[k[i].old] = i;
  }
  for (uint64_t e = 0; e < t->n; e++)
    if (t->ex[e].label >= 0) t->ex[e].label = to[t->ex[e].label];
}

/* ---- Reading ----------------------------------------------------------------- */

static const char *json_type(const cJSON *v) {
  if (cJSON_IsBool(v)) return "a boolean";
  if (cJSON_IsNull(v)) return "null";
  if (cJSON_IsNumber(v)) return "a number";
  if (cJSON_IsString(v)) return "a string";
  if (cJSON_IsArray(v)) return "an array";
  return "an object";
}

static status_t get_field(const task_reader *r, const cJSON *j, const char *field,
                          const cJSON **out) {
  *out = cJSON_GetObjectItemCaseSensitive(j, field);
  if (!*out)
    return status_set(STATUS_FORMAT, "%s:%llu: no field \"%s\"", r->path,
                      (unsigned long long)r->line, field);
  return STATUS_OK;
}

/* Appends the tokens of the string field to ids (emptied first). */
static status_t get_text(task_reader *r, const cJSON *j, const char *field, tok_ids *ids) {
  const cJSON *v;
  status_t st = get_field(r, j, field, &v);
  if (st) return st;
  if (!cJSON_IsString(v))
    return status_set(STATUS_FORMAT, "%s:%llu: field \"%s\" is %s, not a string", r->path,
                      (unsigned long long)r->line, field, json_type(v));
  ids->n = 0;
  st = tok_encode(r->tok, v->valuestring, strlen(v->valuestring), ids);
  if (st) status_prefix("%s:%llu", r->path, (unsigned long long)r->line);
  return st;
}

/* The label's text: a string as it is, an integer in decimal (buf). JSON
 * numbers carry no integer type, so a number counts as one when its value
 * is whole and exact in a double (1.0 and 1e2 are 1 and 100). */
static status_t get_label_text(task_reader *r, const cJSON *j, char *buf, size_t cap,
                               const char **out) {
  const cJSON *v;
  status_t st = get_field(r, j, r->label, &v);
  if (st) return st;
  if (cJSON_IsString(v)) {
    r->all_int = false;
    *out = v->valuestring;
    return STATUS_OK;
  }
  const double limit = 9007199254740992.0; /* 2^53 */
  double d = cJSON_IsNumber(v) ? v->valuedouble : 0.5;
  if (!cJSON_IsNumber(v) || !(d >= -limit && d <= limit) || d != (double)(long long)d)
    return status_set(STATUS_FORMAT, "%s:%llu: field \"%s\" is %s, not a string or an integer",
                      r->path, (unsigned long long)r->line, r->label,
                      cJSON_IsNumber(v) ? "a number that is not an integer" : json_type(v));
  snprintf(buf, cap, "%lld", (long long)d);
  *out = buf;
  return STATUS_OK;
}

/* The label's id: its place in the given set, or in the file's own (in the
 * order of first appearance until sort_labels). */
static status_t map_label(task_data *t, task_reader *r, const char *name, int32_t *id) {
  int at = label_slot(t, name);
  char q[64];
  if (t->slot[at]) {
    *id = t->slot[at] - 1;
    return STATUS_OK;
  }
  if (r->given)
    return status_set(
        STATUS_FORMAT, "%s:%llu: label '%s' is not one of the %d labels of the training file",
        r->path, (unsigned long long)r->line, printable(name, q, sizeof q), t->n_labels);
  if (t->n_labels == TASK_MAX_LABELS)
    return status_set(STATUS_FORMAT, "%s:%llu: label '%s' is one more than the %d a task may have",
                      r->path, (unsigned long long)r->line, printable(name, q, sizeof q),
                      TASK_MAX_LABELS);
  *id = t->n_labels;
  return label_add(t, name, at);
}

/* Drops tokens from the end of the longer text, of b on a tie, until both
 * fit the budget: truncation="longest_first" as transformers' Python
 * tokenizers do it (truncate_sequences). The Rust "fast" tokenizers differ
 * when both texts are cut to an odd budget: they give the odd token to the
 * longer text (b on a tie) where this gives it to a. */
static void truncate_longest_first(size_t *la, size_t *lb, size_t budget) {
  while (*la + *lb > budget) {
    if (*la > *lb)
      (*la)--;
    else
      (*lb)--;
  }
}

static status_t add_example(task_data *t, const tok_ids *a, const tok_ids *b, int32_t label) {
  size_t la = a->n, lb = b->n;
  truncate_longest_first(&la, &lb, (size_t)t->seq_len - (t->pair ? 3 : 2));
  if (t->n == t->ex_cap) {
    uint64_t cap = t->ex_cap ? 2 * t->ex_cap : 1024;
    task_example *ex = realloc(t->ex, cap * sizeof *ex);
    if (!ex) return status_set(STATUS_NOMEM, "out of memory reading a task's examples");
    t->ex = ex;
    t->ex_cap = cap;
  }
  t->ex[t->n] = (task_example){t->ids.n, (int32_t)la, (int32_t)lb, label};
  status_t st = STATUS_OK;
  for (size_t i = 0; i < la && st == STATUS_OK; i++) st = tok_ids_push(&t->ids, a->v[i]);
  for (size_t i = 0; i < lb && st == STATUS_OK; i++) st = tok_ids_push(&t->ids, b->v[i]);
  if (st == STATUS_OK) t->n++;
  return st;
}

/* One object: its text(s) tokenized, its label mapped, stored. */
static status_t read_object(task_data *t, task_reader *r, const cJSON *j) {
  status_t st = get_text(r, j, r->text, &r->a);
  r->b.n = 0;
  if (st == STATUS_OK && t->pair) st = get_text(r, j, r->pair, &r->b);
  int32_t label = -1;
  char buf[32];
  const char *name = NULL;
  if (st == STATUS_OK && !r->unlabelled) st = get_label_text(r, j, buf, sizeof buf, &name);
  if (st == STATUS_OK && name) st = map_label(t, r, name, &label);
  return st ? st : add_example(t, &r->a, &r->b, label);
}

static bool blank(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n') return false;
  return true;
}

static status_t read_line(task_data *t, task_reader *r, const char *line, size_t n) {
  const char *end = NULL;
  cJSON *j = cJSON_ParseWithLengthOpts(line, n, &end, false);
  status_t st = STATUS_OK;
  /* cJSON stops after the first value; anything but space after it is not JSON Lines. */
  if (!j || !end || end < line || !blank(end, n - (size_t)(end - line)))
    st = status_set(STATUS_FORMAT, "%s:%llu: not JSON", r->path, (unsigned long long)r->line);
  else if (!cJSON_IsObject(j))
    st = status_set(STATUS_FORMAT, "%s:%llu: not a JSON object", r->path,
                    (unsigned long long)r->line);
  else
    st = read_object(t, r, j);
  cJSON_Delete(j);
  return st;
}

static status_t read_lines(task_data *t, task_reader *r, FILE *f) {
  char *line = NULL;
  size_t cap = 0;
  status_t st = STATUS_OK;
  for (;;) {
    errno = 0;
    ssize_t got = getline(&line, &cap, f);
    if (got < 0) {
      if (errno || ferror(f))
        st = status_set(STATUS_IO, "cannot read %s: %s", r->path, strerror(errno ? errno : EIO));
      break;
    }
    r->line++;
    const char *s = line;
    size_t n = (size_t)got;
    /* A byte-order mark that some editors write first is not JSON. */
    if (r->line == 1 && n >= 3 && !memcmp(s, "\xef\xbb\xbf", 3)) s += 3, n -= 3;
    if (blank(s, n)) continue;
    if ((st = read_line(t, r, s, n))) break;
  }
  free(line);
  return st;
}

static status_t read_file(task_data *t, const task_options *o, const tokenizer *tok,
                          bool *all_int) {
  task_reader r = {.path = o->path,
                   .text = is_set(o->text_field) ? o->text_field : "text",
                   .pair = o->pair_field,
                   .label = is_set(o->label_field) ? o->label_field : "label",
                   .given = o->labels != NULL,
                   .unlabelled = o->unlabelled,
                   .all_int = true,
                   .tok = tok};
  FILE *f = fopen(o->path, "rb");
  if (!f) return status_set(STATUS_IO, "cannot open %s: %s", o->path, strerror(errno));
  status_t st = read_lines(t, &r, f);
  fclose(f);
  tok_ids_free(&r.a);
  tok_ids_free(&r.b);
  if (st == STATUS_OK && t->n == 0) st = status_set(STATUS_FORMAT, "%s: no examples", o->path);
  *all_int = r.all_int;
  return st;
}

/* ---- Opening ----------------------------------------------------------------- */

/* Loads the tokenizer with the specials a SentencePiece vocabulary lacks
 * appended, as `mlmpi-data shard` does by default (shard_cmd.c add_specials),
 * so that the ids are those of the pretraining shards. */
static status_t load_tokenizer(task_data *t, const char *path, tokenizer **out) {
  status_t st = tok_load(path, out);
  if (st) return st;
  if (tok_get_kind(*out) == TOK_SPM) tok_add_specials(*out);
  t->sp = tok_get_specials(*out);
  t->vocab_size = tok_vocab_size(*out);
  t->tok_fingerprint = tok_fingerprint(*out);
  if (t->sp.cls < 0 || t->sp.sep < 0 || t->sp.pad < 0)
    return status_set(STATUS_ARG, "tokenizer %s has no%s%s%s: a task's rows need [CLS] [SEP] [PAD]",
                      path, t->sp.cls < 0 ? " [CLS]" : "", t->sp.sep < 0 ? " [SEP]" : "",
                      t->sp.pad < 0 ? " [PAD]" : "");
  t->tokenizer = realpath(path, NULL);
  if (!t->tokenizer) t->tokenizer = strdup(path);
  return t->tokenizer ? STATUS_OK : status_set(STATUS_NOMEM, "out of memory opening a task");
}

static status_t check_options(const task_options *o) {
  if (!is_set(o->path)) return status_set(STATUS_ARG, "a task needs a JSON Lines file");
  if (!is_set(o->tokenizer)) return status_set(STATUS_ARG, "task %s needs a tokenizer", o->path);
  int least = is_set(o->pair_field) ? 3 : 2;
  if (o->seq_len < least)
    return status_set(STATUS_ARG, "task %s: seq_len %d is under the %d of [CLS]%s", o->path,
                      o->seq_len, least, least == 3 ? " [SEP] [SEP]" : " [SEP]");
  return STATUS_OK;
}

/* Equal hashes mean equal rows: every id, the segment split, label, the
 * special ids a row adds, seq_len and the label names. */
static uint64_t hash_task(const task_data *t) {
  int32_t head[6] = {t->seq_len, t->pair, t->sp.cls, t->sp.sep, t->sp.pad, t->n_labels};
  uint64_t h = core_fnv1a(CORE_FNV_OFFSET, head, sizeof head);
  h = core_fnv1a(h, &t->n, sizeof t->n);
  for (uint64_t e = 0; e < t->n; e++) {
    const task_example *x = &t->ex[e];
    int32_t row[3] = {x->la, x->lb, x->label};
    h = core_fnv1a(h, row, sizeof row);
    h = core_fnv1a(h, t->ids.v + x->off, (size_t)(x->la + x->lb) * sizeof *t->ids.v);
  }
  for (int i = 0; i < t->n_labels; i++) h = core_fnv1a(h, t->labels[i], strlen(t->labels[i]) + 1);
  return h;
}

status_t task_open(task_data **out, const task_options *o) {
  *out = NULL;
  status_t st = check_options(o);
  if (st) return st;
  task_data *t = calloc(1, sizeof *t);
  if (!t) return status_set(STATUS_NOMEM, "out of memory opening task %s", o->path);
  t->seq_len = o->seq_len;
  t->pair = is_set(o->pair_field);
  tokenizer *tok = NULL;
  bool all_int = true;
  st = load_tokenizer(t, o->tokenizer, &tok);
  if (st == STATUS_OK && o->labels) st = given_labels(t, o);
  if (st == STATUS_OK) st = read_file(t, o, tok, &all_int);
  tok_free(tok);
  if (st) {
    task_free(t);
    return st;
  }
  if (!o->labels) sort_labels(t, all_int);
  t->fingerprint = hash_task(t);
  *out = t;
  return STATUS_OK;
}

void task_free(task_data *t) {
  if (!t) return;
  for (int i = 0; i < t->n_labels; i++) free(t->labels[i]);
  tok_ids_free(&t->ids);
  free(t->ex);
  free(t->tokenizer);
  free(t);
}

uint64_t task_examples(const task_data *t) { return t->n; }
int task_n_labels(const task_data *t) { return t->n_labels; }
const char *const *task_labels(const task_data *t) { return (const char *const *)t->labels; }
int task_vocab_size(const task_data *t) { return t->vocab_size; }
uint64_t task_tokenizer_fingerprint(const task_data *t) { return t->tok_fingerprint; }
uint64_t task_fingerprint(const task_data *t) { return t->fingerprint; }
const char *task_tokenizer_path(const task_data *t) { return t->tokenizer; }

uint64_t task_steps_per_epoch(uint64_t examples, uint64_t global_batch) {
  if (!examples || !global_batch) return 1;
  return examples / global_batch + (examples % global_batch != 0);
}

/* ---- Rows -------------------------------------------------------------------- */

/* Puts n ids with segment id seg at row position *at. */
static void put(int32_t *ids, int32_t *seg, int *at, const int32_t *src, int n, int32_t s) {
  if (n) memcpy(ids + *at, src, (size_t)n * sizeof *ids);
  for (int i = 0; i < n; i++) seg[*at + i] = s;
  *at += n;
}

/* Example k (a padding row when k < 0) into row i of out. */
static void fill_row(const task_data *t, int64_t k, data_batch *out, int i) {
  const int T = t->seq_len;
  int32_t *ids = out->input_ids + (size_t)i * T, *seg = out->segment_ids + (size_t)i * T;
  int32_t *mask = out->input_mask + (size_t)i * T;
  const task_example *e = k >= 0 ? &t->ex[k] : NULL;
  int n = 0;
  put(ids, seg, &n, &t->sp.cls, 1, 0);
  if (e) put(ids, seg, &n, t->ids.v + e->off, e->la, 0);
  put(ids, seg, &n, &t->sp.sep, 1, 0);
  if (e && t->pair) {
    put(ids, seg, &n, t->ids.v + e->off + e->la, e->lb, 1);
    put(ids, seg, &n, &t->sp.sep, 1, 1);
  }
  for (int j = 0; j < T; j++) {
    mask[j] = j < n;
    if (j >= n) ids[j] = t->sp.pad, seg[j] = 0;
  }
  out->next_sentence_labels[i] = e ? e->label : -1;
}

status_t task_fill(const task_data *t, const int64_t *idx, int count, data_batch *out) {
  CORE_ASSERT(count >= 0);
  if (out->T != t->seq_len)
    return status_set(STATUS_ARG, "a batch of %d tokens a row for a task of seq_len %d", out->T,
                      t->seq_len);
  for (int i = 0; i < count; i++)
    if (idx[i] >= (int64_t)t->n)
      return status_set(STATUS_ARG, "example %lld of a task of %llu", (long long)idx[i],
                        (unsigned long long)t->n);
  for (int i = 0; i < count; i++) fill_row(t, idx[i], out, i);
  size_t np = (size_t)count * (size_t)(out->P > 0 ? out->P : 0);
  if (np) {
    memset(out->masked_lm_positions, 0, np * sizeof *out->masked_lm_positions);
    memset(out->masked_lm_ids, 0, np * sizeof *out->masked_lm_ids);
    memset(out->masked_lm_weights, 0, np * sizeof *out->masked_lm_weights);
  }
  out->n = count;
  return STATUS_OK;
}
