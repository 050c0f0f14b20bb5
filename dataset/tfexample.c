/* tfexample.c: tf.train.Example records as BERT's create_pretraining_data.py
 * writes them: parsing into and building from data_batch rows (protobuf-c,
 * which reads packed and unpacked lists alike), a batch source over mapped
 * TFRecord files with an offset index, and a generic JSON dump. */
#include "tfexample.h"

#include <glob.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "example.pb-c.h"
#include "tfrecord.h"

/* ---- One record <-> one row ------------------------------------------------- */
typedef enum { LEN_T, LEN_P, LEN_ONE } feat_len;

typedef struct {
  const char *name;
  Mlmpi__Tf__Feature__KindCase kind;
  feat_len len;
} feat_spec;

/* In the order create_pretraining_data.py writes them. */
static const feat_spec kFeatures[] = {
    {"input_ids", MLMPI__TF__FEATURE__KIND_INT64_LIST, LEN_T},
    {"input_mask", MLMPI__TF__FEATURE__KIND_INT64_LIST, LEN_T},
    {"segment_ids", MLMPI__TF__FEATURE__KIND_INT64_LIST, LEN_T},
    {"masked_lm_positions", MLMPI__TF__FEATURE__KIND_INT64_LIST, LEN_P},
    {"masked_lm_ids", MLMPI__TF__FEATURE__KIND_INT64_LIST, LEN_P},
    {"masked_lm_weights", MLMPI__TF__FEATURE__KIND_FLOAT_LIST, LEN_P},
    {"next_sentence_labels", MLMPI__TF__FEATURE__KIND_INT64_LIST, LEN_ONE},
};
enum { N_FEATURES = sizeof kFeatures / sizeof kFeatures[0] };

static const char *kind_name(Mlmpi__Tf__Feature__KindCase k) {
  switch (k) {
    case MLMPI__TF__FEATURE__KIND_BYTES_LIST: return "bytes_list";
    case MLMPI__TF__FEATURE__KIND_FLOAT_LIST: return "float_list";
    case MLMPI__TF__FEATURE__KIND_INT64_LIST: return "int64_list";
    default: return "no list";
  }
}

static Mlmpi__Tf__Example *unpack(const uint8_t *p, size_t n, const char *path, uint64_t at) {
  Mlmpi__Tf__Example *ex = mlmpi__tf__example__unpack(NULL, n, p);
  if (!ex)
    status_set(STATUS_FORMAT,
               "%s: record at byte %llu is not a tf.train.Example (malformed protobuf)", path,
               (unsigned long long)at);
  return ex;
}

/* The last entry named `name` (protobuf map semantics), or NULL. */
static const Mlmpi__Tf__Feature *find(const Mlmpi__Tf__Example *ex, const char *name,
                                      bool *present) {
  const Mlmpi__Tf__Feature *f = NULL;
  *present = false;
  for (size_t i = 0; ex->features && i < ex->features->n_feature; i++) {
    const Mlmpi__Tf__Features__FeatureEntry *e = ex->features->feature[i];
    if (e->key && !strcmp(e->key, name)) *present = true, f = e->value;
  }
  return f;
}

/* Checks presence, kind and (when want >= 0) length of one feature; *out
 * receives it and *len its value count. */
static status_t check_feature(const Mlmpi__Tf__Example *ex, const feat_spec *s, long want,
                              const char *path, uint64_t at, const Mlmpi__Tf__Feature **out,
                              long *len) {
  bool present;
  const Mlmpi__Tf__Feature *f = find(ex, s->name, &present);
  const unsigned long long o = (unsigned long long)at;
  if (!present)
    return status_set(STATUS_FORMAT, "%s: record at byte %llu: feature '%s' is missing", path, o,
                      s->name);
  Mlmpi__Tf__Feature__KindCase k = f ? f->kind_case : MLMPI__TF__FEATURE__KIND__NOT_SET;
  if (k != s->kind)
    return status_set(STATUS_FORMAT, "%s: record at byte %llu: feature '%s' holds %s, expected %s",
                      path, o, s->name, kind_name(k), kind_name(s->kind));
  size_t n =
      k == MLMPI__TF__FEATURE__KIND_INT64_LIST ? f->int64_list->n_value : f->float_list->n_value;
  if (want >= 0 && (long)n != want)
    return status_set(STATUS_FORMAT,
                      "%s: record at byte %llu: feature '%s' has %zu values, expected %ld", path, o,
                      s->name, n, want);
  *out = f;
  *len = (long)n;
  return STATUS_OK;
}

