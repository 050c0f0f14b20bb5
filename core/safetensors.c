/* safetensors.c: reading and writing the safetensors format: a u64 (LE)
 * header length, a JSON header {name: {dtype, shape, data_offsets}} with an
 * optional "__metadata__" map of strings, then the tensors' bytes. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core.h"

static const struct {
  const char *name;
  size_t size;
} dtypes[DTYPE_COUNT] = {
    [DTYPE_F32] = {"F32", 4},   [DTYPE_F64] = {"F64", 8}, [DTYPE_F16] = {"F16", 2},
    [DTYPE_BF16] = {"BF16", 2}, [DTYPE_I64] = {"I64", 8}, [DTYPE_I32] = {"I32", 4},
    [DTYPE_I16] = {"I16", 2},   [DTYPE_I8] = {"I8", 1},   [DTYPE_U8] = {"U8", 1},
    [DTYPE_BOOL] = {"BOOL", 1},
};

const char *dtype_name(dtype_t t) { return (unsigned)t < DTYPE_COUNT ? dtypes[t].name : "?"; }
size_t dtype_size(dtype_t t) { return (unsigned)t < DTYPE_COUNT ? dtypes[t].size : 0; }

static int dtype_parse(const char *s) {
  for (int i = 0; i < DTYPE_COUNT; i++)
    if (!strcmp(s, dtypes[i].name)) return i;
  return -1;
}

/* The header may not be larger than this: it is read before anything is
 * validated, so a corrupt length must not allocate gigabytes. */
#define ST_MAX_HEADER (100u << 20)

static status_t read_whole(const char *path, void **out, size_t *size) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) return status_set(STATUS_IO, "cannot open %s: %s", path, strerror(errno));
  struct stat sb;
  if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
    close(fd);
    return status_set(STATUS_IO, "%s: not a regular file", path);
  }
  size_t n = (size_t)sb.st_size;
  char *buf = mem_alloc(n + 1, path);
  if (!buf) {
    close(fd);
    return STATUS_NOMEM;
  }
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, buf + got, n - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      int e = errno;
      close(fd);
      mem_free(buf);
      return status_set(STATUS_IO, "cannot read %s: %s", path, r < 0 ? strerror(e) : "file shrank");
    }
    got += (size_t)r;
  }
  close(fd);
  *out = buf;
  *size = n;
  return STATUS_OK;
}

/* Orders by start, then by length: an empty tensor at the start of another
 * sorts first, so it is not taken for an overlap. */
