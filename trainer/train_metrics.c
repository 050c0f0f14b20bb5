/* train_metrics.c: what rank 0 reports of a run: one JSON object a step and
 * one an evaluation in log.dir/metrics.jsonl, TensorBoard scalars beside it,
 * and the log line (a progress line with ETA on a terminal). The model's
 * values come with their names from its table; the optimizer's and the
 * timings are the loop's. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "run.h"

status_t run_open_logs(run_state *s, int64_t start) {
  const char *dir = s->cfg.log_dir;
  if (!dir[0]) return STATUS_OK;
  char p[CFG_PATH + 32];
  status_t st = core_mkdir_p(dir);
  if (st) return st;
  snprintf(p, sizeof p, "%s/metrics.jsonl", dir);
  s->metrics = fopen(p, start ? "a" : "w");
  if (!s->metrics) return status_set(STATUS_IO, "cannot open %s: %s", p, strerror(errno));
  return tb_open(&s->tb, dir);
}

void run_close_logs(run_state *s) {
  if (s->metrics) fclose(s->metrics);
  s->metrics = NULL;
  tb_close(s->tb);
  s->tb = NULL;
}

static double peak_rss_mb(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_maxrss / 1024.0;
}

/* `"key":value,` for each metric, with its decimals. */
/* "key":value, with prec digits after the point (conv 'f') or significant
 * (conv 'g'), or null where v is not finite (a skipped step's grad_norm, a
 * diverged loss): JSON has no NaN or infinity. */
static void json_num(FILE *f, const char *key, double v, char conv, int prec, const char *end) {
  if (!isfinite(v))
    fprintf(f, "\"%s\":null%s", key, end);
  else if (conv == 'g')
    fprintf(f, "\"%s\":%.*g%s", key, prec, v, end);
  else
    fprintf(f, "\"%s\":%.*f%s", key, prec, v, end);
}

static void json_values(FILE *f, const model_metric *m, int n, const double *v) {
  for (int i = 0; i < n; i++) json_num(f, m[i].key, v[i], 'f', m[i].digits, ",");
}

/* The metrics with a TensorBoard tag, then the extra ones, as one event. */
static void tb_values(run_state *s, int64_t step, const model_metric *m, int n, const double *v,
                      const char *const *xtags, const float *xv, int nx) {
  const char *tags[MODEL_MAX_METRICS + 8];
  float vals[MODEL_MAX_METRICS + 8];
  int k = 0;
  for (int i = 0; i < n; i++)
    if (m[i].tb) {
      tags[k] = m[i].tb;
      vals[k++] = (float)v[i];
    }
  for (int i = 0; i < nx; i++) {
    tags[k] = xtags[i];
    vals[k++] = xv[i];
  }
  if (tb_scalars(s->tb, step + 1, tags, vals, k) || tb_flush(s->tb)) {
    LOG_WARN(TRAINER, "%s; no more TensorBoard events", status_message());
    tb_close(s->tb);
    s->tb = NULL;
  }
}

/* " key value" for each metric the log line shows, with sep before each. */
static void log_values(char *buf, size_t n, const char *sep, const model_metric *m, int count,
                       const double *v) {
  size_t u = 0;
  buf[0] = 0;
  for (int i = 0; i < count && u < n; i++)
    if (m[i].log_digits)
      u += (size_t)snprintf(buf + u, n - u, "%s%s %.*f", sep, m[i].key, m[i].log_digits, v[i]);
}

/* "step N/STEPS", and under train.time_limit_s the time used of the budget
 * after `sep` (and no /STEPS while the budget ends the run first); returns
 * the seconds left by whichever of the two ends it first. */
static double progress(const run_state *s, int64_t step, double step_s, const char *sep, char *buf,
                       size_t n) {
  const train_config *c = &s->cfg;
  double eta = step_s * (double)(c->steps - step - 1);
  int u = snprintf(buf, n, "step %lld", (long long)step + 1);
  double used = core_now_s() - s->t_start, left = c->time_limit_s - used;
  bool on_time = c->time_limit_s > 0 && left < eta;
  if (!on_time) u += snprintf(buf + u, n - (size_t)u, "/%lld", (long long)c->steps);
  if (c->time_limit_s > 0)
    snprintf(buf + u, n - (size_t)u, "%s%.1f/%g s", sep, used, c->time_limit_s);
  return on_time ? (left > 0 ? left : 0) : eta;
}

