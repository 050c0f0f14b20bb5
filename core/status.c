/* status.c: status codes, the per-thread error message, and core_panic for
 * programming errors. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"

static _Thread_local char last_message[1024];

status_t status_set(status_t code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_message, sizeof last_message, fmt, ap);
  va_end(ap);
  return code;
}

const char *status_message(void) { return last_message; }

void status_prefix(const char *fmt, ...) {
  char old[sizeof last_message], pre[256];
  snprintf(old, sizeof old, "%s", last_message);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(pre, sizeof pre, fmt, ap);
  va_end(ap);
  size_t np = strlen(pre), no = strlen(old), cap = sizeof last_message - 1;
  if (np + 2 > cap) np = cap - 2;
  if (np + 2 + no > cap) no = cap - np - 2;
  memcpy(last_message, pre, np);
  memcpy(last_message + np, ": ", 2);
  memcpy(last_message + np + 2, old, no);
  last_message[np + 2 + no] = 0;
}

const char *status_name(status_t code) {
  switch (code) {
    case STATUS_OK: return "ok";
    case STATUS_IO: return "I/O error";
    case STATUS_FORMAT: return "format error";
    case STATUS_CONFIG: return "configuration error";
    case STATUS_ARG: return "bad argument";
    case STATUS_NOMEM: return "out of memory";
    case STATUS_COMM: return "communication error";
    case STATUS_TIMEOUT: return "timeout";
  }
  return "unknown status";
}

bool core_parse_bool(const char *v, bool *out) {
  if (!strcmp(v, "true") || !strcmp(v, "1") || !strcmp(v, "yes")) return *out = true, true;
  if (!strcmp(v, "false") || !strcmp(v, "0") || !strcmp(v, "no")) return *out = false, true;
  return false;
}

void core_panic(const char *file, int line, const char *what) {
  fprintf(stderr, "mlmpi: internal error at %s:%d: assertion '%s' failed\n", file, line, what);
  fflush(stderr);
  abort();
}
