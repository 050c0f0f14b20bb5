/* test_comm_mpi.c: the communicator's all-reduces under a real mpirun.
 *
 * Run with any number of ranks; with MLMPI_COMM_GROUP=k the ranks of the
 * machine form groups of k that share memory, the groups standing for
 * nodes (so the cross-node step runs); with MLMPI_COMM_SHM=0 nothing is
 * shared. Checks, on every rank:
 *   - whether the gradient memory is shared is what the environment asks for
 *     (argv[1]: "shared" or "private");
 *   - spans of awkward lengths (0, 1, 15, 17, one chunk ± 1, several chunks,
 *     the whole buffer), many in flight at once, waited in issue order and in
 *     reverse, tested while in flight: each equals the sum of every rank's
 *     data; with integer-valued data exactly, with random data within
 *     float rounding of a double-precision sum, and bit-identical on every
 *     rank;
 *   - a span rewritten at once after its wait and all-reduced again gives the
 *     new sum (no rank still reads the old values);
 *   - plain memory (not from alloc_shared) goes through MPI alike.
 * Prints one line a check; exits non-zero on any failure. */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"

static int failures;

static void check(int rank, int ok, const char *what) {
  if (!ok) {
    failures++;
    fprintf(stderr, "rank %d: FAIL %s\n", rank, what);
  }
}

/* Rank r's value at index i: integers small enough to sum exactly. */
static float int_val(int r, size_t i) {
  return (float)((int)((i * 7 + (size_t)r * 13) % 101) - 50);
}

/* A random-looking value of rank r at i (no RNG state: reproducible). */
static float rnd_val(int r, size_t i) {
  uint64_t x = (uint64_t)i * 0x9E3779B97F4A7C15ull ^ ((uint64_t)r + 1) * 0xC2B2AE3D27D4EB4Full;
  x ^= x >> 29;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 32;
  return (float)((double)(x >> 11) / 9007199254740992.0 * 2.0 - 1.0) * 1e-3f;
}

typedef struct {
  size_t off, len;
} span;

/* All-reduces every span with all in flight, waiting in `order` (+1 or -1),
 * testing each once while in flight. */
static void reduce_spans(comm_t *c, float *buf, const span *s, int ns, int order) {
  comm_req **q = calloc((size_t)ns, sizeof *q);
  for (int k = 0; k < ns; k++)
    if (c->ops->iallreduce(c, buf + s[k].off, s[k].len, &q[k])) comm_fail(c, status_message());
  for (int k = 0; k < ns; k++) {
    bool d;
    if (c->ops->test(c, q[k], &d)) comm_fail(c, status_message());
  }
  for (int i = 0; i < ns; i++) {
    int k = order > 0 ? i : ns - 1 - i;
    if (c->ops->wait(c, q[k])) comm_fail(c, status_message());
  }
  free(q);
}

/* Whether every rank holds the same bytes in buf[0, n). */
static int same_everywhere(const float *buf, size_t n) {
  unsigned h = 2166136261u;
  const unsigned char *b = (const unsigned char *)buf;
  for (size_t i = 0; i < n * sizeof(float); i++) h = (h ^ b[i]) * 16777619u;
  unsigned lo = h, hi = h;
  MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_UNSIGNED, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_UNSIGNED, MPI_MAX, MPI_COMM_WORLD);
  return lo == hi;
}

