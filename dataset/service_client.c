/* service_client.c: the dataset service's client. A bounded queue of slots
 * that one prefetch thread fills asynchronously from the replicas, failing
 * over on errors and timeouts; svc_client_get takes batches out of it. */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "service_wire.h"

#define SVC_MAX_REPLICAS 64
#define SVC_BACKOFF_MAX_MS 5000

typedef struct {
  char url[320];
  nng_socket sock;
  uint64_t rest_until; /* no new request before this (backoff after a failure) */
  int fails, inflight;
  char last_err[256];
} replica;

typedef enum {
  SLOT_FREE,
  SLOT_WANT,   /* to be requested */
  SLOT_BUSY,   /* an attempt is in flight (the aio callback owns ctx, aio, sending) */
  SLOT_DONE,   /* the attempt ended; the fetch thread looks at it */
  SLOT_READY,  /* batch holds the rows */
  SLOT_FAILED, /* a replica refused: err says why */
} slot_state;

typedef struct slot {
  struct svc_client *c;
  svc_key key;
  slot_state state;
  bool orphan;    /* nobody wants it any more: drop when the attempt ends */
  bool held;      /* a get waits for it: never evicted */
  uint64_t order; /* lower: wanted sooner */
  uint64_t not_before;
  int replica;
  nng_ctx ctx;
  bool ctx_open;
  nng_aio *aio;
  bool sending;
  int rv;
  nng_msg *reply;
  data_batch batch;
  char err[1100];
} slot;

struct svc_client {
  svc_client_options o;
  char *token, *split;
  replica *reps;
  int n_reps, rr;
  slot *slots;
  int n_slots;
  svc_key *plan; /* announced keys not yet given a slot: plan[plan_head..plan_n) */
  size_t plan_n, plan_head, plan_cap;
  bool planned;
  uint64_t fingerprint;
  uint64_t next_order, front_order;
  /* Batches received and attempts retried, for svc_client_counts. */
  uint64_t n_batches, n_retries;
  pthread_mutex_t mu; /* guards everything here but what a BUSY slot's callback owns */
  pthread_cond_t cv;  /* any slot changed state, or work arrived */
  pthread_t thread;
  bool thread_started, stop;
};

svc_client_options svc_client_options_default(void) {
  return (svc_client_options){.config = data_config_default(),
                              .split = "train",
                              .depth = 8,
                              .ahead = 2,
                              .timeout_ms = 60000,
                              .connect_timeout_ms = 1000,
                              .request_timeout_ms = 10000,
                              .backoff_ms = 100};
}

static status_t parse_addresses(svc_client *c, const char *list) {
  if (!list || !*list) return status_set(STATUS_CONFIG, "no dataset service address given");
  c->reps = calloc(SVC_MAX_REPLICAS, sizeof *c->reps);
  if (!c->reps) return status_set(STATUS_NOMEM, "out of memory");
  for (const char *p = list; *p;) {
    size_t n = strcspn(p, ",");
    while (n && isspace((unsigned char)*p)) p++, n--;
    size_t m = n;
    while (m && isspace((unsigned char)p[m - 1])) m--;
    char item[300];
    if (m == 0 || m >= sizeof item)
      return status_set(STATUS_CONFIG, "bad service address list '%s'", list);
    memcpy(item, p, m);
    item[m] = 0;
    if (c->n_reps == SVC_MAX_REPLICAS)
      return status_set(STATUS_CONFIG, "more than %d service addresses", SVC_MAX_REPLICAS);
    replica *r = &c->reps[c->n_reps++];
    r->sock = (nng_socket)NNG_SOCKET_INITIALIZER;
    if (!strncmp(item, "tcp://", 6)) {
      snprintf(r->url, sizeof r->url, "%s", item);
    } else {
      char *colon = strrchr(item, ':');
      char *end = NULL;
      long port = colon ? strtol(colon + 1, &end, 10) : 0;
      if (!colon || colon == item || !end || *end || end == colon + 1 || port < 1 || port > 65535)
        return status_set(STATUS_CONFIG, "service address '%s' is not HOST:PORT", item);
      *colon = 0;
      if (strchr(item, ':') && item[0] != '[')
        return status_set(STATUS_CONFIG,
                          "write IPv6 service addresses as [ADDR]:PORT, not '%s:%ld'", item, port);
      svc_tcp_url(r->url, sizeof r->url, item, (int)port);
    }
    p += n;
    if (*p == ',') p++;
  }
  return STATUS_OK;
}