void run_log_step(run_state *s, int64_t step, const step_result *r, const double *sums,
                  double step_s) {
  const train_config *c = &s->cfg;
  const model_ops *m = s->mops;
  const optim_stats *os = &r->os;
  double tokens = (double)c->global_batch * c->data.seq_len, v[MODEL_MAX_METRICS];
  m->train_values(sums, (double)c->global_batch, v);
  if (s->metrics) {
    fprintf(s->metrics, "{\"step\":%lld,", (long long)step + 1);
    json_values(s->metrics, m->train_metrics, m->n_train_metrics, v);
    FILE *f = s->metrics;
    json_num(f, "lr", os->lr, 'g', 6, ",");
    json_num(f, "grad_norm", os->grad_norm, 'g', 6, ",");
    json_num(f, "clip", os->clip, 'g', 4, ",");
    fprintf(f, "\"skipped\":%s,", os->skipped ? "true" : "false");
    json_num(f, "trust_min", os->trust_min, 'g', 5, ",");
    json_num(f, "trust_median", os->trust_median, 'g', 5, ",");
    json_num(f, "trust_max", os->trust_max, 'g', 5, ",");
    fprintf(f,
            "\"tokens_per_s\":%.1f,\"step_s\":%.4f,\"data_s\":%.4f,\"compute_s\":%.4f,"
            "\"exposed_comm_s\":%.4f,\"peak_rss_mb\":%.1f}\n",
            tokens / step_s, step_s, r->data_s, r->compute_s, r->exposed_s, peak_rss_mb());
    fflush(s->metrics);
  }
  if (s->tb) {
    static const char *const tags[] = {"train/learning_rate", "train/grad_norm",
                                       "train/tokens_per_s", "train/trust_ratio_median"};
    const float x[] = {os->lr, (float)os->grad_norm, (float)(tokens / step_s), os->trust_median};
    tb_values(s, step, m->train_metrics, m->n_train_metrics, v, tags, x, 4);
  }
  if ((step + 1) % c->log_every && step + 1 != c->steps) return;
  char line[512], at[96];
  if (s->tty) {
    double eta = progress(s, step, step_s, "  ", at, sizeof at);
    log_values(line, sizeof line, "  ", m->train_metrics, m->n_train_metrics, v);
    fprintf(stderr, "\r%s%s  lr %.2e  %.0f tok/s  ETA %.0f s   ", at, line, (double)os->lr,
            tokens / step_s, eta);
  } else {
    progress(s, step, step_s, " time ", at, sizeof at);
    log_values(line, sizeof line, " ", m->train_metrics, m->n_train_metrics, v);
    LOG_INFO(TRAINER, "%s%s lr %.3g grad_norm %.3g %.0f tok/s", at, line, (double)os->lr,
             os->grad_norm, tokens / step_s);
  }
}

void run_log_eval(run_state *s, int64_t step, const double *v) {
  const model_ops *m = s->mops;
  if (s->rank != 0) return;
  if (s->metrics) {
    fputc('{', s->metrics);
    if (s->steps_per_epoch > 0)
      fprintf(s->metrics, "\"epoch\":%lld,", (long long)((step + 1) / s->steps_per_epoch));
    fprintf(s->metrics, "\"eval_step\":%lld", (long long)step + 1);
    for (int i = 0; i < m->n_eval_metrics; i++) {
      fputc(',', s->metrics);
      json_num(s->metrics, m->eval_metrics[i].key, v[i], 'f', m->eval_metrics[i].digits, "");
    }
    fputs("}\n", s->metrics);
    fflush(s->metrics);
  }
  if (s->tb) tb_values(s, step, m->eval_metrics, m->n_eval_metrics, v, NULL, NULL, 0);
  if (s->tty) fputc('\n', stderr);
  char line[512];
  log_values(line, sizeof line, " ", m->eval_metrics, m->n_eval_metrics, v);
  if (s->steps_per_epoch > 0)
    LOG_INFO(TRAINER, "epoch %lld (step %lld):%s", (long long)((step + 1) / s->steps_per_epoch),
             (long long)step + 1, line);
  else
    LOG_INFO(TRAINER, "eval at step %lld:%s", (long long)step + 1, line);
}