static int cmp_range(const void *a, const void *b) {
  const st_tensor *x = *(st_tensor *const *)a, *y = *(st_tensor *const *)b;
  const char *px = x->data, *py = y->data;
  if (px != py) return px < py ? -1 : 1;
  return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

static status_t parse_entry(const char *path, const cJSON *e, const char *data, size_t data_size,
                            st_tensor *t) {
  const cJSON *jd = cJSON_GetObjectItemCaseSensitive(e, "dtype");
  const cJSON *js = cJSON_GetObjectItemCaseSensitive(e, "shape");
  const cJSON *jo = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
  if (!cJSON_IsObject(e) || !cJSON_IsString(jd) || !cJSON_IsArray(js) || !cJSON_IsArray(jo) ||
      cJSON_GetArraySize(jo) != 2)
    return status_set(STATUS_FORMAT, "%s: tensor '%s' has a malformed header entry", path,
                      e->string);
  int dt = dtype_parse(jd->valuestring);
  if (dt < 0)
    return status_set(STATUS_FORMAT, "%s: tensor '%s' has unknown dtype '%s'", path, e->string,
                      jd->valuestring);
  t->dtype = (dtype_t)dt;
  t->ndim = cJSON_GetArraySize(js);
  if (t->ndim > TENSOR_MAX_DIMS)
    return status_set(STATUS_FORMAT, "%s: tensor '%s' has %d dimensions (at most %d)", path,
                      e->string, t->ndim, TENSOR_MAX_DIMS);
  size_t numel = 1;
  for (int i = 0; i < t->ndim; i++) {
    const cJSON *d = cJSON_GetArrayItem(js, i);
    if (!cJSON_IsNumber(d) || d->valuedouble < 0 || d->valuedouble > 9e15 ||
        d->valuedouble != (double)(int64_t)d->valuedouble)
      return status_set(STATUS_FORMAT, "%s: tensor '%s' has a bad shape", path, e->string);
    t->shape[i] = (int64_t)d->valuedouble;
    if (t->shape[i] && numel > SIZE_MAX / (size_t)t->shape[i])
      return status_set(STATUS_FORMAT, "%s: tensor '%s' is too large", path, e->string);
    numel *= (size_t)t->shape[i];
  }
  const cJSON *jb = cJSON_GetArrayItem(jo, 0), *je = cJSON_GetArrayItem(jo, 1);
  double b = jb->valuedouble, en = je->valuedouble;
  if (!cJSON_IsNumber(jb) || !cJSON_IsNumber(je) ||
      !(b >= 0 && en >= b && en <= (double)data_size && b == floor(b) && en == floor(en)))
    return status_set(STATUS_FORMAT, "%s: tensor '%s' has data offsets outside the file", path,
                      e->string);
  t->numel = numel;
  t->nbytes = (size_t)en - (size_t)b;
  if (numel > SIZE_MAX / dtypes[dt].size || t->nbytes != numel * dtypes[dt].size)
    return status_set(STATUS_FORMAT, "%s: tensor '%s': shape needs %zu bytes, offsets give %zu",
                      path, e->string, numel * dtypes[dt].size, t->nbytes);
  t->data = data + (size_t)b;
  t->name = strdup(e->string);
  if (!t->name) return status_set(STATUS_NOMEM, "out of memory reading %s", path);
  return STATUS_OK;
}

static status_t parse_header(const char *path, st_file *f, const char *hdr, size_t hlen,
                             const char *data, size_t data_size) {
  cJSON *root = cJSON_ParseWithLength(hdr, hlen);
  if (!cJSON_IsObject(root)) {
    cJSON_Delete(root);
    return status_set(STATUS_FORMAT, "%s: safetensors header is not a JSON object", path);
  }
  status_t st = STATUS_OK;
  int count = 0;
  for (const cJSON *e = root->child; e; e = e->next)
    count += strcmp(e->string, "__metadata__") != 0;
  f->tensors = calloc((size_t)count + 1, sizeof *f->tensors);
  if (!f->tensors) {
    cJSON_Delete(root);
    return status_set(STATUS_NOMEM, "out of memory reading %s", path);
  }
  for (const cJSON *e = root->child; e && st == STATUS_OK; e = e->next) {
    if (!strcmp(e->string, "__metadata__")) {
      if (f->metadata_json)
        st = status_set(STATUS_FORMAT, "%s: \"__metadata__\" appears twice", path);
      else if (!(f->metadata_json = cJSON_PrintUnformatted(e)))
        st = status_set(STATUS_NOMEM, "out of memory reading %s", path);
      continue;
    }
    st = parse_entry(path, e, data, data_size, &f->tensors[f->n]);
    if (st == STATUS_OK) f->n++;
  }
  cJSON_Delete(root);
  if (st != STATUS_OK || f->n < 2) return st;
  /* Ranges must not overlap; names must be unique (cJSON keeps duplicates). */
  st_tensor **by = malloc((size_t)f->n * sizeof *by);
  if (!by) return status_set(STATUS_NOMEM, "out of memory reading %s", path);
  for (int i = 0; i < f->n; i++) by[i] = &f->tensors[i];
  qsort(by, (size_t)f->n, sizeof *by, cmp_range);
  for (int i = 1; i < f->n && st == STATUS_OK; i++)
    if ((const char *)by[i - 1]->data + by[i - 1]->nbytes > (const char *)by[i]->data)
      st = status_set(STATUS_FORMAT, "%s: tensors '%s' and '%s' overlap", path, by[i - 1]->name,
                      by[i]->name);
  free(by);
  for (int i = 0; i < f->n && st == STATUS_OK; i++)
    for (int j = i + 1; j < f->n; j++)
      if (!strcmp(f->tensors[i].name, f->tensors[j].name)) {
        st = status_set(STATUS_FORMAT, "%s: tensor '%s' appears twice", path, f->tensors[i].name);
        break;
      }
  return st;
}

status_t st_read(const char *path, st_file **out) {
  *out = NULL;
  st_file *f = calloc(1, sizeof *f);
  if (!f) return status_set(STATUS_NOMEM, "out of memory reading %s", path);
  status_t st = read_whole(path, &f->blob, &f->blob_size);
  if (st != STATUS_OK) goto fail;
  const unsigned char *b = f->blob;
  if (f->blob_size < 8) {
    st = status_set(STATUS_FORMAT, "%s: too short for a safetensors file (%zu bytes)", path,
                    f->blob_size);
    goto fail;
  }
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--) hlen = hlen << 8 | b[i];
  if (hlen > ST_MAX_HEADER || hlen > f->blob_size - 8) {
    st = status_set(STATUS_FORMAT, "%s: safetensors header length %llu does not fit the file", path,
                    (unsigned long long)hlen);
    goto fail;
  }
  st = parse_header(path, f, (const char *)b + 8, (size_t)hlen, (const char *)b + 8 + hlen,
                    f->blob_size - 8 - (size_t)hlen);
  if (st != STATUS_OK) goto fail;
  *out = f;
  return STATUS_OK;
fail:
  st_free(f);
  return st;
}

