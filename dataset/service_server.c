/* service_server.c: the dataset service's server (mlmpi-data serve). One nng
 * REP context per worker thread receives a request, builds the batch with
 * dataset_get_batch from a small cache of open data configs, and replies. */
#define _GNU_SOURCE
#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "service_wire.h"

#define SVC_MAX_COUNT 65536
#define SVC_SEND_TIMEOUT_MS 30000 /* a reply the peer does not take frees the worker */

/* The time a comparison takes depends on the secret's length only. */
static bool token_equal(const uint8_t *given, size_t n_given, const char *secret) {
  size_t n = strlen(secret);
  volatile unsigned diff = n_given != n;
  for (size_t i = 0; i < n; i++)
    diff |= (unsigned)((uint8_t)secret[i] ^ (i < n_given ? given[i] : 0));
  return diff == 0;
}

/* Bytes of one batch's tensors: 3 [n,T] and 3 [n,P] arrays and [n] labels. */
static uint64_t batch_bytes(uint64_t n, uint64_t T, uint64_t P) {
  return n * (3 * T + 3 * P + 1) * 4;
}

typedef struct {
  data_config cfg;
  char split[16];
  dataset *d; /* NULL: the entry is free */
  int refs;   /* requests using d */
  uint64_t used;
} ds_entry;

struct svc_server {
  char *dir, *token, *url;
  int port, max_configs;
  data_config check; /* what the start-up check opened the data with */
  nng_socket sock;
  /* One context per worker, opened before the workers start and closed
   * before the socket: closing a socket while a worker is between its
   * receive and its send is not safe in nng 1.5, closing a context is. */
  nng_ctx *ctxs;
  int n_ctxs;
  pthread_t *threads;
  int n_threads;
  /* Lock order: open_mu, then mu. open_mu lets one data set open at a time
   * without holding mu, so requests for open configs keep being served. */
  pthread_mutex_t mu, open_mu;
  ds_entry *cache; /* max_configs entries, guarded by mu */
  uint64_t tick;
  bool started; /* opens after the start are logged */
  atomic_uint_fast64_t replies, batches, last_warn_ms;
};

svc_server_config svc_server_config_default(void) {
  return (svc_server_config){.bind = "127.0.0.1", .port = SVC_DEFAULT_PORT, .max_configs = 8};
}

static int cores_available(void) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (int)n : 1;
}

static ds_entry *cache_find(svc_server *s, const data_config *c, const char *split) {
  for (int i = 0; i < s->max_configs; i++) {
    ds_entry *e = &s->cache[i];
    if (e->d && !strcmp(e->split, split) && svc_config_equal(&e->cfg, c)) return e;
  }
  return NULL;
}

static ds_entry *cache_lookup(svc_server *s, const data_config *c, const char *split) {
  pthread_mutex_lock(&s->mu);
  ds_entry *e = cache_find(s, c, split);
  if (e) {
    e->refs++;
    e->used = ++s->tick;
  }
  pthread_mutex_unlock(&s->mu);
  return e;
}

/* A referenced entry for (c, split), opening the data set when no entry
 * holds it and evicting the least recently used unreferenced one when all
 * are taken. On failure *code says which error to reply. */
