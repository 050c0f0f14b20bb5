/* service_wire.c: what both ends of the dataset service use: the clock,
 * byte order, data configs as protobuf messages, the token file and the
 * address helpers (service_wire.h). The server and client are elsewhere. */
#define _GNU_SOURCE
#include "service_wire.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint64_t svc_now_ms(void) { return (uint64_t)(core_now_s() * 1000); }

/* Tensors travel as little-endian arrays; on a little-endian host that is
 * their memory layout and nothing is converted. */
void svc_le32_inplace(void *p, size_t n) {
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

/* ---- Data configs on the wire ---------------------------------------------- */
bool svc_split_name_ok(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > 15) return false;
  for (size_t i = 0; i < n; i++)
    if (!islower((unsigned char)s[i]) && !isdigit((unsigned char)s[i]) && s[i] != '_') return false;
  return true;
}

void svc_config_to_msg(const data_config *c, const char *split, svc_config_msg *m) {
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
  m->objective = c->objective == OBJECTIVE_CLM ? MLMPI__SERVICE__OBJECTIVE__OBJECTIVE_CLM
                                               : MLMPI__SERVICE__OBJECTIVE__OBJECTIVE_MLM;
}

status_t svc_config_from_msg(const svc_config_msg *m, data_config *c, char split[16]) {
  if (!m) return status_set(STATUS_ARG, "the request has no data config");
  if (!m->split || !svc_split_name_ok(m->split))
    return status_set(STATUS_ARG, "split must be 1 to 15 characters of [a-z0-9_]");
  if (m->seq_len < 8 || m->seq_len > 65536 || m->max_predictions < 1 ||
      m->max_predictions > 65536 ||
      (m->max_predictions > m->seq_len && m->objective != MLMPI__SERVICE__OBJECTIVE__OBJECTIVE_CLM))
    return status_set(STATUS_ARG, "seq_len %u / max_predictions %u out of range", m->seq_len,
                      m->max_predictions);
  if (!(m->mask_prob >= 0 && m->mask_prob <= 1) ||
      !(m->short_seq_prob >= 0 && m->short_seq_prob <= 1))
    return status_set(STATUS_ARG, "mask_prob and short_seq_prob must be probabilities");
  if ((unsigned)m->masking > 1 || (unsigned)m->instances > 1 || (unsigned)m->objective > 1)
    return status_set(STATUS_ARG, "unknown masking %d, instances %d or objective %d",
                      (int)m->masking, (int)m->instances, (int)m->objective);
  *c = data_config_default();
  c->seq_len = (int)m->seq_len;
  c->max_predictions = (int)m->max_predictions;
  c->mask_prob = m->mask_prob;
  c->masking = m->masking == MLMPI__SERVICE__MASKING__MASKING_ELECTRA ? MASK_ELECTRA : MASK_BERT;
  c->whole_word = m->whole_word;
  c->instances = m->instances == MLMPI__SERVICE__INSTANCES__INSTANCES_NSP ? INST_NSP : INST_PACKED;
  c->short_seq_prob = m->short_seq_prob;
  c->seed = m->seed;
  c->objective =
      m->objective == MLMPI__SERVICE__OBJECTIVE__OBJECTIVE_CLM ? OBJECTIVE_CLM : OBJECTIVE_MLM;
  snprintf(split, 16, "%s", m->split);
  return STATUS_OK;
}

bool svc_config_equal(const data_config *a, const data_config *b) {
  return a->seq_len == b->seq_len && a->max_predictions == b->max_predictions &&
         a->mask_prob == b->mask_prob && a->masking == b->masking &&
         a->whole_word == b->whole_word && a->instances == b->instances &&
         a->short_seq_prob == b->short_seq_prob && a->seed == b->seed &&
         a->objective == b->objective;
}

status_t svc_batch_fit(data_batch *b, int n, int T, int P) {
  if (b->input_ids && b->n >= n && b->T == T && b->P == P) return STATUS_OK;
  data_batch_free(b);
  return data_batch_alloc(b, n, T, P);
}

char *svc_str_dup(const char *s) {
  if (!s) return NULL;
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

/* "tcp://host:port", bracketing IPv6 literals. */
void svc_tcp_url(char *out, size_t cap, const char *host, int port) {
  bool v6 = strchr(host, ':') && host[0] != '[';
  snprintf(out, cap, "tcp://%s%s%s:%d", v6 ? "[" : "", host, v6 ? "]" : "", port);
}
