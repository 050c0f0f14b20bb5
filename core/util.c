/* util.c: the small helpers of core.h that every module uses: string
 * hashing, the monotonic clock, reading a whole file, making directories. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "core.h"

uint64_t core_fnv1a_str(const char *s) {
  return core_fnv1a(CORE_FNV_OFFSET, s ? s : "", s ? strlen(s) : 0);
}

double core_now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

status_t core_read_file(const char *what, const char *path, size_t max_bytes, char **out,
                        size_t *len) {
  const char *sep = what && what[0] ? " " : "";
  what = what ? what : "";
  *out = NULL;
  *len = 0;
  FILE *f = fopen(path, "rb");
  if (!f) return status_set(STATUS_IO, "%s%s%s: %s", what, sep, path, strerror(errno));
  size_t cap = 1 << 16, n = 0;
  char *b = malloc(cap + 1);
  status_t st = STATUS_OK;
  while (b) {
    n += fread(b + n, 1, cap - n, f);
    if (n < cap) break;
    if (max_bytes && n > max_bytes) break;
    char *q = realloc(b, 2 * cap + 1);
    if (!q) free(b);
    b = q;
    cap *= 2;
  }
  if (!b)
    st = status_set(STATUS_NOMEM, "%s%s%s: out of memory reading it", what, sep, path);
  else if (ferror(f))
    st = status_set(STATUS_IO, "%s%s%s: read error", what, sep, path);
  else if (max_bytes && n > max_bytes)
    st = status_set(STATUS_FORMAT, "%s%s%s: larger than %zu bytes", what, sep, path, max_bytes);
  fclose(f);
  if (st != STATUS_OK) {
    free(b);
    return st;
  }
  b[n] = 0;
  *out = b;
  *len = n;
  return STATUS_OK;
}

status_t core_mkdir_p(const char *path) {
  char p[4096];
  if (!path[0] || strlen(path) >= sizeof p)
    return status_set(STATUS_IO, "cannot create directory '%s': empty or too long a path", path);
  snprintf(p, sizeof p, "%s", path);
  for (char *q = p + 1; *q; q++)
    if (*q == '/') {
      *q = 0;
      mkdir(p, 0755); /* a parent that fails shows in the last mkdir */
      *q = '/';
    }
  struct stat sb;
  if (mkdir(p, 0755) != 0 && !(errno == EEXIST && stat(p, &sb) == 0 && S_ISDIR(sb.st_mode)))
    return status_set(STATUS_IO, "cannot create directory %s: %s", path,
                      errno == EEXIST ? "a file is in the way" : strerror(errno));
  return STATUS_OK;
}