static status_t replica_connect(replica *r) {
  int rv;
  if ((rv = nng_req0_open(&r->sock)) != 0 ||
      (rv = nng_socket_set_size(r->sock, NNG_OPT_RECVMAXSZ, SVC_MAX_REPLY_BYTES)) != 0 ||
      (rv = nng_socket_set_ms(r->sock, NNG_OPT_RECONNMINT, 50)) != 0 ||
      (rv = nng_socket_set_ms(r->sock, NNG_OPT_RECONNMAXT, 1000)) != 0 ||
      /* No silent resends: a lost connection fails the attempt at once and
       * the client picks the replica itself. */
      (rv = nng_socket_set_ms(r->sock, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE)) != 0)
    return status_set(STATUS_COMM, "cannot open a socket for %s: %s", r->url, nng_strerror(rv));
  /* Non-blocking: a replica that is down now is dialled again in the
   * background until it comes up. */
  if ((rv = nng_dial(r->sock, r->url, NULL, NNG_FLAG_NONBLOCK)) != 0)
    return status_set(STATUS_CONFIG, "cannot dial %s: %s", r->url, nng_strerror(rv));
  return STATUS_OK;
}

/* The aio callback of a slot's attempt: after the send, receive; after the
 * receive (or any failure), hand the slot back to the fetch thread. */
static void slot_cb(void *arg) {
  slot *s = arg;
  svc_client *c = s->c;
  int rv = nng_aio_result(s->aio);
  nng_msg *m = NULL;
  if (s->sending) {
    if (rv == 0) {
      s->sending = false;
      nng_aio_set_timeout(s->aio, c->o.request_timeout_ms);
      nng_ctx_recv(s->ctx, s->aio);
      return;
    }
    nng_msg_free(nng_aio_get_msg(s->aio)); /* an unsent message stays ours */
  } else if (rv == 0) {
    m = nng_aio_get_msg(s->aio);
  }
  pthread_mutex_lock(&c->mu);
  s->rv = rv;
  s->reply = m;
  s->state = SLOT_DONE;
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
}

static slot *slot_find(svc_client *c, const svc_key *k) {
  for (int i = 0; i < c->n_slots; i++) {
    slot *s = &c->slots[i];
    if (s->state != SLOT_FREE && !s->orphan && s->key.step == k->step && s->key.first == k->first &&
        s->key.count == k->count)
      return s;
  }
  return NULL;
}

static slot *slot_free_one(svc_client *c) {
  for (int i = 0; i < c->n_slots; i++)
    if (c->slots[i].state == SLOT_FREE) return &c->slots[i];
  return NULL;
}

static void slot_want(slot *s, const svc_key *k, uint64_t order) {
  s->key = *k;
  s->state = SLOT_WANT;
  s->orphan = false;
  s->order = order;
  s->not_before = 0;
}

/* Moves announced keys into free slots, in order. */
static void plan_fill_locked(svc_client *c) {
  slot *s;
  while (c->plan_head < c->plan_n && (s = slot_free_one(c))) {
    svc_key k = c->plan[c->plan_head++];
    if (!slot_find(c, &k)) slot_want(s, &k, c->next_order++);
  }
}

/* The replica for the next attempt: the one free soonest, then the least
 * loaded, in round-robin order among equals. *avail is when it may be used. */
