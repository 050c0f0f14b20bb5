/* test_reducer.c: the bucketed gradient reducer (comm.h) under a real mpirun,
 * and against a stand-in backend that records what the reducer asks of it.
 *
 * Run with any number of ranks. Checks, on every rank:
 *   - bucketing: tables worked out by hand give the buckets worked out by
 *     hand, and random tables the buckets of a reference loop written from
 *     comm.h's contract; every table's buckets hold whole tensors in reverse
 *     table order, contiguous, disjoint and covering [0, total), none over its
 *     cap unless it is one tensor, none that could have taken the next tensor;
 *   - against the stand-in (pretending to be one rank, or two): no collective
 *     when not communicating or alone; otherwise each bucket all-reduced
 *     exactly once, issued at the announcement of its last tensor whatever
 *     the order of announcements, in-flight ones tested as backward goes on,
 *     every request waited once; a failed collective comes back from
 *     reducer_finish naming step and bucket, no more start after it, and the
 *     next step communicates again;
 *   - under MPI, in private memory and in the shared window of
 *     comm_alloc_shared where there is one: with each tensor written just
 *     before it is announced, in descending order, reversed within buckets
 *     and ascending (the buckets start last first), every float is the exact
 *     sum over the ranks, step after step; a non-communicating micro-batch
 *     leaves each rank its own values and the communicating one after it sums
 *     the accumulation; with one rank nothing changes.
 * Prints one line per failed check; exits non-zero on any failure. */
#include <math.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"

static int my_rank;
static int failures;

