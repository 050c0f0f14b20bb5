/* ckpt.c: writing, finding and loading checkpoints (see ckpt.h). */
#define _XOPEN_SOURCE 700 /* nftw */
#include "ckpt.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static status_t file_crc(const char *path, uint32_t *crc) {
  FILE *f = fopen(path, "rb");
  if (!f) return status_set(STATUS_IO, "cannot open %s: %s", path, strerror(errno));
  char buf[1 << 16];
  uint32_t c = 0;
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) c = crc32c_update(c, buf, n);
  bool bad = ferror(f);
  fclose(f);
  if (bad) return status_set(STATUS_IO, "cannot read %s", path);
  *crc = c;
  return STATUS_OK;
}

static status_t fsync_path(const char *path) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) return status_set(STATUS_IO, "cannot open %s: %s", path, strerror(errno));
  int rc = fsync(fd);
  close(fd);
  if (rc) return status_set(STATUS_IO, "cannot sync %s: %s", path, strerror(errno));
  return STATUS_OK;
}

static status_t write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  if (!f) return status_set(STATUS_IO, "cannot create %s: %s", path, strerror(errno));
  bool ok = fputs(text, f) >= 0 && fflush(f) == 0 && fsync(fileno(f)) == 0;
  int err = errno; /* the first failure's reason (a full disk, say), before fclose */
  if (fclose(f) != 0 && ok) ok = false, err = errno;
  return ok ? STATUS_OK : status_set(STATUS_IO, "cannot write %s: %s", path, strerror(err));
}

static int64_t step_of(const char *name) {
  if (strncmp(name, "step-", 5)) return -1;
  char *e;
  long long s = strtoll(name + 5, &e, 10);
  return *e || e == name + 5 ? -1 : s;
}

static int cmp_desc(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return x < y ? 1 : x > y ? -1 : 0;
}

/* Steps of the step-N directories in dir, newest first. */
static int list_steps(const char *dir, int64_t **out) {
  DIR *d = opendir(dir);
  *out = NULL;
  if (!d) return 0;
  int n = 0, cap = 0;
  for (struct dirent *e; (e = readdir(d));) {
    int64_t s = step_of(e->d_name);
    if (s < 0) continue;
    if (n == cap) {
      cap = cap ? 2 * cap : 16;
      int64_t *p = realloc(*out, (size_t)cap * sizeof *p);
      if (!p) break;
      *out = p;
    }
    (*out)[n++] = s;
  }
  closedir(d);
  if (n) qsort(*out, (size_t)n, sizeof **out, cmp_desc);
  return n;
}

static int remove_one(const char *path, const struct stat *sb, int flag, struct FTW *f) {
  (void)sb;
  (void)flag;
  (void)f;
  remove(path);
  return 0;
}

/* Removes path and everything below it (children first, links not followed). */
static void remove_tree(const char *path) { nftw(path, remove_one, 16, FTW_DEPTH | FTW_PHYS); }

/* Removes what writers killed mid-checkpoint left: .step-N.tmpPID, .best.tmpPID. */
static void remove_partial(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return;
  char p[4096 + 256];
  for (struct dirent *e; (e = readdir(d));) {
    if (e->d_name[0] != '.' || !strstr(e->d_name, ".tmp")) continue;
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    LOG_INFO(TRAINER, "removing %s, a checkpoint whose writing was cut off", p);
    remove_tree(p);
  }
  closedir(d);
}

static status_t write_optimizer(const char *path, const param_table *t, const ckpt_optim *o) {
  st_writer *w = st_writer_init();
  if (!w) return STATUS_NOMEM;
  char num[32], prefix[64];
  status_t st = STATUS_OK;
  for (int i = 0; i < o->n && st == STATUS_OK; i++) {
    snprintf(prefix, sizeof prefix, "%s.", o->names[i]);
    st = param_add_to_writer(t, o->bufs[i], prefix, w);
  }
  if (st) goto out;
  snprintf(num, sizeof num, "%lld", (long long)o->taken);
  if ((st = st_writer_meta(w, "steps_taken", num))) goto out;
  snprintf(num, sizeof num, "%llu", (unsigned long long)o->skipped);
  if ((st = st_writer_meta(w, "steps_skipped", num))) goto out;
  st = st_writer_write(w, path);
out:
  st_writer_free(w);
  return st;
}

