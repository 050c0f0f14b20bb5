/* bench_service_load.c: the dataset service under load. Starts one
 * `mlmpi-data serve` on loopback, then --procs client processes of --clients
 * service clients each (one connection apiece, no prefetch: every get is one
 * request), all asking for slices as fast as they are answered for
 * --seconds. Reports batches/s and the get latency (p50, p99, p99.9) after
 * the warm-up, samples the server's resident memory (VmRSS) and its
 * established connections every second, and fails (exit 1) when the memory
 * grows after the warm-up, a get fails or differs from the in-process batch
 * (one in --verify-every is compared), or fewer connections than clients were
 * seen. The short default is the `fault`-labelled test; --seconds 300 is the
 * figure in docs/reliability.md. */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_svc_util.h"
#include "service.h"
#include "shard.h"

#ifndef MLMPI_DATA_BIN
#define MLMPI_DATA_BIN "mlmpi-data"
#endif

#define LAT_BUCKETS 1000 /* bucket i: latencies below 10 us * 1.02^(i+1) */
#define LAT_BASE_S 1e-5
#define LAT_STEP 1.02

typedef struct {
  const char *bin, *data;
  int procs, clients, workers, docs, seq_len, slice, global, verify_every;
  double seconds, warmup, tol_mib, tol_pct;
} load_args;

/* What one client process measured; the parent adds them up. */
typedef struct {
  uint64_t gets, errors, mismatches, verified;
  uint64_t hist[LAT_BUCKETS];
} load_result;

static data_config load_config(const load_args *a) {
  data_config c = data_config_default();
  c.seq_len = a->seq_len;
  c.max_predictions = (a->seq_len * 20 + 127) / 128; /* BERT's 20 at 128 */
  return c;
}

static int lat_bucket(double s) {
  if (s <= LAT_BASE_S) return 0;
  int b = (int)(log(s / LAT_BASE_S) / log(LAT_STEP));
  return b < LAT_BUCKETS ? b : LAT_BUCKETS - 1;
}

/* The upper edge of the bucket holding the q-quantile, in ms. */
static double lat_quantile(const uint64_t *hist, uint64_t total, double q) {
  uint64_t want = (uint64_t)ceil(q * (double)total), seen = 0;
  for (int b = 0; b < LAT_BUCKETS; b++)
    if ((seen += hist[b]) >= want && want > 0) return LAT_BASE_S * pow(LAT_STEP, b + 1) * 1e3;
  return NAN;
}

/* ---- A client process ------------------------------------------------------ */

typedef struct {
  const load_args *a;
  const char *addr;
  const dataset *local;
  int index; /* of this client among all */
  pthread_barrier_t *ready;
  const double *window; /* [start of the measurement, end], core_now_s() */
  pthread_mutex_t *mu;
  load_result *sum;
  char first_error[512];
} client_arg;