status_t tfx_peek_shape(const uint8_t *payload, size_t n, const char *path, uint64_t offset, int *T,
                        int *P) {
  Mlmpi__Tf__Example *ex = unpack(payload, n, path, offset);
  if (!ex) return STATUS_FORMAT;
  const Mlmpi__Tf__Feature *f;
  long t = 0, p = 0;
  status_t st = check_feature(ex, &kFeatures[0], -1, path, offset, &f, &t);
  if (st == STATUS_OK) st = check_feature(ex, &kFeatures[3], -1, path, offset, &f, &p);
  mlmpi__tf__example__free_unpacked(ex, NULL);
  if (st) return st;
  if (t < 1 || t > INT32_MAX / 4 || p < 1 || p > t)
    return status_set(STATUS_FORMAT,
                      "%s: record at byte %llu: %ld input_ids and %ld masked_lm_positions "
                      "are not a usable shape",
                      path, (unsigned long long)offset, t, p);
  *T = (int)t;
  *P = (int)p;
  return STATUS_OK;
}

status_t tfx_parse_row(const uint8_t *payload, size_t n, const char *path, uint64_t offset,
                       data_batch *b, int k) {
  CORE_ASSERT(k >= 0 && k < b->n);
  Mlmpi__Tf__Example *ex = unpack(payload, n, path, offset);
  if (!ex) return STATUS_FORMAT;
  int32_t *dst[N_FEATURES] = {
      b->input_ids + (size_t)k * b->T,     b->input_mask + (size_t)k * b->T,
      b->segment_ids + (size_t)k * b->T,   b->masked_lm_positions + (size_t)k * b->P,
      b->masked_lm_ids + (size_t)k * b->P, NULL,
      b->next_sentence_labels + k};
  status_t st = STATUS_OK;
  for (int i = 0; i < N_FEATURES && st == STATUS_OK; i++) {
    const feat_spec *s = &kFeatures[i];
    long want = s->len == LEN_T ? b->T : s->len == LEN_P ? b->P : 1;
    const Mlmpi__Tf__Feature *f;
    long len;
    if ((st = check_feature(ex, s, want, path, offset, &f, &len))) break;
    if (s->kind == MLMPI__TF__FEATURE__KIND_FLOAT_LIST) {
      float *w = b->masked_lm_weights + (size_t)k * b->P;
      for (long j = 0; j < want && st == STATUS_OK; j++) {
        w[j] = f->float_list->value[j];
        if (!isfinite(w[j]))
          st = status_set(STATUS_FORMAT,
                          "%s: record at byte %llu: feature '%s' value %ld is not finite", path,
                          (unsigned long long)offset, s->name, j);
      }
      continue;
    }
    /* Positions index the sequence; everything else must fit int32. */
    int64_t lo = INT32_MIN, hi = INT32_MAX;
    if (i == 3) lo = 0, hi = b->T - 1;
    for (long j = 0; j < want && st == STATUS_OK; j++) {
      int64_t v = f->int64_list->value[j];
      if (v < lo || v > hi)
        st = status_set(STATUS_FORMAT,
                        "%s: record at byte %llu: feature '%s' value %ld is %lld, "
                        "outside [%lld, %lld]",
                        path, (unsigned long long)offset, s->name, j, (long long)v, (long long)lo,
                        (long long)hi);
      else
        dst[i][j] = (int32_t)v;
    }
  }
  mlmpi__tf__example__free_unpacked(ex, NULL);
  return st;
}