static int replica_pick(svc_client *c, uint64_t now, uint64_t *avail) {
  int best = -1;
  uint64_t best_t = 0;
  for (int k = 0; k < c->n_reps; k++) {
    int i = (c->rr + k) % c->n_reps;
    replica *r = &c->reps[i];
    uint64_t t = r->rest_until > now ? r->rest_until : now;
    if (best < 0 || t < best_t || (t == best_t && r->inflight < c->reps[best].inflight)) {
      best = i;
      best_t = t;
    }
  }
  c->rr = (best + 1) % c->n_reps;
  *avail = best_t;
  return best;
}

/* A failure that another attempt may cure: the replica rests, the slot is
 * wanted again. */
static void attempt_retry(svc_client *c, slot *s, const char *why) {
  replica *r = &c->reps[s->replica];
  r->fails++;
  c->n_retries++;
  uint64_t rest = (uint64_t)c->o.backoff_ms << (r->fails < 7 ? r->fails - 1 : 6);
  r->rest_until = svc_now_ms() + (rest < SVC_BACKOFF_MAX_MS ? rest : SVC_BACKOFF_MAX_MS);
  snprintf(r->last_err, sizeof r->last_err, "%.200s", why);
  LOG_DEBUG(DATASET, "%s: %s (step %llu, retrying)", r->url, why, (unsigned long long)s->key.step);
  s->state = SLOT_WANT;
  s->not_before = 0;
}

static void attempt_fail(svc_client *c, slot *s, const char *why) {
  snprintf(s->err, sizeof s->err, "dataset service %s: %.700s", c->reps[s->replica].url, why);
  snprintf(c->reps[s->replica].last_err, sizeof c->reps[s->replica].last_err, "%.200s", why);
  s->state = SLOT_FAILED;
}

static bool bytes_ok(const ProtobufCBinaryData *f, size_t words) { return f->len == words * 4; }

static void copy_le32(void *dst, const ProtobufCBinaryData *f) {
  memcpy(dst, f->data, f->len);
  svc_le32_inplace(dst, f->len / 4);
}

/* Declared in service_wire.h. */
svc_reply_verdict svc_reply_parse(const void *body, size_t len, const svc_key *key, int T, int P,
                                  uint64_t expect_fp, data_batch *out, uint64_t *fingerprint,
                                  char *why, size_t cap) {
  return svc_reply_parse_objective(body, len, key, T, P, OBJECTIVE_MLM, expect_fp, out, fingerprint,
                                   why, cap);
}

