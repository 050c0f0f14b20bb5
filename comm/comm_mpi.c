/* comm_mpi.c: the MPI backend of comm.h (Open MPI, host buffers). Every
 * collective is issued non-blocking and completed by a polling wait with a
 * deadline, so a dead or stuck peer becomes an error instead of a hang.
 *
 * All-reduces of the buffer from alloc_shared (the gradients) skip MPI's
 * copies on a node: every rank's buffer is a segment of one MPI shared-memory
 * window, so for a span [off, off+len) each of the p ranks of a node
 *   1. sums its slice of the span over all p buffers, in local rank order, in
 *      place into its own buffer (it reads the others' buffers directly);
 *   2. where there are several nodes, all-reduces that slice with the ranks of
 *      the same local rank on the other nodes (MPI, non-blocking);
 *   3. copies the other p-1 finished slices from their owners' buffers.
 * Each rank publishes three counters in its segment's control page: posted
 * (all-reduces issued: their spans are final), reduced (slices finished) and
 * gathered (copies done). All ranks issue all-reduces in the same order, so
 * the k-th one may start step 1 once every peer has posted > k, step 3 once
 * every peer has reduced > k, and it is complete, leaving the buffer free to
 * be written again, once every peer has gathered > k: no rank writes a slice
 * another may still be reading. Progress is made by test and wait. */
#include <math.h>
#include <mpi.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <time.h>

#include "comm.h"

enum { OP_POSTED, OP_CROSS, OP_REDUCED, OP_GATHERED, OP_DONE };

/* The shared path splits an all-reduce into chunks, so that a slice one rank
 * has just summed is still in cache when the others copy it. */
typedef struct shm_op shm_op;
struct shm_op {
  uint64_t seq; /* counter value at issue */
  size_t off, len;
  int state;     /* OP_* */
  MPI_Request r; /* the cross-node step */
  comm_req *owner;
  shm_op *next; /* the unfinished ones, in issue order */
};

struct comm_req {
  MPI_Request r; /* MPI path */
  uint64_t seq;  /* its number among the collectives (issue_seq) */
  bool shm;
  int nops, ndone; /* shared path: chunks, and those finished */
  shm_op *ops;
};

/* One rank's control page: counters of the shared path (see the top). */
typedef struct {
  _Alignas(64) _Atomic uint64_t posted;
  _Alignas(64) _Atomic uint64_t reduced;
  _Alignas(64) _Atomic uint64_t gathered;
} shm_ctl;

/* A segment: slack to the next page boundary (the window's own header may
 * come first), the control page, then the floats, page-aligned. Page
 * offsets are the same in every process that maps it. */
enum { SHM_PAGE = 4096, SHM_DATA_OFFSET = 2 * SHM_PAGE };

typedef struct {
  MPI_Win win;
  size_t n;      /* floats in every rank's buffer */
  int p, me;     /* ranks sharing memory, and this one among them */
  float **buf;   /* [p] every rank's buffer, mapped here */
  shm_ctl **ctl; /* [p] */
  bool cross;    /* several nodes: step 2 over mpi_impl.cross */
  size_t chunk;  /* floats an op at most */
  uint64_t issued;
  shm_op *head, *tail;
} shm_region;

typedef struct where_msg where_msg; /* an answer to "where are you" (below) */

/* The question: a round number, the collective the asker waits for, and the
 * seconds it will still wait. */
typedef struct {
  uint64_t round, seq;
  double left_s;
} where_ask;

typedef struct {
  MPI_Comm world, node;
  MPI_Comm group, cross;  /* ranks sharing memory; the same local rank across groups */
  MPI_Comm where;         /* a duplicate of world for "where are you" (below) */
  shm_region *shm;        /* NULL until alloc_shared succeeds */
  uint64_t issued;        /* collectives this rank has issued */
  where_ask ask;          /* this rank's last question (round: how many it asked) */
  where_msg *reply;       /* [size] the answer last sent to each rank */
  MPI_Request *reply_req; /* [size] */
} mpi_impl;

static MPI_Comm W(comm_t *c) { return ((mpi_impl *)c->impl)->world; }

static status_t mpi_err(int rc, const char *what) {
  char s[MPI_MAX_ERROR_STRING];
  int n = 0;
  MPI_Error_string(rc, s, &n);
  return status_set(STATUS_COMM, "%s failed: %s", what, s);
}

/* Tight polls, then yielding the core (a peer may be waiting for it), then
 * short sleeps once a wait has lasted thousands of polls. */
