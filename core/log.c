/* log.c: rank-tagged logging with a subsystem mask and a level, both read
 * once from the environment (MLMPI_LOG_SUBSYS, MLMPI_LOG_LEVEL). */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core.h"

static const struct {
  const char *name;
  log_subsys bit;
} subsys_names[] = {
    {"core", LOG_SUB_CORE},   {"trainer", LOG_SUB_TRAINER}, {"comm", LOG_SUB_COMM},
    {"optim", LOG_SUB_OPTIM}, {"dataset", LOG_SUB_DATASET}, {"launch", LOG_SUB_LAUNCH},
};
#define N_SUBSYS (sizeof subsys_names / sizeof subsys_names[0])

static int log_rank = -1;
static unsigned log_mask;
static log_level log_max = LOG_LEVEL_INFO;
static pthread_once_t log_once = PTHREAD_ONCE_INIT;

static void log_read_env(void) {
  const char *s = getenv("MLMPI_LOG_SUBSYS");
  log_mask = ~0u;
  if (s && *s && strcmp(s, "all") != 0) {
    log_mask = 0;
    for (size_t i = 0; i < N_SUBSYS; i++)
      if (strstr(s, subsys_names[i].name)) log_mask |= subsys_names[i].bit;
  }
  const char *l = getenv("MLMPI_LOG_LEVEL");
  if (l) {
    if (!strcmp(l, "error"))
      log_max = LOG_LEVEL_ERROR;
    else if (!strcmp(l, "warn"))
      log_max = LOG_LEVEL_WARN;
    else if (!strcmp(l, "debug"))
      log_max = LOG_LEVEL_DEBUG;
  }
}

void log_set_rank(int rank) { log_rank = rank; }

static const char *subsys_name(log_subsys sub) {
  for (size_t i = 0; i < N_SUBSYS; i++)
    if (subsys_names[i].bit == sub) return subsys_names[i].name;
  return "?";
}

void log_write(log_level level, log_subsys sub, const char *fmt, ...) {
  pthread_once(&log_once, log_read_env);
  /* Errors always print: they are the one line that names a failure. */
  if (level != LOG_LEVEL_ERROR && (level > log_max || !(log_mask & (unsigned)sub))) return;
  static const char *lvl[] = {"error: ", "warning: ", "", "debug: "};
  char line[2048];
  int n =
      log_rank >= 0
          ? snprintf(line, sizeof line, "[mlmpi r%d %s] %s", log_rank, subsys_name(sub), lvl[level])
          : snprintf(line, sizeof line, "[mlmpi %s] %s", subsys_name(sub), lvl[level]);
  va_list ap;
  va_start(ap, fmt);
  n += vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
  va_end(ap);
  if (n > (int)sizeof line - 2) n = (int)sizeof line - 2;
  line[n++] = '\n';
  ssize_t w = write(STDERR_FILENO, line, (size_t)n);
  (void)w;
}