svc_reply_verdict svc_reply_parse_objective(const void *body, size_t len, const svc_key *key, int T,
                                            int P, data_objective objective, uint64_t expect_fp,
                                            data_batch *out, uint64_t *fingerprint, char *why,
                                            size_t cap) {
  svc_reply *p = mlmpi__service__batch_reply__unpack(NULL, len, body);
  const int n = key->count;
  /* Causal-LM replies carry the targets; masked-LM replies carry none. */
  const size_t nt_targets = objective == OBJECTIVE_CLM ? (size_t)n * T : 0;
  svc_reply_verdict v = SVC_REPLY_RETRY;
  if (!p) {
    snprintf(why, cap, "malformed reply");
    return SVC_REPLY_RETRY;
  }
  if ((int)p->error != SVC_ERR_NONE) {
    /* protobuf-c gives an absent message as "", not NULL. */
    if (p->message && *p->message)
      snprintf(why, cap, "%s", p->message);
    else
      snprintf(why, cap, "refused with error %d and no reason", (int)p->error);
    v = (int)p->error == SVC_ERR_BUSY ? SVC_REPLY_RETRY : SVC_REPLY_FAIL;
  } else if (p->version != SVC_PROTOCOL_VERSION) {
    snprintf(why, cap, "replied with protocol version %u, not %u", p->version,
             SVC_PROTOCOL_VERSION);
    v = SVC_REPLY_FAIL;
  } else if ((expect_fp && p->fingerprint != expect_fp) || !p->fingerprint) {
    snprintf(why, cap, "serves job %016llx, not the expected %016llx",
             (unsigned long long)p->fingerprint, (unsigned long long)expect_fp);
    v = SVC_REPLY_FAIL;
  } else if (p->step != key->step || p->first != key->first || p->count != (uint32_t)n ||
             p->seq_len != (uint32_t)T || p->max_predictions != (uint32_t)P ||
             !bytes_ok(&p->input_ids, (size_t)n * T) || !bytes_ok(&p->input_mask, (size_t)n * T) ||
             !bytes_ok(&p->segment_ids, (size_t)n * T) ||
             !bytes_ok(&p->masked_lm_positions, (size_t)n * P) ||
             !bytes_ok(&p->masked_lm_ids, (size_t)n * P) ||
             !bytes_ok(&p->masked_lm_weights, (size_t)n * P) ||
             !bytes_ok(&p->next_sentence_labels, (size_t)n) ||
             !bytes_ok(&p->target_ids, nt_targets) || !bytes_ok(&p->target_weights, nt_targets)) {
    snprintf(why, cap, "a reply that does not match its request");
  } else if (svc_batch_fit(out, n, T, P) != STATUS_OK) {
    snprintf(why, cap, "out of memory for a batch");
  } else {
    copy_le32(out->input_ids, &p->input_ids);
    copy_le32(out->input_mask, &p->input_mask);
    copy_le32(out->segment_ids, &p->segment_ids);
    copy_le32(out->masked_lm_positions, &p->masked_lm_positions);
    copy_le32(out->masked_lm_ids, &p->masked_lm_ids);
    copy_le32(out->masked_lm_weights, &p->masked_lm_weights);
    copy_le32(out->next_sentence_labels, &p->next_sentence_labels);
    if (nt_targets) {
      copy_le32(out->target_ids, &p->target_ids);
      copy_le32(out->target_weights, &p->target_weights);
    } else {
      memset(out->target_ids, 0, (size_t)n * T * 4);
      memset(out->target_weights, 0, (size_t)n * T * 4);
    }
    *fingerprint = p->fingerprint;
    v = SVC_REPLY_OK;
  }
  mlmpi__service__batch_reply__free_unpacked(p, NULL);
  return v;
}

/* Turns a finished attempt into a ready batch, a retry or a failure. */
static void attempt_finish_locked(svc_client *c, slot *s) {
  nng_aio_wait(s->aio); /* the callback has returned */
  if (s->ctx_open) nng_ctx_close(s->ctx);
  s->ctx_open = false;
  replica *r = &c->reps[s->replica];
  r->inflight--;
  nng_msg *m = s->reply;
  s->reply = NULL;
  if (s->orphan) {
    if (m) nng_msg_free(m);
    s->state = SLOT_FREE;
    s->orphan = false;
    return;
  }
  if (s->rv) {
    char why[128];
    snprintf(why, sizeof why, "%s",
             s->rv == NNG_ETIMEDOUT ? (s->sending ? "no connection in time" : "no reply in time")
                                    : nng_strerror(s->rv));
    attempt_retry(c, s, why);
    return;
  }
  char why[768];
  uint64_t fp = 0;
  svc_reply_verdict v = svc_reply_parse_objective(
      nng_msg_body(m), nng_msg_len(m), &s->key, c->o.config.seq_len, c->o.config.max_predictions,
      c->o.config.objective, c->fingerprint, &s->batch, &fp, why, sizeof why);
  nng_msg_free(m);
  if (v == SVC_REPLY_RETRY) {
    attempt_retry(c, s, why);
  } else if (v == SVC_REPLY_FAIL) {
    attempt_fail(c, s, why);
  } else {
    if (!c->fingerprint) c->fingerprint = fp;
    c->n_batches++;
    s->state = SLOT_READY;
    r->fails = 0;
    r->rest_until = 0;
  }
}

/* Sends a slot's request; runs without the client lock (nng may call back
 * on another thread at once). */
