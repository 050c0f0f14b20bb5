/* fuzz_util.h: what the libFuzzer targets share. Each target writes its
 * input where the parser under test reads it (a file, or files in a folder,
 * under /dev/shm, removed at exit), because the parsers take paths as the
 * programs do.
 *
 * Framed formats (TFRecord records, and shards, which are TFRecord records)
 * carry CRC32Cs that random mutations almost never keep right; a target can
 * recompute them (fuzz_fix_tfrecord_crcs) so that mutations reach the
 * parsers behind the checksums, and uses the first input byte to choose
 * whether to, so that the checks themselves stay fuzzed too. */
#ifndef MLMPI_FUZZ_UTIL_H
#define MLMPI_FUZZ_UTIL_H

#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core.h"

static char fuzz_dir_[256];

static int fuzz_rm_(const char *p, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st, (void)flag, (void)ftw;
  return remove(p), 0;
}

static void fuzz_cleanup_(void) {
  if (fuzz_dir_[0]) nftw(fuzz_dir_, fuzz_rm_, 16, FTW_DEPTH | FTW_PHYS);
}

/* This process's scratch folder (made on first use). */
static inline const char *fuzz_dir(void) {
  if (!fuzz_dir_[0]) {
    snprintf(fuzz_dir_, sizeof fuzz_dir_, "/dev/shm/mlmpi-fuzz-%d", (int)getpid());
    if (mkdir(fuzz_dir_, 0700) && access(fuzz_dir_, W_OK)) {
      snprintf(fuzz_dir_, sizeof fuzz_dir_, "/tmp/mlmpi-fuzz-%d", (int)getpid());
      mkdir(fuzz_dir_, 0700);
    }
    atexit(fuzz_cleanup_);
  }
  return fuzz_dir_;
}

/* Writes data[0..n) to fuzz_dir()/name; returns the path (static storage of
 * one slot per call site is not needed: callers copy or use it at once). */
static inline const char *fuzz_write(const char *name, const void *data, size_t n) {
  static char path[4][512];
  static int k;
  char *p = path[k++ & 3];
  snprintf(p, sizeof path[0], "%s/%s", fuzz_dir(), name);
  FILE *f = fopen(p, "wb");
  if (!f) abort(); /* the scratch folder must be writable: not a finding */
  if (n && fwrite(data, 1, n, f) != n) abort();
  fclose(f);
  return p;
}

static inline void fuzz_put_u32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* Recomputes the masked CRC32C of every TFRecord record header and payload
 * in p[0..n) whose length field fits; stops at the first that does not. */
static inline void fuzz_fix_tfrecord_crcs(uint8_t *p, size_t n) {
  size_t o = 0;
  while (n - o >= 12) {
    uint64_t len = 0;
    for (int i = 7; i >= 0; i--) len = len << 8 | p[o + (size_t)i];
    fuzz_put_u32(p + o + 8, crc32c_mask(crc32c_update(0, p + o, 8)));
    if (len > n - o - 12 || n - o - 12 - len < 4) return;
    fuzz_put_u32(p + o + 12 + len, crc32c_mask(crc32c_update(0, p + o + 12, (size_t)len)));
    o += 16 + (size_t)len;
  }
}

/* Texts every tokenizer target encodes with what it loaded: plain, empty,
 * whitespace, invalid UTF-8, combining marks, CJK, emoji, controls. */
static const char *const fuzz_texts[] = {
    "In the beginning God created the heaven and the earth.",
    "",
    "   \t\n  ",
    "\xff\xfe\x80 broken \xc3 utf-8 \xed\xa0\x80 \xf4\x90\x80\x80",
    "e\xcc\x81\xcc\x82 A\xcc\x8a \xe1\x84\x80\xe1\x85\xa1",
    "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xed\x95\x9c\xea\xb5\xad\xec\x96\xb4 ",
    "\xd8\xa7\xd9\x84\xd8\xb9\xd8\xb1\xd8\xa8\xd9\x8a\xd8\xa9",
    "\xf0\x9f\x98\x80\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd 123,456.78 ---- ''' \"\" ",
    "ctrl\x01\x02\x7f [CLS] [MASK] <unk> <s> </s> <|endoftext|>",
};
enum { FUZZ_N_TEXTS = sizeof fuzz_texts / sizeof fuzz_texts[0] };

#endif