status_t tfx_build_row(const data_batch *b, int k, uint8_t **out, size_t *n) {
  CORE_ASSERT(k >= 0 && k < b->n);
  *out = NULL;
  *n = 0;
  const int32_t *src[N_FEATURES] = {
      b->input_ids + (size_t)k * b->T,     b->input_mask + (size_t)k * b->T,
      b->segment_ids + (size_t)k * b->T,   b->masked_lm_positions + (size_t)k * b->P,
      b->masked_lm_ids + (size_t)k * b->P, NULL,
      b->next_sentence_labels + k};
  int64_t *vals = malloc(((size_t)3 * b->T + (size_t)2 * b->P + 1) * sizeof *vals);
  if (!vals) return status_set(STATUS_NOMEM, "out of memory building an Example");
  Mlmpi__Tf__Int64List ints[N_FEATURES];
  Mlmpi__Tf__FloatList floats = MLMPI__TF__FLOAT_LIST__INIT;
  Mlmpi__Tf__Feature feats[N_FEATURES];
  Mlmpi__Tf__Features__FeatureEntry entries[N_FEATURES];
  Mlmpi__Tf__Features__FeatureEntry *ptrs[N_FEATURES];
  int64_t *v = vals;
  for (int i = 0; i < N_FEATURES; i++) {
    const feat_spec *s = &kFeatures[i];
    size_t len = s->len == LEN_T ? (size_t)b->T : s->len == LEN_P ? (size_t)b->P : 1;
    mlmpi__tf__feature__init(&feats[i]);
    if (s->kind == MLMPI__TF__FEATURE__KIND_FLOAT_LIST) {
      floats.n_value = len;
      floats.value = b->masked_lm_weights + (size_t)k * b->P;
      feats[i].kind_case = MLMPI__TF__FEATURE__KIND_FLOAT_LIST;
      feats[i].float_list = &floats;
    } else {
      mlmpi__tf__int64_list__init(&ints[i]);
      for (size_t j = 0; j < len; j++) v[j] = src[i][j];
      ints[i].n_value = len;
      ints[i].value = v;
      v += len;
      feats[i].kind_case = MLMPI__TF__FEATURE__KIND_INT64_LIST;
      feats[i].int64_list = &ints[i];
    }
    mlmpi__tf__features__feature_entry__init(&entries[i]);
    entries[i].key = (char *)s->name;
    entries[i].value = &feats[i];
    ptrs[i] = &entries[i];
  }
  Mlmpi__Tf__Features features = MLMPI__TF__FEATURES__INIT;
  features.n_feature = N_FEATURES;
  features.feature = ptrs;
  Mlmpi__Tf__Example ex = MLMPI__TF__EXAMPLE__INIT;
  ex.features = &features;
  size_t size = mlmpi__tf__example__get_packed_size(&ex);
  *out = malloc(size ? size : 1);
  if (*out) *n = mlmpi__tf__example__pack(&ex, *out);
  free(vals);
  if (!*out) return status_set(STATUS_NOMEM, "out of memory building an Example");
  CORE_ASSERT(*n == size);
  return STATUS_OK;
}

/* ---- The batch source ---------------------------------------------------------- */
struct tfx_source {
  int T, P;
  uint64_t seed, fingerprint;
  int n_files;
  tfr_file *files;
  uint64_t *first;   /* [n_files + 1]: index of each file's first record */
  uint64_t *offsets; /* [n]: byte offset of every record in its file */
  uint64_t n, cap;
};

typedef struct {
  char **v;
  int n, cap;
} path_list;

static status_t path_push(path_list *l, const char *p) {
  if (l->n == l->cap) {
    int cap = l->cap ? 2 * l->cap : 8;
    char **v = realloc(l->v, (size_t)cap * sizeof *v);
    if (!v) return status_set(STATUS_NOMEM, "out of memory listing files");
    l->v = v;
    l->cap = cap;
  }
  if (!(l->v[l->n] = strdup(p))) return status_set(STATUS_NOMEM, "out of memory listing files");
  l->n++;
  return STATUS_OK;
}