static void attempt_start(svc_client *c, slot *s, uint64_t fingerprint) {
  replica *r = &c->reps[s->replica];
  svc_request q;
  svc_config_msg cm;
  mlmpi__service__batch_request__init(&q);
  svc_config_to_msg(&c->o.config, c->split, &cm);
  q.version = SVC_PROTOCOL_VERSION;
  q.config = &cm;
  if (c->token) {
    q.token.data = (uint8_t *)c->token;
    q.token.len = strlen(c->token);
  }
  q.fingerprint = fingerprint;
  q.global_batch = c->o.global_batch;
  q.step = s->key.step;
  q.first = s->key.first;
  q.count = (uint32_t)s->key.count;
  nng_msg *m = NULL;
  int rv = nng_ctx_open(&s->ctx, r->sock);
  s->ctx_open = rv == 0;
  if (rv == 0 && (rv = nng_msg_alloc(&m, mlmpi__service__batch_request__get_packed_size(&q))) == 0)
    mlmpi__service__batch_request__pack(&q, nng_msg_body(m));
  if (rv) {
    /* Counted as a failed attempt, as if the callback had reported it. */
    pthread_mutex_lock(&c->mu);
    s->rv = rv;
    s->reply = NULL;
    s->sending = true;
    s->state = SLOT_DONE;
    pthread_mutex_unlock(&c->mu);
    return;
  }
  s->sending = true;
  nng_aio_set_msg(s->aio, m);
  nng_aio_set_timeout(s->aio, c->o.connect_timeout_ms);
  nng_ctx_send(s->ctx, s->aio);
}

/* The time ms from now on CLOCK_MONOTONIC, the clock the client's condition
 * variable waits on. */
static struct timespec deadline_in(uint64_t ms) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  ts.tv_sec += (time_t)(ms / 1000);
  ts.tv_nsec += (long)(ms % 1000) * 1000000L;
  if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
  return ts;
}

static void *fetch_main(void *arg) {
  svc_client *c = arg;
  slot **start = calloc((size_t)c->n_slots, sizeof *start);
  pthread_mutex_lock(&c->mu);
  while (!c->stop && start) {
    plan_fill_locked(c);
    bool progressed = false;
    for (int i = 0; i < c->n_slots; i++)
      if (c->slots[i].state == SLOT_DONE) {
        attempt_finish_locked(c, &c->slots[i]);
        progressed = true;
      }
    if (progressed) pthread_cond_broadcast(&c->cv);
    plan_fill_locked(c);
    uint64_t now = svc_now_ms(), wake = now + 250;
    int ns = 0;
    for (;;) {
      slot *best = NULL;
      for (int i = 0; i < c->n_slots; i++) {
        slot *s = &c->slots[i];
        if (s->state == SLOT_WANT && s->not_before <= now && (!best || s->order < best->order))
          best = s;
      }
      if (!best) break;
      uint64_t avail;
      int ri = replica_pick(c, now, &avail);
      if (avail > now) {
        /* Every replica rests: the soonest wanted slot waits for one. */
        best->not_before = avail;
        continue;
      }
      best->state = SLOT_BUSY;
      best->replica = ri;
      c->reps[ri].inflight++;
      start[ns++] = best;
    }
    for (int i = 0; i < c->n_slots; i++) {
      const slot *s = &c->slots[i];
      if (s->state == SLOT_WANT && s->not_before > now && s->not_before < wake)
        wake = s->not_before;
    }
    uint64_t fp = c->fingerprint;
    if (ns) {
      pthread_mutex_unlock(&c->mu);
      for (int i = 0; i < ns; i++) attempt_start(c, start[i], fp);
      pthread_mutex_lock(&c->mu);
      continue;
    }
    bool done = false;
    for (int i = 0; i < c->n_slots && !done; i++) done = c->slots[i].state == SLOT_DONE;
    if (done || c->stop) continue;
    struct timespec ts = deadline_in(wake - now);
    pthread_cond_timedwait(&c->cv, &c->mu, &ts);
  }
  pthread_mutex_unlock(&c->mu);
  free(start);
  return NULL;
}