static status_t cache_acquire(svc_server *s, const data_config *c, const char *split,
                              ds_entry **out, int *code) {
  if ((*out = cache_lookup(s, c, split))) return STATUS_OK;
  pthread_mutex_lock(&s->open_mu);
  if ((*out = cache_lookup(s, c, split))) {
    pthread_mutex_unlock(&s->open_mu);
    return STATUS_OK;
  }
  dataset *d;
  status_t st = dataset_open(&d, s->dir, split, c);
  if (st) {
    pthread_mutex_unlock(&s->open_mu);
    *code = SVC_ERR_DATA;
    return st;
  }
  pthread_mutex_lock(&s->mu);
  ds_entry *slot = NULL;
  for (int i = 0; i < s->max_configs && !slot; i++)
    if (!s->cache[i].d) slot = &s->cache[i];
  for (int i = 0; i < s->max_configs && !slot; i++)
    if (s->cache[i].refs == 0 && (!slot || s->cache[i].used < slot->used)) slot = &s->cache[i];
  if (!slot) {
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_unlock(&s->open_mu);
    dataset_free(d);
    *code = SVC_ERR_BUSY;
    return status_set(STATUS_ARG, "all %d data configurations of this server are in use",
                      s->max_configs);
  }
  dataset_free(slot->d);
  *slot = (ds_entry){.cfg = *c, .d = d, .refs = 1, .used = ++s->tick};
  snprintf(slot->split, sizeof slot->split, "%s", split);
  pthread_mutex_unlock(&s->mu);
  pthread_mutex_unlock(&s->open_mu);
  if (s->started)
    LOG_INFO(DATASET,
             "opened %s split %s: seq_len %d, seed %llu, %llu instances, fingerprint %016llx",
             s->dir, split, c->seq_len, (unsigned long long)c->seed,
             (unsigned long long)dataset_instances(d), (unsigned long long)dataset_fingerprint(d));
  *out = slot;
  return STATUS_OK;
}

static void cache_release(svc_server *s, ds_entry *e) {
  if (!e) return;
  pthread_mutex_lock(&s->mu);
  e->refs--;
  pthread_mutex_unlock(&s->mu);
}

/* Refused requests are logged at most once a second: a misbehaving client
 * must not flood the log. */
static void warn_refusal(svc_server *s, int code, const char *why) {
  uint64_t now = svc_now_ms(), last = atomic_load(&s->last_warn_ms);
  if (now - last < 1000 || !atomic_compare_exchange_strong(&s->last_warn_ms, &last, now)) return;
  LOG_WARN(DATASET, "refused a request (error %d): %s", code, why);
}

static void set_bytes(ProtobufCBinaryData *f, void *p, size_t n_words) {
  svc_le32_inplace(p, n_words);
  f->data = p;
  f->len = n_words * 4;
}

/* Checks a request and builds its batch into r (which then points into
 * scratch). Returns the error code; msg says why. */
static int serve_request(svc_server *s, const svc_request *q, data_batch *scratch, svc_reply *r,
                         char *msg, size_t msg_cap, ds_entry **held) {
  if (q->version != SVC_PROTOCOL_VERSION) {
    snprintf(msg, msg_cap, "protocol version %u is not supported: this server speaks version %u",
             q->version, SVC_PROTOCOL_VERSION);
    return SVC_ERR_VERSION;
  }
  if (s->token && !token_equal(q->token.data, q->token.len, s->token)) {
    snprintf(msg, msg_cap, "missing or wrong token");
    return SVC_ERR_AUTH;
  }
  data_config c;
  char split[16];
  if (svc_config_from_msg(q->config, &c, split) != STATUS_OK) {
    snprintf(msg, msg_cap, "bad data config: %s", status_message());
    return SVC_ERR_BAD_REQUEST;
  }
  uint64_t gb = q->global_batch;
  if (gb < 1 || q->count < 1 || q->count > SVC_MAX_COUNT || q->first > gb ||
      q->count > gb - q->first || q->step > (UINT64_MAX - gb) / gb ||
      batch_bytes(q->count, c.seq_len, c.max_predictions) > SVC_MAX_REPLY_BYTES - 4096) {
    snprintf(msg, msg_cap,
             "instances %llu + %u of a global batch of %llu at step %llu: out of range or over "
             "the %u-byte reply limit",
             (unsigned long long)q->first, q->count, (unsigned long long)gb,
             (unsigned long long)q->step, SVC_MAX_REPLY_BYTES);
    return SVC_ERR_BAD_REQUEST;
  }
  int code = SVC_ERR_DATA;
  if (cache_acquire(s, &c, split, held, &code) != STATUS_OK) {
    snprintf(msg, msg_cap, "%s", status_message());
    return code;
  }
  const dataset *d = (*held)->d;
  uint64_t fp = dataset_fingerprint(d);
  r->fingerprint = fp;
  if (q->fingerprint && q->fingerprint != fp) {
    snprintf(msg, msg_cap,
             "job fingerprint mismatch: the client expects %016llx, this server's data (%s, split "
             "%s, seq_len %d, seed %llu) has %016llx",
             (unsigned long long)q->fingerprint, s->dir, split, c.seq_len,
             (unsigned long long)c.seed, (unsigned long long)fp);
    return SVC_ERR_JOB;
  }
  const int n = (int)q->count, T = c.seq_len, P = c.max_predictions;
  if (svc_batch_fit(scratch, n, T, P) != STATUS_OK ||
      dataset_get_batch(d, gb, q->step, q->first, n, scratch) != STATUS_OK) {
    snprintf(msg, msg_cap, "%s", status_message());
    return SVC_ERR_DATA;
  }
  r->step = q->step;
  r->first = q->first;
  r->count = (uint32_t)n;
  r->seq_len = (uint32_t)T;
  r->max_predictions = (uint32_t)P;
  size_t nt = (size_t)n * T, np = (size_t)n * P;
  set_bytes(&r->input_ids, scratch->input_ids, nt);
  set_bytes(&r->input_mask, scratch->input_mask, nt);
  set_bytes(&r->segment_ids, scratch->segment_ids, nt);
  set_bytes(&r->masked_lm_positions, scratch->masked_lm_positions, np);
  set_bytes(&r->masked_lm_ids, scratch->masked_lm_ids, np);
  set_bytes(&r->masked_lm_weights, scratch->masked_lm_weights, np);
  set_bytes(&r->next_sentence_labels, scratch->next_sentence_labels, (size_t)n);
  if (c.objective == OBJECTIVE_CLM) {
    set_bytes(&r->target_ids, scratch->target_ids, nt);
    set_bytes(&r->target_weights, scratch->target_weights, nt);
  }
  return SVC_ERR_NONE;
}

