/* fuzz_svc_request.c: libFuzzer target for the dataset service's request
 * handling: each input is one request body given to svc_server_serve_bytes
 * on a server that serves a tiny corpus written at start-up and binds no
 * socket. The reply must always be a well-formed BatchReply of this
 * protocol version whose tensors, when it carries a batch, have the sizes
 * its count and shape say. Built with -DFUZZ_SVC_WRITE_SEEDS instead, it is
 * a program that writes the seed inputs (tests/fuzz/corpus/README-svc.txt). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* nftw in fuzz_util.h; the fuzz build defines it */
#endif
#include <nng/nng.h>

#include "fuzz_util.h"
#include "service_wire.h"
#include "shard.h"

static svc_server *server;
static data_batch scratch; /* the handler's batch buffer, kept between inputs */
static char corpus_dir[300];

static uint32_t lcg(uint32_t *s) {
  *s = *s * 1664525u + 1013904223u;
  return *s >> 8;
}

/* Two shards of 24 documents of random sentences, ids in [10, 500), in the
 * scratch folder (removed at exit); the same bytes every time, so a seed's
 * fingerprint stays valid. */
static int make_corpus(void) {
  snprintf(corpus_dir, sizeof corpus_dir, "%s/svc_corpus", fuzz_dir());
  if (mkdir(corpus_dir, 0700) != 0) return -1;
  shard_meta m = {.tokenizer_fingerprint = 42,
                  .vocab_size = 500,
                  .cls_id = 1,
                  .sep_id = 2,
                  .mask_id = 3,
                  .pad_id = 0,
                  .unk_id = 4};
  snprintf(m.tokenizer_kind, sizeof m.tokenizer_kind, "wordpiece");
  snprintf(m.split, sizeof m.split, "train");
  uint32_t seed = 7, ends[8];
  int32_t ids[8 * 30];
  uint8_t words[sizeof ids / sizeof *ids / 8 + 1];
  for (int part = 0; part < 2; part++) {
    char path[400];
    snprintf(path, sizeof path, "%s/train-%05d.mlms", corpus_dir, part);
    shard_writer *w;
    if (shard_writer_open(&w, path, &m) != STATUS_OK) return -1;
    for (int d = 0; d < 24; d++) {
      int ns = 1 + (int)(lcg(&seed) % 8), n = 0;
      for (int k = 0; k < ns; k++) {
        int len = 1 + (int)(lcg(&seed) % 30);
        for (int i = 0; i < len; i++) ids[n++] = 10 + (int32_t)(lcg(&seed) % 490);
        ends[k] = (uint32_t)n;
      }
      memset(words, 0, sizeof words);
      for (int i = 0; i < n; i += 3) words[i / 8] |= (uint8_t)(1u << (i % 8));
      if (shard_writer_add(w, ids, (size_t)n, ends, (size_t)ns, words) != STATUS_OK) {
        shard_writer_abort(w);
        return -1;
      }
    }
    if (shard_writer_close(w) != STATUS_OK) return -1;
  }
  return 0;
}

/* Runs at exit before fuzz_util.h removes the scratch folder. */
static void close_server(void) {
  svc_server_free(server);
  server = NULL;
  data_batch_free(&scratch);
}

/* Writes the corpus and opens the unbound server; exits on failure. */
static void setup(void) {
  /* Refused requests are logged as warnings: nothing is printed per input. */
  setenv("MLMPI_LOG_LEVEL", "error", 1);
  if (make_corpus() != 0) {
    fprintf(stderr, "fuzz_svc_request: cannot write the corpus in %s: %s\n", corpus_dir,
            status_message());
    exit(1);
  }
  svc_server_config cfg = svc_server_config_default();
  cfg.data_dir = corpus_dir;
  cfg.port = 0;
  if (svc_server_open_unbound(&server, &cfg) != STATUS_OK) {
    fprintf(stderr, "fuzz_svc_request: %s\n", status_message());
    exit(1);
  }
  atexit(close_server);
}