void st_free(st_file *f) {
  if (!f) return;
  for (int i = 0; i < f->n; i++) free(f->tensors[i].name);
  free(f->tensors);
  free(f->metadata_json);
  mem_free(f->blob);
  free(f);
}

const st_tensor *st_find(const st_file *f, const char *name) {
  for (int i = 0; i < f->n; i++)
    if (!strcmp(f->tensors[i].name, name)) return &f->tensors[i];
  return NULL;
}

static void shape_str(char *buf, size_t n, int ndim, const int64_t *shape) {
  size_t k = (size_t)snprintf(buf, n, "[");
  for (int i = 0; i < ndim && k < n; i++)
    k += (size_t)snprintf(buf + k, n - k, i ? ",%lld" : "%lld", (long long)shape[i]);
  if (k < n) snprintf(buf + k, n - k, "]");
}

status_t st_expect(const st_file *f, const char *path, const char *name, dtype_t dtype, int ndim,
                   const int64_t *shape, const st_tensor **out) {
  const st_tensor *t = st_find(f, name);
  if (!t) return status_set(STATUS_ARG, "%s: tensor '%s' is missing", path, name);
  if (t->dtype != dtype)
    return status_set(STATUS_ARG, "%s: tensor '%s' is %s, expected %s", path, name,
                      dtype_name(t->dtype), dtype_name(dtype));
  bool ok = t->ndim == ndim;
  for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == shape[i];
  if (!ok) {
    char want[128], got[128];
    shape_str(want, sizeof want, ndim, shape);
    shape_str(got, sizeof got, t->ndim, t->shape);
    return status_set(STATUS_ARG, "%s: tensor '%s' has shape %s, expected %s", path, name, got,
                      want);
  }
  if (out) *out = t;
  return STATUS_OK;
}

/* ---- Writer ---------------------------------------------------------------- */
typedef struct {
  char *name;
  dtype_t dtype;
  int ndim;
  int64_t shape[TENSOR_MAX_DIMS];
  size_t nbytes;
  const void *data;
} st_entry;

struct st_writer {
  int n, cap;
  st_entry *e;
  cJSON *meta;
};

st_writer *st_writer_init(void) {
  st_writer *w = calloc(1, sizeof *w);
  if (!w) status_set(STATUS_NOMEM, "out of memory creating a safetensors writer");
  return w;
}

void st_writer_free(st_writer *w) {
  if (!w) return;
  for (int i = 0; i < w->n; i++) free(w->e[i].name);
  free(w->e);
  cJSON_Delete(w->meta);
  free(w);
}

status_t st_writer_add(st_writer *w, const char *name, dtype_t dtype, int ndim,
                       const int64_t *shape, const void *data) {
  CORE_ASSERT(ndim >= 0 && ndim <= TENSOR_MAX_DIMS && (unsigned)dtype < DTYPE_COUNT);
  if (w->n == w->cap) {
    int cap = w->cap ? 2 * w->cap : 64;
    st_entry *e = realloc(w->e, (size_t)cap * sizeof *e);
    if (!e) return status_set(STATUS_NOMEM, "out of memory adding tensor '%s'", name);
    w->e = e;
    w->cap = cap;
  }
  st_entry *e = &w->e[w->n];
  e->name = strdup(name);
  if (!e->name) return status_set(STATUS_NOMEM, "out of memory adding tensor '%s'", name);
  e->dtype = dtype;
  e->ndim = ndim;
  size_t numel = 1;
  for (int i = 0; i < ndim; i++) numel *= (size_t)(e->shape[i] = shape[i]);
  e->nbytes = numel * dtypes[dtype].size;
  e->data = data;
  w->n++;
  return STATUS_OK;
}

