/* fuzz_svc_reply.c: libFuzzer target for the dataset service client's reply
 * validation: each input is one reply body given to svc_reply_parse for a
 * fixed key and shape, once expecting a fixed job fingerprint and once
 * taking any. A reply it accepts must carry exactly the key, shape and job
 * asked for, and the rows it fills must be the reply's bytes. Built with
 * -DFUZZ_SVC_WRITE_SEEDS instead, it is a program that writes the seed
 * inputs (tests/fuzz/corpus/README-svc.txt). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "service_wire.h"

#define FUZZ_T 16
#define FUZZ_P 3
#define FUZZ_FP 0x6d6c6d7069000001ull
static const svc_key fuzz_key = {.step = 3, .first = 8, .count = 4};

static data_batch out; /* the client's slot buffer, kept between inputs */

/* Rows 0..count-1 of out are the reply's tensors, byte for byte (on a
 * little-endian host, where the wire's layout is the memory's). */
static bool rows_are_reply(const void *body, size_t len) {
  svc_reply *r = mlmpi__service__batch_reply__unpack(NULL, len, body);
  if (!r) return false;
  const size_t n = (size_t)fuzz_key.count, nt = n * FUZZ_T * 4, np = n * FUZZ_P * 4;
  bool same = r->input_ids.len == nt && !memcmp(out.input_ids, r->input_ids.data, nt) &&
              !memcmp(out.input_mask, r->input_mask.data, nt) &&
              !memcmp(out.segment_ids, r->segment_ids.data, nt) &&
              !memcmp(out.masked_lm_positions, r->masked_lm_positions.data, np) &&
              !memcmp(out.masked_lm_ids, r->masked_lm_ids.data, np) &&
              !memcmp(out.masked_lm_weights, r->masked_lm_weights.data, np) &&
              !memcmp(out.next_sentence_labels, r->next_sentence_labels.data, n * 4) &&
              r->step == fuzz_key.step && r->first == fuzz_key.first &&
              r->count == (uint32_t)fuzz_key.count && r->seq_len == FUZZ_T &&
              r->max_predictions == FUZZ_P;
  mlmpi__service__batch_reply__free_unpacked(r, NULL);
  return same;
}

/* One validation; any broken promise aborts (a finding). */
static svc_reply_verdict check(const uint8_t *data, size_t size, uint64_t expect_fp) {
  char why[256];
  uint64_t fp = 0;
  why[sizeof why - 1] = 1;
  svc_reply_verdict v =
      svc_reply_parse(data, size, &fuzz_key, FUZZ_T, FUZZ_P, expect_fp, &out, &fp, why, sizeof why);
  if (v == SVC_REPLY_OK) {
    if (!fp || (expect_fp && fp != expect_fp) || out.n < fuzz_key.count || out.T != FUZZ_T ||
        out.P != FUZZ_P || !rows_are_reply(data, size))
      abort();
  } else if (v == SVC_REPLY_RETRY || v == SVC_REPLY_FAIL) {
    if (memchr(why, 0, sizeof why) == NULL || !why[0]) abort();
  } else {
    abort();
  }
  return v;
}

#ifndef FUZZ_SVC_WRITE_SEEDS

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  svc_reply_verdict with_job = check(data, size, FUZZ_FP);
  svc_reply_verdict any_job = check(data, size, 0);
  /* Expecting a job can only turn an accepted reply into a refusal. */
  if (with_job == SVC_REPLY_OK && any_job != SVC_REPLY_OK) abort();
  return 0;
}

#else /* the seed writer */

static int write_reply(const char *dir, const char *name, svc_reply *r, svc_reply_verdict want) {
  size_t n = mlmpi__service__batch_reply__get_packed_size(r);
  uint8_t *buf = malloc(n ? n : 1);
  if (!buf) return -1;
  mlmpi__service__batch_reply__pack(r, buf);
  int rc = 0;
  if (check(buf, n, FUZZ_FP) != want) {
    fprintf(stderr, "fuzz_svc_reply: seed %s is not judged as meant\n", name);
    rc = -1;
  }
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(buf, 1, n, f) != n) rc = -1;
  if (f && fclose(f) != 0) rc = -1;
  free(buf);
  if (rc) fprintf(stderr, "fuzz_svc_reply: cannot write %s\n", path);
  return rc;
}

/* A reply carrying the fixed key's rows: deterministic values of the right
 * sizes (the validation does not look at them). */
static void batch_reply(svc_reply *r, int32_t *pool) {
  mlmpi__service__batch_reply__init(r);
  r->version = SVC_PROTOCOL_VERSION;
  r->fingerprint = FUZZ_FP;
  r->step = fuzz_key.step;
  r->first = fuzz_key.first;
  r->count = (uint32_t)fuzz_key.count;
  r->seq_len = FUZZ_T;
  r->max_predictions = FUZZ_P;
  const size_t n = (size_t)fuzz_key.count, nt = n * FUZZ_T, np = n * FUZZ_P;
  ProtobufCBinaryData *f[] = {&r->input_ids,           &r->input_mask,    &r->segment_ids,
                              &r->masked_lm_positions, &r->masked_lm_ids, &r->masked_lm_weights,
                              &r->next_sentence_labels};
  const size_t words[] = {nt, nt, nt, np, np, np, n};
  for (int i = 0; i < 7; i++) {
    f[i]->data = (uint8_t *)pool;
    f[i]->len = words[i] * 4;
  }
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s OUT_DIR  (writes the reply seeds)\n", argv[0]);
    return 2;
  }
  int32_t pool[FUZZ_T * 4];
  for (int i = 0; i < FUZZ_T * 4; i++) pool[i] = 10 + i;
  const char *o = argv[1];
  svc_reply r;
  int rc = 0;
  batch_reply(&r, pool);
  rc |= write_reply(o, "batch", &r, SVC_REPLY_OK);
  r.count = 3; /* rows for another key */
  rc |= write_reply(o, "other-count", &r, SVC_REPLY_RETRY);
  batch_reply(&r, pool);
  r.fingerprint = FUZZ_FP + 1;
  rc |= write_reply(o, "other-job", &r, SVC_REPLY_FAIL);
  batch_reply(&r, pool);
  r.version = 2;
  rc |= write_reply(o, "version-2", &r, SVC_REPLY_FAIL);
  mlmpi__service__batch_reply__init(&r);
  r.version = SVC_PROTOCOL_VERSION;
  r.error = MLMPI__SERVICE__ERROR_CODE__ERROR_BUSY;
  r.message = (char *)"all 8 data configurations of this server are in use";
  rc |= write_reply(o, "error-busy", &r, SVC_REPLY_RETRY);
  r.error = MLMPI__SERVICE__ERROR_CODE__ERROR_AUTH;
  r.message = (char *)"missing or wrong token";
  rc |= write_reply(o, "error-auth", &r, SVC_REPLY_FAIL);
  data_batch_free(&out);
  return rc ? 1 : 0;
}

#endif