status_t svc_client_open(svc_client **out, const svc_client_options *o) {
  *out = NULL;
  if (o->global_batch < 1)
    return status_set(STATUS_CONFIG, "the service client needs a global batch");
  const char *split = o->split ? o->split : "train";
  if (!svc_split_name_ok(split)) return status_set(STATUS_CONFIG, "bad split name '%s'", split);
  svc_client *c = calloc(1, sizeof *c);
  if (!c) return status_set(STATUS_NOMEM, "out of memory");
  c->o = *o;
  c->o.addresses = NULL;
  c->o.token = NULL;
  c->o.split = NULL;
  if (c->o.depth < 1) c->o.depth = 1;
  if (c->o.ahead < 0) c->o.ahead = 0;
  if (c->o.timeout_ms < 1) c->o.timeout_ms = 60000;
  if (c->o.connect_timeout_ms < 1) c->o.connect_timeout_ms = 1000;
  if (c->o.request_timeout_ms < 1) c->o.request_timeout_ms = 10000;
  if (c->o.backoff_ms < 1) c->o.backoff_ms = 100;
  c->fingerprint = o->fingerprint;
  c->next_order = 1ull << 62;
  c->front_order = 1ull << 62;
  pthread_mutex_init(&c->mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&c->cv, &ca);
  pthread_condattr_destroy(&ca);
  status_t st = STATUS_OK;
  c->split = svc_str_dup(split);
  c->token = o->token && *o->token ? svc_str_dup(o->token) : NULL;
  /* One slot more than the depth: a get for a key outside the queue always
   * finds room. */
  c->n_slots = c->o.depth + 1;
  c->slots = calloc((size_t)c->n_slots, sizeof *c->slots);
  if (!c->split || (o->token && *o->token && !c->token) || !c->slots) {
    st = status_set(STATUS_NOMEM, "out of memory");
    goto fail;
  }
  for (int i = 0; i < c->n_slots; i++) {
    c->slots[i].c = c;
    int rv = nng_aio_alloc(&c->slots[i].aio, slot_cb, &c->slots[i]);
    if (rv) {
      st = status_set(STATUS_NOMEM, "cannot allocate an nng aio: %s", nng_strerror(rv));
      goto fail;
    }
  }
  if ((st = parse_addresses(c, o->addresses))) goto fail;
  for (int i = 0; i < c->n_reps; i++)
    if ((st = replica_connect(&c->reps[i]))) goto fail;
  if (pthread_create(&c->thread, NULL, fetch_main, c) != 0) {
    st = status_set(STATUS_NOMEM, "cannot start the prefetch thread");
    goto fail;
  }
  c->thread_started = true;
  *out = c;
  return STATUS_OK;
fail:
  svc_client_free(c);
  return st;
}

status_t svc_client_plan(svc_client *c, const svc_key *keys, size_t n) {
  pthread_mutex_lock(&c->mu);
  if (c->plan_head > 0) {
    memmove(c->plan, c->plan + c->plan_head, (c->plan_n - c->plan_head) * sizeof *c->plan);
    c->plan_n -= c->plan_head;
    c->plan_head = 0;
  }
  if (c->plan_n + n > c->plan_cap) {
    size_t cap = c->plan_cap ? c->plan_cap : 64;
    while (cap < c->plan_n + n) cap *= 2;
    svc_key *p = realloc(c->plan, cap * sizeof *p);
    if (!p) {
      pthread_mutex_unlock(&c->mu);
      return status_set(STATUS_NOMEM, "out of memory for a plan of %zu keys", n);
    }
    c->plan = p;
    c->plan_cap = cap;
  }
  memcpy(c->plan + c->plan_n, keys, n * sizeof *keys);
  c->plan_n += n;
  c->planned = true;
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
  return STATUS_OK;
}