/* One file or glob pattern: matches in sorted order; a pattern matching
 * nothing is an error, a plain name is kept so that opening it reports. */
static status_t expand_one(path_list *l, const char *pat) {
  glob_t g;
  int rc = glob(pat, 0, NULL, &g);
  status_t st = STATUS_OK;
  if (rc == 0) {
    for (size_t i = 0; i < g.gl_pathc && st == STATUS_OK; i++) st = path_push(l, g.gl_pathv[i]);
  } else if (rc == GLOB_NOMATCH && !strpbrk(pat, "*?[")) {
    st = path_push(l, pat);
  } else {
    st = status_set(rc == GLOB_NOSPACE ? STATUS_NOMEM : STATUS_IO,
                    rc == GLOB_NOMATCH ? "no files match '%s'" : "cannot list '%s'", pat);
  }
  globfree(&g);
  return st;
}

static status_t expand_paths(path_list *l, const char *const *paths, int n_paths) {
  status_t st = STATUS_OK;
  for (int i = 0; i < n_paths && st == STATUS_OK; i++) {
    char *copy = strdup(paths[i]), *save = NULL;
    if (!copy) return status_set(STATUS_NOMEM, "out of memory listing files");
    for (char *p = strtok_r(copy, ",", &save); p && st == STATUS_OK; p = strtok_r(NULL, ",", &save))
      st = expand_one(l, p);
    free(copy);
  }
  if (st == STATUS_OK && l->n == 0) st = status_set(STATUS_ARG, "no TFRecord files given");
  return st;
}

/* Walks one file's records, checking CRCs, appending offsets and hashing
 * each record's stored payload checksum. */
static status_t index_file(tfx_source *s, const tfr_file *f) {
  for (uint64_t o = 0; o < f->size;) {
    uint64_t at = o;
    const uint8_t *p;
    size_t n;
    status_t st = tfr_read_at(f, &o, &p, &n);
    if (st) return st;
    if (s->T <= 0 || s->P <= 0) {
      int T, P;
      if ((st = tfx_peek_shape(p, n, f->path, at, &T, &P))) return st;
      if (s->T <= 0) s->T = T;
      if (s->P <= 0) s->P = P;
      if (s->P > s->T)
        return status_set(STATUS_FORMAT,
                          "%s: record at byte %llu: max_predictions %d exceeds seq_len %d", f->path,
                          (unsigned long long)at, s->P, s->T);
    }
    if (s->n == s->cap) {
      uint64_t cap = s->cap ? 2 * s->cap : 1024;
      uint64_t *v = realloc(s->offsets, cap * sizeof *v);
      if (!v) return status_set(STATUS_NOMEM, "out of memory indexing %s", f->path);
      s->offsets = v;
      s->cap = cap;
    }
    s->offsets[s->n++] = at;
    s->fingerprint = core_fnv1a(s->fingerprint, p + n, 4);
  }
  return STATUS_OK;
}

