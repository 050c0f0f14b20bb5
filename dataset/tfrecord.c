/* tfrecord.c: TFRecord framing (writer with atomic rename, mapped reader
 * that checks every CRC and names the byte offset of any damage). */
#include "tfrecord.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static void put_u64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put_u32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint64_t get_u64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
  return v;
}
static uint32_t get_u32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

status_t tfr_writer_open(tfr_writer *w, const char *path) {
  memset(w, 0, sizeof *w);
  size_t n = strlen(path) + 16;
  w->path = strdup(path);
  w->tmp = malloc(n);
  if (!w->path || !w->tmp) {
    tfr_writer_abort(w);
    return status_set(STATUS_NOMEM, "out of memory opening %s", path);
  }
  snprintf(w->tmp, n, "%s.tmp%d", path, (int)getpid());
  w->f = fopen(w->tmp, "wb");
  if (!w->f) {
    status_t st = status_set(STATUS_IO, "cannot create %s: %s", w->tmp, strerror(errno));
    tfr_writer_abort(w);
    return st;
  }
  return STATUS_OK;
}

status_t tfr_write(tfr_writer *w, const void *payload, size_t n, uint64_t *at) {
  uint8_t head[12], tail[4];
  put_u64(head, n);
  put_u32(head + 8, crc32c_mask(crc32c_update(0, head, 8)));
  put_u32(tail, crc32c_mask(crc32c_update(0, payload, n)));
  if (fwrite(head, 1, 12, w->f) != 12 || fwrite(payload, 1, n, w->f) != n ||
      fwrite(tail, 1, 4, w->f) != 4)
    return status_set(STATUS_IO, "cannot write %s: %s", w->tmp, strerror(errno));
  if (at) *at = w->offset;
  w->offset += tfr_framed_size(n);
  return STATUS_OK;
}

status_t tfr_writer_close(tfr_writer *w) {
  status_t st = STATUS_OK;
  if (fflush(w->f) != 0 || fsync(fileno(w->f)) != 0)
    st = status_set(STATUS_IO, "cannot write %s: %s", w->tmp, strerror(errno));
  if (fclose(w->f) != 0 && st == STATUS_OK)
    st = status_set(STATUS_IO, "cannot close %s: %s", w->tmp, strerror(errno));
  w->f = NULL;
  if (st == STATUS_OK && rename(w->tmp, w->path) != 0)
    st = status_set(STATUS_IO, "cannot rename %s to %s: %s", w->tmp, w->path, strerror(errno));
  if (st != STATUS_OK) unlink(w->tmp);
  free(w->path);
  free(w->tmp);
  memset(w, 0, sizeof *w);
  return st;
}

void tfr_writer_abort(tfr_writer *w) {
  if (w->f) fclose(w->f);
  if (w->tmp) unlink(w->tmp);
  free(w->path);
  free(w->tmp);
  memset(w, 0, sizeof *w);
}

status_t tfr_open(const char *path, tfr_file *f) {
  memset(f, 0, sizeof *f);
  int fd = open(path, O_RDONLY);
  if (fd < 0) return status_set(STATUS_IO, "cannot open %s: %s", path, strerror(errno));
  struct stat sb;
  if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
    close(fd);
    return status_set(STATUS_IO, "%s: not a regular file", path);
  }
  f->size = (size_t)sb.st_size;
  if (f->size) {
    void *p = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      close(fd);
      return status_set(STATUS_IO, "cannot map %s: %s", path, strerror(errno));
    }
    f->data = p;
  }
  close(fd);
  f->path = strdup(path);
  if (!f->path) {
    tfr_close(f);
    return status_set(STATUS_NOMEM, "out of memory opening %s", path);
  }
  return STATUS_OK;
}

void tfr_close(tfr_file *f) {
  if (f->data) munmap((void *)f->data, f->size);
  free(f->path);
  memset(f, 0, sizeof *f);
}

status_t tfr_read_at(const tfr_file *f, uint64_t *offset, const uint8_t **payload, size_t *n) {
  uint64_t o = *offset;
  if (o > f->size || f->size - o < 12)
    return status_set(STATUS_FORMAT, "%s: truncated record header at byte %llu", f->path,
                      (unsigned long long)o);
  const uint8_t *h = f->data + o;
  if (crc32c_mask(crc32c_update(0, h, 8)) != get_u32(h + 8))
    return status_set(STATUS_FORMAT, "%s: bad length checksum at byte %llu", f->path,
                      (unsigned long long)o);
  uint64_t len = get_u64(h);
  if (len > f->size - o - 12 || f->size - o - 12 - len < 4)
    return status_set(STATUS_FORMAT, "%s: record at byte %llu (length %llu) runs past the end",
                      f->path, (unsigned long long)o, (unsigned long long)len);
  const uint8_t *p = h + 12;
  if (crc32c_mask(crc32c_update(0, p, len)) != get_u32(p + len))
    return status_set(STATUS_FORMAT, "%s: bad data checksum in the record at byte %llu", f->path,
                      (unsigned long long)o);
  *payload = p;
  *n = (size_t)len;
  *offset = o + tfr_framed_size(len);
  return STATUS_OK;
}