/* Keys of earlier steps are not asked for again: free their slots (or drop
 * their attempts when they end). */
static void drop_stale_locked(svc_client *c, const svc_key *k) {
  for (int i = 0; i < c->n_slots; i++) {
    slot *s = &c->slots[i];
    if (s->state == SLOT_FREE || s->held || s->orphan || s->key.step >= k->step) continue;
    if (s->state == SLOT_BUSY || s->state == SLOT_DONE)
      s->orphan = true;
    else
      s->state = SLOT_FREE;
  }
  /* A key in the plan is reached: the ones before it were skipped. */
  for (size_t i = c->plan_head; i < c->plan_n; i++) {
    const svc_key *p = &c->plan[i];
    if (p->step == k->step && p->first == k->first && p->count == k->count) {
      c->plan_head = i + 1;
      break;
    }
  }
}

/* A slot for k, evicting the furthest queued (not in flight) one when none
 * is free; NULL when every slot is in flight or held. */
static slot *slot_claim_locked(svc_client *c, const svc_key *k) {
  slot *s = slot_free_one(c);
  for (int i = 0; i < c->n_slots && !s; i++) {
    slot *e = &c->slots[i];
    if ((e->state == SLOT_WANT || e->state == SLOT_READY) && !e->held) s = e;
  }
  for (int i = 0; i < c->n_slots && s && s->state != SLOT_FREE; i++) {
    slot *e = &c->slots[i];
    if ((e->state == SLOT_WANT || e->state == SLOT_READY) && !e->held && e->order > s->order) s = e;
  }
  if (s) slot_want(s, k, --c->front_order);
  return s;
}

static void prefetch_ahead_locked(svc_client *c, const svc_key *k) {
  for (int i = 1; i <= c->o.ahead; i++) {
    svc_key n = {k->step + (uint64_t)i, k->first, k->count};
    if (slot_find(c, &n)) continue;
    slot *s = slot_free_one(c);
    if (!s) break;
    slot_want(s, &n, c->next_order++);
  }
}

static status_t timeout_error(svc_client *c, const svc_key *k) {
  char list[2048];
  size_t off = 0;
  for (int i = 0; i < c->n_reps && off < sizeof list; i++)
    off +=
        (size_t)snprintf(list + off, sizeof list - off, "%s%s (%s)", i ? ", " : "", c->reps[i].url,
                         c->reps[i].last_err[0] ? c->reps[i].last_err : "no answer");
  return status_set(STATUS_TIMEOUT,
                    "no dataset service replica delivered step %llu (instances %llu..%llu) within "
                    "%.1f s; replicas: %s",
                    (unsigned long long)k->step, (unsigned long long)k->first,
                    (unsigned long long)(k->first + (uint64_t)k->count - 1),
                    c->o.timeout_ms / 1000.0, list);
}

