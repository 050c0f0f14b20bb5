/* service.c: the dataset service over nng REQ/REP (TCP) with protobuf-c
 * messages. The server runs one nng context per worker thread, each
 * receiving, building the batch with dataset_get_batch and replying; the
 * client keeps a bounded queue of slots that one thread fills
 * asynchronously from the replicas, failing over on errors and timeouts. */
#define _GNU_SOURCE
#include "service.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/protocol/reqrep0/req.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "service.pb-c.h"

typedef Mlmpi__Service__BatchRequest svc_request;
typedef Mlmpi__Service__BatchReply svc_reply;
typedef Mlmpi__Service__DataConfig svc_config_msg;

enum {
  ERR_NONE = MLMPI__SERVICE__ERROR_CODE__ERROR_NONE,
  ERR_BAD_REQUEST = MLMPI__SERVICE__ERROR_CODE__ERROR_BAD_REQUEST,
  ERR_VERSION = MLMPI__SERVICE__ERROR_CODE__ERROR_VERSION,
  ERR_AUTH = MLMPI__SERVICE__ERROR_CODE__ERROR_AUTH,
  ERR_JOB = MLMPI__SERVICE__ERROR_CODE__ERROR_JOB,
  ERR_DATA = MLMPI__SERVICE__ERROR_CODE__ERROR_DATA,
  ERR_BUSY = MLMPI__SERVICE__ERROR_CODE__ERROR_BUSY,
};

#define SVC_MAX_COUNT 65536
#define SVC_MAX_REPLICAS 64
#define SVC_SEND_TIMEOUT_MS 30000 /* a reply the peer does not take frees the worker */
#define SVC_BACKOFF_MAX_MS 5000

static uint64_t now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000u + (uint64_t)t.tv_nsec / 1000000u;
}

/* Tensors travel as little-endian arrays; on a little-endian host that is
 * their memory layout and nothing is converted. */
static void le32_inplace(void *p, size_t n) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  uint32_t *v = p;
  for (size_t i = 0; i < n; i++) v[i] = __builtin_bswap32(v[i]);
#else
  (void)p;
  (void)n;
#endif
}

status_t svc_read_token(const char *path, char **out) {
  *out = NULL;
  FILE *f = fopen(path, "rb");
  if (!f) return status_set(STATUS_IO, "cannot open token file %s: %s", path, strerror(errno));
  char *buf = malloc(SVC_MAX_TOKEN_BYTES + 2);
  if (!buf) {
    fclose(f);
    return status_set(STATUS_NOMEM, "out of memory reading %s", path);
  }
  size_t n = fread(buf, 1, SVC_MAX_TOKEN_BYTES + 1, f);
  bool bad = ferror(f);
  fclose(f);
  if (bad) {
    free(buf);
    return status_set(STATUS_IO, "cannot read token file %s", path);
  }
  while (n && isspace((unsigned char)buf[n - 1])) n--;
  if (n == 0 || n > SVC_MAX_TOKEN_BYTES || memchr(buf, 0, n)) {
    free(buf);
    return status_set(STATUS_CONFIG, "token file %s must hold 1 to %u bytes of text", path,
                      SVC_MAX_TOKEN_BYTES);
  }
  buf[n] = 0;
  *out = buf;
  return STATUS_OK;
}

bool svc_is_loopback(const char *host) {
  if (!strcmp(host, "localhost")) return true;
  struct in_addr a4;
  if (inet_pton(AF_INET, host, &a4) == 1) return (ntohl(a4.s_addr) >> 24) == 127;
  char v6[64];
  size_t n = strlen(host);
  if (n >= 2 && host[0] == '[' && host[n - 1] == ']' && n - 2 < sizeof v6) {
    memcpy(v6, host + 1, n - 2);
    v6[n - 2] = 0;
    host = v6;
  }
  struct in6_addr a6;
  return inet_pton(AF_INET6, host, &a6) == 1 && IN6_IS_ADDR_LOOPBACK(&a6);
}

/* The time a comparison takes depends on the secret's length only. */
static bool token_equal(const uint8_t *given, size_t n_given, const char *secret) {
  size_t n = strlen(secret);
  volatile unsigned diff = n_given != n;
  for (size_t i = 0; i < n; i++)
    diff |= (unsigned)((uint8_t)secret[i] ^ (i < n_given ? given[i] : 0));
  return diff == 0;
}