status_t st_writer_meta(st_writer *w, const char *key, const char *value) {
  if (!w->meta && !(w->meta = cJSON_CreateObject()))
    return status_set(STATUS_NOMEM, "out of memory adding metadata");
  cJSON_DeleteItemFromObjectCaseSensitive(w->meta, key);
  if (!cJSON_AddStringToObject(w->meta, key, value))
    return status_set(STATUS_NOMEM, "out of memory adding metadata");
  return STATUS_OK;
}

static char *build_header(const st_writer *w, size_t *len) {
  cJSON *root = cJSON_CreateObject();
  if (!root) return NULL;
  if (w->meta) cJSON_AddItemToObject(root, "__metadata__", cJSON_Duplicate(w->meta, 1));
  size_t off = 0;
  for (int i = 0; i < w->n; i++) {
    const st_entry *e = &w->e[i];
    cJSON *o = cJSON_AddObjectToObject(root, e->name);
    cJSON *sh = o ? cJSON_AddArrayToObject(o, "shape") : NULL;
    cJSON *of = o ? cJSON_AddArrayToObject(o, "data_offsets") : NULL;
    if (!sh || !of || !cJSON_AddStringToObject(o, "dtype", dtypes[e->dtype].name)) goto fail;
    for (int d = 0; d < e->ndim; d++)
      cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)e->shape[d]));
    cJSON_AddItemToArray(of, cJSON_CreateNumber((double)off));
    cJSON_AddItemToArray(of, cJSON_CreateNumber((double)(off + e->nbytes)));
    off += e->nbytes;
  }
  char *s = cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  if (!s) return NULL;
  /* Pad with spaces so the data starts 8-byte aligned. */
  size_t n = strlen(s), padded = (n + 7) & ~(size_t)7;
  char *p = realloc(s, padded + 1);
  if (!p) {
    free(s);
    return NULL;
  }
  memset(p + n, ' ', padded - n);
  p[padded] = 0;
  *len = padded;
  return p;
fail:
  cJSON_Delete(root);
  return NULL;
}

static status_t write_all(int fd, const void *buf, size_t n, const char *path) {
  const char *p = buf;
  while (n) {
    ssize_t r = write(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return status_set(STATUS_IO, "cannot write %s: %s", path, strerror(errno));
    p += r;
    n -= (size_t)r;
  }
  return STATUS_OK;
}

status_t st_writer_write(st_writer *w, const char *path) {
  size_t hlen = 0;
  char *hdr = build_header(w, &hlen);
  if (!hdr) return status_set(STATUS_NOMEM, "out of memory writing %s", path);
  size_t plen = strlen(path);
  char *tmp = malloc(plen + 16);
  if (!tmp) {
    free(hdr);
    return status_set(STATUS_NOMEM, "out of memory writing %s", path);
  }
  snprintf(tmp, plen + 16, "%s.tmp%d", path, (int)getpid());
  status_t st = STATUS_OK;
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) {
    st = status_set(STATUS_IO, "cannot create %s: %s", tmp, strerror(errno));
    goto out;
  }
  unsigned char len8[8];
  for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
  st = write_all(fd, len8, 8, tmp);
  if (st == STATUS_OK) st = write_all(fd, hdr, hlen, tmp);
  for (int i = 0; i < w->n && st == STATUS_OK; i++)
    st = write_all(fd, w->e[i].data, w->e[i].nbytes, tmp);
  if (st == STATUS_OK && fsync(fd) != 0)
    st = status_set(STATUS_IO, "cannot sync %s: %s", tmp, strerror(errno));
  if (close(fd) != 0 && st == STATUS_OK)
    st = status_set(STATUS_IO, "cannot close %s: %s", tmp, strerror(errno));
  if (st == STATUS_OK && rename(tmp, path) != 0)
    st = status_set(STATUS_IO, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
  if (st != STATUS_OK) unlink(tmp);
out:
  free(tmp);
  free(hdr);
  return st;
}