status_t svc_client_get(svc_client *c, uint64_t step, uint64_t first, int count, data_batch *out) {
  const int T = c->o.config.seq_len, P = c->o.config.max_predictions;
  if (count < 1 || out->n < count || out->T != T || out->P != P || first > c->o.global_batch ||
      (uint64_t)count > c->o.global_batch - first)
    return status_set(STATUS_ARG,
                      "service batch request: instances %llu + %d of %llu into a batch of %d x "
                      "(%d, %d) do not fit (want T %d, P %d)",
                      (unsigned long long)first, count, (unsigned long long)c->o.global_batch,
                      out->n, out->T, out->P, T, P);
  const svc_key k = {step, first, count};
  const struct timespec dl = deadline_in((uint64_t)c->o.timeout_ms);
  status_t st = STATUS_OK;
  pthread_mutex_lock(&c->mu);
  drop_stale_locked(c, &k);
  slot *s;
  while (!(s = slot_find(c, &k)) && !(s = slot_claim_locked(c, &k)))
    if (pthread_cond_timedwait(&c->cv, &c->mu, &dl) == ETIMEDOUT) {
      st = timeout_error(c, &k);
      pthread_mutex_unlock(&c->mu);
      return st;
    }
  s->held = true;
  if (s->state == SLOT_WANT) s->order = --c->front_order;
  if (!c->planned) prefetch_ahead_locked(c, &k);
  pthread_cond_broadcast(&c->cv);
  while (s->state != SLOT_READY && s->state != SLOT_FAILED)
    if (pthread_cond_timedwait(&c->cv, &c->mu, &dl) == ETIMEDOUT) break;
  s->held = false;
  if (s->state == SLOT_READY) {
    size_t nt = (size_t)count * T * 4, np = (size_t)count * P * 4;
    memcpy(out->input_ids, s->batch.input_ids, nt);
    memcpy(out->input_mask, s->batch.input_mask, nt);
    memcpy(out->segment_ids, s->batch.segment_ids, nt);
    memcpy(out->masked_lm_positions, s->batch.masked_lm_positions, np);
    memcpy(out->masked_lm_ids, s->batch.masked_lm_ids, np);
    memcpy(out->masked_lm_weights, s->batch.masked_lm_weights, np);
    memcpy(out->next_sentence_labels, s->batch.next_sentence_labels, (size_t)count * 4);
    memcpy(out->target_ids, s->batch.target_ids, nt);
    memcpy(out->target_weights, s->batch.target_weights, nt);
    s->state = SLOT_FREE;
  } else if (s->state == SLOT_FAILED) {
    st = status_set(STATUS_COMM, "%s", s->err);
    s->state = SLOT_FREE;
  } else {
    st = timeout_error(c, &k);
  }
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
  return st;
}

uint64_t svc_client_fingerprint(svc_client *c) {
  pthread_mutex_lock(&c->mu);
  uint64_t fp = c->fingerprint;
  pthread_mutex_unlock(&c->mu);
  return fp;
}

void svc_client_counts(svc_client *c, uint64_t *batches, uint64_t *retries) {
  pthread_mutex_lock(&c->mu);
  if (batches) *batches = c->n_batches;
  if (retries) *retries = c->n_retries;
  pthread_mutex_unlock(&c->mu);
}

void svc_client_free(svc_client *c) {
  if (!c) return;
  if (c->thread_started) {
    pthread_mutex_lock(&c->mu);
    c->stop = true;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->thread, NULL);
    /* Let attempts in flight end (they are bounded by their timeouts):
     * closing a socket under them can stall nng 1.5's reaper. */
    pthread_mutex_lock(&c->mu);
    for (;;) {
      bool busy = false;
      for (int i = 0; i < c->n_slots; i++) busy |= c->slots[i].state == SLOT_BUSY;
      if (!busy) break;
      pthread_cond_wait(&c->cv, &c->mu);
    }
    pthread_mutex_unlock(&c->mu);
  }
  /* Closing the contexts ends every attempt in flight (a callback that
   * starts a receive on a closed context fails at once); freeing an aio
   * waits for its callback; the sockets go last, when no operation can
   * touch them (see svc_server_free). */
  for (int i = 0; c->slots && i < c->n_slots; i++)
    if (c->slots[i].ctx_open) nng_ctx_close(c->slots[i].ctx);
  for (int i = 0; c->slots && i < c->n_slots; i++) {
    slot *s = &c->slots[i];
    if (s->aio) nng_aio_free(s->aio);
    if (s->reply) nng_msg_free(s->reply);
    data_batch_free(&s->batch);
  }
  for (int i = 0; c->reps && i < c->n_reps; i++)
    if (nng_socket_id(c->reps[i].sock) > 0) nng_close(c->reps[i].sock);
  pthread_cond_destroy(&c->cv);
  pthread_mutex_destroy(&c->mu);
  free(c->slots);
  free(c->reps);
  free(c->plan);
  free(c->split);
  free(c->token);
  free(c);
}