static void poll_pause(long spin) {
  if (spin > 20000) {
    struct timespec ts = {0, 20000};
    nanosleep(&ts, NULL);
  } else if (spin > 100) {
    sched_yield();
  }
}

/* ---- Deadlines, and who is late ---------------------------------------------
 * A wait that has lasted timeout_s - grace (grace = min(2 s, timeout_s / 4))
 * asks every other rank where it is, on a duplicate of the communicator kept
 * for that alone, so the question never matches a collective's traffic.
 * Every rank inside a wait answers, within a millisecond, with how many
 * collectives it has issued and what it waits for. At the deadline the ranks
 * that never answered (stopped, dead, or busy outside communication), those
 * that answered only late (a quarter of the grace or more: they were away,
 * and were perhaps continued while the others gave up) and those that have
 * not yet issued the collective are the ones waited for, and the timeout
 * names them.
 * Nothing is sent unless a wait lasts most of its deadline; until then a
 * wait only checks, once a millisecond, whether someone has asked. */
enum { TAG_ASK = 1, TAG_HERE = 2 };

struct where_msg {
  uint64_t round;  /* the asker's round, echoed */
  uint64_t issued; /* collectives the answering rank has issued */
  char context[112];
};

/* One wait's clock and, once it has asked, its round of questions. */
typedef struct {
  double start, last, ask_at, asked_at, deadline, grace, next_answer;
  uint64_t seq;             /* the collective waited for: this rank's seq-th (from 0) */
  bool asking, prompted;    /* prompted: asks early, as another rank gives up soon */
  where_msg *got;           /* [size] answers */
  double *when;             /* [size] when each came; 0: not yet */
  MPI_Request *recv, *send; /* [size] */
} watch;

/* Numbers the collectives; every rank issues them in the same order. */
static uint64_t issue_seq(comm_t *c) { return ((mpi_impl *)c->impl)->issued++; }

static void watch_start(comm_t *c, watch *w, uint64_t seq) {
  *w = (watch){.seq = seq};
  w->grace = c->timeout_s / 4 < 2 ? c->timeout_s / 4 : 2;
  w->start = w->last = core_now_s();
  w->deadline = w->start + c->timeout_s;
  w->ask_at = w->deadline - w->grace;
}

/* Answers the questions that have come in; returns the least time an asker
 * waiting for collective seq will still wait (INFINITY: none). */
static double answer_peers(comm_t *c, uint64_t seq) {
  mpi_impl *m = c->impl;
  double left = INFINITY;
  for (;;) {
    int flag = 0, done = 1;
    MPI_Status s;
    where_ask q;
    if (MPI_Iprobe(MPI_ANY_SOURCE, TAG_ASK, m->where, &flag, &s) != MPI_SUCCESS || !flag)
      return left;
    int r = s.MPI_SOURCE;
    if (MPI_Recv(&q, (int)sizeof q, MPI_BYTE, r, TAG_ASK, m->where, MPI_STATUS_IGNORE) !=
        MPI_SUCCESS)
      return left;
    if (q.seq == seq && q.left_s < left) left = q.left_s;
    if (m->reply_req[r] != MPI_REQUEST_NULL) MPI_Test(&m->reply_req[r], &done, MPI_STATUS_IGNORE);
    if (!done) continue; /* the last answer to r is still on its way */
    where_msg *a = &m->reply[r];
    a->round = q.round;
    a->issued = m->issued;
    snprintf(a->context, sizeof a->context, "%.*s", (int)sizeof a->context - 1,
             c->context[0] ? c->context : "a collective");
    MPI_Isend(a, (int)sizeof *a, MPI_BYTE, r, TAG_HERE, m->where, &m->reply_req[r]);
  }
}

/* Asks every other rank where it is (prompted: because another rank asked,
 * before this wait's own time to ask). */
