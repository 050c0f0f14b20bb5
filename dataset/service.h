/* service.h: the dataset service. A server (mlmpi-data serve) answers batch
 * requests over nng REQ/REP on TCP with protobuf messages
 * (proto/service.proto); a client keeps a bounded prefetch queue filled
 * from one or more replicas on its own thread. Batches are the pure
 * function dataset_get_batch, so servers keep no per-client state and a
 * client gets the same bytes from any replica as it would in-process. */
#ifndef MLMPI_SERVICE_H
#define MLMPI_SERVICE_H

#include "dataset.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SVC_PROTOCOL_VERSION 1u
#define SVC_DEFAULT_PORT 7707
#define SVC_MAX_REQUEST_BYTES (64u << 10) /* larger requests close the connection */
#define SVC_MAX_REPLY_BYTES (256u << 20)  /* requests for more are refused */
#define SVC_MAX_TOKEN_BYTES 1024u

/* Reads a shared secret from path: the file's bytes less trailing white
 * space, 1..SVC_MAX_TOKEN_BYTES of them. *out is malloc'd, owned by the
 * caller. Errors name the file. */
status_t svc_read_token(const char *path, char **out);

/* ---- Server ------------------------------------------------------------- */
typedef struct {
  const char *data_dir; /* shards as dataset_open reads them */
  const char *bind;     /* host or address; default "127.0.0.1" */
  int port;             /* 0: a free port (svc_server_port tells which) */
  int workers;          /* request threads; 0: the cores this process may use */
  const char *token;    /* required from clients when set; mandatory off loopback */
  int max_configs;      /* data configurations kept open at once (default 8) */
} svc_server_config;

svc_server_config svc_server_config_default(void);

/* True when host names this machine's loopback (127.0.0.0/8, ::1,
 * "localhost"). */
bool svc_is_loopback(const char *host);

typedef struct svc_server svc_server;
/* Checks the data (opens the train split with the default config), binds,
 * and starts the workers. Refuses a non-loopback bind without a token.
 * cfg's strings are copied. Errors name the directory or address. */
status_t svc_server_start(svc_server **out, const svc_server_config *cfg);
int svc_server_port(const svc_server *s);
/* "tcp://host:port" as bound; owned by s. */
const char *svc_server_url(const svc_server *s);
/* Replies sent so far, batches among them (thread-safe, approximate while
 * serving). */
void svc_server_counts(const svc_server *s, uint64_t *replies, uint64_t *batches);
/* Stops accepting, waits for the workers and frees everything. NULL is a
 * no-op. Not to be called concurrently with itself. */
void svc_server_free(svc_server *s);

/* ---- Client ------------------------------------------------------------- */
typedef struct {
  const char *addresses; /* "host:port[,host:port...]" ([v6]:port, tcp://... also taken) */
  const char *token;     /* the servers' secret, or NULL */
  data_config config;    /* the batches wanted */
  const char *split;     /* "train" (default) or "holdout" */
  uint64_t global_batch;
  uint64_t fingerprint;   /* expected job fingerprint; 0: take the first reply's, then
                             hold every later reply to it */
  int depth;              /* prefetch queue slots, ready or in flight (default 8) */
  int ahead;              /* without a plan: steps prefetched after each get (default 2) */
  int timeout_ms;         /* svc_client_get's deadline (default 60000) */
  int connect_timeout_ms; /* a request finding no connection this long fails over (1000) */
  int request_timeout_ms; /* a sent request unanswered this long fails over (10000) */
  int backoff_ms;         /* a failed replica rests this long, doubling to 5 s (100) */
} svc_client_options;

svc_client_options svc_client_options_default(void);

/* What the trainer will ask for: instances first..first+count-1 of the
 * global batch at step (dataset.h's batch slice). */
typedef batch_slice svc_key;

typedef struct svc_client svc_client;
/* Parses the addresses, opens one connection per replica (connecting in the
 * background, so a replica may come up later) and starts the prefetch
 * thread. Copies what it needs from o. */
status_t svc_client_open(svc_client **out, const svc_client_options *o);
/* Announces the keys the caller will ask for, in order; they are fetched
 * ahead, at most `depth` at a time. Keys skipped by a later get are
 * dropped. Without a plan, each get prefetches the next `ahead` steps of
 * the same slice. Thread-safe. */
status_t svc_client_plan(svc_client *c, const svc_key *keys, size_t n);
/* Fills out with instances first..first+count-1 of step's global batch,
 * byte for byte what dataset_get_batch gives; out must be allocated with
 * n >= count and the config's seq_len and max_predictions (out->n is left
 * as is). Blocks until the batch arrives or timeout_ms passes
 * (STATUS_TIMEOUT, naming the replicas and their last errors).
 * STATUS_COMM for a replica's refusal (wrong job, token, version) or a
 * fingerprint that differs from the expected one. Thread-safe, but meant for
 * one consumer. */
status_t svc_client_get(svc_client *c, uint64_t step, uint64_t first, int count, data_batch *out);
/* The job fingerprint in use (0 until the first reply when none was given). */
uint64_t svc_client_fingerprint(svc_client *c);
/* Batches received so far (prefetched ones included) and attempts that failed
 * and were retried (a replica down, stalled, busy or garbled). Either pointer
 * may be NULL. Thread-safe. */
void svc_client_counts(svc_client *c, uint64_t *batches, uint64_t *retries);
/* Stops the prefetch thread, lets requests in flight end (at most
 * connect_timeout_ms + request_timeout_ms; their replies are dropped) and
 * frees c. NULL is a no-op. */
void svc_client_free(svc_client *c);

#ifdef __cplusplus
}
#endif
#endif