static void check(bool ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(bool ok, const char *fmt, ...) {
  if (ok) return;
  failures++;
  char what[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  fprintf(stderr, "rank %d: FAIL %s\n", my_rank, what);
}

/* ---- Tables and the reference bucketing ----------------------------------- */

enum { MAX_TENSORS = 64 };

static void make_table(param_table *t, const size_t *numel, int n) {
  param_table_init(t);
  for (int i = 0; i < n; i++) {
    char name[32];
    snprintf(name, sizeof name, "t%d", i);
    int64_t shape[1] = {(int64_t)numel[i]};
    if (param_table_add(t, name, 1, shape, true, true) < 0) {
      fprintf(stderr, "%s\n", status_message());
      abort();
    }
  }
}

typedef struct {
  int first, last; /* tensors, inclusive */
} tensor_range;

/* From comm.h's contract alone: walking from the last tensor to the first, a
 * bucket takes tensors while its bytes stay within its cap (first_mb for the
 * first bucket, bucket_mb after), and always at least one. */
static int ref_bucketing(const size_t *numel, int n, double first_mb, double bucket_mb,
                         tensor_range *out) {
  int nb = 0, top = n - 1;
  double bytes = 0, cap = first_mb * 1048576.0;
  for (int i = n - 1; i >= 0; i--) {
    double b = (double)numel[i] * sizeof(float);
    if (i < top && bytes + b > cap) { /* the bucket holds top..i+1 and i does not fit */
      out[nb++] = (tensor_range){i + 1, top};
      top = i;
      bytes = 0;
      cap = bucket_mb * 1048576.0;
    }
    bytes += b;
  }
  out[nb++] = (tensor_range){0, top};
  return nb;
}

/* What holds for every bucketing whatever the sizes (see the top). */
static void check_structure(const char *name, const reducer *r, const param_table *t,
                            double first_mb, double bucket_mb) {
  int nb = reducer_buckets(r), want_last = t->n - 1;
  size_t want_end = t->total;
  check(nb >= 1 && nb <= t->n, "%s: %d buckets for %d tensors", name, nb, t->n);
  for (int k = 0; k < nb; k++) {
    size_t b, e;
    int f, l;
    reducer_bucket(r, k, &b, &e, &f, &l);
    check(l == want_last, "%s: bucket %d ends at tensor %d, want %d (reverse table order)", name, k,
          l, want_last);
    check(e == want_end, "%s: bucket %d ends at float %zu, want %zu (contiguous)", name, k, e,
          want_end);
    if (f < 0 || l >= t->n || f > l) {
      check(false, "%s: bucket %d holds tensors [%d, %d]", name, k, f, l);
      return;
    }
    check(b == t->p[f].offset && e == t->p[l].offset + t->p[l].numel,
          "%s: bucket %d's span [%zu, %zu) is not its tensors [%d, %d]", name, k, b, e, f, l);
    double cap = (k ? bucket_mb : first_mb) * 1048576.0, bytes = (double)(e - b) * sizeof(float);
    check(f == l || bytes <= cap, "%s: bucket %d has %.0f bytes over its cap %.0f", name, k, bytes,
          cap);
    if (f > 0)
      check(bytes + (double)t->p[f - 1].numel * sizeof(float) > cap,
            "%s: bucket %d could have taken tensor %d", name, k, f - 1);
    want_last = f - 1;
    want_end = b;
  }
  check(want_last == -1 && want_end == 0, "%s: the buckets stop at tensor %d, float %zu", name,
        want_last + 1, want_end);
}

/* Buckets against expected tensor ranges, k by k. */
static void check_ranges(const char *name, const reducer *r, const tensor_range *want, int nb) {
  check(reducer_buckets(r) == nb, "%s: %d buckets, want %d", name, reducer_buckets(r), nb);
  for (int k = 0; k < nb && k < reducer_buckets(r); k++) {
    size_t b, e;
    int f, l;
    reducer_bucket(r, k, &b, &e, &f, &l);
    check(f == want[k].first && l == want[k].last,
          "%s: bucket %d holds tensors [%d, %d], want [%d, %d]", name, k, f, l, want[k].first,
          want[k].last);
  }
}

static void test_bucketing_by_hand(comm_t *c) {
  enum { MB = 262144 }; /* floats in 1 MB */
  static const struct {
    const char *name;
    double first_mb, bucket_mb;
    int n;
    size_t numel[12];
    int nb;
    tensor_range want[8];
  } cases[] = {
      /* clang-format off */
      {"ten of 100000 floats, 1 MB then 2 MB", 1, 2, 10,
       {100000, 100000, 100000, 100000, 100000, 100000, 100000, 100000, 100000, 100000},
       3, {{8, 9}, {3, 7}, {0, 2}}},
      {"a tensor over the cap in the middle", 1, 2, 4, {1000, 600000, 1000, 1000},
       3, {{2, 3}, {1, 1}, {0, 0}}},
      {"the last tensor alone over the first cap", 1, 2, 2, {10, 300000}, 2, {{1, 1}, {0, 0}}},
      {"exactly the cap fits", 1, 1, 3, {MB / 2, MB / 2, MB / 2}, 2, {{1, 2}, {0, 0}}},
      {"one float over the cap does not", 1, 1, 3, {MB / 2, MB / 2 + 1, MB / 2},
       3, {{2, 2}, {1, 1}, {0, 0}}},
      {"one tensor", 1, 1, 1, {5}, 1, {{0, 0}}},
      {"half a MB then 4 MB", 0.5, 4, 4, {500000, 500000, 100000, 100000},
       3, {{3, 3}, {1, 2}, {0, 0}}},
      {"everything in the first bucket", 4, 1, 5, {1, 2, 3, 4, 5}, 1, {{0, 4}}},
      /* clang-format on */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    param_table t;
    make_table(&t, cases[i].numel, cases[i].n);
    reducer *r = NULL;
    /* Bucketing reads only the table: no gradient memory is needed. */
    if (reducer_init(&r, c, &t, NULL, cases[i].first_mb, cases[i].bucket_mb)) {
      check(false, "%s: reducer_init: %s", cases[i].name, status_message());
    } else {
      check_ranges(cases[i].name, r, cases[i].want, cases[i].nb);
      check_structure(cases[i].name, r, &t, cases[i].first_mb, cases[i].bucket_mb);
      /* The hand-worked answer is also the reference loop's. */
      tensor_range ref[MAX_TENSORS];
      int nref =
          ref_bucketing(cases[i].numel, cases[i].n, cases[i].first_mb, cases[i].bucket_mb, ref);
      bool same = nref == cases[i].nb;
      for (int k = 0; same && k < nref; k++)
        same = ref[k].first == cases[i].want[k].first && ref[k].last == cases[i].want[k].last;
      check(same, "%s: the reference loop disagrees with the hand-worked buckets", cases[i].name);
    }
    reducer_free(r);
    param_table_free(&t);
  }
}

static uint64_t rnd_next(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

static void test_bucketing_random(comm_t *c) {
  static const double firsts[] = {0.25, 0.5, 1, 3, 0.3}, caps[] = {0.5, 1, 2, 0.1, 1.7};
  uint64_t s = 0x9E3779B97F4A7C15ull;
  for (int trial = 0; trial < 300; trial++) {
    size_t numel[MAX_TENSORS];
    int n = 1 + (int)(rnd_next(&s) % 40);
    for (int i = 0; i < n; i++)
      numel[i] = rnd_next(&s) % 4 == 0 ? 1 + rnd_next(&s) % 700000 : 1 + rnd_next(&s) % 5000;
    double first_mb = firsts[rnd_next(&s) % 5], bucket_mb = caps[rnd_next(&s) % 5];
    param_table t;
    make_table(&t, numel, n);
    char name[96];
    snprintf(name, sizeof name, "random table %d (%d tensors, %g MB then %g MB)", trial, n,
             first_mb, bucket_mb);
    reducer *r = NULL;
    if (reducer_init(&r, c, &t, NULL, first_mb, bucket_mb)) {
      check(false, "%s: reducer_init: %s", name, status_message());
    } else {
      tensor_range ref[MAX_TENSORS];
      int nb = ref_bucketing(numel, n, first_mb, bucket_mb, ref);
      check_ranges(name, r, ref, nb);
      check_structure(name, r, &t, first_mb, bucket_mb);
    }
    reducer_free(r);
    param_table_free(&t);
  }
}

/* ---- The table the all-reduce tests use ------------------------------------ */

/* Awkward sizes; at 0.5 MB then 1 MB they make 7 buckets, one of them
 * exactly its cap and two of a single tensor over it. */
static const size_t grad_numel[] = {1,      17,    1000,   70001, 300000, 5,
                                    262144, 40000, 123457, 3,     600000, 99};
enum { GRAD_N = sizeof grad_numel / sizeof grad_numel[0] };
static const double GRAD_FIRST_MB = 0.5, GRAD_BUCKET_MB = 1;

enum { ORDER_DESC, ORDER_WITHIN, ORDER_ASC, ORDER_COUNT };
static const char *order_name[] = {"descending", "reversed within buckets",
                                   "ascending (buckets started last first)"};

/* Announcement order: backward's (descending); each bucket's tensors in
 * ascending order, buckets in their order; or all ascending. Every rank uses
 * the same, as collectives must be issued alike everywhere. */
static void make_order(const reducer *r, int n, int kind, int *order) {
  int j = 0;
  if (kind == ORDER_DESC)
    for (int i = n - 1; i >= 0; i--) order[j++] = i;
  else if (kind == ORDER_ASC)
    for (int i = 0; i < n; i++) order[j++] = i;
  else
    for (int k = 0; k < reducer_buckets(r); k++) {
      size_t b, e;
      int f, l;
      reducer_bucket(r, k, &b, &e, &f, &l);
      for (int i = f; i <= l; i++) order[j++] = i;
    }
}

/* ---- A stand-in backend that records the reducer's calls -------------------- */

typedef struct {
  float *buf;
  size_t n;
  int at; /* announcements made when it was issued */
  int tests, waits;
} fake_op;

static struct {
  int calls, tests, waits;
  int announced;
  int fail_call; /* the call to fail, -1 for none */
  fake_op op[MAX_TENSORS];
} fk;

static status_t fk_iallreduce(comm_t *c, float *buf, size_t n, comm_req **req) {
  (void)c;
  *req = NULL;
  int k = fk.calls++;
  if (k == fk.fail_call) return status_set(STATUS_COMM, "stand-in failure of call %d", k);
  if (k >= MAX_TENSORS) return status_set(STATUS_COMM, "stand-in: too many calls");
  fk.op[k] = (fake_op){buf, n, fk.announced, 0, 0};
  *req = (comm_req *)&fk.op[k];
  return STATUS_OK;
}

/* Done at the second test, so the reducer meets both answers. */
static status_t fk_test(comm_t *c, comm_req *q, bool *done) {
  (void)c;
  fake_op *o = (fake_op *)q;
  fk.tests++;
  *done = ++o->tests >= 2;
  return STATUS_OK;
}

/* The pretend other rank holds the same values: the sum doubles them. */
static status_t fk_wait(comm_t *c, comm_req *q) {
  (void)c;
  fake_op *o = (fake_op *)q;
  if (!o) return STATUS_OK;
  fk.waits++;
  o->waits++;
  for (size_t i = 0; i < o->n; i++) o->buf[i] *= 2;
  return STATUS_OK;
}

static const comm_ops fk_ops = {
    .name = "stand-in",
    .device_buffers = false,
    .iallreduce = fk_iallreduce,
    .test = fk_test,
    .wait = fk_wait,
};

static float fk_val(size_t i) { return (float)(i % 97) + 1; }

static void fk_reset(float *g, size_t n, int fail_call) {
  memset(&fk, 0, sizeof fk);
  fk.fail_call = fail_call;
  for (size_t i = 0; i < n; i++) g[i] = fk_val(i);
}

/* Announces every tensor in `order`; flags an announcement that, with a
 * collective in flight, tested none. */
static void fk_announce(reducer *r, const int *order, int n, const char *name) {
  for (int j = 0; j < n; j++) {
    bool in_flight = false;
    for (int k = 0; k < fk.calls && k < MAX_TENSORS; k++)
      in_flight = in_flight || (fk.op[k].buf && fk.op[k].tests < 2);
    int tests = fk.tests;
    fk.announced = j + 1;
    reducer_ready(r, order[j]);
    check(!in_flight || fk.tests > tests,
          "stand-in, %s: announcement %d tested none of the collectives in flight", name, j + 1);
  }
}

static void test_stand_in(void) {
  param_table t;
  make_table(&t, grad_numel, GRAD_N);
  float *g = malloc(t.total * sizeof *g);
  comm_t two = {.ops = &fk_ops, .size = 2, .local_size = 2, .timeout_s = 10};
  comm_t one = {.ops = &fk_ops, .size = 1, .local_size = 1, .timeout_s = 10};
  reducer *r = NULL, *r1 = NULL;
  if (!g || reducer_init(&r, &two, &t, g, GRAD_FIRST_MB, GRAD_BUCKET_MB) ||
      reducer_init(&r1, &one, &t, g, GRAD_FIRST_MB, GRAD_BUCKET_MB)) {
    check(false, "stand-in: setting up: %s", status_message());
    goto out;
  }
  const int nb = reducer_buckets(r);
  check(nb >= 4, "stand-in: the test table makes %d buckets, the tests need 4 or more", nb);
  int order[GRAD_N];
  for (int kind = 0; kind < ORDER_COUNT; kind++) {
    const char *name = order_name[kind];
    make_order(r, GRAD_N, kind, order);
    /* The announcement at which each bucket's last tensor comes. */
    int complete[MAX_TENSORS] = {0};
    for (int j = 0; j < GRAD_N; j++)
      for (int k = 0; k < nb; k++) {
        size_t b, e;
        int f, l;
        reducer_bucket(r, k, &b, &e, &f, &l);
        if (order[j] >= f && order[j] <= l) complete[k] = j + 1;
      }
    fk_reset(g, t.total, -1);
    reducer_begin(r, true, 3);
    fk_announce(r, order, GRAD_N, name);
    check(fk.calls == nb, "stand-in, %s: %d all-reduces for %d buckets", name, fk.calls, nb);
    int seen[MAX_TENSORS] = {0};
    for (int j = 0; j < fk.calls && j < MAX_TENSORS; j++) {
      int match = -1;
      for (int k = 0; k < nb; k++) {
        size_t b, e;
        int f, l;
        reducer_bucket(r, k, &b, &e, &f, &l);
        if (fk.op[j].buf == g + b && fk.op[j].n == e - b) match = k;
      }
      check(match >= 0, "stand-in, %s: all-reduce %d is of no bucket's span", name, j);
      if (match < 0) continue;
      seen[match]++;
      check(fk.op[j].at == complete[match],
            "stand-in, %s: bucket %d issued at announcement %d, its last tensor came at %d", name,
            match, fk.op[j].at, complete[match]);
    }
    for (int k = 0; k < nb; k++)
      check(seen[k] == 1, "stand-in, %s: bucket %d all-reduced %d times", name, k, seen[k]);
    status_t st = reducer_finish(r);
    check(st == STATUS_OK, "stand-in, %s: reducer_finish: %s", name, status_message());
    check(fk.waits == nb, "stand-in, %s: %d waits for %d buckets", name, fk.waits, nb);
    for (int j = 0; j < fk.calls && j < MAX_TENSORS; j++)
      check(fk.op[j].waits == 1, "stand-in, %s: request %d waited %d times", name, j,
            fk.op[j].waits);
    size_t bad = 0;
    for (size_t i = 0; i < t.total; i++) bad += g[i] != 2 * fk_val(i);
    check(bad == 0, "stand-in, %s: %zu floats not reduced exactly once", name, bad);
    check(reducer_exposed_s(r) >= 0 && isfinite(reducer_exposed_s(r)),
          "stand-in, %s: exposed time %g", name, reducer_exposed_s(r));
  }

  /* Accumulating micro-batch, and one rank: nothing is issued. */
  make_order(r, GRAD_N, ORDER_DESC, order);
  struct {
    reducer *r;
    bool communicate;
    const char *name;
  } quiet[] = {{r, false, "not communicating"}, {r1, true, "one rank, communicating"}};
  for (int q = 0; q < 2; q++) {
    fk_reset(g, t.total, -1);
    reducer_begin(quiet[q].r, quiet[q].communicate, 4);
    for (int j = 0; j < GRAD_N; j++) reducer_ready(quiet[q].r, order[j]);
    status_t st = reducer_finish(quiet[q].r);
    check(st == STATUS_OK, "stand-in, %s: reducer_finish: %s", quiet[q].name, status_message());
    check(fk.calls == 0 && fk.tests == 0 && fk.waits == 0,
          "stand-in, %s: %d all-reduces, %d tests, %d waits (want none)", quiet[q].name, fk.calls,
          fk.tests, fk.waits);
    size_t bad = 0;
    for (size_t i = 0; i < t.total; i++) bad += g[i] != fk_val(i);
    check(bad == 0, "stand-in, %s: %zu floats changed", quiet[q].name, bad);
  }

  /* The second all-reduce fails: no more start, finish says which. */
  fk_reset(g, t.total, 1);
  reducer_begin(r, true, 9);
  for (int j = 0; j < GRAD_N; j++) reducer_ready(r, order[j]);
  check(fk.calls == 2, "stand-in, failure: %d all-reduces tried, want 2 (none after the failure)",
        fk.calls);
  status_t st = reducer_finish(r);
  const char *msg = status_message();
  check(st == STATUS_COMM, "stand-in, failure: reducer_finish returned %s, want %s",
        status_name(st), status_name(STATUS_COMM));
  check(strstr(msg, "stand-in failure of call 1") && strstr(msg, "step 9 bucket 1"),
        "stand-in, failure: the message \"%s\" names neither the failure nor step 9 bucket 1", msg);
  /* The next step starts afresh. */
  fk_reset(g, t.total, -1);
  reducer_begin(r, true, 10);
  for (int j = 0; j < GRAD_N; j++) reducer_ready(r, order[j]);
  st = reducer_finish(r);
  check(st == STATUS_OK && fk.calls == nb && fk.waits == nb,
        "stand-in, the step after a failure: %d all-reduces, %d waits for %d buckets (%s)",
        fk.calls, fk.waits, nb, st ? status_message() : "finished");
out:
  reducer_free(r);
  reducer_free(r1);
  free(g);
  param_table_free(&t);
}

/* ---- Under MPI --------------------------------------------------------------- */

/* Rank r's gradient at float i in micro-batch `seed`: small integers, so
 * sums over ranks are exact in float. */
static float val(int r, size_t i, int seed) {
  return (float)((r + 1) * (int)((i + (size_t)seed * 7) % 97));
}

static float sum_val(int size, size_t i, int seed) {
  float s = 0;
  for (int r = 0; r < size; r++) s += val(r, i, seed);
  return s;
}

/* One backward: each tensor's gradient is written (or added to the one
 * accumulated) just before it is announced. */
static status_t backward(reducer *r, const param_table *t, float *g, const int *order,
                         bool communicate, uint64_t step, bool accumulate, int seed) {
  reducer_begin(r, communicate, step);
  for (int j = 0; j < t->n; j++) {
    const param_info *p = &t->p[order[j]];
    for (size_t i = p->offset; i < p->offset + p->numel; i++)
      g[i] = (accumulate ? g[i] : 0) + val(my_rank, i, seed);
    reducer_ready(r, order[j]);
  }
  return reducer_finish(r);
}

/* Values no backward writes: a bucket started before all its tensors were
 * written would sum these. */
static void fill_stale(float *g, size_t n) {
  for (size_t i = 0; i < n; i++) g[i] = -1000.0f - (float)my_rank;
}

static void run_mpi_suite(comm_t *c, float *g, const char *mem) {
  param_table t;
  make_table(&t, grad_numel, GRAD_N);
  reducer *r = NULL;
  if (reducer_init(&r, c, &t, g, GRAD_FIRST_MB, GRAD_BUCKET_MB)) {
    check(false, "%s: reducer_init: %s", mem, status_message());
    param_table_free(&t);
    return;
  }
  int order[GRAD_N];
  uint64_t step = 1;
  /* Every order once, then descending twice more: buffers reused at once. */
  static const int kinds[] = {ORDER_DESC, ORDER_WITHIN, ORDER_ASC, ORDER_DESC, ORDER_DESC};
  for (size_t s = 0; s < sizeof kinds / sizeof kinds[0]; s++, step++) {
    make_order(r, GRAD_N, kinds[s], order);
    fill_stale(g, t.total);
    status_t st = backward(r, &t, g, order, true, step, false, (int)step);
    check(st == STATUS_OK, "%s, step %d, %s: reducer_finish: %s", mem, (int)step,
          order_name[kinds[s]], status_message());
    size_t bad = 0, first_bad = 0;
    for (size_t i = 0; i < t.total; i++)
      if (g[i] != sum_val(c->size, i, (int)step) && !bad++) first_bad = i;
    check(bad == 0,
          "%s, step %d, %s: %zu floats are not the sum over %d ranks (first at %zu: %g, want %g)",
          mem, (int)step, order_name[kinds[s]], bad, c->size, first_bad, g[first_bad],
          sum_val(c->size, first_bad, (int)step));
    double x = reducer_exposed_s(r);
    check(x >= 0 && isfinite(x), "%s, step %d: exposed time %g", mem, (int)step, x);
  }

  /* Gradient accumulation: a micro-batch without communication, then the
   * last one, which adds its gradients and communicates. */
  make_order(r, GRAD_N, ORDER_DESC, order);
  fill_stale(g, t.total);
  status_t st = backward(r, &t, g, order, false, step, false, 11);
  check(st == STATUS_OK, "%s, accumulating micro-batch: reducer_finish: %s", mem, status_message());
  size_t bad = 0;
  for (size_t i = 0; i < t.total; i++) bad += g[i] != val(my_rank, i, 11);
  check(bad == 0, "%s, accumulating micro-batch: %zu floats are not this rank's own", mem, bad);
  st = backward(r, &t, g, order, true, step, true, 12);
  check(st == STATUS_OK, "%s, last micro-batch: reducer_finish: %s", mem, status_message());
  bad = 0;
  for (size_t i = 0; i < t.total; i++)
    bad += g[i] != sum_val(c->size, i, 11) + sum_val(c->size, i, 12);
  check(bad == 0, "%s, last micro-batch: %zu floats are not the sum of both over the ranks", mem,
        bad);
  reducer_free(r);
  param_table_free(&t);
}

int main(int argc, char **argv) {
  if (comm_process_init(&argc, &argv)) {
    fprintf(stderr, "%s\n", status_message());
    return 2;
  }
  comm_t *c;
  if (comm_mpi_init(&c, 60) != STATUS_OK) {
    fprintf(stderr, "%s\n", status_message());
    comm_process_abort(2);
  }
  my_rank = c->rank;

  test_bucketing_by_hand(c);
  test_bucketing_random(c);
  test_stand_in();

  param_table t;
  make_table(&t, grad_numel, GRAD_N);
  const size_t n = t.total, guard = 16;
  param_table_free(&t);
  /* Private memory with guards either side: nothing outside is written. */
  float *base = malloc((n + 2 * guard) * sizeof *base), *priv = base + guard;
  for (size_t i = 0; i < n + 2 * guard; i++) base[i] = 12345.0f;
  run_mpi_suite(c, priv, "private memory");
  bool guards = true;
  for (size_t i = 0; i < guard; i++)
    guards = guards && base[i] == 12345.0f && priv[n + i] == 12345.0f;
  check(guards, "private memory: floats outside the gradient buffer were written");
  free(base);

  float *shared = NULL;
  if (comm_alloc_shared(c, n, &shared)) comm_fail(c, status_message());
  if (shared)
    run_mpi_suite(c, shared, "shared memory");
  else if (c->rank == 0 && c->size > 1)
    printf("no shared window (see the log above): the shared-memory cases did not run\n");

  int total = failures;
  MPI_Allreduce(MPI_IN_PLACE, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (c->rank == 0)
    printf("%d ranks, %s gradient memory too: %s\n", c->size, shared ? "shared" : "no shared",
           total ? "FAILED" : "all checks passed");
  comm_free(c);
  comm_process_finalize();
  return total ? 1 : 0;
}