/* The reply to one request body; NULL when no memory is left for it (the
 * client times out and retries). Declared in service_wire.h. */
nng_msg *svc_server_serve_bytes(svc_server *s, const void *body, size_t len, data_batch *scratch) {
  svc_reply r;
  mlmpi__service__batch_reply__init(&r);
  r.version = SVC_PROTOCOL_VERSION;
  char msg[768] = "";
  int code;
  ds_entry *held = NULL;
  svc_request *q = NULL;
  if (len > SVC_MAX_REQUEST_BYTES) {
    snprintf(msg, sizeof msg, "a request of %zu bytes exceeds the limit of %u", len,
             SVC_MAX_REQUEST_BYTES);
    code = SVC_ERR_BAD_REQUEST;
  } else if (!(q = mlmpi__service__batch_request__unpack(NULL, len, body))) {
    snprintf(msg, sizeof msg, "malformed request: %zu bytes that are not a BatchRequest", len);
    code = SVC_ERR_BAD_REQUEST;
  } else {
    code = serve_request(s, q, scratch, &r, msg, sizeof msg, &held);
  }
  if (code != SVC_ERR_NONE) {
    r.error = (Mlmpi__Service__ErrorCode)code;
    r.message = msg;
    warn_refusal(s, code, msg);
  }
  nng_msg *m = NULL;
  size_t n = mlmpi__service__batch_reply__get_packed_size(&r);
  if (nng_msg_alloc(&m, n) == 0)
    mlmpi__service__batch_reply__pack(&r, nng_msg_body(m));
  else
    m = NULL;
  if (code == SVC_ERR_NONE && m) atomic_fetch_add(&s->batches, 1);
  cache_release(s, held);
  if (q) mlmpi__service__batch_request__free_unpacked(q, NULL);
  return m;
}

typedef struct {
  svc_server *s;
  nng_ctx ctx;
} worker_arg;