static void ask_peers(comm_t *c, watch *w, const char *what, double now, bool prompted) {
  mpi_impl *m = c->impl;
  size_t n = (size_t)c->size;
  w->asking = true;
  w->asked_at = now;
  if (w->deadline < now + w->grace) w->deadline = now + w->grace;
  w->got = calloc(n, sizeof *w->got);
  w->when = calloc(n, sizeof *w->when);
  w->recv = malloc(n * sizeof *w->recv);
  w->send = malloc(n * sizeof *w->send);
  if (!w->got || !w->when || !w->recv || !w->send) return; /* the timeout says so */
  m->ask.round++;
  m->ask.seq = w->seq;
  m->ask.left_s = w->deadline - now;
  for (int r = 0; r < c->size; r++) {
    w->recv[r] = w->send[r] = MPI_REQUEST_NULL;
    if (r == c->rank) continue;
    MPI_Irecv(&w->got[r], (int)sizeof *w->got, MPI_BYTE, r, TAG_HERE, m->where, &w->recv[r]);
    MPI_Isend(&m->ask, (int)sizeof m->ask, MPI_BYTE, r, TAG_ASK, m->where, &w->send[r]);
  }
  LOG_WARN(COMM, "%s: %s has waited %.1f s of %g s%s; asking the other ranks where they are",
           c->context[0] ? c->context : "a collective", what, now - w->start, c->timeout_s,
           prompted ? " and another rank gives up soon" : "");
}

static bool asked(const watch *w) { return w->got && w->when && w->recv && w->send; }

/* Takes in the answers that have come; a stale one (an earlier round's) is
 * dropped and its receive posted again. */
static void collect_answers(comm_t *c, watch *w, double now) {
  mpi_impl *m = c->impl;
  for (int r = 0; r < c->size; r++) {
    int done = 0;
    if (w->recv[r] == MPI_REQUEST_NULL) continue;
    if (MPI_Test(&w->recv[r], &done, MPI_STATUS_IGNORE) != MPI_SUCCESS || !done) continue;
    if (w->got[r].round == m->ask.round)
      w->when[r] = now;
    else
      MPI_Irecv(&w->got[r], (int)sizeof *w->got, MPI_BYTE, r, TAG_HERE, m->where, &w->recv[r]);
  }
}

/* Ends a wait's round: receives still open are cancelled; questions still
 * in flight are left to MPI (their payload, ask, lives in mpi_impl). */
static void watch_end(comm_t *c, watch *w) {
  if (asked(w)) {
    for (int r = 0; r < c->size; r++) {
      if (w->recv[r] != MPI_REQUEST_NULL) {
        MPI_Cancel(&w->recv[r]);
        MPI_Wait(&w->recv[r], MPI_STATUS_IGNORE);
      }
      if (w->send[r] != MPI_REQUEST_NULL) MPI_Request_free(&w->send[r]);
    }
  }
  free(w->got), free(w->when), free(w->recv), free(w->send);
  w->got = NULL, w->when = NULL, w->recv = w->send = NULL;
  w->asking = false;
}

/* The ranks of one kind of lateness: "rank 3" or "ranks 3, 5, ...". */
typedef struct {
  char ranks[80];
  int n;
} rank_list;

static void list_add(rank_list *l, int r) {
  size_t k = strlen(l->ranks);
  if (l->n < 8) snprintf(l->ranks + k, sizeof l->ranks - k, "%s%d", l->n ? ", " : "", r);
  if (l->n == 8) snprintf(l->ranks + k, sizeof l->ranks - k, ", ...");
  l->n++;
}

static const char waiting_for[] = "waiting for";

/* Appends " [and] rank(s) LIST (why)" to out[0, n) at *k when the list has
 * any; out starts with waiting_for. */
static void say_ranks(char *out, size_t n, size_t *k, const rank_list *l, const char *why) {
  if (!l->n || *k >= n) return;
  bool first = *k == sizeof waiting_for - 1;
  *k += (size_t)snprintf(out + *k, n - *k, "%s rank%s %s (%s)", first ? "" : " and",
                         l->n > 1 ? "s" : "", l->ranks, why);
}

/* Who this rank waits for, from the answers: "waiting for rank 1 (no
 * answer ...)". */
static void describe_late(comm_t *c, const watch *w, char *out, size_t n) {
  if (!asked(w)) {
    snprintf(out, n, "the other ranks could not be asked where they are (out of memory)");
    return;
  }
  rank_list silent = {"", 0}, late = {"", 0}, behind = {"", 0};
  char where[160] = "", why[240];
  double late_s = w->grace / 4;
  for (int r = 0; r < c->size; r++) {
    if (r == c->rank) continue;
    if (!w->when[r]) {
      list_add(&silent, r);
    } else if (w->got[r].issued <= w->seq) {
      if (!behind.n)
        snprintf(where, sizeof where, "%.*s", (int)sizeof w->got[r].context - 1, w->got[r].context);
      list_add(&behind, r);
    } else if (w->when[r] - w->asked_at > late_s) {
      list_add(&late, r);
    }
  }
  if (!silent.n && !late.n && !behind.n) {
    snprintf(out, n, "every rank answered and has issued it (a fault in MPI or the network?)");
    return;
  }
  size_t k = (size_t)snprintf(out, n, "%s", waiting_for);
  snprintf(why, sizeof why, "no answer in %.1f s: stopped, gone, or busy outside communication",
           w->grace);
  say_ranks(out, n, &k, &silent, why);
  snprintf(why, sizeof why,
           "answered only after %.1f s or more: it was stopped or busy outside communication",
           late_s);
  say_ranks(out, n, &k, &late, why);
  snprintf(why, sizeof why, "not there yet: at %s", where);
  say_ranks(out, n, &k, &behind, why);
}