static void *client_main(void *p) {
  client_arg *ca = p;
  const load_args *a = ca->a;
  data_config cfg = load_config(a);
  svc_client_options o = svc_client_options_default();
  o.addresses = ca->addr;
  o.config = cfg;
  o.global_batch = (uint64_t)a->global;
  o.depth = 1; /* one request at a time: a get's time is one round trip */
  o.ahead = 0;
  o.timeout_ms = 30000;
  load_result r;
  memset(&r, 0, sizeof r);
  svc_client *c = NULL;
  data_batch got = {0}, want = {0};
  const uint64_t per_step = (uint64_t)(a->global / a->slice);
  const uint64_t first = (uint64_t)(ca->index % (int)per_step) * (uint64_t)a->slice;
  bool ok = svc_client_open(&c, &o) == STATUS_OK &&
            data_batch_alloc(&got, a->slice, cfg.seq_len, cfg.max_predictions) == STATUS_OK &&
            data_batch_alloc(&want, a->slice, cfg.seq_len, cfg.max_predictions) == STATUS_OK &&
            /* Connected and served once before the clock starts. */
            svc_client_get(c, 0, first, a->slice, &got) == STATUS_OK;
  if (!ok) snprintf(ca->first_error, sizeof ca->first_error, "%s", status_message());
  pthread_barrier_wait(ca->ready);
  pthread_barrier_wait(ca->ready); /* the parent has sent the window */
  double now;
  for (uint64_t step = 1; ok && (now = core_now_s()) < ca->window[1]; step++) {
    status_t st = svc_client_get(c, step, first, a->slice, &got);
    double done = core_now_s();
    if (st != STATUS_OK) {
      if (!r.errors++) snprintf(ca->first_error, sizeof ca->first_error, "%s", status_message());
      continue;
    }
    if (now < ca->window[0]) continue; /* warm-up */
    r.gets++;
    r.hist[lat_bucket(done - now)]++;
    if (step % (uint64_t)a->verify_every == 0) {
      r.verified++;
      size_t nt = (size_t)a->slice * cfg.seq_len * 4,
             np = (size_t)a->slice * cfg.max_predictions * 4;
      if (dataset_get_batch(ca->local, (uint64_t)a->global, step, first, a->slice, &want) !=
              STATUS_OK ||
          memcmp(want.input_ids, got.input_ids, nt) ||
          memcmp(want.input_mask, got.input_mask, nt) ||
          memcmp(want.segment_ids, got.segment_ids, nt) ||
          memcmp(want.masked_lm_positions, got.masked_lm_positions, np) ||
          memcmp(want.masked_lm_ids, got.masked_lm_ids, np) ||
          memcmp(want.masked_lm_weights, got.masked_lm_weights, np) ||
          memcmp(want.next_sentence_labels, got.next_sentence_labels, (size_t)a->slice * 4))
        r.mismatches++;
    }
  }
  if (!ok) r.errors++;
  svc_client_free(c);
  data_batch_free(&got);
  data_batch_free(&want);
  pthread_mutex_lock(ca->mu);
  ca->sum->gets += r.gets;
  ca->sum->errors += r.errors;
  ca->sum->mismatches += r.mismatches;
  ca->sum->verified += r.verified;
  for (int b = 0; b < LAT_BUCKETS; b++) ca->sum->hist[b] += r.hist[b];
  pthread_mutex_unlock(ca->mu);
  return NULL;
}