/* ---- Data configs on the wire ---------------------------------------------- */
static bool split_name_ok(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > 15) return false;
  for (size_t i = 0; i < n; i++)
    if (!islower((unsigned char)s[i]) && !isdigit((unsigned char)s[i]) && s[i] != '_') return false;
  return true;
}

static void config_to_msg(const data_config *c, const char *split, svc_config_msg *m) {
  mlmpi__service__data_config__init(m);
  m->split = (char *)split;
  m->seq_len = (uint32_t)c->seq_len;
  m->max_predictions = (uint32_t)c->max_predictions;
  m->mask_prob = c->mask_prob;
  m->masking = c->masking == MASK_ELECTRA ? MLMPI__SERVICE__MASKING__MASKING_ELECTRA
                                          : MLMPI__SERVICE__MASKING__MASKING_BERT;
  m->whole_word = c->whole_word;
  m->instances = c->instances == INST_NSP ? MLMPI__SERVICE__INSTANCES__INSTANCES_NSP
                                          : MLMPI__SERVICE__INSTANCES__INSTANCES_PACKED;
  m->short_seq_prob = c->short_seq_prob;
  m->seed = c->seed;
}

static status_t config_from_msg(const svc_config_msg *m, data_config *c, char split[16]) {
  if (!m) return status_set(STATUS_ARG, "the request has no data config");
  if (!m->split || !split_name_ok(m->split))
    return status_set(STATUS_ARG, "split must be 1 to 15 characters of [a-z0-9_]");
  if (m->seq_len < 8 || m->seq_len > 65536 || m->max_predictions < 1 ||
      m->max_predictions > m->seq_len)
    return status_set(STATUS_ARG, "seq_len %u / max_predictions %u out of range", m->seq_len,
                      m->max_predictions);
  if (!(m->mask_prob >= 0 && m->mask_prob <= 1) ||
      !(m->short_seq_prob >= 0 && m->short_seq_prob <= 1))
    return status_set(STATUS_ARG, "mask_prob and short_seq_prob must be probabilities");
  if ((unsigned)m->masking > 1 || (unsigned)m->instances > 1)
    return status_set(STATUS_ARG, "unknown masking %d or instances %d", (int)m->masking,
                      (int)m->instances);
  *c = data_config_default();
  c->seq_len = (int)m->seq_len;
  c->max_predictions = (int)m->max_predictions;
  c->mask_prob = m->mask_prob;
  c->masking = m->masking == MLMPI__SERVICE__MASKING__MASKING_ELECTRA ? MASK_ELECTRA : MASK_BERT;
  c->whole_word = m->whole_word;
  c->instances = m->instances == MLMPI__SERVICE__INSTANCES__INSTANCES_NSP ? INST_NSP : INST_PACKED;
  c->short_seq_prob = m->short_seq_prob;
  c->seed = m->seed;
  snprintf(split, 16, "%s", m->split);
  return STATUS_OK;
}

static bool config_equal(const data_config *a, const data_config *b) {
  return a->seq_len == b->seq_len && a->max_predictions == b->max_predictions &&
         a->mask_prob == b->mask_prob && a->masking == b->masking &&
         a->whole_word == b->whole_word && a->instances == b->instances &&
         a->short_seq_prob == b->short_seq_prob && a->seed == b->seed;
}

/* Bytes of one batch's tensors: 3 [n,T] and 3 [n,P] arrays and [n] labels. */
static uint64_t batch_bytes(uint64_t n, uint64_t T, uint64_t P) {
  return n * (3 * T + 3 * P + 1) * 4;
}

/* ---- Server ----------------------------------------------------------------- */
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
    if (e->d && !strcmp(e->split, split) && config_equal(&e->cfg, c)) return e;
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
    *code = ERR_DATA;
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
    *code = ERR_BUSY;
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
  uint64_t now = now_ms(), last = atomic_load(&s->last_warn_ms);
  if (now - last < 1000 || !atomic_compare_exchange_strong(&s->last_warn_ms, &last, now)) return;
  LOG_WARN(DATASET, "refused a request (error %d): %s", code, why);
}

