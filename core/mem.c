/* mem.c: checked, 64-byte aligned allocation. Failures become STATUS_NOMEM
 * with a message naming what was being allocated. */
#include <stdlib.h>
#include <string.h>

#include "core.h"

void *mem_alloc(size_t bytes, const char *what) {
  void *p = NULL;
  size_t rounded = (bytes + 63) & ~(size_t)63;
  if (rounded < bytes || posix_memalign(&p, 64, rounded ? rounded : 64) != 0) {
    status_set(STATUS_NOMEM, "out of memory allocating %zu bytes for %s", bytes, what);
    return NULL;
  }
  return p;
}

void *mem_calloc(size_t bytes, const char *what) {
  void *p = mem_alloc(bytes, what);
  if (p) memset(p, 0, bytes);
  return p;
}

void mem_free(void *p) { free(p); }
