/* bench_optim.c: the optimizer step alone on a BERT-base-sized parameter
 * buffer (the BERT-base table, about 110M floats), in GB/s of memory traffic
 * against the machine's copy bandwidth measured in the same run.
 *
 * Traffic counted per parameter (the reads and writes the passes make):
 *   gradient norm: read g                                  4 B
 *   LAMB pass 1: read g, m, v, w; write m, v               24 B
 *   LAMB pass 2: read m, v, w; write w                     16 B   (LAMB 44 B)
 *   AdamW: read g, m, v, w; write m, v, w                  28 B   (AdamW 32 B)
 * Copy bandwidth: memcpy of a buffer of the same size, counted as read +
 * write. Prints one JSON line per optimizer. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "optim.h"
#include "trainer.h"

/* Best-of-reps copy bandwidth (GB/s, read + write) with the same threads. */
static double copy_gbs(float *dst, const float *src, size_t n, int reps) {
  double best = 1e30;
  for (int r = 0; r < reps; r++) {
    double t0 = core_now_s();
#pragma omp parallel
    {
      int nt = omp_get_num_threads(), t = omp_get_thread_num();
      size_t b = n * (size_t)t / (size_t)nt, e = n * (size_t)(t + 1) / (size_t)nt;
      memcpy(dst + b, src + b, (e - b) * sizeof(float));
    }
    double dt = core_now_s() - t0;
    best = dt < best ? dt : best;
  }
  return 2.0 * (double)n * sizeof(float) / best / 1e9;
}

int main(int argc, char **argv) {
  int steps = 5;
  if (argc > 2 && !strcmp(argv[1], "--steps")) steps = atoi(argv[2]);
  /* The BERT-base table: the real tensor sizes, flags and chunking. */
  bert_config c = bert_config_default();
  bert_model *model;
  if (bert_init(&model, &c, 1, 8, 1, 0) != STATUS_OK) {
    fprintf(stderr, "bench_optim: %s\n", status_message());
    return 1;
  }
  const param_table *t = bert_params(model);
  size_t n = t->total;
  float *w = bert_param_buf(model), *g = bert_grad_buf(model);
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; i++) {
    w[i] = 0.02f * (float)((i * 2654435761u) % 1000) / 1000.0f - 0.01f;
    g[i] = 1e-3f * (float)((i * 40503u) % 997) / 997.0f - 5e-4f;
  }
  float *scratch = mem_alloc(n * sizeof(float), "copy buffer");
  if (!scratch) return 1;
  double bw = copy_gbs(scratch, w, n, 5);
  const struct {
    optim_kind kind;
    const char *name;
    double bytes;
  } runs[] = {{OPTIM_LAMB, "lamb", 44.0}, {OPTIM_ADAMW, "adamw", 32.0}};
  for (int r = 0; r < 2; r++) {
    optim_config oc = optim_config_default();
    oc.kind = runs[r].kind;
    optim *o;
    if (optim_init(&o, &oc, t) != STATUS_OK) return 1;
    optim_stats st;
    optim_step(o, w, g, 1e-4f, &st); /* first touch of the moments */
    double best = 1e30;
    for (int s = 0; s < steps; s++) {
      double t0 = core_now_s();
      optim_step(o, w, g, 1e-4f, &st);
      double dt = core_now_s() - t0;
      best = dt < best ? dt : best;
    }
    double gbs = runs[r].bytes * (double)n / best / 1e9;
    printf(
        "{\"optim\":\"%s\",\"params\":%zu,\"step_ms\":%.1f,\"gb_per_s\":%.2f,"
        "\"copy_gb_per_s\":%.2f,\"fraction_of_copy\":%.3f,\"threads\":%d}\n",
        runs[r].name, n, best * 1e3, gbs, bw, gbs / bw, omp_get_max_threads());
    optim_free(o);
  }
  mem_free(scratch);
  bert_free(model);
  return 0;
}