static bool write_all(int fd, const void *p, size_t n) {
  for (const char *q = p; n;) {
    ssize_t w = write(fd, q, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    q += w;
    n -= (size_t)w;
  }
  return true;
}

static bool read_all(int fd, void *p, size_t n) {
  for (char *q = p; n;) {
    ssize_t r = read(fd, q, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    q += r;
    n -= (size_t)r;
  }
  return true;
}

/* One client process: opens its clients, says "ready" on out, reads the
 * measurement window from in, runs, writes its load_result to out. */
static int client_process(const load_args *a, const char *addr, const char *dir, int proc, int in,
                          int out) {
  data_config cfg = load_config(a);
  dataset *local = NULL;
  if (dataset_open(&local, dir, "train", &cfg) != STATUS_OK) {
    fprintf(stderr, "bench_service_load: client process %d: %s\n", proc, status_message());
    return 1;
  }
  int n = a->clients;
  pthread_t *th = calloc((size_t)n, sizeof *th);
  client_arg *ca = calloc((size_t)n, sizeof *ca);
  load_result *sum = calloc(1, sizeof *sum);
  if (!th || !ca || !sum) return 1;
  pthread_barrier_t ready;
  pthread_barrier_init(&ready, NULL, (unsigned)n + 1);
  pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
  double window[2] = {0, 0};
  for (int i = 0; i < n; i++) {
    ca[i] = (client_arg){.a = a,
                         .addr = addr,
                         .local = local,
                         .index = proc * n + i,
                         .ready = &ready,
                         .window = window,
                         .mu = &mu,
                         .sum = sum};
    if (pthread_create(&th[i], NULL, client_main, &ca[i]) != 0) {
      fprintf(stderr, "bench_service_load: cannot start client thread %d\n", i);
      _exit(1);
    }
  }
  pthread_barrier_wait(&ready); /* every client connected and served once */
  char r = 'R';
  bool ok = write_all(out, &r, 1) && read_all(in, window, sizeof window);
  if (!ok) window[0] = window[1] = 0; /* the parent is gone: stop at once */
  pthread_barrier_wait(&ready);
  for (int i = 0; i < n; i++) pthread_join(th[i], NULL);
  for (int i = 0; i < n; i++)
    if (ca[i].first_error[0]) {
      fprintf(stderr, "bench_service_load: client %d: %s\n", ca[i].index, ca[i].first_error);
      break;
    }
  ok = ok && write_all(out, sum, sizeof *sum);
  dataset_free(local);
  free(th);
  free(ca);
  free(sum);
  return ok ? 0 : 1;
}

/* ---- The parent: the server's memory and connections ----------------------- */

/* The VmRSS of pid in KiB; -1 when it cannot be read. */
static long rss_kib(pid_t pid) {
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
  FILE *f = fopen(path, "r");
  long kib = -1;
  while (f && fgets(line, sizeof line, f))
    if (!strncmp(line, "VmRSS:", 6)) kib = strtol(line + 6, NULL, 10);
  if (f) fclose(f);
  return kib;
}

/* Established TCP connections whose local port is port (the server's ends). */
static int established(int port) {
  int n = 0;
  for (int v6 = 0; v6 < 2; v6++) {
    FILE *f = fopen(v6 ? "/proc/net/tcp6" : "/proc/net/tcp", "r");
    char line[512];
    while (f && fgets(line, sizeof line, f)) {
      char local[128];
      unsigned st;
      if (sscanf(line, " %*d: %127s %*s %x", local, &st) != 2) continue;
      const char *colon = strrchr(local, ':');
      if (colon && (int)strtol(colon + 1, NULL, 16) == port && st == 1) n++;
    }
    if (f) fclose(f);
  }
  return n;
}

static double mean(const double *v, int n) {
  double s = 0;
  for (int i = 0; i < n; i++) s += v[i];
  return n ? s / n : NAN;
}

static const char usage[] =
    "usage: bench_service_load [--seconds S] [--warmup S] [--procs P] [--clients C]\n"
    "                          [--workers N] [--seq-len T] [--slice S] [--global-batch B]\n"
    "                          [--verify-every K] [--rss-tolerance-mib M] [--rss-tolerance-pct X]\n"
    "                          [--docs N] [--data DIR] [--bin PATH-TO-mlmpi-data]\n"
    "  Defaults: --seconds 25 --warmup 5 --procs 4 --clients 16 (64 connections) --workers\n"
    "  (server default: its cores) --seq-len 128 --slice 8 --global-batch 256 --verify-every 16\n"
    "  --rss-tolerance-mib 1 --rss-tolerance-pct 5 --docs 4000. Memory is flat when the mean\n"
    "  VmRSS of the last third of the samples after the warm-up exceeds that of the first\n"
    "  third by no more than the larger tolerance.\n";

static int parse_args(int argc, char **argv, load_args *a) {
  for (int i = 1; i < argc; i++) {
    const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(k, "--help")) return fputs(usage, stdout), 0;
    if (!v) return fprintf(stderr, "bench_service_load: %s needs a value\n%s", k, usage), 2;
    i++;
    char *end = NULL;
    double x = strtod(v, &end);
    bool num = end != v && !*end;
    if (!strcmp(k, "--data"))
      a->data = v;
    else if (!strcmp(k, "--bin"))
      a->bin = v;
    else if (!num)
      return fprintf(stderr, "bench_service_load: %s needs a number\n", k), 2;
    else if (!strcmp(k, "--seconds"))
      a->seconds = x;
    else if (!strcmp(k, "--warmup"))
      a->warmup = x;
    else if (!strcmp(k, "--procs"))
      a->procs = (int)x;
    else if (!strcmp(k, "--clients"))
      a->clients = (int)x;
    else if (!strcmp(k, "--workers"))
      a->workers = (int)x;
    else if (!strcmp(k, "--seq-len"))
      a->seq_len = (int)x;
    else if (!strcmp(k, "--slice"))
      a->slice = (int)x;
    else if (!strcmp(k, "--global-batch"))
      a->global = (int)x;
    else if (!strcmp(k, "--verify-every"))
      a->verify_every = (int)x;
    else if (!strcmp(k, "--rss-tolerance-mib"))
      a->tol_mib = x;
    else if (!strcmp(k, "--rss-tolerance-pct"))
      a->tol_pct = x;
    else if (!strcmp(k, "--docs"))
      a->docs = (int)x;
    else
      return fprintf(stderr, "bench_service_load: unknown option %s\n%s", k, usage), 2;
  }
  if (a->procs < 1 || a->clients < 1 || a->procs * a->clients > 4096 || a->slice < 1 ||
      a->global < a->slice || a->global % a->slice || a->verify_every < 1 || a->docs < 2 ||
      a->warmup < 0 || a->seconds < a->warmup + 3)
    return fprintf(stderr,
                   "bench_service_load: need 1..4096 clients in all, --global-batch a multiple "
                   "of --slice, and --seconds at least --warmup + 3\n"),
           2;
  return -1;
}

/* Lets the server and this process hold a socket per client and some to
 * spare; false when the hard limit is too low. */
static bool enough_files(int connections, long *limit) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return false;
  rlim_t need = (rlim_t)connections + 256;
  if (rl.rlim_cur < need && rl.rlim_max >= need) {
    rl.rlim_cur = need;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
  }
  *limit = (long)rl.rlim_cur;
  return rl.rlim_cur >= need;
}