/* Grows the worker's scratch batch to hold n rows of (T, P). */
static status_t scratch_fit(data_batch *b, int n, int T, int P) {
  if (b->input_ids && b->n >= n && b->T == T && b->P == P) return STATUS_OK;
  data_batch_free(b);
  return data_batch_alloc(b, n, T, P);
}

static void set_bytes(ProtobufCBinaryData *f, void *p, size_t n_words) {
  le32_inplace(p, n_words);
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
    return ERR_VERSION;
  }
  if (s->token && !token_equal(q->token.data, q->token.len, s->token)) {
    snprintf(msg, msg_cap, "missing or wrong token");
    return ERR_AUTH;
  }
  data_config c;
  char split[16];
  if (config_from_msg(q->config, &c, split) != STATUS_OK) {
    snprintf(msg, msg_cap, "bad data config: %s", status_message());
    return ERR_BAD_REQUEST;
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
    return ERR_BAD_REQUEST;
  }
  int code = ERR_DATA;
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
    return ERR_JOB;
  }
  const int n = (int)q->count, T = c.seq_len, P = c.max_predictions;
  if (scratch_fit(scratch, n, T, P) != STATUS_OK ||
      dataset_get_batch(d, gb, q->step, q->first, n, scratch) != STATUS_OK) {
    snprintf(msg, msg_cap, "%s", status_message());
    return ERR_DATA;
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
  return ERR_NONE;
}

/* The reply to one request body; NULL when no memory is left for it (the
 * client times out and retries). */
