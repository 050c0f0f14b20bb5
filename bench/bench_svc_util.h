/* bench_svc_util.h: what the dataset-service benchmarks share: a synthetic
 * corpus of shards and an `mlmpi-data serve` child on a free loopback port. */
#ifndef MLMPI_BENCH_SVC_UTIL_H
#define MLMPI_BENCH_SVC_UTIL_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shard.h"

static inline uint32_t bench_lcg(uint32_t *s) {
  *s = *s * 1664525u + 1013904223u;
  return *s >> 8;
}

/* Two shards (train-00000/1.mlms in dir) of `docs` documents of random
 * sentences over a BERT-sized vocabulary. Returns the token count, 0 on
 * failure (status_message says why). */
static inline uint64_t bench_make_corpus(const char *dir, int docs) {
  shard_meta m = {.tokenizer_fingerprint = 7,
                  .vocab_size = 30522,
                  .cls_id = 101,
                  .sep_id = 102,
                  .mask_id = 103,
                  .pad_id = 0,
                  .unk_id = 100};
  snprintf(m.tokenizer_kind, sizeof m.tokenizer_kind, "wordpiece");
  snprintf(m.split, sizeof m.split, "train");
  uint32_t seed = 1, ends[24];
  int32_t ids[24 * 44];
  uint8_t words[sizeof ids / sizeof *ids / 8 + 1];
  uint64_t tokens = 0;
  for (int part = 0; part < 2; part++) {
    char path[4096];
    snprintf(path, sizeof path, "%s/train-%05d.mlms", dir, part);
    shard_writer *w;
    if (shard_writer_open(&w, path, &m) != STATUS_OK) return 0;
    for (int d = part; d < docs; d += 2) {
      int ns = 1 + (int)(bench_lcg(&seed) % 24), n = 0;
      for (int k = 0; k < ns; k++) {
        int len = 4 + (int)(bench_lcg(&seed) % 40);
        for (int i = 0; i < len; i++) ids[n++] = 1000 + (int32_t)(bench_lcg(&seed) % 29000);
        ends[k] = (uint32_t)n;
      }
      memset(words, 0, sizeof words);
      for (int i = 0; i < n; i += 2) words[i / 8] |= (uint8_t)(1u << (i % 8));
      if (shard_writer_add(w, ids, (size_t)n, ends, (size_t)ns, words) != STATUS_OK) {
        shard_writer_abort(w);
        return 0;
      }
      tokens += (uint64_t)n;
    }
    if (shard_writer_close(w) != STATUS_OK) return 0;
  }
  return tokens;
}

/* Starts `bin serve --data dir --port 0 [--workers N]` (workers <= 0: the
 * default) and reads its port from its first line; 0 on failure. who names
 * the caller in an exec failure. */
static inline int bench_start_server(const char *bin, int workers, const char *dir, pid_t *pid,
                                     const char *who) {
  int fd[2];
  if (pipe(fd) != 0) return 0;
  char nw[16];
  snprintf(nw, sizeof nw, "%d", workers);
  *pid = fork();
  if (*pid == 0) {
    dup2(fd[1], 1);
    close(fd[0]);
    close(fd[1]);
    if (workers > 0)
      execl(bin, bin, "serve", "--data", dir, "--port", "0", "--workers", nw, (char *)0);
    else
      execl(bin, bin, "serve", "--data", dir, "--port", "0", (char *)0);
    fprintf(stderr, "%s: cannot run %s: %s\n", who, bin, strerror(errno));
    _exit(127);
  }
  close(fd[1]);
  FILE *f = fdopen(fd[0], "r");
  char line[256] = "";
  int port = 0;
  if (f && fgets(line, sizeof line, f) && !strncmp(line, "listening on tcp://", 19)) {
    const char *colon = strrchr(line, ':');
    port = colon ? atoi(colon + 1) : 0;
  }
  if (f) fclose(f);
  return port;
}

#endif
