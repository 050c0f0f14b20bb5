/* service_wire.h: what the dataset service's server (service_server.c) and
 * client (service_client.c) share: the protobuf message types, the error
 * codes a reply carries and the helpers both ends use. Private to dataset/.
 * Everything here is thread-safe unless it says otherwise. */
#ifndef MLMPI_SERVICE_WIRE_H
#define MLMPI_SERVICE_WIRE_H

#include "service.h"
#include "service.pb-c.h"

typedef Mlmpi__Service__BatchRequest svc_request;
typedef Mlmpi__Service__BatchReply svc_reply;
typedef Mlmpi__Service__DataConfig svc_config_msg;

/* A reply's error field (proto/service.proto ErrorCode). */
enum {
  SVC_ERR_NONE = MLMPI__SERVICE__ERROR_CODE__ERROR_NONE,
  SVC_ERR_BAD_REQUEST = MLMPI__SERVICE__ERROR_CODE__ERROR_BAD_REQUEST,
  SVC_ERR_VERSION = MLMPI__SERVICE__ERROR_CODE__ERROR_VERSION,
  SVC_ERR_AUTH = MLMPI__SERVICE__ERROR_CODE__ERROR_AUTH,
  SVC_ERR_JOB = MLMPI__SERVICE__ERROR_CODE__ERROR_JOB,
  SVC_ERR_DATA = MLMPI__SERVICE__ERROR_CODE__ERROR_DATA,
  SVC_ERR_BUSY = MLMPI__SERVICE__ERROR_CODE__ERROR_BUSY,
};

/* Milliseconds on the monotonic clock (for intervals and deadlines only). */
uint64_t svc_now_ms(void);
/* Converts n 32-bit words at p between host order and the wire's
 * little-endian order, in place; a no-op on little-endian hosts. */
void svc_le32_inplace(void *p, size_t n);
/* True when s is a split name the protocol carries: 1 to 15 of [a-z0-9_]. */
bool svc_split_name_ok(const char *s);
/* Fills m from c and split. m keeps split (not copied): keep it alive. */
void svc_config_to_msg(const data_config *c, const char *split, svc_config_msg *m);
/* Checks m and turns it into *c and split; STATUS_ARG saying what is wrong
 * when m is absent or out of range. */
status_t svc_config_from_msg(const svc_config_msg *m, data_config *c, char split[16]);
/* True when a and b agree on every field the wire carries, so they give the
 * same batches. Kept next to the two conversions so the three stay in step. */
bool svc_config_equal(const data_config *a, const data_config *b);
/* Makes b hold n rows of (T, P), reallocating (and losing its rows) only when
 * it is empty, too small or of another shape. b is owned by the caller. */
status_t svc_batch_fit(data_batch *b, int n, int T, int P);
/* A malloc'd copy of s, owned by the caller; NULL for NULL or out of memory. */
char *svc_str_dup(const char *s);
/* Writes "tcp://host:port" into out (cap bytes), bracketing IPv6 literals. */
void svc_tcp_url(char *out, size_t cap, const char *host, int port);

/* ---- The two ends' parsers, callable without a network (fuzz targets) ---- */
typedef struct nng_msg nng_msg;

/* A server that checked its data as svc_server_start does but binds nothing
 * and starts no workers: only svc_server_serve_bytes and svc_server_free may
 * be used on it. Errors as svc_server_start's. */
status_t svc_server_open_unbound(svc_server **out, const svc_server_config *cfg);
/* The server's answer to one request body of len bytes (any bytes): a reply
 * message, a batch or an error, owned by the caller (nng_msg_free); NULL when
 * no memory is left for it. scratch is the calling worker's batch buffer,
 * kept and grown between calls (data_batch_free it at the end); the reply
 * does not point into it. Thread-safe with distinct scratch buffers. */
nng_msg *svc_server_serve_bytes(svc_server *s, const void *body, size_t len, data_batch *scratch);

/* What a client makes of one reply. */
typedef enum {
  SVC_REPLY_OK,    /* out holds the rows, *fingerprint the reply's job */
  SVC_REPLY_RETRY, /* another attempt (or replica) may cure it */
  SVC_REPLY_FAIL,  /* a refusal: wrong job, token or version */
} svc_reply_verdict;

/* Parses body (len bytes, any bytes) as the reply to key for batches of
 * (T, P) from a job with fingerprint expect_fp (0: any job but 0). On
 * SVC_REPLY_OK, out is fitted (svc_batch_fit) and its first key->count rows
 * filled; otherwise why (cap bytes) says what was wrong and out's rows are
 * unspecified. Keeps nothing; thread-safe with distinct out buffers. */
svc_reply_verdict svc_reply_parse(const void *body, size_t len, const svc_key *key, int T, int P,
                                  uint64_t expect_fp, data_batch *out, uint64_t *fingerprint,
                                  char *why, size_t cap);
/* svc_reply_parse for a batch of either objective (svc_reply_parse takes
 * masked-LM replies): a causal-LM reply must carry target_ids and
 * target_weights of count x T words, a masked-LM reply neither (its out
 * targets are zeroed). */
svc_reply_verdict svc_reply_parse_objective(const void *body, size_t len, const svc_key *key, int T,
                                            int P, data_objective objective, uint64_t expect_fp,
                                            data_batch *out, uint64_t *fingerprint, char *why,
                                            size_t cap);

#endif