status_t tfx_open(const char *const *paths, int n_paths, int T, int P, uint64_t seed,
                  tfx_source **out) {
  *out = NULL;
  if (T < 0 || P < 0 || (T > 0 && P > T))
    return status_set(STATUS_ARG, "TFRecord source: seq_len %d and max_predictions %d do not fit",
                      T, P);
  path_list l = {0};
  tfx_source *s = calloc(1, sizeof *s);
  status_t st = s ? expand_paths(&l, paths, n_paths)
                  : status_set(STATUS_NOMEM, "out of memory opening TFRecords");
  if (st) goto fail;
  s->T = T;
  s->P = P;
  s->seed = seed;
  s->fingerprint = CORE_FNV_OFFSET;
  s->files = calloc((size_t)l.n, sizeof *s->files);
  s->first = calloc((size_t)l.n + 1, sizeof *s->first);
  if (!s->files || !s->first) {
    st = status_set(STATUS_NOMEM, "out of memory opening TFRecords");
    goto fail;
  }
  for (int i = 0; i < l.n; i++) {
    if ((st = tfr_open(l.v[i], &s->files[i]))) goto fail;
    s->n_files = i + 1;
    s->first[i] = s->n;
    if ((st = index_file(s, &s->files[i]))) goto fail;
  }
  s->first[l.n] = s->n;
  if (s->n == 0) {
    st = status_set(STATUS_FORMAT, "%s%s: no records", l.v[0],
                    l.n > 1 ? " and the other files" : "");
    goto fail;
  }
  const char tag[] = "tfexample-v1";
  uint64_t shape[4] = {(uint64_t)s->T, (uint64_t)s->P, s->seed, s->n};
  s->fingerprint = core_fnv1a(core_fnv1a(s->fingerprint, tag, sizeof tag), shape, sizeof shape);
  *out = s;
fail:
  for (int i = 0; i < l.n; i++) free(l.v[i]);
  free(l.v);
  if (st) tfx_free(s);
  return st;
}

void tfx_free(tfx_source *s) {
  if (!s) return;
  for (int i = 0; i < s->n_files; i++) tfr_close(&s->files[i]);
  free(s->files);
  free(s->first);
  free(s->offsets);
  free(s);
}

uint64_t tfx_records(const tfx_source *s) { return s->n; }
int tfx_seq_len(const tfx_source *s) { return s->T; }
int tfx_max_predictions(const tfx_source *s) { return s->P; }
int tfx_files(const tfx_source *s) { return s->n_files; }
const char *tfx_file_path(const tfx_source *s, int i) { return s->files[i].path; }
uint64_t tfx_file_records(const tfx_source *s, int i) { return s->first[i + 1] - s->first[i]; }
uint64_t tfx_fingerprint(const tfx_source *s) { return s->fingerprint; }

status_t tfx_read_record(const tfx_source *s, uint64_t i, data_batch *out, int k) {
  if (i >= s->n || out->T != s->T || out->P != s->P || k < 0 || k >= out->n)
    return status_set(STATUS_ARG,
                      "TFRecord source: record %llu into row %d of a [%d, T %d, P %d] batch "
                      "(source: %llu records, T %d, P %d)",
                      (unsigned long long)i, k, out->n, out->T, out->P, (unsigned long long)s->n,
                      s->T, s->P);
  /* The file holding record i: the last one whose first record is <= i. */
  int lo = 0, hi = s->n_files - 1;
  while (lo < hi) {
    int mid = (lo + hi + 1) / 2;
    if (s->first[mid] <= i)
      lo = mid;
    else
      hi = mid - 1;
  }
  const tfr_file *f = &s->files[lo];
  uint64_t o = s->offsets[i], at = o;
  const uint8_t *p;
  size_t n;
  status_t st = tfr_read_at(f, &o, &p, &n);
  return st ? st : tfx_parse_row(p, n, f->path, at, out, k);
}

status_t tfx_get_batch(const tfx_source *s, uint64_t global_batch, uint64_t step, uint64_t first,
                       int count, data_batch *out) {
  if (out->T != s->T || out->P != s->P || count > out->n || count < 0 ||
      first + (uint64_t)count > global_batch)
    return status_set(STATUS_ARG,
                      "batch request: instances %llu..%llu of %llu (T %d, P %d) do not fit",
                      (unsigned long long)first, (unsigned long long)(first + (uint64_t)count),
                      (unsigned long long)global_batch, s->T, s->P);
  status_t st = STATUS_OK;
  for (int k = 0; k < count && st == STATUS_OK; k++) {
    uint64_t g = step * global_batch + first + (uint64_t)k, epoch = g / s->n;
    uint64_t rec = data_permute(g % s->n, s->n, s->seed ^ (epoch * 0x9e3779b97f4a7c15ull));
    st = tfx_read_record(s, rec, out, k);
  }
  return st;
}

