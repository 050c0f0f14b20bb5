/* bench_service.c: the dataset service against the training step it feeds.
 * Starts one `mlmpi-data serve` process on a synthetic corpus and measures,
 * at each sequence length, what one client receives through it (slices of a
 * global batch, prefetched), the latency of a single unprefetched slice
 * (p50, p99), and the in-process batch function for comparison. Headroom is
 * the service's sequences/s over the sequences/s BERT-base training
 * consumes (docs/performance.md: tokens/s per step at T=128; the same
 * tokens/s is assumed at T=512, which overstates consumption there, so the
 * headroom printed for T=512 is a lower bound). Client and server share the
 * machine's cores, as the numbers say. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_svc_util.h"
#include "service.h"
#include "shard.h"

#ifndef MLMPI_DATA_BIN
#define MLMPI_DATA_BIN "mlmpi-data"
#endif

typedef struct {
  const char *bin, *data;
  int docs, global, slice, workers;
  double seconds, train_tok_s;
  int seq_lens[4], n_seq;
} bench_args;

static int cmp_double(const void *x, const void *y) {
  double a = *(const double *)x, b = *(const double *)y;
  return (a > b) - (a < b);
}

/* Sequences/s of dataset_get_batch in this process, one thread. */
static double inprocess_rate(const bench_args *a, const char *dir, const data_config *cfg) {
  dataset *d;
  if (dataset_open(&d, dir, "train", cfg) != STATUS_OK) return -1;
  data_batch b;
  if (data_batch_alloc(&b, a->slice, cfg->seq_len, cfg->max_predictions) != STATUS_OK) {
    dataset_free(d);
    return -1;
  }
  int per_step = a->global / a->slice;
  uint64_t n = 0;
  double t0 = core_now_s(), t;
  do {
    for (int k = 0; k < per_step; k++, n++)
      dataset_get_batch(d, (uint64_t)a->global, n / (uint64_t)per_step,
                        (uint64_t)(n % (uint64_t)per_step) * (uint64_t)a->slice, a->slice, &b);
  } while ((t = core_now_s() - t0) < a->seconds / 2);
  data_batch_free(&b);
  dataset_free(d);
  return (double)n * a->slice / t;
}

/* Slices/s through the service with a planned, prefetched stream. */
static double service_rate(const bench_args *a, const char *addr, const data_config *cfg,
                           uint64_t first_step) {
  svc_client_options o = svc_client_options_default();
  o.addresses = addr;
  o.config = *cfg;
  o.global_batch = (uint64_t)a->global;
  o.depth = 16;
  svc_client *c;
  if (svc_client_open(&c, &o) != STATUS_OK) return -1;
  int per_step = a->global / a->slice;
  enum { CHUNK = 4096 };
  svc_key *plan = malloc(CHUNK * sizeof *plan);
  data_batch b;
  if (!plan || data_batch_alloc(&b, a->slice, cfg->seq_len, cfg->max_predictions) != STATUS_OK) {
    free(plan);
    svc_client_free(c);
    return -1;
  }
  uint64_t n = 0, planned = 0;
  double t0 = core_now_s(), t = 0;
  status_t st = STATUS_OK;
  while (st == STATUS_OK && (t = core_now_s() - t0) < a->seconds) {
    if (planned - n < CHUNK / 2) {
      for (int i = 0; i < CHUNK; i++, planned++)
        plan[i] = (svc_key){first_step + planned / (uint64_t)per_step,
                            (planned % (uint64_t)per_step) * (uint64_t)a->slice, a->slice};
      svc_client_plan(c, plan, CHUNK);
    }
    st = svc_client_get(c, first_step + n / (uint64_t)per_step,
                        (n % (uint64_t)per_step) * (uint64_t)a->slice, a->slice, &b);
    n++;
  }
  if (st) fprintf(stderr, "bench_service: %s\n", status_message());
  data_batch_free(&b);
  free(plan);
  svc_client_free(c);
  return st ? -1 : (double)n / t;
}

/* Latency of one slice without prefetching: p50 and p99 in ms. */
static int service_latency(const bench_args *a, const char *addr, const data_config *cfg,
                           uint64_t first_step, double *p50, double *p99) {
  svc_client_options o = svc_client_options_default();
  o.addresses = addr;
  o.config = *cfg;
  o.global_batch = (uint64_t)a->global;
  o.depth = 1;
  o.ahead = 0;
  svc_client *c;
  if (svc_client_open(&c, &o) != STATUS_OK) return -1;
  enum { N = 400 };
  double lat[N];
  data_batch b;
  int got = 0;
  if (data_batch_alloc(&b, a->slice, cfg->seq_len, cfg->max_predictions) == STATUS_OK) {
    double t_end = core_now_s() + a->seconds;
    for (; got < N && core_now_s() < t_end; got++) {
      double t0 = core_now_s();
      if (svc_client_get(c, first_step + (uint64_t)got, 0, a->slice, &b) != STATUS_OK) break;
      lat[got] = (core_now_s() - t0) * 1e3;
    }
    data_batch_free(&b);
  }
  svc_client_free(c);
  if (got < 10) return -1;
  qsort(lat, (size_t)got, sizeof *lat, cmp_double);
  *p50 = lat[got / 2];
  *p99 = lat[(int)(got * 0.99)];
  return got;
}