static void *server_worker(void *arg) {
  svc_server *s = ((worker_arg *)arg)->s;
  nng_ctx ctx = ((worker_arg *)arg)->ctx;
  free(arg);
  nng_aio *aio = NULL;
  int rv = nng_aio_alloc(&aio, NULL, NULL);
  if (rv) {
    LOG_ERROR(DATASET, "a service worker cannot start: %s", nng_strerror(rv));
    return NULL;
  }
  data_batch scratch = {0};
  for (;;) {
    nng_aio_set_timeout(aio, NNG_DURATION_INFINITE);
    nng_ctx_recv(ctx, aio);
    nng_aio_wait(aio);
    if ((rv = nng_aio_result(aio)) == NNG_ECLOSED) break;
    if (rv) continue;
    nng_msg *req = nng_aio_get_msg(aio);
    nng_msg *rep = svc_server_serve_bytes(s, nng_msg_body(req), nng_msg_len(req), &scratch);
    nng_msg_free(req);
    if (!rep) continue;
    nng_aio_set_msg(aio, rep);
    nng_aio_set_timeout(aio, SVC_SEND_TIMEOUT_MS);
    nng_ctx_send(ctx, aio);
    nng_aio_wait(aio);
    if ((rv = nng_aio_result(aio)) != 0) {
      nng_msg_free(nng_aio_get_msg(aio));
      if (rv == NNG_ECLOSED) break;
    } else {
      atomic_fetch_add(&s->replies, 1);
    }
  }
  data_batch_free(&scratch);
  nng_aio_free(aio);
  return NULL;
}

/* The server object with its data checked (the train split opened with the
 * default config, or as a causal-LM job) and nothing bound or started: what svc_server_start and
 * svc_server_open_unbound share. */
static status_t server_prepare(svc_server **out, const svc_server_config *cfg, int workers) {
  *out = NULL;
  const char *bind = cfg->bind ? cfg->bind : "127.0.0.1";
  if (!cfg->data_dir) return status_set(STATUS_CONFIG, "the service needs a data directory");
  if (cfg->port < 0 || cfg->port > 65535)
    return status_set(STATUS_CONFIG, "port %d is not in 0..65535", cfg->port);
  if (!svc_is_loopback(bind) && !(cfg->token && *cfg->token))
    return status_set(STATUS_CONFIG,
                      "refusing to bind %s without a token: only loopback addresses are served "
                      "without --token-file",
                      bind);
  svc_server *s = calloc(1, sizeof *s);
  if (!s) return status_set(STATUS_NOMEM, "out of memory starting the service");
  pthread_mutex_init(&s->mu, NULL);
  pthread_mutex_init(&s->open_mu, NULL);
  s->sock = (nng_socket)NNG_SOCKET_INITIALIZER;
  s->max_configs = cfg->max_configs > 0 ? cfg->max_configs : 8;
  s->dir = svc_str_dup(cfg->data_dir);
  s->token = cfg->token && *cfg->token ? svc_str_dup(cfg->token) : NULL;
  s->url = malloc(320);
  s->cache = calloc((size_t)s->max_configs, sizeof *s->cache);
  s->threads = calloc((size_t)(workers > 0 ? workers : 1), sizeof *s->threads);
  s->ctxs = calloc((size_t)(workers > 0 ? workers : 1), sizeof *s->ctxs);
  status_t st = STATUS_OK;
  if (!s->dir || (cfg->token && *cfg->token && !s->token) || !s->url || !s->cache || !s->threads ||
      !s->ctxs) {
    st = status_set(STATUS_NOMEM, "out of memory starting the service");
    goto fail;
  }
  s->url[0] = 0;
  /* The data must open before anything is bound: a bad directory fails at
   * start, not at the first request. */
  s->check = data_config_default();
  ds_entry *e;
  int code;
  if ((st = cache_acquire(s, &s->check, "train", &e, &code))) {
    /* Shards of a vocabulary without [MASK] (GPT-2's) open as a causal-LM
     * job only; when that fails too, the masked-LM reason is reported. */
    char why[768];
    snprintf(why, sizeof why, "%s", status_message());
    s->check.objective = OBJECTIVE_CLM;
    if (cache_acquire(s, &s->check, "train", &e, &code)) {
      st = status_set(st, "%s", why);
      goto fail;
    }
    st = STATUS_OK;
  }
  cache_release(s, e);
  *out = s;
  return STATUS_OK;
fail:
  svc_server_free(s);
  return st;
}

status_t svc_server_open_unbound(svc_server **out, const svc_server_config *cfg) {
  return server_prepare(out, cfg, 0);
}