/* ---- Dump ------------------------------------------------------------------------ */
static void put_json_string(FILE *out, const uint8_t *s, size_t n) {
  fputc('"', out);
  for (size_t i = 0; i < n; i++) {
    uint8_t c = s[i];
    if (c == '"' || c == '\\')
      fprintf(out, "\\%c", c);
    else if (c == '\n')
      fputs("\\n", out);
    else if (c < 0x20 || c >= 0x7f)
      fprintf(out, "\\u%04x", c);
    else
      fputc(c, out);
  }
  fputc('"', out);
}

static void put_float(FILE *out, float v) {
  if (isnan(v))
    fputs("\"nan\"", out);
  else if (isinf(v))
    fputs(v > 0 ? "\"inf\"" : "\"-inf\"", out);
  else {
    char num[48];
    snprintf(num, sizeof num, "%.9g", (double)v);
    fprintf(out, strpbrk(num, ".e") ? "%s" : "%s.0", num);
  }
}

static void put_feature(FILE *out, const Mlmpi__Tf__Feature *f) {
  Mlmpi__Tf__Feature__KindCase k = f ? f->kind_case : MLMPI__TF__FEATURE__KIND__NOT_SET;
  if (k == MLMPI__TF__FEATURE__KIND__NOT_SET) {
    fputs("null", out);
    return;
  }
  fputc('[', out);
  if (k == MLMPI__TF__FEATURE__KIND_INT64_LIST)
    for (size_t j = 0; j < f->int64_list->n_value; j++)
      fprintf(out, j ? ",%lld" : "%lld", (long long)f->int64_list->value[j]);
  if (k == MLMPI__TF__FEATURE__KIND_FLOAT_LIST)
    for (size_t j = 0; j < f->float_list->n_value; j++) {
      if (j) fputc(',', out);
      put_float(out, f->float_list->value[j]);
    }
  if (k == MLMPI__TF__FEATURE__KIND_BYTES_LIST)
    for (size_t j = 0; j < f->bytes_list->n_value; j++) {
      if (j) fputc(',', out);
      put_json_string(out, f->bytes_list->value[j].data, f->bytes_list->value[j].len);
    }
  fputc(']', out);
}

static void put_example(FILE *out, const Mlmpi__Tf__Example *ex, uint64_t rec, uint64_t at) {
  fprintf(out, "{\"record\":%llu,\"offset\":%llu,\"features\":{", (unsigned long long)rec,
          (unsigned long long)at);
  bool first = true;
  const Mlmpi__Tf__Features *fs = ex->features;
  for (size_t i = 0; fs && i < fs->n_feature; i++) {
    const char *key = fs->feature[i]->key ? fs->feature[i]->key : "";
    bool later = false; /* a later entry of the same name wins */
    for (size_t j = i + 1; j < fs->n_feature && !later; j++)
      later = !strcmp(key, fs->feature[j]->key ? fs->feature[j]->key : "");
    if (later) continue;
    if (!first) fputc(',', out);
    first = false;
    put_json_string(out, (const uint8_t *)key, strlen(key));
    fputc(':', out);
    put_feature(out, fs->feature[i]->value);
  }
  fputs("}}\n", out);
}

status_t tfx_dump(const char *path, FILE *out) {
  tfr_file f;
  status_t st = tfr_open(path, &f);
  if (st) return st;
  for (uint64_t o = 0, rec = 0; o < f.size && st == STATUS_OK; rec++) {
    uint64_t at = o;
    const uint8_t *p;
    size_t n;
    if ((st = tfr_read_at(&f, &o, &p, &n))) break;
    Mlmpi__Tf__Example *ex = unpack(p, n, path, at);
    if (!ex) {
      st = STATUS_FORMAT;
      break;
    }
    put_example(out, ex, rec, at);
    mlmpi__tf__example__free_unpacked(ex, NULL);
  }
  tfr_close(&f);
  return st;
}
