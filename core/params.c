/* params.c: the parameter table: names, shapes, offsets and optimizer flags
 * of every tensor in the flat fp32 buffers, and its safetensors I/O. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"

void param_table_init(param_table *t) { memset(t, 0, sizeof *t); }

void param_table_free(param_table *t) {
  if (!t) return;
  free(t->p);
  memset(t, 0, sizeof *t);
}

int param_table_find(const param_table *t, const char *name) {
  for (int i = 0; i < t->n; i++)
    if (!strcmp(t->p[i].name, name)) return i;
  return -1;
}

int param_table_add(param_table *t, const char *name, int ndim, const int64_t *shape, bool decay,
                    bool adapt) {
  CORE_ASSERT(ndim >= 1 && ndim <= PARAM_MAX_DIMS);
  if (strlen(name) >= PARAM_NAME_MAX) {
    status_set(STATUS_ARG, "parameter name too long: %s", name);
    return -1;
  }
  if (param_table_find(t, name) >= 0) {
    status_set(STATUS_ARG, "parameter '%s' defined twice", name);
    return -1;
  }
  if (t->n == t->cap) {
    int cap = t->cap ? 2 * t->cap : 64;
    param_info *p = realloc(t->p, (size_t)cap * sizeof *p);
    if (!p) {
      status_set(STATUS_NOMEM, "out of memory growing the parameter table");
      return -1;
    }
    t->p = p;
    t->cap = cap;
  }
  param_info *p = &t->p[t->n];
  memset(p, 0, sizeof *p);
  snprintf(p->name, sizeof p->name, "%s", name);
  p->ndim = ndim;
  p->numel = 1;
  for (int i = 0; i < ndim; i++) p->numel *= (size_t)(p->shape[i] = shape[i]);
  p->offset = t->total;
  p->decay = decay;
  p->adapt = adapt;
  t->total += p->numel;
  return t->n++;
}

uint64_t param_table_hash(const param_table *t) {
  uint64_t h = CORE_FNV_OFFSET;
  for (int i = 0; i < t->n; i++) {
    const param_info *p = &t->p[i];
    h = core_fnv1a(h, p->name, strlen(p->name) + 1);
    h = core_fnv1a(h, &p->ndim, sizeof p->ndim);
    h = core_fnv1a(h, p->shape, (size_t)p->ndim * sizeof p->shape[0]);
    h = core_fnv1a(h, &p->offset, sizeof p->offset);
    unsigned char fl = (unsigned char)(p->decay | p->adapt << 1);
    h = core_fnv1a(h, &fl, 1);
  }
  return h;
}

status_t param_load_safetensors(const param_table *t, float *buf, const st_file *f,
                                const char *path, bool strict) {
  for (int i = 0; i < t->n; i++) {
    const param_info *p = &t->p[i];
    const st_tensor *s;
    status_t st = st_expect(f, path, p->name, DTYPE_F32, p->ndim, p->shape, &s);
    if (st != STATUS_OK) return st;
    memcpy(buf + p->offset, s->data, p->numel * sizeof(float));
  }
  if (strict)
    for (int i = 0; i < f->n; i++)
      if (param_table_find(t, f->tensors[i].name) < 0)
        return status_set(STATUS_ARG, "%s: tensor '%s' is not a parameter of this model", path,
                          f->tensors[i].name);
  return STATUS_OK;
}

status_t param_add_to_writer(const param_table *t, const float *buf, const char *prefix,
                             st_writer *w) {
  char name[PARAM_NAME_MAX + 64];
  for (int i = 0; i < t->n; i++) {
    const param_info *p = &t->p[i];
    snprintf(name, sizeof name, "%s%s", prefix, p->name);
    status_t st = st_writer_add(w, name, DTYPE_F32, p->ndim, p->shape, buf + p->offset);
    if (st != STATUS_OK) return st;
  }
  return STATUS_OK;
}
