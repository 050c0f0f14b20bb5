/* tfrecord_cmd.c: `mlmpi-data tfrecord-export` (the batch stream's instances,
 * masks included, as BERT pretraining TFRecords) and `tfrecord-import` (a
 * full check and summary of such files, which mlmpi then reads in place). */
#include <getopt.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tfexample.h"
#include "tfrecord.h"

static const char export_usage[] =
    "usage: mlmpi-data tfrecord-export --data DIR --out FILE --seq-len T [--max-predictions P]\n"
    "                                  [--count N | --steps S --global-batch B [--start-step S0]]\n"
    "                                  [--seed N] [--split train|holdout] [--mask-prob X]\n"
    "                                  [--masking bert|electra] [--whole-word]\n"
    "                                  [--instances packed|nsp] [--short-seq-prob X]\n"
    "  Writes instances of the batch stream, with the masks mlmpi gave them, as TFRecords of\n"
    "  tf.train.Example with the features of BERT's create_pretraining_data.py, so BERT's own\n"
    "  run_pretraining.py (max_seq_length T, max_predictions_per_seq P) can train on them.\n"
    "  --steps S --global-batch B: the global batches of steps S0..S0+S-1 (S0 default 0) in\n"
    "  order, row for row what `mlmpi-data batches --world 1 --rank 0 --step S0 --count S`\n"
    "  prints with the same options. --count N: the global batch of N sequences at step 0\n"
    "  (default: one epoch, every instance once). The data options are those of `batches`.\n";

static const char import_usage[] =
    "usage: mlmpi-data tfrecord-import [--seq-len T] [--max-predictions P] [--seed N]\n"
    "                                  [--threads N] [--rows] FILE|GLOB...\n"
    "  Checks TFRecord files of tf.train.Example as BERT's create_pretraining_data.py writes\n"
    "  them: every record's checksums and every feature's presence, type, length and range\n"
    "  (T and P default to the first record's). Prints each file's record count and a summary\n"
    "  (sequences, real tokens, masked predictions, next-sentence labels) with the source\n"
    "  fingerprint for the seed (default 12345). Any damage is reported with the file and the\n"
    "  record's byte offset, and a nonzero exit. --rows first prints every record as the\n"
    "  trainer reads it, in file order: one JSON object per line with the batch fields\n"
    "  (input_ids, ..., next_sentence_labels) and the record's file and byte offset.\n"
    "  Nothing is converted: mlmpi reads these files in place (mapped, indexed when opened,\n"
    "  records parsed as batches ask for them), so the static masks stay as written; a FILE\n"
    "  may also be a glob or a comma-separated list, as BERT's --input_file.\n";

/* ---- export ----------------------------------------------------------------------- */
typedef struct {
  data_config cfg;
  const char *dir, *out, *split;
  long long count, steps, batch, start;
} export_args;