int main(int argc, char **argv) {
  load_args a = {.bin = MLMPI_DATA_BIN,
                 .procs = 4,
                 .clients = 16,
                 .docs = 4000,
                 .seq_len = 128,
                 .slice = 8,
                 .global = 256,
                 .verify_every = 16,
                 .seconds = 25,
                 .warmup = 5,
                 .tol_mib = 1,
                 .tol_pct = 5};
  int rc = parse_args(argc, argv, &a);
  if (rc >= 0) return rc;
  rc = 0;
  const int conns = a.procs * a.clients;
  long nofile = 0;
  if (!enough_files(conns, &nofile))
    return fprintf(stderr,
                   "bench_service_load: %d connections need %d open files, the limit is %ld\n",
                   conns, conns + 256, nofile),
           1;
  signal(SIGPIPE, SIG_IGN);
  char tmp[] = "/tmp/mlmpi_service_load_XXXXXX";
  const char *dir = a.data;
  if (!dir) {
    if (!mkdtemp(tmp))
      return fprintf(stderr, "bench_service_load: mkdtemp: %s\n", strerror(errno)), 1;
    dir = tmp;
    if (!bench_make_corpus(dir, a.docs))
      return fprintf(stderr, "bench_service_load: cannot write the corpus: %s\n", status_message()),
             1;
  }
  pid_t server = -1;
  int port = bench_start_server(a.bin, a.workers, dir, &server, "bench_service_load");
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
  pid_t *kids = calloc((size_t)a.procs, sizeof *kids);
  int *to_kid = calloc((size_t)a.procs, sizeof *to_kid),
      *from_kid = calloc((size_t)a.procs, sizeof *from_kid);
  int n_samples = (int)a.seconds + 2, n_rss = 0;
  double *rss = calloc((size_t)n_samples, sizeof *rss);
  load_result *sum = calloc(1, sizeof *sum), *part = calloc(1, sizeof *part);
  if (!port || !kids || !to_kid || !from_kid || !rss || !sum || !part) {
    fprintf(stderr, "bench_service_load: the server did not start (%s)\n", a.bin);
    rc = 1;
    goto done;
  }
  printf(
      "service load: %d processes x %d clients = %d connections to %s (%ld cores, open files "
      "limit %ld), T=%d slices of %d, %.0f s (%.0f s warm-up)\n",
      a.procs, a.clients, conns, addr, sysconf(_SC_NPROCESSORS_ONLN), nofile, a.seq_len, a.slice,
      a.seconds, a.warmup);
  fflush(stdout);
  int started = 0;
  for (; started < a.procs; started++) {
    int down[2], up[2];
    if (pipe(down) != 0 || pipe(up) != 0) break;
    pid_t pid = fork();
    if (pid < 0) break;
    if (pid == 0) {
      close(down[1]);
      close(up[0]);
      for (int k = 0; k < started; k++) close(to_kid[k]), close(from_kid[k]);
      _exit(client_process(&a, addr, dir, started, down[0], up[1]));
    }
    close(down[0]);
    close(up[1]);
    kids[started] = pid;
    to_kid[started] = down[1];
    from_kid[started] = up[0];
  }
  bool ok = started == a.procs;
  for (int k = 0; k < started && ok; k++) {
    char r;
    ok = read_all(from_kid[k], &r, 1) && r == 'R';
  }
  double t0 = core_now_s();
  double window[2] = {t0 + a.warmup, t0 + a.seconds};
  for (int k = 0; k < started; k++) {
    if (!ok) window[0] = window[1] = 0;
    write_all(to_kid[k], window, sizeof window);
  }
  long rss_start = rss_kib(server), rss_max = rss_start;
  int max_conns = 0;
  for (int s = 1; ok && s <= (int)a.seconds; s++) {
    double wake = t0 + s;
    while (core_now_s() < wake) usleep((useconds_t)((wake - core_now_s()) * 1e6) + 1000);
    long kib = rss_kib(server);
    int nc = established(port);
    if (kib < 0) {
      fprintf(stderr, "bench_service_load: the server (pid %d) is gone\n", (int)server);
      ok = false;
      break;
    }
    rss_max = kib > rss_max ? kib : rss_max;
    max_conns = nc > max_conns ? nc : max_conns;
    if (s > a.warmup && n_rss < n_samples) rss[n_rss++] = kib / 1024.0;
    if (s % 10 == 0 || s == (int)a.seconds) {
      printf("  t=%3d s: server VmRSS %.1f MiB, %d connections\n", s, kib / 1024.0, nc);
      fflush(stdout);
    }
  }
  for (int k = 0; k < started; k++) {
    if (!read_all(from_kid[k], part, sizeof *part)) ok = false;
    sum->gets += part->gets;
    sum->errors += part->errors;
    sum->mismatches += part->mismatches;
    sum->verified += part->verified;
    for (int b = 0; b < LAT_BUCKETS; b++) sum->hist[b] += part->hist[b];
    int st = 0;
    waitpid(kids[k], &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) ok = false;
  }
  double span = a.seconds - a.warmup;
  int third = n_rss / 3;
  double first = mean(rss, third), last = mean(rss + n_rss - third, third);
  double allowed = fmax(a.tol_mib, first * a.tol_pct / 100);
  bool flat = third >= 1 && last - first <= allowed;
  bool conns_ok = max_conns >= conns;
  double p50 = lat_quantile(sum->hist, sum->gets, 0.5),
         p99 = lat_quantile(sum->hist, sum->gets, 0.99),
         p999 = lat_quantile(sum->hist, sum->gets, 0.999);
  printf(
      "service load: %.0f batches/s = %.0f sequences/s over %.0f s after the warm-up "
      "(%llu gets); latency p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms\n",
      sum->gets / span, sum->gets * a.slice / span, span, (unsigned long long)sum->gets, p50, p99,
      p999);
  printf(
      "service load: server VmRSS %.1f MiB before the load, %.1f MiB at most; after the "
      "warm-up first third %.2f MiB, last third %.2f MiB (growth %+.2f MiB, allowed %.2f)\n",
      rss_start / 1024.0, rss_max / 1024.0, first, last, last - first, allowed);
  bool pass = ok && flat && conns_ok && sum->errors == 0 && sum->mismatches == 0 && sum->gets > 0;
  printf(
      "service load: injected %d concurrent connections from %d processes for %.0f s on "
      "loopback; checked: %d connections seen at the server (want >= %d), %llu failed gets, "
      "%llu of %llu sampled batches differing from the in-process ones, server memory %s: %s\n",
      conns, a.procs, a.seconds, max_conns, conns, (unsigned long long)sum->errors,
      (unsigned long long)sum->mismatches, (unsigned long long)sum->verified,
      flat ? "flat" : "growing", pass ? "PASS" : "FAIL");
  rc = pass ? 0 : 1;
done:
  if (port) {
    kill(server, SIGTERM);
    int st = 0;
    waitpid(server, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      fprintf(stderr, "bench_service_load: the server ended with status %d\n", st);
      rc = 1;
    }
  }
  if (!a.data) {
    for (int p = 0; p < 2; p++) {
      char path[4096];
      snprintf(path, sizeof path, "%s/train-%05d.mlms", dir, p);
      unlink(path);
    }
    rmdir(dir);
  }
  free(kids);
  free(to_kid);
  free(from_kid);
  free(rss);
  free(sum);
  free(part);
  return rc;
}