static nng_msg *serve_one(svc_server *s, const void *body, size_t len, data_batch *scratch) {
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
    code = ERR_BAD_REQUEST;
  } else if (!(q = mlmpi__service__batch_request__unpack(NULL, len, body))) {
    snprintf(msg, sizeof msg, "malformed request: %zu bytes that are not a BatchRequest", len);
    code = ERR_BAD_REQUEST;
  } else {
    code = serve_request(s, q, scratch, &r, msg, sizeof msg, &held);
  }
  if (code != ERR_NONE) {
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
  if (code == ERR_NONE && m) atomic_fetch_add(&s->batches, 1);
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
    nng_msg *rep = serve_one(s, nng_msg_body(req), nng_msg_len(req), &scratch);
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

static char *str_dup(const char *s) {
  if (!s) return NULL;
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

/* "tcp://host:port", bracketing IPv6 literals. */
static void tcp_url(char *out, size_t cap, const char *host, int port) {
  bool v6 = strchr(host, ':') && host[0] != '[';
  snprintf(out, cap, "tcp://%s%s%s:%d", v6 ? "[" : "", host, v6 ? "]" : "", port);
}

status_t svc_server_start(svc_server **out, const svc_server_config *cfg) {
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
  s->dir = str_dup(cfg->data_dir);
  s->token = cfg->token && *cfg->token ? str_dup(cfg->token) : NULL;
  s->url = malloc(320);
  s->cache = calloc((size_t)s->max_configs, sizeof *s->cache);
  int workers = cfg->workers > 0 ? cfg->workers : cores_available();
  s->threads = calloc((size_t)workers, sizeof *s->threads);
  s->ctxs = calloc((size_t)workers, sizeof *s->ctxs);
  status_t st = STATUS_OK;
  if (!s->dir || (cfg->token && *cfg->token && !s->token) || !s->url || !s->cache || !s->threads ||
      !s->ctxs) {
    st = status_set(STATUS_NOMEM, "out of memory starting the service");
    goto fail;
  }
  /* The data must open before anything is bound: a bad directory fails at
   * start, not at the first request. */
  data_config dc = data_config_default();
  ds_entry *e;
  int code;
  if ((st = cache_acquire(s, &dc, "train", &e, &code))) goto fail;
  const uint64_t docs = dataset_documents(e->d), inst = dataset_instances(e->d),
                 fp = dataset_fingerprint(e->d);
  cache_release(s, e);

  char url[300];
  tcp_url(url, sizeof url, bind, cfg->port);
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
  tcp_url(s->url, 320, bind, s->port);
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

/* ---- Client ----------------------------------------------------------------- */
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
      tcp_url(r->url, sizeof r->url, item, (int)port);
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
  uint64_t rest = (uint64_t)c->o.backoff_ms << (r->fails < 7 ? r->fails - 1 : 6);
  r->rest_until = now_ms() + (rest < SVC_BACKOFF_MAX_MS ? rest : SVC_BACKOFF_MAX_MS);
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
  le32_inplace(dst, f->len / 4);
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
  svc_reply *p = mlmpi__service__batch_reply__unpack(NULL, nng_msg_len(m), nng_msg_body(m));
  nng_msg_free(m);
  char why[768];
  const int T = c->o.config.seq_len, P = c->o.config.max_predictions, n = s->key.count;
  if (!p) {
    attempt_retry(c, s, "malformed reply");
    return;
  }
  if ((int)p->error != ERR_NONE) {
    snprintf(why, sizeof why, "%s", p->message ? p->message : "refused");
    if ((int)p->error == ERR_BUSY)
      attempt_retry(c, s, why);
    else
      attempt_fail(c, s, why);
  } else if (p->version != SVC_PROTOCOL_VERSION) {
    snprintf(why, sizeof why, "replied with protocol version %u, not %u", p->version,
             SVC_PROTOCOL_VERSION);
    attempt_fail(c, s, why);
  } else if ((c->fingerprint && p->fingerprint != c->fingerprint) || !p->fingerprint) {
    snprintf(why, sizeof why, "serves job %016llx, not the expected %016llx",
             (unsigned long long)p->fingerprint, (unsigned long long)c->fingerprint);
    attempt_fail(c, s, why);
  } else if (p->step != s->key.step || p->first != s->key.first || p->count != (uint32_t)n ||
             p->seq_len != (uint32_t)T || p->max_predictions != (uint32_t)P ||
             !bytes_ok(&p->input_ids, (size_t)n * T) || !bytes_ok(&p->input_mask, (size_t)n * T) ||
             !bytes_ok(&p->segment_ids, (size_t)n * T) ||
             !bytes_ok(&p->masked_lm_positions, (size_t)n * P) ||
             !bytes_ok(&p->masked_lm_ids, (size_t)n * P) ||
             !bytes_ok(&p->masked_lm_weights, (size_t)n * P) ||
             !bytes_ok(&p->next_sentence_labels, (size_t)n)) {
    attempt_retry(c, s, "a reply that does not match its request");
  } else if (scratch_fit(&s->batch, n, T, P) != STATUS_OK) {
    attempt_retry(c, s, "out of memory for a batch");
  } else {
    if (!c->fingerprint) c->fingerprint = p->fingerprint;
    copy_le32(s->batch.input_ids, &p->input_ids);
    copy_le32(s->batch.input_mask, &p->input_mask);
    copy_le32(s->batch.segment_ids, &p->segment_ids);
    copy_le32(s->batch.masked_lm_positions, &p->masked_lm_positions);
    copy_le32(s->batch.masked_lm_ids, &p->masked_lm_ids);
    copy_le32(s->batch.masked_lm_weights, &p->masked_lm_weights);
    copy_le32(s->batch.next_sentence_labels, &p->next_sentence_labels);
    s->state = SLOT_READY;
    r->fails = 0;
    r->rest_until = 0;
  }
  mlmpi__service__batch_reply__free_unpacked(p, NULL);
}

/* Sends a slot's request; runs without the client lock (nng may call back
 * on another thread at once). */
static void attempt_start(svc_client *c, slot *s, uint64_t fingerprint) {
  replica *r = &c->reps[s->replica];
  svc_request q;
  svc_config_msg cm;
  mlmpi__service__batch_request__init(&q);
  config_to_msg(&c->o.config, c->split, &cm);
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
    uint64_t now = now_ms(), wake = now + 250;
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
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t wait = wake - now;
    ts.tv_sec += (time_t)(wait / 1000);
    ts.tv_nsec += (long)(wait % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
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
  if (!split_name_ok(split)) return status_set(STATUS_CONFIG, "bad split name '%s'", split);
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
  c->split = str_dup(split);
  c->token = o->token && *o->token ? str_dup(o->token) : NULL;
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
  struct timespec dl;
  clock_gettime(CLOCK_MONOTONIC, &dl);
  dl.tv_sec += c->o.timeout_ms / 1000;
  dl.tv_nsec += (long)(c->o.timeout_ms % 1000) * 1000000L;
  if (dl.tv_nsec >= 1000000000L) dl.tv_sec++, dl.tv_nsec -= 1000000000L;
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