/* Called from a wait's loop: answers questions, asks once the wait has lasted
 * most of its deadline, and past the deadline returns STATUS_TIMEOUT naming
 * whom it waited for. Time this process did not run (stopped, starved) is not
 * counted against the others. */
static status_t watch_poll(comm_t *c, watch *w, const char *what) {
  double now = core_now_s();
  if (now - w->last > 1.0) {
    w->deadline += now - w->last;
    w->ask_at += now - w->last;
  }
  w->last = now;
  if (now >= w->next_answer) {
    /* A rank giving up ends the job: give up with it, so that every rank
     * waiting for the same collective says whom it waited for before the job
     * is ended. */
    double left = answer_peers(c, w->seq);
    if (now + left < w->deadline) w->deadline = now + left;
    if (!w->asking && w->ask_at > now + left - w->grace) {
      w->ask_at = now;
      w->prompted = true;
    }
    w->next_answer = now + 1e-3;
  }
  if (!w->asking && now >= w->ask_at) ask_peers(c, w, what, now, w->prompted);
  if (asked(w)) collect_answers(c, w, now);
  if (now <= w->deadline) return STATUS_OK;
  char who[512];
  describe_late(c, w, who, sizeof who);
  watch_end(c, w);
  return status_set(STATUS_TIMEOUT, "%s: %s did not complete within %g s; %s",
                    c->context[0] ? c->context : "a collective", what, c->timeout_s, who);
}

/* Polls until done or the deadline; seq numbers the collective (issue_seq). */
static status_t wait_req(comm_t *c, MPI_Request *r, uint64_t seq, const char *what) {
  watch w;
  watch_start(c, &w, seq);
  status_t st = STATUS_OK;
  for (long spin = 0;; spin++) {
    int done = 0, rc = MPI_Test(r, &done, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) st = mpi_err(rc, what);
    if (st || done) break;
    if (spin > 1000 && (st = watch_poll(c, &w, what))) break;
    poll_pause(spin);
  }
  watch_end(c, &w);
  return st;
}

#define ISSUE(call, what)                              \
  do {                                                 \
    int rc_ = (call);                                  \
    if (rc_ != MPI_SUCCESS) return mpi_err(rc_, what); \
  } while (0)

static status_t m_allreduce(comm_t *c, float *buf, size_t n) {
  MPI_Request r;
  uint64_t seq = issue_seq(c);
  ISSUE(MPI_Iallreduce(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_SUM, W(c), &r), "allreduce");
  return wait_req(c, &r, seq, "allreduce");
}

static status_t m_allreduce_f64(comm_t *c, double *buf, size_t n) {
  MPI_Request r;
  uint64_t seq = issue_seq(c);
  ISSUE(MPI_Iallreduce(MPI_IN_PLACE, buf, (int)n, MPI_DOUBLE, MPI_SUM, W(c), &r), "allreduce");
  return wait_req(c, &r, seq, "allreduce");
}

/* ---- The shared-memory path ---------------------------------------------- */

/* Slice i of p of a span of len floats: whole 64-byte lines but the last. */
static size_t slice_at(size_t len, int p, int i) {
  if (i >= p) return len;
  return (len * (size_t)i / (size_t)p) & ~(size_t)15;
}

static bool rank_past(const shm_region *g, int r, size_t field, uint64_t seq) {
  _Atomic uint64_t *v = (_Atomic uint64_t *)((char *)g->ctl[r] + field);
  return atomic_load_explicit(v, memory_order_acquire) > seq;
}

static bool all_past(const shm_region *g, size_t field, uint64_t seq) {
  for (int r = 0; r < g->p; r++)
    if (!rank_past(g, r, field, seq)) return false;
  return true;
}

/* Raises one of this rank's counters to v; they never go down. */
static void publish(shm_region *g, size_t field, uint64_t v) {
  _Atomic uint64_t *x = (_Atomic uint64_t *)((char *)g->ctl[g->me] + field);
  if (atomic_load_explicit(x, memory_order_relaxed) < v)
    atomic_store_explicit(x, v, memory_order_release);
}