static int parse_export(int argc, char **argv, export_args *a) {
  static const struct option opts[] = {{"data", required_argument, 0, 'd'},
                                       {"out", required_argument, 0, 'o'},
                                       {"count", required_argument, 0, 'n'},
                                       {"steps", required_argument, 0, 'S'},
                                       {"global-batch", required_argument, 0, 'B'},
                                       {"start-step", required_argument, 0, 'a'},
                                       {"split", required_argument, 0, 'p'},
                                       DATA_GETOPT_OPTIONS,
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  memset(a, 0, sizeof *a);
  a->cfg = data_config_default();
  a->split = "train";
  a->count = a->steps = a->batch = -1;
  bool have_T = false;
  opterr = 0;
  optind = 1;
  for (int c, li = 0; (c = getopt_long(argc, argv, "", opts, &li)) != -1;) {
    char *e = NULL;
    const char *value = optarg, *key = NULL;
    have_T |= c == 'T';
    switch (c) {
      case 'd': a->dir = optarg; break;
      case 'o': a->out = optarg; break;
      case 'p': a->split = optarg; break;
      case 'n': a->count = strtoll(optarg, &e, 10); break;
      case 'S': a->steps = strtoll(optarg, &e, 10); break;
      case 'B': a->batch = strtoll(optarg, &e, 10); break;
      case 'a': a->start = strtoll(optarg, &e, 10); break;
      case 'h': fputs(export_usage, stdout); return 1;
      default:
        if ((key = data_option_key(c, &value))) break;
        fprintf(stderr,
                "mlmpi-data tfrecord-export: unknown or incomplete option '%s' (see --help)\n",
                argv[optind - 1]);
        return 2;
    }
    if (e && (*e || e == optarg)) {
      fprintf(stderr, "mlmpi-data tfrecord-export: --%s needs a number, not '%s'\n", opts[li].name,
              optarg);
      return 2;
    }
    if (key && data_set_key(&a->cfg, key, value) != STATUS_OK) {
      fprintf(stderr, "mlmpi-data tfrecord-export: %s\n", status_message());
      return 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "mlmpi-data tfrecord-export: unexpected argument '%s'\n", argv[optind]);
    return 2;
  }
  if (!a->dir || !a->out || !have_T) {
    fprintf(stderr,
            "mlmpi-data tfrecord-export: --data, --out and --seq-len are required (see --help)\n");
    return 2;
  }
  bool by_steps = a->steps != -1 || a->batch != -1;
  if ((by_steps && (a->count != -1 || a->steps < 1 || a->batch < 1)) || a->start < 0 ||
      (!by_steps && a->count != -1 && a->count < 1)) {
    fprintf(stderr,
            "mlmpi-data tfrecord-export: give either --count N >= 1 or both --steps S >= 1 "
            "and --global-batch B >= 1 (see --help)\n");
    return 2;
  }
  return 0;
}

/* Writes global-batch rows [0, rows) of step `step` in chunks of `buf`. */
static status_t export_step(const dataset *d, tfr_writer *w, data_batch *buf, uint64_t batch,
                            uint64_t step) {
  status_t st = STATUS_OK;
  for (uint64_t first = 0; first < batch && st == STATUS_OK; first += (uint64_t)buf->n) {
    int count = batch - first < (uint64_t)buf->n ? (int)(batch - first) : buf->n;
    st = dataset_get_batch(d, batch, step, first, count, buf);
    for (int k = 0; k < count && st == STATUS_OK; k++) {
      uint8_t *p;
      size_t n;
      st = tfx_build_row(buf, k, &p, &n);
      if (st == STATUS_OK) st = tfr_write(w, p, n, NULL);
      free(p);
    }
  }
  return st;
}

int data_tfrecord_export_main(int argc, char **argv) {
  export_args a;
  int rc = parse_export(argc, argv, &a);
  if (rc) return rc == 1 ? 0 : rc;
  dataset *d = NULL;
  data_batch buf = {0};
  tfr_writer w = {0};
  status_t st = dataset_open(&d, a.dir, a.split, &a.cfg);
  if (st == STATUS_OK && a.steps < 1 && a.count < 1) a.count = (long long)dataset_instances(d);
  if (st == STATUS_OK) st = data_batch_alloc(&buf, 256, a.cfg.seq_len, a.cfg.max_predictions);
  if (st == STATUS_OK) st = tfr_writer_open(&w, a.out);
  uint64_t records = 0;
  if (a.steps >= 1) {
    for (long long k = 0; k < a.steps && st == STATUS_OK; k++)
      st = export_step(d, &w, &buf, (uint64_t)a.batch, (uint64_t)(a.start + k));
    records = (uint64_t)a.steps * (uint64_t)a.batch;
  } else if (st == STATUS_OK) {
    st = export_step(d, &w, &buf, (uint64_t)a.count, 0);
    records = (uint64_t)a.count;
  }
  if (st == STATUS_OK)
    st = tfr_writer_close(&w);
  else if (w.f)
    tfr_writer_abort(&w);
  if (st) {
    fprintf(stderr, "mlmpi-data tfrecord-export: %s\n", status_message());
  } else {
    fprintf(stderr,
            "mlmpi-data tfrecord-export: %llu records (seq_len %d, max_predictions %d, "
            "data fingerprint %016llx) written to %s\n",
            (unsigned long long)records, a.cfg.seq_len, a.cfg.max_predictions,
            (unsigned long long)dataset_fingerprint(d), a.out);
  }
  data_batch_free(&buf);
  dataset_free(d);
  return st == STATUS_OK ? 0 : 1;
}

/* ---- import ----------------------------------------------------------------------- */
static void put_ints(const char *key, const int32_t *v, int n) {
  printf(",\"%s\":[", key);
  for (int i = 0; i < n; i++) printf(i ? ",%d" : "%d", v[i]);
  putchar(']');
}

/* Every record as the trainer reads it, in file order. */
static status_t print_rows(const tfx_source *s) {
  data_batch row;
  status_t st = data_batch_alloc(&row, 1, tfx_seq_len(s), tfx_max_predictions(s));
  uint64_t i = 0;
  for (int f = 0; f < tfx_files(s) && st == STATUS_OK; f++)
    for (uint64_t r = 0; r < tfx_file_records(s, f) && st == STATUS_OK; r++, i++) {
      if ((st = tfx_read_record(s, i, &row, 0))) break;
      printf("{\"record\":%llu,\"file\":%d", (unsigned long long)i, f);
      put_ints("input_ids", row.input_ids, row.T);
      put_ints("input_mask", row.input_mask, row.T);
      put_ints("segment_ids", row.segment_ids, row.T);
      put_ints("masked_lm_positions", row.masked_lm_positions, row.P);
      put_ints("masked_lm_ids", row.masked_lm_ids, row.P);
      fputs(",\"masked_lm_weights\":[", stdout);
      for (int j = 0; j < row.P; j++)
        printf(j ? ",%.9g" : "%.9g", (double)row.masked_lm_weights[j]);
      putchar(']');
      put_ints("next_sentence_labels", row.next_sentence_labels, 1);
      puts("}");
    }
  data_batch_free(&row);
  return st;
}

typedef struct {
  uint64_t tokens, predictions, labels[3]; /* labels: 0, 1, other */
} import_stats;

/* Parses every record (in parallel); on failure reports the lowest failing
 * record so the message does not depend on the thread count. */
static status_t check_records(const tfx_source *s, import_stats *t) {
  const uint64_t n = tfx_records(s);
  const int T = tfx_seq_len(s), P = tfx_max_predictions(s);
  uint64_t bad = UINT64_MAX;
  char why[1024] = "";
  status_t bad_st = STATUS_OK;
  uint64_t tokens = 0, preds = 0, l0 = 0, l1 = 0, lx = 0;
#pragma omp parallel reduction(+ : tokens, preds, l0, l1, lx)
  {
    data_batch row;
    status_t ast = data_batch_alloc(&row, 1, T, P);
#pragma omp for schedule(dynamic, 256)
    for (uint64_t i = 0; i < n; i++) {
      status_t st = ast ? ast : tfx_read_record(s, i, &row, 0);
      if (st) {
#pragma omp critical
        if (i < bad) {
          bad = i;
          bad_st = st;
          snprintf(why, sizeof why, "%s", status_message());
        }
        continue;
      }
      for (int j = 0; j < T; j++) tokens += row.input_mask[j] != 0;
      for (int j = 0; j < P; j++) preds += row.masked_lm_weights[j] != 0.0f;
      int32_t l = row.next_sentence_labels[0];
      l0 += l == 0;
      l1 += l == 1;
      lx += l != 0 && l != 1;
    }
    data_batch_free(&row);
  }
  if (bad != UINT64_MAX) return status_set(bad_st, "%s", why);
  *t = (import_stats){tokens, preds, {l0, l1, lx}};
  return STATUS_OK;
}

/* tfrecord-import's check and report, also `inspect`'s for TFRecord files:
 * each file's record count and a summary on stdout (with rows, every record
 * first), or one error line "mlmpi-data <cmd>: ..." on stderr. Returns the
 * exit status. */
int data_tfrecord_report(const char *cmd, const char *const *paths, int n_paths, int T, int P,
                         uint64_t seed, bool rows) {
  tfx_source *s = NULL;
  import_stats t;
  status_t st = tfx_open(paths, n_paths, T, P, seed, &s);
  if (st == STATUS_OK && rows) st = print_rows(s);
  if (st == STATUS_OK) st = check_records(s, &t);
  if (st) {
    fflush(stdout);
    fprintf(stderr, "mlmpi-data %s: %s\n", cmd, status_message());
    tfx_free(s);
    return 1;
  }
  for (int i = 0; i < tfx_files(s); i++)
    printf("%s: %llu records\n", tfx_file_path(s, i), (unsigned long long)tfx_file_records(s, i));
  uint64_t n = tfx_records(s);
  printf(
      "%llu records in %d file(s): seq_len %d, max_predictions %d; %llu real tokens "
      "(%.1f per sequence), %llu masked predictions (%.2f per sequence); next_sentence_labels "
      "%llu x 0, %llu x 1, %llu other; fingerprint %016llx (seed %llu); all checksums and "
      "features ok\n",
      (unsigned long long)n, tfx_files(s), tfx_seq_len(s), tfx_max_predictions(s),
      (unsigned long long)t.tokens, (double)t.tokens / (double)n, (unsigned long long)t.predictions,
      (double)t.predictions / (double)n, (unsigned long long)t.labels[0],
      (unsigned long long)t.labels[1], (unsigned long long)t.labels[2],
      (unsigned long long)tfx_fingerprint(s), (unsigned long long)seed);
  tfx_free(s);
  return fflush(stdout) == 0 ? 0 : 1;
}

int data_tfrecord_import_main(int argc, char **argv) {
  static const struct option opts[] = {{"seq-len", required_argument, 0, 'T'},
                                       {"max-predictions", required_argument, 0, 'P'},
                                       {"seed", required_argument, 0, 's'},
                                       {"threads", required_argument, 0, 't'},
                                       {"rows", no_argument, 0, 'r'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
  long long T = 0, P = 0, threads = 0;
  bool rows = false;
  unsigned long long seed = data_config_default().seed;
  opterr = 0;
  optind = 1;
  for (int c, li = 0; (c = getopt_long(argc, argv, "", opts, &li)) != -1;) {
    char *e = NULL;
    switch (c) {
      case 'T': T = strtoll(optarg, &e, 10); break;
      case 'P': P = strtoll(optarg, &e, 10); break;
      case 's': seed = strtoull(optarg, &e, 10); break;
      case 't': threads = strtoll(optarg, &e, 10); break;
      case 'r': rows = true; break;
      case 'h': fputs(import_usage, stdout); return 0;
      default:
        fprintf(stderr,
                "mlmpi-data tfrecord-import: unknown or incomplete option '%s' (see --help)\n",
                argv[optind - 1]);
        return 2;
    }
    if (e && (*e || e == optarg || T < 0 || P < 0 || T > 1 << 20 || P > 1 << 20 || threads < 0)) {
      fprintf(stderr, "mlmpi-data tfrecord-import: --%s needs a non-negative number, not '%s'\n",
              opts[li].name, optarg);
      return 2;
    }
  }
  if (optind >= argc) {
    fprintf(stderr, "mlmpi-data tfrecord-import: at least one FILE is needed (see --help)\n");
    return 2;
  }
  if (threads) omp_set_num_threads((int)threads);
  return data_tfrecord_report("tfrecord-import", (const char *const *)argv + optind, argc - optind,
                              (int)T, (int)P, (uint64_t)seed, rows);
}