status_t ckpt_save(const char *dir, const ckpt_info *info, const param_table *t,
                   const float *params, const ckpt_optim *o, const char *config_text,
                   int64_t keep) {
  ckpt_extra none = {0};
  return ckpt_save_ex(dir, info, &none, t, params, o, config_text, keep);
}

status_t ckpt_save_ex(const char *dir, const ckpt_info *info, const ckpt_extra *extra,
                      const param_table *t, const float *params, const ckpt_optim *o,
                      const char *config_text, int64_t keep) {
  char tmp[4096], final[4096], p[4096 + 64];
  status_t st = core_mkdir_p(dir);
  if (st) return status_prefix("ckpt.dir"), st;
  char name[256];
  if (extra->name)
    snprintf(name, sizeof name, "%s", extra->name);
  else
    snprintf(name, sizeof name, "step-%lld", (long long)info->step);
  snprintf(tmp, sizeof tmp, "%s/.%s.tmp%d", dir, name, (int)getpid());
  snprintf(final, sizeof final, "%s/%s", dir, name);
  remove_tree(tmp);
  if (mkdir(tmp, 0755) != 0)
    return status_set(STATUS_IO, "cannot create %s: %s", tmp, strerror(errno));
  snprintf(p, sizeof p, "%s/model.safetensors", tmp);
  st_writer *w = st_writer_init();
  st = w ? param_add_to_writer(t, params, "", w)
         : status_set(STATUS_NOMEM, "out of memory writing %s", p);
  if (st == STATUS_OK) st = st_writer_meta(w, "format", "pt");
  if (st == STATUS_OK) st = st_writer_write(w, p);
  st_writer_free(w);
  uint32_t crc_model = 0, crc_optim = 0;
  if (st == STATUS_OK) st = file_crc(p, &crc_model);
  snprintf(p, sizeof p, "%s/optimizer.safetensors", tmp);
  if (st == STATUS_OK) st = write_optimizer(p, t, o);
  if (st == STATUS_OK) st = file_crc(p, &crc_optim);
  if (st == STATUS_OK) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "step", (double)info->step);
    cJSON_AddNumberToObject(j, "world_size", info->world_size);
    /* A number where a double holds it exactly, else its decimal digits
     * as a string (readers take either). */
    char seed[32];
    snprintf(seed, sizeof seed, "%lld", (long long)info->seed);
    if (info->seed <= (1ll << 53))
      cJSON_AddNumberToObject(j, "seed", (double)info->seed);
    else
      cJSON_AddStringToObject(j, "seed", seed);
    char fp[32];
    snprintf(fp, sizeof fp, "%016llx", (unsigned long long)info->data_fingerprint);
    cJSON_AddStringToObject(j, "data_fingerprint", fp);
    snprintf(fp, sizeof fp, "%016llx", (unsigned long long)param_table_hash(t));
    cJSON_AddStringToObject(j, "layout_hash", fp);
    cJSON *cs = cJSON_AddObjectToObject(j, "crc32c");
    snprintf(fp, sizeof fp, "%08x", crc_model);
    cJSON_AddStringToObject(cs, "model.safetensors", fp);
    snprintf(fp, sizeof fp, "%08x", crc_optim);
    cJSON_AddStringToObject(cs, "optimizer.safetensors", fp);
    cJSON_AddStringToObject(j, "config", config_text ? config_text : "");
    if (extra->tokenizer && extra->tokenizer[0]) {
      cJSON *tk = cJSON_AddObjectToObject(j, "tokenizer");
      cJSON_AddStringToObject(tk, "path", extra->tokenizer);
      snprintf(fp, sizeof fp, "%016llx", (unsigned long long)extra->tokenizer_fingerprint);
      cJSON_AddStringToObject(tk, "fingerprint", fp);
    }
    if (extra->task_json) cJSON_AddItemToObject(j, "task", cJSON_Parse(extra->task_json));
    char *text = cJSON_Print(j);
    cJSON_Delete(j);
    snprintf(p, sizeof p, "%s/meta.json", tmp);
    st = text ? write_text(p, text) : status_set(STATUS_NOMEM, "out of memory writing %s", p);
    free(text);
  }
  if (st == STATUS_OK) st = fsync_path(tmp);
  if (st == STATUS_OK) {
    /* A checkpoint of the same step from an earlier attempt is moved aside
     * and removed only once the new one is in place. */
    char old[4096 + 32];
    snprintf(old, sizeof old, "%s/.%s.tmpold%d", dir, name, (int)getpid());
    bool aside = rename(final, old) == 0;
    if (rename(tmp, final) != 0) {
      st = status_set(STATUS_IO, "cannot rename %s to %s: %s", tmp, final, strerror(errno));
      if (aside) rename(old, final);
    } else if (aside) {
      remove_tree(old);
    }
  }
  if (st != STATUS_OK) {
    /* Nothing half-written stays (a full disk, say): the newest complete
     * checkpoint is still the one before, and the message names both. */
    remove_tree(tmp);
    status_prefix("checkpoint %s not written (its partial files removed)", final);
    return st;
  }
  if ((st = fsync_path(dir))) return st;
  remove_partial(dir);
  int64_t *steps;
  int n = list_steps(dir, &steps);
  for (int i = (int)keep; i < n; i++) {
    snprintf(p, sizeof p, "%s/step-%lld", dir, (long long)steps[i]);
    remove_tree(p);
  }
  free(steps);
  return STATUS_OK;
}

