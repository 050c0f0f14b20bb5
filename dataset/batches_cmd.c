/* batches_cmd.c: `mlmpi-data batches`: prints the batches a rank receives,
 * one JSON object per line, so determinism can be checked from the shell. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataset.h"
#include "service.h"

static const char batches_usage[] =
    "usage: mlmpi-data batches --data DIR --seq-len T --global-batch B --world W --rank R\n"
    "                          --step S [--seed N] [--count N] [--split train|holdout]\n"
    "                          [--max-predictions P] [--mask-prob X] [--masking bert|electra]\n"
    "                          [--whole-word] [--instances packed|nsp] [--short-seq-prob X]\n"
    "                          [--objective mlm|clm]\n"
    "                          [--service HOST:PORT[,HOST:PORT...] [--token-file F]]\n"
    "  Prints the batches rank R of W receives at steps S..S+N-1 (its contiguous slice of\n"
    "  each global batch of B sequences), one JSON object per line with the batch fields\n"
    "  (input_ids, input_mask, segment_ids, masked_lm_positions, masked_lm_ids,\n"
    "  masked_lm_weights, next_sentence_labels), each an array of rows; with --objective clm\n"
    "  (causal-LM windows of the packed token stream) also target_ids and target_weights.\n"
    "  With --service the batches are fetched from running `mlmpi-data serve` replicas\n"
    "  (--data is then not needed; --token-file holds their shared secret, if any).\n";

static void print_rows_i(const char *key, const int32_t *v, int n, int w) {
  printf(",\"%s\":[", key);
  for (int i = 0; i < n; i++) {
    printf(i ? ",[" : "[");
    for (int j = 0; j < w; j++) printf(j ? ",%d" : "%d", v[(size_t)i * w + j]);
    putchar(']');
  }
  putchar(']');
}

static void print_rows_f(const char *key, const float *v, int n, int w) {
  printf(",\"%s\":[", key);
  for (int i = 0; i < n; i++) {
    printf(i ? ",[" : "[");
    for (int j = 0; j < w; j++) printf(j ? ",%g" : "%g", (double)v[(size_t)i * w + j]);
    putchar(']');
  }
  putchar(']');
}

int data_batches_main(int argc, char **argv) {
  static const struct option opts[] = {{"data", required_argument, 0, 'd'},
                                       {"global-batch", required_argument, 0, 'B'},
                                       {"world", required_argument, 0, 'W'},
                                       {"rank", required_argument, 0, 'R'},
                                       {"step", required_argument, 0, 'S'},
                                       {"count", required_argument, 0, 'n'},
                                       {"split", required_argument, 0, 'p'},
                                       DATA_GETOPT_OPTIONS,
                                       {"help", no_argument, 0, 'h'},
                                       {"service", required_argument, 0, 'V'},
                                       {"token-file", required_argument, 0, 'K'},
                                       {"objective", required_argument, 0, 'j'},
                                       {0, 0, 0, 0}};
  data_config cfg = data_config_default();
  const char *dir = NULL, *split = "train", *service = NULL, *token_file = NULL;
  long long B = 0, W = 1, R = 0, S = -1, count = 1;
  opterr = 0;
  optind = 1;
  for (int c, li = 0; (c = getopt_long(argc, argv, "", opts, &li)) != -1;) {
    char *e = NULL;
    const char *value = optarg, *key = NULL;
    switch (c) {
      case 'd': dir = optarg; break;
      case 'p': split = optarg; break;
      case 'V': service = optarg; break;
      case 'K': token_file = optarg; break;
      case 'B': B = strtoll(optarg, &e, 10); break;
      case 'W': W = strtoll(optarg, &e, 10); break;
      case 'R': R = strtoll(optarg, &e, 10); break;
      case 'S': S = strtoll(optarg, &e, 10); break;
      case 'n': count = strtoll(optarg, &e, 10); break;
      case 'h': fputs(batches_usage, stdout); return 0;
      case 'j': key = "objective"; break;
      default:
        if ((key = data_option_key(c, &value))) break;
        fprintf(stderr, "mlmpi-data batches: unknown or incomplete option '%s' (see --help)\n",
                argv[optind - 1]);
        return 2;
    }
    if (e && (*e || e == optarg)) {
      fprintf(stderr, "mlmpi-data batches: --%s needs a number, not '%s'\n", opts[li].name, optarg);
      return 2;
    }
    if (key && data_set_key(&cfg, key, value) != STATUS_OK) {
      fprintf(stderr, "mlmpi-data batches: %s\n", status_message());
      return 2;
    }
  }
  if ((!dir && !service) || B < 1 || S < 0 || W < 1 || R < 0 || R >= W || count < 1) {
    fprintf(stderr,
            "mlmpi-data batches: --data, --global-batch >= 1, --step >= 0 and "
            "0 <= --rank < --world are required (see --help)\n");
    return 2;
  }
  if (B % W) {
    fprintf(stderr, "mlmpi-data batches: --global-batch %lld is not divisible by --world %lld\n", B,
            W);
    return 2;
  }
  dataset *d = NULL;
  svc_client *svc = NULL;
  if (service) {
    svc_client_options o = svc_client_options_default();
    char *token = NULL;
    o.addresses = service;
    o.config = cfg;
    o.split = split;
    o.global_batch = (uint64_t)B;
    status_t ost = token_file ? svc_read_token(token_file, &token) : STATUS_OK;
    o.token = token;
    if (ost == STATUS_OK) ost = svc_client_open(&svc, &o);
    free(token);
    if (ost) {
      fprintf(stderr, "mlmpi-data batches: %s\n", status_message());
      return 1;
    }
  } else if (dataset_open(&d, dir, split, &cfg) != STATUS_OK) {
    fprintf(stderr, "mlmpi-data batches: %s\n", status_message());
    return 1;
  }
  int n = (int)(B / W);
  data_batch b;
  status_t st = data_batch_alloc(&b, n, cfg.seq_len, cfg.max_predictions);
  for (long long k = 0; k < count && st == STATUS_OK; k++) {
    uint64_t step = (uint64_t)(S + k);
    st = svc ? svc_client_get(svc, step, (uint64_t)(R * n), n, &b)
             : dataset_get_batch(d, (uint64_t)B, step, (uint64_t)(R * n), n, &b);
    if (st) break;
    printf("{\"step\":%llu,\"rank\":%lld,\"world\":%lld,\"fingerprint\":\"%016llx\"",
           (unsigned long long)step, R, W,
           (unsigned long long)(svc ? svc_client_fingerprint(svc) : dataset_fingerprint(d)));
    print_rows_i("input_ids", b.input_ids, n, b.T);
    print_rows_i("input_mask", b.input_mask, n, b.T);
    print_rows_i("segment_ids", b.segment_ids, n, b.T);
    print_rows_i("masked_lm_positions", b.masked_lm_positions, n, b.P);
    print_rows_i("masked_lm_ids", b.masked_lm_ids, n, b.P);
    print_rows_f("masked_lm_weights", b.masked_lm_weights, n, b.P);
    print_rows_i("next_sentence_labels", b.next_sentence_labels, n, 1);
    if (cfg.objective == OBJECTIVE_CLM) {
      print_rows_i("target_ids", b.target_ids, n, b.T);
      print_rows_f("target_weights", b.target_weights, n, b.T);
    }
    puts("}");
  }
  if (st) fprintf(stderr, "mlmpi-data batches: %s\n", status_message());
  data_batch_free(&b);
  dataset_free(d);
  svc_client_free(svc);
  return st == STATUS_OK ? 0 : 1;
}