/* The reply's invariants; any violation aborts (a finding). */
static void check_reply(nng_msg *m) {
  svc_reply *r = mlmpi__service__batch_reply__unpack(NULL, nng_msg_len(m), nng_msg_body(m));
  if (!r || r->version != SVC_PROTOCOL_VERSION) abort();
  if ((int)r->error == SVC_ERR_NONE) {
    size_t n = r->count, nt = n * r->seq_len * 4, np = n * r->max_predictions * 4;
    if (n < 1 || !r->fingerprint || r->input_ids.len != nt || r->input_mask.len != nt ||
        r->segment_ids.len != nt || r->masked_lm_positions.len != np ||
        r->masked_lm_ids.len != np || r->masked_lm_weights.len != np ||
        r->next_sentence_labels.len != n * 4)
      abort();
  } else if (!r->message || !*r->message || r->input_ids.len) {
    abort();
  }
  mlmpi__service__batch_reply__free_unpacked(r, NULL);
}

#ifndef FUZZ_SVC_WRITE_SEEDS

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  setup();
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  nng_msg *m = svc_server_serve_bytes(server, data, size, &scratch);
  if (m) {
    check_reply(m);
    nng_msg_free(m);
  }
  return 0;
}

#else /* the seed writer */

static int write_request(const char *dir, const char *name, uint32_t version, const data_config *c,
                         const char *split, uint64_t fp, uint64_t gb, uint64_t step, uint64_t first,
                         uint32_t count) {
  svc_config_msg cm;
  svc_config_to_msg(c, split, &cm);
  svc_request q;
  mlmpi__service__batch_request__init(&q);
  q.version = version;
  q.config = &cm;
  q.fingerprint = fp;
  q.global_batch = gb;
  q.step = step;
  q.first = first;
  q.count = count;
  size_t n = mlmpi__service__batch_request__get_packed_size(&q);
  uint8_t *buf = malloc(n ? n : 1);
  if (!buf) return -1;
  mlmpi__service__batch_request__pack(&q, buf);
  /* Each seed is also served once: a seed that crashes is caught here. */
  nng_msg *m = svc_server_serve_bytes(server, buf, n, &scratch);
  if (!m) {
    free(buf);
    return -1;
  }
  check_reply(m);
  nng_msg_free(m);
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  int rc = f && fwrite(buf, 1, n, f) == n ? 0 : -1;
  if (f && fclose(f) != 0) rc = -1;
  free(buf);
  if (rc) fprintf(stderr, "fuzz_svc_request: cannot write %s\n", path);
  return rc;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s OUT_DIR  (writes the request seeds)\n", argv[0]);
    return 2;
  }
  setup();
  data_config def = data_config_default();
  data_config nsp = def;
  nsp.seq_len = 64;
  nsp.max_predictions = 10;
  nsp.instances = INST_NSP;
  nsp.masking = MASK_ELECTRA;
  nsp.whole_word = true;
  nsp.seed = 99;
  dataset *d;
  if (dataset_open(&d, corpus_dir, "train", &def) != STATUS_OK) {
    fprintf(stderr, "fuzz_svc_request: %s\n", status_message());
    return 1;
  }
  uint64_t fp = dataset_fingerprint(d);
  dataset_free(d);
  const char *o = argv[1];
  const uint32_t v = SVC_PROTOCOL_VERSION;
  int rc = write_request(o, "valid-default", v, &def, "train", 0, 64, 3, 8, 4) |
           write_request(o, "valid-fingerprint", v, &def, "train", fp, 64, 0, 0, 16) |
           write_request(o, "valid-nsp-electra", v, &nsp, "train", 0, 32, 5, 16, 16) |
           write_request(o, "version-2", 2, &def, "train", 0, 64, 3, 8, 4) |
           write_request(o, "holdout-missing", v, &def, "holdout", 0, 64, 0, 0, 1) |
           write_request(o, "past-global-batch", v, &def, "train", 0, 64, 1, 60, 8);
  return rc ? 1 : 0;
}

#endif