status_t ckpt_read_meta(const char *path, cJSON **out) {
  char p[4096 + 64], *text = NULL;
  size_t len = 0;
  *out = NULL;
  snprintf(p, sizeof p, "%s/meta.json", path);
  if (core_read_file("", p, 64u << 20, &text, &len))
    return status_set(STATUS_IO, "checkpoint %s has no meta.json", path);
  *out = cJSON_Parse(text);
  free(text);
  if (!cJSON_IsObject(*out)) {
    cJSON_Delete(*out);
    *out = NULL;
    return status_set(STATUS_FORMAT, "checkpoint %s: meta.json is not a JSON object", path);
  }
  return STATUS_OK;
}

bool ckpt_config_value(const cJSON *meta, const char *key, char *out, size_t n) {
  const char *cfg = cJSON_GetStringValue(cJSON_GetObjectItem(meta, "config"));
  size_t k = strlen(key);
  /* The dump is "section.key = value" lines. */
  for (const char *line = cfg; line && *line;) {
    const char *end = strchr(line, '\n');
    size_t len = end ? (size_t)(end - line) : strlen(line);
    if (len >= k + 3 && !strncmp(line, key, k) && !strncmp(line + k, " = ", 3)) {
      snprintf(out, n, "%.*s", (int)(len - k - 3), line + k + 3);
      return true;
    }
    line = end ? end + 1 : NULL;
  }
  return false;
}

/* Whether x is a whole number in [lo, hi] (so converting it is defined). */
static bool whole_in(double x, double lo, double hi) { return x >= lo && x <= hi && x == floor(x); }

static status_t read_meta(const char *path, ckpt_info *info, uint32_t *crc_model,
                          uint32_t *crc_optim) {
  cJSON *j;
  status_t st = ckpt_read_meta(path, &j);
  if (st) return st;
  const cJSON *s = cJSON_GetObjectItem(j, "step"), *w = cJSON_GetObjectItem(j, "world_size"),
              *fp = cJSON_GetObjectItem(j, "data_fingerprint"),
              *cs = cJSON_GetObjectItem(j, "crc32c"), *sd = cJSON_GetObjectItem(j, "seed");
  const cJSON *cm = cJSON_GetObjectItem(cs, "model.safetensors"),
              *co = cJSON_GetObjectItem(cs, "optimizer.safetensors");
  if (!cJSON_IsNumber(s) || !cJSON_IsNumber(w) || !cJSON_IsString(fp) || !cJSON_IsString(cm) ||
      !cJSON_IsString(co) || !(cJSON_IsNumber(sd) || cJSON_IsString(sd)))
    st = status_set(STATUS_FORMAT, "checkpoint %s: meta.json is incomplete", path);
  else if (!whole_in(s->valuedouble, 0, 1e15) || !whole_in(w->valuedouble, 1, 1 << 24) ||
           (cJSON_IsNumber(sd) && !whole_in(sd->valuedouble, -9e15, 9e15)))
    st = status_set(STATUS_FORMAT,
                    "checkpoint %s: meta.json's step, world_size or seed is out of range", path);
  else {
    info->step = (int64_t)s->valuedouble;
    info->world_size = (int)w->valuedouble;
    info->seed = cJSON_IsString(sd) ? strtoll(sd->valuestring, NULL, 10) : (int64_t)sd->valuedouble;
    info->data_fingerprint = strtoull(fp->valuestring, NULL, 16);
    *crc_model = (uint32_t)strtoul(cm->valuestring, NULL, 16);
    *crc_optim = (uint32_t)strtoul(co->valuestring, NULL, 16);
  }
  cJSON_Delete(j);
  return st;
}