/* Step 1: this rank's slice, summed over the group in local rank order. */
static void reduce_slice(const shm_region *g, const shm_op *q) {
  size_t lo = q->off + slice_at(q->len, g->p, g->me),
         hi = q->off + slice_at(q->len, g->p, g->me + 1);
  float *d = g->buf[g->me];
  const float *a = g->buf[0], *b = g->buf[1];
  if (g->p == 2) { /* d is a or b: in place is safe */
    for (size_t j = lo; j < hi; j++) d[j] = a[j] + b[j];
    return;
  }
  /* d is one of the addends: sum a block aside, then store it. */
  float t[1024];
  for (size_t j0 = lo; j0 < hi; j0 += 1024) {
    size_t m = hi - j0 < 1024 ? hi - j0 : 1024;
    for (size_t j = 0; j < m; j++) t[j] = a[j0 + j] + b[j0 + j];
    for (int r = 2; r < g->p; r++) {
      const float *x = g->buf[r] + j0;
      for (size_t j = 0; j < m; j++) t[j] += x[j];
    }
    memcpy(d + j0, t, m * sizeof(float));
  }
}

/* Step 3: the other slices, from their owners. */
static void gather_slices(const shm_region *g, const shm_op *q) {
  for (int r = 0; r < g->p; r++) {
    if (r == g->me) continue;
    size_t lo = q->off + slice_at(q->len, g->p, r), hi = q->off + slice_at(q->len, g->p, r + 1);
    memcpy(g->buf[g->me] + lo, g->buf[r] + lo, (hi - lo) * sizeof(float));
  }
}

/* Advances every unfinished op as far as the peers allow, in one pass in
 * issue order; the counters published are those of the longest finished
 * prefix. */
static status_t shm_progress(comm_t *c) {
  mpi_impl *m = c->impl;
  shm_region *g = m->shm;
  bool red_prefix = true, gat_prefix = true;
  for (shm_op *q = g->head; q; q = q->next) {
    if (q->state == OP_POSTED) {
      if (!all_past(g, offsetof(shm_ctl, posted), q->seq)) break; /* later ones neither */
      reduce_slice(g, q);
      q->state = OP_REDUCED;
      if (g->cross) {
        size_t lo = slice_at(q->len, g->p, g->me), hi = slice_at(q->len, g->p, g->me + 1);
        ISSUE(MPI_Iallreduce(MPI_IN_PLACE, g->buf[g->me] + q->off + lo, (int)(hi - lo), MPI_FLOAT,
                             MPI_SUM, m->cross, &q->r),
              "allreduce across nodes");
        q->state = OP_CROSS;
      }
    }
    if (q->state == OP_CROSS) {
      int done = 0, rc = MPI_Test(&q->r, &done, MPI_STATUS_IGNORE);
      if (rc != MPI_SUCCESS) return mpi_err(rc, "allreduce across nodes");
      if (done) q->state = OP_REDUCED;
    }
    red_prefix = red_prefix && q->state >= OP_REDUCED;
    if (red_prefix) publish(g, offsetof(shm_ctl, reduced), q->seq + 1);
    if (q->state == OP_REDUCED && all_past(g, offsetof(shm_ctl, reduced), q->seq)) {
      gather_slices(g, q);
      q->state = OP_GATHERED;
    }
    gat_prefix = gat_prefix && q->state >= OP_GATHERED;
    if (gat_prefix) publish(g, offsetof(shm_ctl, gathered), q->seq + 1);
  }
  /* Finished, in order: every peer has copied what it needed of ours. */
  while (g->head && g->head->state == OP_GATHERED &&
         all_past(g, offsetof(shm_ctl, gathered), g->head->seq)) {
    shm_op *q = g->head;
    q->state = OP_DONE;
    q->owner->ndone++;
    g->head = q->next;
    if (!g->head) g->tail = NULL;
  }
  return STATUS_OK;
}

static bool in_region(const shm_region *g, const float *buf, size_t n) {
  const float *mine = g ? g->buf[g->me] : NULL;
  return mine && buf >= mine && buf + n <= mine + g->n;
}