static const char usage[] =
    "usage: bench_service [--seq-len T[,T...]] [--global-batch B] [--slice S] [--docs N]\n"
    "                     [--seconds X] [--workers N] [--train-tokens-per-s X] [--data DIR]\n"
    "                     [--bin PATH-TO-mlmpi-data]\n"
    "  Defaults: --seq-len 128,512 --global-batch 256 --slice 32 --docs 40000 --seconds 5\n"
    "  --workers (server default: its cores) --train-tokens-per-s 239 (BERT-base, T=128,\n"
    "  docs/performance.md).\n";

int main(int argc, char **argv) {
  bench_args a = {.bin = MLMPI_DATA_BIN,
                  .docs = 40000,
                  .global = 256,
                  .slice = 32,
                  .seconds = 5,
                  .train_tok_s = 239,
                  .seq_lens = {128, 512},
                  .n_seq = 2};
  for (int i = 1; i < argc; i++) {
    const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(k, "--help")) return fputs(usage, stdout), 0;
    if (!v) return fprintf(stderr, "bench_service: %s needs a value\n%s", k, usage), 2;
    i++;
    if (!strcmp(k, "--seq-len")) {
      a.n_seq = 0;
      for (char *p = (char *)v; *p && a.n_seq < 4; p++) {
        a.seq_lens[a.n_seq++] = (int)strtol(p, &p, 10);
        if (*p != ',') break;
      }
    } else if (!strcmp(k, "--global-batch"))
      a.global = atoi(v);
    else if (!strcmp(k, "--slice"))
      a.slice = atoi(v);
    else if (!strcmp(k, "--docs"))
      a.docs = atoi(v);
    else if (!strcmp(k, "--seconds"))
      a.seconds = atof(v);
    else if (!strcmp(k, "--workers"))
      a.workers = atoi(v);
    else if (!strcmp(k, "--train-tokens-per-s"))
      a.train_tok_s = atof(v);
    else if (!strcmp(k, "--data"))
      a.data = v;
    else if (!strcmp(k, "--bin"))
      a.bin = v;
    else
      return fprintf(stderr, "bench_service: unknown option %s\n%s", k, usage), 2;
  }
  if (a.slice < 1 || a.global < a.slice || a.global % a.slice || a.seconds <= 0)
    return fprintf(stderr, "bench_service: --global-batch must be a multiple of --slice\n"), 2;
  char tmp[] = "/tmp/mlmpi_bench_service_XXXXXX";
  const char *dir = a.data;
  uint64_t tokens = 0;
  if (!dir) {
    if (!mkdtemp(tmp)) return fprintf(stderr, "bench_service: mkdtemp: %s\n", strerror(errno)), 1;
    dir = tmp;
    if (!(tokens = bench_make_corpus(dir, a.docs)))
      return fprintf(stderr, "bench_service: cannot write the corpus: %s\n", status_message()), 1;
  }
  pid_t pid;
  int port = bench_start_server(a.bin, a.workers, dir, &pid, "bench_service"), rc = 0;
  if (!port) {
    fprintf(stderr, "bench_service: the server did not start (%s)\n", a.bin);
    rc = 1;
  }
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  printf("dataset service benchmark: %ld cores shared by server and client; corpus %s%s", cores,
         dir, tokens ? "" : "\n");
  if (tokens) printf(" (%d documents, %llu tokens)\n", a.docs, (unsigned long long)tokens);
  char workers[32];
  snprintf(workers, sizeof workers, a.workers ? "%d" : "its cores", a.workers);
  printf("global batch %d in slices of %d; server workers: %s; training consumes %.0f tokens/s\n",
         a.global, a.slice, workers, a.train_tok_s);
  for (int i = 0; i < a.n_seq && !rc; i++) {
    data_config cfg = data_config_default();
    cfg.seq_len = a.seq_lens[i];
    cfg.max_predictions = (cfg.seq_len * 20 + 127) / 128; /* BERT's 20 at 128, 80 at 512 */
    double inproc = inprocess_rate(&a, dir, &cfg);
    double slices = service_rate(&a, addr, &cfg, 0);
    double p50 = 0, p99 = 0;
    int nlat = service_latency(&a, addr, &cfg, 1000000, &p50, &p99);
    if (inproc < 0 || slices < 0 || nlat < 0) {
      fprintf(stderr, "bench_service: T=%d failed: %s\n", cfg.seq_len, status_message());
      rc = 1;
      break;
    }
    double seq_s = slices * a.slice, train_seq_s = a.train_tok_s / cfg.seq_len;
    printf(
        "T=%d: service %.1f slices/s = %.2f global batches/s = %.0f sequences/s "
        "(in-process, one thread: %.0f sequences/s); latency of one slice unprefetched "
        "p50 %.2f ms p99 %.2f ms (%d gets); training consumes %.2f sequences/s; "
        "headroom %.0fx\n",
        cfg.seq_len, slices, slices * a.slice / a.global, seq_s, inproc, p50, p99, nlat,
        train_seq_s, seq_s / train_seq_s);
    fflush(stdout);
  }
  if (port) {
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
  }
  if (!a.data) {
    for (int part = 0; part < 2; part++) {
      char p[4096];
      snprintf(p, sizeof p, "%s/train-%05d.mlms", dir, part);
      unlink(p);
    }
    rmdir(dir);
  }
  return rc;
}