status_t svc_server_start(svc_server **out, const svc_server_config *cfg) {
  *out = NULL;
  const char *bind = cfg->bind ? cfg->bind : "127.0.0.1";
  int workers = cfg->workers > 0 ? cfg->workers : cores_available();
  svc_server *s;
  status_t st = server_prepare(&s, cfg, workers);
  if (st) return st;
  const ds_entry *e =
      cache_find(s, &s->check, "train"); /* opened by server_prepare, not evicted yet */
  const uint64_t docs = dataset_documents(e->d), inst = dataset_instances(e->d),
                 fp = dataset_fingerprint(e->d);

  char url[300];
  svc_tcp_url(url, sizeof url, bind, cfg->port);
  nng_listener l;
  int rv;
  if ((rv = nng_rep0_open(&s->sock)) != 0 ||
      (rv = nng_socket_set_size(s->sock, NNG_OPT_RECVMAXSZ, SVC_MAX_REQUEST_BYTES)) != 0) {
    st = status_set(STATUS_COMM, "cannot open the service socket: %s", nng_strerror(rv));
    goto fail;
  }
  if ((rv = nng_listen(s->sock, url, &l, 0)) != 0) {
    st = status_set(STATUS_COMM, "cannot listen on %s: %s", url, nng_strerror(rv));
    goto fail;
  }
  s->port = cfg->port;
  if (s->port == 0 && (rv = nng_listener_get_int(l, NNG_OPT_TCP_BOUND_PORT, &s->port)) != 0) {
    st = status_set(STATUS_COMM, "cannot tell the port bound for %s: %s", url, nng_strerror(rv));
    goto fail;
  }
  svc_tcp_url(s->url, 320, bind, s->port);
  s->started = true;
  for (; s->n_ctxs < workers; s->n_ctxs++)
    if ((rv = nng_ctx_open(&s->ctxs[s->n_ctxs], s->sock)) != 0) {
      st = status_set(STATUS_COMM, "cannot open a service context: %s", nng_strerror(rv));
      goto fail;
    }
  for (; s->n_threads < workers; s->n_threads++) {
    worker_arg *a = malloc(sizeof *a);
    if (a) *a = (worker_arg){s, s->ctxs[s->n_threads]};
    if (!a || pthread_create(&s->threads[s->n_threads], NULL, server_worker, a) != 0) {
      free(a);
      st = status_set(STATUS_NOMEM, "cannot start service worker %d", s->n_threads);
      goto fail;
    }
  }
  LOG_INFO(DATASET,
           "serving %s (%llu documents; at the default config %llu instances, fingerprint "
           "%016llx) on %s with %d workers%s",
           s->dir, (unsigned long long)docs, (unsigned long long)inst, (unsigned long long)fp,
           s->url, workers, s->token ? ", token required" : "");
  *out = s;
  return STATUS_OK;
fail:
  svc_server_free(s);
  return st;
}

int svc_server_port(const svc_server *s) { return s->port; }
const char *svc_server_url(const svc_server *s) { return s->url; }

void svc_server_counts(const svc_server *s, uint64_t *replies, uint64_t *batches) {
  if (replies) *replies = atomic_load(&((svc_server *)s)->replies);
  if (batches) *batches = atomic_load(&((svc_server *)s)->batches);
}

void svc_server_free(svc_server *s) {
  if (!s) return;
  /* Closing a worker's context fails its pending operation with
   * NNG_ECLOSED, which ends the worker; the socket goes when none is left. */
  for (int i = 0; i < s->n_ctxs; i++) nng_ctx_close(s->ctxs[i]);
  for (int i = 0; i < s->n_threads; i++) pthread_join(s->threads[i], NULL);
  if (nng_socket_id(s->sock) > 0) nng_close(s->sock);
  for (int i = 0; s->cache && i < s->max_configs; i++) dataset_free(s->cache[i].d);
  pthread_mutex_destroy(&s->mu);
  pthread_mutex_destroy(&s->open_mu);
  free(s->cache);
  free(s->threads);
  free(s->ctxs);
  free(s->dir);
  free(s->token);
  free(s->url);
  free(s);
}