static status_t shm_start(comm_t *c, float *buf, size_t n, comm_req *q) {
  shm_region *g = ((mpi_impl *)c->impl)->shm;
  q->shm = true;
  q->nops = n ? (int)((n + g->chunk - 1) / g->chunk) : 1;
  q->ops = calloc((size_t)q->nops, sizeof *q->ops);
  if (!q->ops) return status_set(STATUS_NOMEM, "out of memory starting an all-reduce");
  size_t off = (size_t)(buf - g->buf[g->me]);
  for (int k = 0; k < q->nops; k++) {
    shm_op *o = &q->ops[k];
    o->seq = g->issued++;
    o->off = off + (size_t)k * g->chunk;
    o->len = n - (size_t)k * g->chunk < g->chunk ? n - (size_t)k * g->chunk : g->chunk;
    o->owner = q;
    if (g->tail)
      g->tail->next = o;
    else
      g->head = o;
    g->tail = o;
  }
  publish(g, offsetof(shm_ctl, posted), g->issued);
  return shm_progress(c);
}

/* ---- Non-blocking all-reduce ------------------------------------------------ */

static status_t m_iallreduce(comm_t *c, float *buf, size_t n, comm_req **req) {
  comm_req *q = calloc(1, sizeof *q);
  if (!q) return status_set(STATUS_NOMEM, "out of memory starting an all-reduce");
  mpi_impl *m = c->impl;
  status_t st;
  q->seq = issue_seq(c);
  if (in_region(m->shm, buf, n)) {
    if ((st = shm_start(c, buf, n, q)) && !q->ops) {
      free(q);
      q = NULL;
    } /* else its ops are queued: wait frees it */
  } else {
    int rc = MPI_Iallreduce(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_SUM, W(c), &q->r);
    st = rc == MPI_SUCCESS ? STATUS_OK : mpi_err(rc, "allreduce");
    if (st) {
      free(q);
      q = NULL;
    }
  }
  *req = q;
  return st;
}

static status_t m_test(comm_t *c, comm_req *q, bool *done) {
  if (q->shm) {
    status_t st = shm_progress(c);
    *done = q->ndone == q->nops;
    return st;
  }
  int d = 0, rc = MPI_Test(&q->r, &d, MPI_STATUS_IGNORE);
  if (rc != MPI_SUCCESS) return mpi_err(rc, "test");
  *done = d != 0;
  return STATUS_OK;
}

static status_t m_wait(comm_t *c, comm_req *q) {
  if (!q) return STATUS_OK;
  status_t st = STATUS_OK;
  if (q->shm) {
    watch w;
    watch_start(c, &w, q->seq);
    for (long spin = 0; q->ndone < q->nops; spin++) {
      if ((st = shm_progress(c))) break;
      if (q->ndone == q->nops) break;
      if (spin > 1000 && (st = watch_poll(c, &w, "allreduce"))) break;
      poll_pause(spin);
    }
    watch_end(c, &w);
    if (st) return st; /* its ops stay queued: the job ends (comm_fail) */
    free(q->ops);
  } else {
    st = wait_req(c, &q->r, q->seq, "allreduce");
  }
  free(q);
  return st;
}

static status_t m_reduce_scatter(comm_t *c, const float *in, float *out, const int *counts) {
  MPI_Request r;
  uint64_t seq = issue_seq(c);
  ISSUE(MPI_Ireduce_scatter(in, out, counts, MPI_FLOAT, MPI_SUM, W(c), &r), "reduce_scatter");
  return wait_req(c, &r, seq, "reduce_scatter");
}

static status_t m_allgather(comm_t *c, float *buf, const int *counts) {
  int *displs = malloc((size_t)c->size * sizeof *displs);
  if (!displs) return status_set(STATUS_NOMEM, "out of memory in allgather");
  for (int i = 0, o = 0; i < c->size; i++) displs[i] = o, o += counts[i];
  MPI_Request r;
  uint64_t seq = issue_seq(c);
  int rc =
      MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, counts, displs, MPI_FLOAT, W(c), &r);
  status_t st = rc == MPI_SUCCESS ? wait_req(c, &r, seq, "allgather") : mpi_err(rc, "allgather");
  free(displs);
  return st;
}

static status_t m_allgather_bytes(comm_t *c, const void *mine, void *all, size_t bytes) {
  MPI_Request r;
  uint64_t seq = issue_seq(c);
  ISSUE(MPI_Iallgather(mine, (int)bytes, MPI_BYTE, all, (int)bytes, MPI_BYTE, W(c), &r),
        "allgather");
  return wait_req(c, &r, seq, "allgather");
}