static void run_suite(comm_t *c, float *buf, size_t n, const char *name) {
  const int rank = c->rank, size = c->size;
  const size_t chunk = (size_t)1 << 18; /* the default chunk: 1 MB of floats */
  /* Disjoint spans of awkward lengths, in no particular order of offset. */
  span s[16];
  int ns = 0;
  const size_t lens[] = {0, 1, 15, 17, 1000, chunk - 1, chunk + 1, 3 * chunk + 5};
  size_t off = 3;
  for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
    s[ns++] = (span){off, lens[k]};
    off += lens[k] + 16;
  }
  if (off > n) {
    check(rank, 0, "buffer too small for the spans");
    return;
  }
  char what[160];
  for (int order = 1; order >= -1; order -= 2) {
    for (size_t i = 0; i < n; i++) buf[i] = int_val(rank, i);
    reduce_spans(c, buf, s, ns, order);
    int bad = 0;
    for (int k = 0; k < ns; k++)
      for (size_t i = s[k].off; i < s[k].off + s[k].len; i++) {
        float want = 0;
        for (int r = 0; r < size; r++) want += int_val(r, i);
        bad += buf[i] != want;
      }
    /* Outside the spans nothing changed. */
    for (int k = 0; k <= ns; k++) {
      size_t a = k ? s[k - 1].off + s[k - 1].len : 0, b = k < ns ? s[k].off : n;
      for (size_t i = a; i < b; i++) bad += buf[i] != int_val(rank, i);
    }
    snprintf(what, sizeof what, "%s: %d spans of integers, waited %s: exact sums, rest untouched",
             name, ns, order > 0 ? "in order" : "in reverse");
    check(rank, bad == 0, what);
  }
  /* Random data over the whole buffer, in buckets as the reducer makes. */
  for (size_t i = 0; i < n; i++) buf[i] = rnd_val(rank, i);
  span whole[3] = {{0, n / 3}, {n / 3, n / 3}, {2 * (n / 3), n - 2 * (n / 3)}};
  reduce_spans(c, buf, whole, 3, 1);
  double worst = 0;
  for (size_t i = 0; i < n; i++) {
    double want = 0, mag = 0;
    for (int r = 0; r < size; r++) want += rnd_val(r, i), mag += fabs(rnd_val(r, i));
    double e = fabs(buf[i] - want) / (mag * (double)size * 6e-8 + 1e-30);
    worst = e > worst ? e : worst;
  }
  snprintf(what, sizeof what, "%s: random data within float rounding (worst %.3f of the bound)",
           name, worst);
  check(rank, worst <= 1.0, what);
  snprintf(what, sizeof what, "%s: bit-identical on every rank", name);
  check(rank, same_everywhere(buf, n), what);
  /* Reuse at once: new values right after the wait, reduced again. */
  int bad = 0;
  for (int round = 0; round < 20; round++) {
    for (size_t i = 0; i < s[6].len; i++) buf[s[6].off + i] = (float)(rank + round);
    reduce_spans(c, buf, &s[6], 1, 1);
    float want = (float)(size * (size - 1) / 2 + size * round);
    for (size_t i = 0; i < s[6].len; i++) bad += buf[s[6].off + i] != want;
  }
  snprintf(what, sizeof what, "%s: 20 rounds rewriting a span after each wait", name);
  check(rank, bad == 0, what);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  comm_t *c;
  if (comm_mpi_init(&c, 60) != STATUS_OK) {
    fprintf(stderr, "%s\n", status_message());
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  const size_t n = (size_t)6 << 18; /* 6 MB of floats */
  float *shared = NULL;
  if (comm_alloc_shared(c, n, &shared)) comm_fail(c, status_message());
  const char *want = argc > 1 ? argv[1] : "shared";
  check(c->rank, (shared != NULL) == (strcmp(want, "shared") == 0),
        shared ? "gradient memory is shared, as asked" : "gradient memory is private, as asked");
  if (shared) {
    bool zero = true;
    for (size_t i = 0; i < n; i++) zero = zero && shared[i] == 0;
    check(c->rank, zero, "shared memory starts zeroed");
    run_suite(c, shared, n, "shared memory");
  }
  float *priv = malloc(n * sizeof(float));
  run_suite(c, priv, n, "private memory");
  free(priv);
  int total = failures;
  MPI_Allreduce(MPI_IN_PLACE, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (c->rank == 0)
    printf("%d ranks, %s gradient memory: %s\n", c->size, shared ? "shared" : "private",
           total ? "FAILED" : "all checks passed");
  comm_free(c);
  MPI_Finalize();
  return total ? 1 : 0;
}