static status_t verify(const char *path, ckpt_info *info) {
  uint32_t cm = 0, co = 0, got = 0;
  status_t st = read_meta(path, info, &cm, &co);
  if (st) return st;
  char p[4096 + 64];
  snprintf(p, sizeof p, "%s/model.safetensors", path);
  if ((st = file_crc(p, &got))) return st;
  if (got != cm)
    return status_set(STATUS_FORMAT, "checkpoint %s: model.safetensors is damaged (checksum)",
                      path);
  snprintf(p, sizeof p, "%s/optimizer.safetensors", path);
  if ((st = file_crc(p, &got))) return st;
  if (got != co)
    return status_set(STATUS_FORMAT, "checkpoint %s: optimizer.safetensors is damaged (checksum)",
                      path);
  return STATUS_OK;
}

status_t ckpt_resolve(const char *dir, char *path, size_t n) {
  char p[4096 + 64];
  struct stat sb;
  snprintf(p, sizeof p, "%s/meta.json", dir);
  if (stat(p, &sb) == 0) return snprintf(path, n, "%s", dir), STATUS_OK;
  snprintf(p, sizeof p, "%s/best/meta.json", dir);
  if (stat(p, &sb) == 0) return snprintf(path, n, "%s/best", dir), STATUS_OK;
  status_t st = ckpt_find_latest(dir, path, n);
  if (st == STATUS_OK && !path[0])
    st = status_set(STATUS_IO, "%s is not a checkpoint (no meta.json, best/ or complete step-N)",
                    dir);
  return st;
}

status_t ckpt_find_latest(const char *dir, char *path, size_t n) {
  path[0] = 0;
  int64_t *steps;
  int k = list_steps(dir, &steps);
  for (int i = 0; i < k; i++) {
    char p[4096 + 64];
    snprintf(p, sizeof p, "%s/step-%lld", dir, (long long)steps[i]);
    ckpt_info info;
    if (verify(p, &info) == STATUS_OK) {
      snprintf(path, n, "%s", p);
      break;
    }
    LOG_WARN(TRAINER, "skipping checkpoint: %s", status_message());
  }
  free(steps);
  return STATUS_OK;
}

status_t ckpt_load(const char *path, ckpt_info *info, const param_table *t, float *params,
                   ckpt_optim *o) {
  status_t st = verify(path, info);
  if (st) return st;
  char p[4096 + 64];
  st_file *f = NULL;
  snprintf(p, sizeof p, "%s/model.safetensors", path);
  if ((st = st_read(p, &f))) return st;
  st = param_load_safetensors(t, params, f, p, true);
  st_free(f);
  if (st || !o) return st;
  snprintf(p, sizeof p, "%s/optimizer.safetensors", path);
  if ((st = st_read(p, &f))) return st;
  /* Each state buffer is stored under its name as a prefix. */
  for (int k = 0; k < o->n && st == STATUS_OK; k++) {
    float *dst = o->bufs[k];
    char name[PARAM_NAME_MAX + 48];
    for (int i = 0; i < t->n && st == STATUS_OK; i++) {
      snprintf(name, sizeof name, "%s.%s", o->names[k], t->p[i].name);
      const st_tensor *x;
      st = st_expect(f, p, name, DTYPE_F32, t->p[i].ndim, t->p[i].shape, &x);
      if (st == STATUS_OK) memcpy(dst + t->p[i].offset, x->data, t->p[i].numel * sizeof(float));
    }
  }
  if (st == STATUS_OK) {
    cJSON *meta = f->metadata_json ? cJSON_Parse(f->metadata_json) : NULL;
    const cJSON *a = cJSON_GetObjectItem(meta, "steps_taken"),
                *b = cJSON_GetObjectItem(meta, "steps_skipped");
    if (cJSON_IsString(a) && cJSON_IsString(b)) {
      o->taken = strtoll(a->valuestring, NULL, 10);
      o->skipped = strtoull(b->valuestring, NULL, 10);
    } else
      st = status_set(STATUS_FORMAT, "%s: optimizer counters are missing", p);
    cJSON_Delete(meta);
  }
  st_free(f);
  return st;
}