static status_t m_broadcast(comm_t *c, void *buf, size_t bytes, int root) {
  /* In pieces: MPI counts are int. */
  char *p = buf;
  while (bytes) {
    size_t n = bytes > (1u << 30) ? (1u << 30) : bytes;
    MPI_Request r;
    uint64_t seq = issue_seq(c);
    ISSUE(MPI_Ibcast(p, (int)n, MPI_BYTE, root, W(c), &r), "broadcast");
    status_t st = wait_req(c, &r, seq, "broadcast");
    if (st) return st;
    p += n;
    bytes -= n;
  }
  return STATUS_OK;
}

static status_t m_barrier(comm_t *c) {
  MPI_Request r;
  uint64_t seq = issue_seq(c);
  ISSUE(MPI_Ibarrier(W(c), &r), "barrier");
  return wait_req(c, &r, seq, "barrier");
}

/* ---- Shared gradient memory ------------------------------------------------- */

static void shm_free(shm_region *g) {
  if (!g) return;
  MPI_Win_unlock_all(g->win);
  MPI_Win_free(&g->win);
  free(g->buf);
  free(g->ctl);
  free(g);
}

/* Room for `bytes` more in the window's backing directory: an over-full
 * tmpfs would kill the job with SIGBUS on first touch instead. */
static bool shm_room(size_t bytes) {
  const char *dir = getenv("OMPI_MCA_osc_sm_backing_directory");
  if (!dir || !*dir) dir = "/dev/shm";
  struct statvfs v;
  if (statvfs(dir, &v) != 0) {
    LOG_WARN(COMM, "cannot read %s: gradients stay in private memory", dir);
    return false;
  }
  double room = (double)v.f_bavail * (double)v.f_frsize;
  if (room > (double)bytes * 1.05) return true;
  LOG_WARN(COMM,
           "%s has %.0f MB free, the node's gradients need %.0f MB: they stay in private memory "
           "(all-reduced by MPI)",
           dir, room / 1e6, (double)bytes / 1e6);
  return false;
}

static status_t m_alloc_shared(comm_t *c, size_t n, float **out) {
  mpi_impl *m = c->impl;
  *out = NULL;
  int p = 0, me = 0;
  if (m->group != MPI_COMM_NULL) MPI_Comm_size(m->group, &p), MPI_Comm_rank(m->group, &me);
  /* Every rank must choose alike: the cross-node step pairs equal slices. */
  size_t bytes = SHM_DATA_OFFSET + n * sizeof(float);
  int ok = !m->shm && p >= 2 && (me != 0 || shm_room(bytes * (size_t)p));
  int v[3] = {ok, p, -p};
  ISSUE(MPI_Allreduce(MPI_IN_PLACE, v, 3, MPI_INT, MPI_MIN, m->world), "allreduce");
  if (!v[0] || v[1] != -v[2]) return STATUS_OK; /* the caller keeps its own memory */
  shm_region *g = calloc(1, sizeof *g);
  if (!g || !(g->buf = calloc((size_t)p, sizeof *g->buf)) ||
      !(g->ctl = calloc((size_t)p, sizeof *g->ctl))) {
    shm_free(g);
    return status_set(STATUS_NOMEM, "out of memory mapping the shared gradients");
  }
  MPI_Info info;
  MPI_Info_create(&info);
  MPI_Info_set(info, "alloc_shared_noncontig", "true"); /* each segment on its own pages */
  void *base = NULL;
  int rc = MPI_Win_allocate_shared((MPI_Aint)bytes, 1, info, m->group, &base, &g->win);
  MPI_Info_free(&info);
  if (rc != MPI_SUCCESS) {
    free(g->buf);
    free(g->ctl);
    free(g);
    return mpi_err(rc, "allocating the shared gradient memory");
  }
  MPI_Win_lock_all(MPI_MODE_NOCHECK, g->win);
  for (int r = 0; r < p; r++) {
    MPI_Aint sz;
    int du;
    void *ptr;
    MPI_Win_shared_query(g->win, r, &sz, &du, &ptr);
    uintptr_t page = ((uintptr_t)ptr + SHM_PAGE - 1) & ~(uintptr_t)(SHM_PAGE - 1);
    g->ctl[r] = (shm_ctl *)page;
    g->buf[r] = (float *)(page + SHM_PAGE);
  }
  g->n = n;
  g->p = p;
  g->me = me;
  g->cross = c->size > p;
  const char *ck = getenv("MLMPI_COMM_CHUNK_KB");
  g->chunk = (ck && atol(ck) > 0 ? (size_t)atol(ck) : 1024) * 1024 / sizeof(float);
  atomic_init(&g->ctl[me]->posted, 0);
  atomic_init(&g->ctl[me]->reduced, 0);
  atomic_init(&g->ctl[me]->gathered, 0);
  memset(g->buf[me], 0, n * sizeof(float));
  MPI_Win_sync(g->win);
  MPI_Barrier(m->group); /* every control page is zeroed before anyone polls it */
  m->shm = g;
  *out = g->buf[me];
  return STATUS_OK;
}

