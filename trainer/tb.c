/* tb.c: TensorBoard event files: TFRecord framing (as dataset/tfrecord.c)
 * of Event protobufs, written and flushed as the run goes. */
#include "tb.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tensorboard.pb-c.h"

struct tb_writer {
  FILE *f;
  char path[4096];
};

static double wall(void) {
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static status_t write_record(tb_writer *w, const Mlmpi__Tb__Event *e) {
  size_t n = mlmpi__tb__event__get_packed_size(e);
  uint8_t *buf = malloc(n + 16);
  if (!buf) return status_set(STATUS_NOMEM, "out of memory writing %s", w->path);
  mlmpi__tb__event__pack(e, buf + 12);
  for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)n >> (8 * i));
  uint32_t lc = crc32c_mask(crc32c_update(0, buf, 8)),
           dc = crc32c_mask(crc32c_update(0, buf + 12, n));
  for (int i = 0; i < 4; i++) {
    buf[8 + i] = (uint8_t)(lc >> (8 * i));
    buf[12 + n + i] = (uint8_t)(dc >> (8 * i));
  }
  bool ok = fwrite(buf, 1, n + 16, w->f) == n + 16;
  free(buf);
  return ok ? STATUS_OK : status_set(STATUS_IO, "cannot write %s: %s", w->path, strerror(errno));
}

status_t tb_open(tb_writer **out, const char *dir) {
  *out = NULL;
  tb_writer *w = calloc(1, sizeof *w);
  if (!w) return status_set(STATUS_NOMEM, "out of memory opening an event file");
  char host[256] = "localhost";
  gethostname(host, sizeof host - 1);
  snprintf(w->path, sizeof w->path, "%s/events.out.tfevents.%lld.%s", dir, (long long)time(NULL),
           host);
  w->f = fopen(w->path, "ab");
  if (!w->f) {
    status_t st = status_set(STATUS_IO, "cannot create %s: %s", w->path, strerror(errno));
    free(w);
    return st;
  }
  Mlmpi__Tb__Event e = MLMPI__TB__EVENT__INIT;
  e.wall_time = wall();
  e.what_case = MLMPI__TB__EVENT__WHAT_FILE_VERSION;
  e.file_version = "brain.Event:2";
  status_t st = write_record(w, &e);
  if (st == STATUS_OK) st = tb_flush(w);
  if (st) {
    tb_close(w);
    return st;
  }
  *out = w;
  return STATUS_OK;
}

status_t tb_scalars(tb_writer *w, int64_t step, const char *const *tags, const float *values,
                    int n) {
  Mlmpi__Tb__SummaryValue *v = malloc((size_t)(n > 0 ? n : 1) * sizeof *v);
  Mlmpi__Tb__SummaryValue **pv = malloc((size_t)(n > 0 ? n : 1) * sizeof *pv);
  if (!v || !pv) {
    free(v);
    free(pv);
    return status_set(STATUS_NOMEM, "out of memory writing %s", w->path);
  }
  for (int i = 0; i < n; i++) {
    mlmpi__tb__summary_value__init(&v[i]);
    v[i].tag = (char *)tags[i];
    v[i].simple_value = values[i];
    pv[i] = &v[i];
  }
  Mlmpi__Tb__Summary s = MLMPI__TB__SUMMARY__INIT;
  s.n_value = (size_t)n;
  s.value = pv;
  Mlmpi__Tb__Event e = MLMPI__TB__EVENT__INIT;
  e.wall_time = wall();
  e.step = step;
  e.what_case = MLMPI__TB__EVENT__WHAT_SUMMARY;
  e.summary = &s;
  status_t st = write_record(w, &e);
  free(v);
  free(pv);
  return st;
}

status_t tb_flush(tb_writer *w) {
  if (fflush(w->f) != 0)
    return status_set(STATUS_IO, "cannot write %s: %s", w->path, strerror(errno));
  return STATUS_OK;
}

void tb_close(tb_writer *w) {
  if (!w) return;
  if (w->f) fclose(w->f);
  free(w);
}
