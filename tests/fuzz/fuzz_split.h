/* fuzz_split.h: inputs that are several files, separated by NUL bytes
 * (which none of the text formats involved may hold). */
#ifndef MLMPI_FUZZ_SPLIT_H
#define MLMPI_FUZZ_SPLIT_H

#include "fuzz_util.h"

/* Writes the parts of data[0..size) separated by NUL to the files names[i];
 * a part past the last separator is empty, and one that is missing leaves
 * its file absent (names[i] is removed). Returns how many parts there were. */
static inline int fuzz_write_parts(const uint8_t *data, size_t size, const char *const *names,
                                   int n_names) {
  size_t at = 0;
  int k = 0;
  for (; k < n_names && at <= size; k++) {
    const uint8_t *z = at < size ? memchr(data + at, 0, size - at) : NULL;
    size_t end = z ? (size_t)(z - data) : size;
    fuzz_write(names[k], data + at, end - at);
    at = end + 1;
    if (!z) {
      k++;
      break;
    }
  }
  for (int i = k; i < n_names; i++) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", fuzz_dir(), names[i]);
    unlink(p);
  }
  return k;
}

#endif