static void m_free(comm_t *c) {
  mpi_impl *m = c->impl;
  if (m) {
    shm_free(m->shm);
    /* An answer still in flight keeps its buffer: it is left, not freed. */
    bool sent = true;
    for (int r = 0; m->reply_req && r < c->size; r++) {
      int done = 1;
      if (m->reply_req[r] != MPI_REQUEST_NULL) MPI_Test(&m->reply_req[r], &done, MPI_STATUS_IGNORE);
      if (!done) {
        MPI_Request_free(&m->reply_req[r]);
        sent = false;
      }
    }
    if (sent) free(m->reply);
    free(m->reply_req);
    if (m->where != MPI_COMM_NULL) MPI_Comm_free(&m->where);
    if (m->cross != MPI_COMM_NULL) MPI_Comm_free(&m->cross);
    if (m->group != MPI_COMM_NULL) MPI_Comm_free(&m->group);
    MPI_Comm_free(&m->node);
    MPI_Comm_free(&m->world);
    free(m);
  }
  free(c);
}

static const comm_ops mpi_ops = {
    .name = "mpi",
    .device_buffers = false,
    .allreduce = m_allreduce,
    .allreduce_f64 = m_allreduce_f64,
    .iallreduce = m_iallreduce,
    .test = m_test,
    .wait = m_wait,
    .reduce_scatter = m_reduce_scatter,
    .allgather = m_allgather,
    .allgather_bytes = m_allgather_bytes,
    .broadcast = m_broadcast,
    .barrier = m_barrier,
    .alloc_shared = m_alloc_shared,
    .free = m_free,
};

/* The ranks that share memory: the node, or consecutive groups of
 * MLMPI_COMM_GROUP ranks of it (which lets one machine stand for several
 * nodes); none where MLMPI_COMM_SHM=0. `cross` joins the same position in
 * every group. */
static void split_groups(comm_t *c, mpi_impl *m) {
  m->group = m->cross = MPI_COMM_NULL;
  const char *off = getenv("MLMPI_COMM_SHM");
  if (off && strcmp(off, "0") == 0) return;
  const char *gs = getenv("MLMPI_COMM_GROUP");
  int k = gs ? atoi(gs) : 0;
  if (k <= 0) k = c->local_size;
  MPI_Comm_split(m->node, c->local_rank / k, c->local_rank, &m->group);
  int me;
  MPI_Comm_rank(m->group, &me);
  MPI_Comm_split(m->world, me, c->rank, &m->cross);
}

status_t comm_mpi_init(comm_t **out, double timeout_s) {
  *out = NULL;
  comm_t *c = calloc(1, sizeof *c);
  mpi_impl *m = calloc(1, sizeof *m);
  if (!c || !m) {
    free(c);
    free(m);
    return status_set(STATUS_NOMEM, "out of memory creating the communicator");
  }
  /* A private duplicate, so nothing else on MPI_COMM_WORLD can interleave. */
  MPI_Comm_dup(MPI_COMM_WORLD, &m->world);
  /* Errors come back as codes (translated above) rather than aborting. */
  MPI_Comm_set_errhandler(m->world, MPI_ERRORS_RETURN);
  MPI_Comm_dup(m->world, &m->where); /* keeps the error handler */
  MPI_Comm_split_type(m->world, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &m->node);
  MPI_Comm_rank(m->world, &c->rank);
  MPI_Comm_size(m->world, &c->size);
  MPI_Comm_rank(m->node, &c->local_rank);
  MPI_Comm_size(m->node, &c->local_size);
  split_groups(c, m);
  c->ops = &mpi_ops;
  c->impl = m;
  m->reply = calloc((size_t)c->size, sizeof *m->reply);
  m->reply_req = malloc((size_t)c->size * sizeof *m->reply_req);
  if (!m->reply || !m->reply_req) {
    m_free(c);
    return status_set(STATUS_NOMEM, "out of memory creating the communicator");
  }
  for (int r = 0; r < c->size; r++) m->reply_req[r] = MPI_REQUEST_NULL;
  c->timeout_s = timeout_s > 0 ? timeout_s : 300;
  *out = c;
  return STATUS_OK;
}
