/* optim.c: LAMB and AdamW over the flat buffers, global-norm clipping and
 * learning-rate schedules. Work is cut into chunks of at most CHUNK floats,
 * never straddling two tensors; partial sums are kept per chunk and added in
 * chunk order, so norms do not depend on the number of threads.
 *
 * LAMB takes two passes over the moments (besides the gradient norm): the
 * first updates m and v and sums ‖w‖² and ‖u‖² per tensor; the second
 * recomputes u from the new m and v (cheaper than storing it) and applies
 * w -= lr·r·u. AdamW needs one. */
#include "optim.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK 16384

typedef struct {
  size_t begin, end; /* float offsets */
  int tensor;
} chunk;

struct optim {
  optim_config cfg;
  const param_table *table;
  float *m, *v;
  chunk *chunks;
  int nchunks;
  double *part_a, *part_b; /* per chunk */
  double *wnorm, *unorm;   /* per tensor */
  float *ratio;            /* per tensor */
  float *sorted;           /* per tensor, scratch for the median */
  int64_t steps;
  uint64_t skipped;
  size_t lo, hi;    /* the floats of the layout this optimizer updates */
  optim_sum_fn sum; /* ZeRO-1: sums partial norms across ranks */
  void *sum_ctx;
};

optim_config optim_config_default(void) {
  return (optim_config){.kind = OPTIM_LAMB,
                        .beta1 = 0.9f,
                        .beta2 = 0.999f,
                        .eps = 1e-6f,
                        .weight_decay = 0.01f,
                        .bias_correction = true,
                        .max_grad_norm = 1.0f};
}

lr_schedule lr_schedule_default(void) {
  return (lr_schedule){.kind = SCHED_POLY, .lr = 1e-3, .power = 1.0};
}

double lr_at(const lr_schedule *s, int64_t t) {
  double w = s->warmup;
  if (w > 0 && w < 1) w = floor(w * (double)s->total_steps + 0.5);
  if ((double)t < w) return s->lr * (double)t / w;
  if (s->kind == SCHED_CONSTANT || s->total_steps <= 0) return s->lr;
  double span = (double)s->total_steps - w;
  if (span <= 0 || t >= s->total_steps) return s->end_lr;
  double frac = 1.0 - ((double)t - w) / span;
  return s->end_lr + (s->lr - s->end_lr) * pow(frac, s->power);
}

/* ---- Config keys ---------------------------------------------------------------- */
static const char keys_help[] =
    "  optim.name = lamb            lamb | adamw\n"
    "  optim.lr = 0.001             peak learning rate\n"
    "  optim.schedule = poly        poly (warmup, then polynomial decay) | constant\n"
    "  optim.warmup = 0             warmup steps (>= 1) or fraction of total_steps (< 1)\n"
    "  optim.decay_power = 1.0      1.0 as BERT, 0.5 as NVIDIA's LAMB recipes\n"
    "  optim.end_lr = 0             learning rate at the end of the decay\n"
    "  optim.total_steps = 0        steps of the schedule (0: no decay)\n"
    "  optim.beta1 = 0.9\n"
    "  optim.beta2 = 0.999\n"
    "  optim.eps = 1e-6             outside the square root\n"
    "  optim.weight_decay = 0.01    decoupled; matrices only (not biases, not LayerNorm)\n"
    "  optim.bias_correction = true false: LAMB paper v3\n"
    "  optim.adapt_all = false      true: NVLAMB (trust ratio on every tensor)\n"
    "  optim.trust_min = 0          clamp of the trust ratio (0: none)\n"
    "  optim.trust_max = 0          (0: none)\n"
    "  optim.max_grad_norm = 1.0    global-norm clipping (<= 0: off)\n";

const char *optim_keys_help(void) { return keys_help; }

static bool parse_double(const char *v, double *out) {
  char *end;
  *out = strtod(v, &end);
  return *v && !*end && isfinite(*out);
}

status_t optim_set_key(optim_config *c, lr_schedule *s, const char *key, const char *value) {
  double d = 0;
  bool ok;
  struct {
    const char *name;
    float *f;
  } floats[] = {{"beta1", &c->beta1},
                {"beta2", &c->beta2},
                {"eps", &c->eps},
                {"weight_decay", &c->weight_decay},
                {"trust_min", &c->trust_min},
                {"trust_max", &c->trust_max},
                {"max_grad_norm", &c->max_grad_norm}};
  for (size_t i = 0; i < sizeof floats / sizeof floats[0]; i++)
    if (!strcmp(key, floats[i].name)) {
      if (!parse_double(value, &d))
        return status_set(STATUS_CONFIG, "optim.%s: '%s' is not a number", key, value);
      *floats[i].f = (float)d;
      return STATUS_OK;
    }
  if (!strcmp(key, "name")) {
    if (!strcmp(value, "lamb"))
      c->kind = OPTIM_LAMB;
    else if (!strcmp(value, "adamw"))
      c->kind = OPTIM_ADAMW;
    else
      return status_set(STATUS_CONFIG, "optim.name: '%s' is not an optimizer (lamb, adamw)", value);
    return STATUS_OK;
  }
  if (!strcmp(key, "schedule")) {
    if (!strcmp(value, "poly"))
      s->kind = SCHED_POLY;
    else if (!strcmp(value, "constant"))
      s->kind = SCHED_CONSTANT;
    else
      return status_set(STATUS_CONFIG, "optim.schedule: '%s' is not a schedule (poly, constant)",
                        value);
    return STATUS_OK;
  }
  if (!strcmp(key, "bias_correction") || !strcmp(key, "adapt_all")) {
    bool b;
    if (!core_parse_bool(value, &b))
      return status_set(STATUS_CONFIG, "optim.%s: '%s' is not true or false", key, value);
    *(key[0] == 'b' ? &c->bias_correction : &c->adapt_all) = b;
    return STATUS_OK;
  }
  double *dst = !strcmp(key, "lr")            ? &s->lr
                : !strcmp(key, "warmup")      ? &s->warmup
                : !strcmp(key, "decay_power") ? &s->power
                : !strcmp(key, "end_lr")      ? &s->end_lr
                                              : NULL;
  if (dst || !strcmp(key, "total_steps")) {
    ok = parse_double(value, &d) && d >= 0;
    if (!ok)
      return status_set(STATUS_CONFIG, "optim.%s: '%s' is not a non-negative number", key, value);
    if (dst) {
      *dst = d;
    } else {
      if (d != floor(d) || d > 4e18)
        return status_set(STATUS_CONFIG, "optim.total_steps: '%s' is not a whole number of steps",
                          value);
      s->total_steps = (int64_t)d;
    }
    return STATUS_OK;
  }
  return status_set(STATUS_CONFIG, "unknown config key 'optim.%s'", key);
}

/* ---- State ------------------------------------------------------------------------ */
/* Chunks of each tensor's part inside [lo, hi). */
static int make_chunks(const param_table *t, size_t lo, size_t hi, chunk *out) {
  int n = 0;
  for (int i = 0; i < t->n; i++) {
    size_t b0 = t->p[i].offset, b1 = b0 + t->p[i].numel;
    if (b0 < lo) b0 = lo;
    if (b1 > hi) b1 = hi;
    for (size_t b = b0; b < b1; b += CHUNK) {
      if (out) {
        out[n].begin = b;
        out[n].end = b + CHUNK < b1 ? b + CHUNK : b1;
        out[n].tensor = i;
      }
      n++;
    }
  }
  return n;
}

status_t optim_init(optim **out, const optim_config *c, const param_table *t) {
  return optim_init_shard(out, c, t, 0, t->total, NULL, NULL);
}

status_t optim_init_shard(optim **out, const optim_config *c, const param_table *t, size_t lo,
                          size_t hi, optim_sum_fn sum, void *sum_ctx) {
  *out = NULL;
  if (!(c->beta1 >= 0 && c->beta1 < 1 && c->beta2 >= 0 && c->beta2 < 1 && c->eps > 0 &&
        c->weight_decay >= 0))
    return status_set(STATUS_CONFIG,
                      "optimizer: need 0 <= beta1, beta2 < 1, eps > 0, weight_decay >= 0");
  optim *o = calloc(1, sizeof *o);
  if (!o) return status_set(STATUS_NOMEM, "out of memory creating the optimizer");
  CORE_ASSERT(lo <= hi && hi <= t->total);
  o->cfg = *c;
  o->table = t;
  o->lo = lo;
  o->hi = hi;
  o->sum = sum;
  o->sum_ctx = sum_ctx;
  o->nchunks = make_chunks(t, lo, hi, NULL);
  o->m = mem_calloc((hi - lo + 1) * sizeof(float), "optimizer first moments");
  o->v = mem_calloc((hi - lo + 1) * sizeof(float), "optimizer second moments");
  o->chunks = mem_alloc((size_t)o->nchunks * sizeof(chunk), "optimizer chunks");
  o->part_a = mem_alloc((size_t)o->nchunks * sizeof(double), "optimizer sums");
  o->part_b = mem_alloc((size_t)o->nchunks * sizeof(double), "optimizer sums");
  o->wnorm = mem_alloc(2 * (size_t)t->n * sizeof(double) + 8, "optimizer norms");
  o->unorm = o->wnorm ? o->wnorm + t->n : NULL; /* one block: one reduction */
  o->ratio = mem_alloc((size_t)t->n * sizeof(float), "optimizer ratios");
  o->sorted = mem_alloc((size_t)t->n * sizeof(float), "optimizer ratios");
  if (!o->m || !o->v || !o->chunks || !o->part_a || !o->part_b || !o->wnorm || !o->unorm ||
      !o->ratio || !o->sorted) {
    optim_free(o);
    return STATUS_NOMEM;
  }
  make_chunks(t, lo, hi, o->chunks);
  *out = o;
  return STATUS_OK;
}

void optim_free(optim *o) {
  if (!o) return;
  mem_free(o->m);
  mem_free(o->v);
  mem_free(o->chunks);
  mem_free(o->part_a);
  mem_free(o->part_b);
  mem_free(o->wnorm);
  mem_free(o->ratio);
  mem_free(o->sorted);
  free(o);
}

void optim_range(const optim *o, size_t *lo, size_t *hi) {
  *lo = o->lo;
  *hi = o->hi;
}
float *optim_moment1(optim *o) { return o->m; }
float *optim_moment2(optim *o) { return o->v; }
int optim_states(optim *o, optim_state out[OPTIM_MAX_STATES]) {
  out[0] = (optim_state){"exp_avg", o->m};
  out[1] = (optim_state){"exp_avg_sq", o->v};
  return 2;
}
int64_t optim_steps_taken(const optim *o) { return o->steps; }
uint64_t optim_steps_skipped(const optim *o) { return o->skipped; }
void optim_set_counters(optim *o, int64_t taken, uint64_t skipped) {
  o->steps = taken;
  o->skipped = skipped;
}

double optim_grad_norm(optim *o, const float *g) {
#pragma omp parallel for schedule(dynamic, 4)
  for (int c = 0; c < o->nchunks; c++) {
    double s = 0.0;
    const float *x = g + (o->chunks[c].begin - o->lo);
    size_t n = o->chunks[c].end - o->chunks[c].begin;
#pragma omp simd reduction(+ : s)
    for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    o->part_a[c] = s;
  }
  double total = 0.0;
  for (int c = 0; c < o->nchunks; c++) total += o->part_a[c];
  if (o->sum) o->sum(o->sum_ctx, &total, 1);
  return sqrt(total);
}

/* ---- The update ------------------------------------------------------------------- */
typedef struct {
  float b1, b2, omb1, omb2; /* β and 1-β */
  float bc1, bc2;           /* 1/(1-βᵗ) or 1 */
  float eps, clip;
} coefs;

/* m, v ← moments of clip·g; returns u for element i in *u. */
static inline float adam_dir(const coefs *k, float g, float *m, float *v) {
  float gc = g * k->clip;
  float mi = k->b1 * *m + k->omb1 * gc;
  float vi = k->b2 * *v + k->omb2 * gc * gc;
  *m = mi;
  *v = vi;
  return (mi * k->bc1) / (sqrtf(vi * k->bc2) + k->eps);
}

static void lamb_pass1(optim *o, float *w, const float *g, const coefs *k) {
#pragma omp parallel for schedule(dynamic, 4)
  for (int c = 0; c < o->nchunks; c++) {
    const chunk *ch = &o->chunks[c];
    const param_info *p = &o->table->p[ch->tensor];
    float lam = p->decay ? o->cfg.weight_decay : 0.0f;
    double sw = 0.0, su = 0.0;
    float *m = o->m, *v = o->v;
    const size_t lo = o->lo;
#pragma omp simd reduction(+ : sw, su)
    for (size_t i = ch->begin; i < ch->end; i++) {
      float u = adam_dir(k, g[i - lo], &m[i - lo], &v[i - lo]) + lam * w[i];
      sw += (double)w[i] * w[i];
      su += (double)u * u;
    }
    o->part_a[c] = sw;
    o->part_b[c] = su;
  }
}

static float trust_ratio(const optim *o, int t) {
  const param_info *p = &o->table->p[t];
  if (!(p->adapt || o->cfg.adapt_all)) return 1.0f;
  double wn = sqrt(o->wnorm[t]), un = sqrt(o->unorm[t]);
  float r = wn > 0 && un > 0 ? (float)(wn / un) : 1.0f;
  if (o->cfg.trust_min > 0 && r < o->cfg.trust_min) r = o->cfg.trust_min;
  if (o->cfg.trust_max > 0 && r > o->cfg.trust_max) r = o->cfg.trust_max;
  return r;
}

static void lamb_pass2(optim *o, float *w, const coefs *k, float lr) {
  const float *m = o->m, *v = o->v;
  const size_t lo = o->lo;
#pragma omp parallel for schedule(dynamic, 4)
  for (int c = 0; c < o->nchunks; c++) {
    const chunk *ch = &o->chunks[c];
    const param_info *p = &o->table->p[ch->tensor];
    float lam = p->decay ? o->cfg.weight_decay : 0.0f, step = lr * o->ratio[ch->tensor];
#pragma omp simd
    for (size_t i = ch->begin; i < ch->end; i++) {
      float u = (m[i - lo] * k->bc1) / (sqrtf(v[i - lo] * k->bc2) + k->eps) + lam * w[i];
      w[i] -= step * u;
    }
  }
}

static void adamw_pass(optim *o, float *w, const float *g, const coefs *k, float lr) {
#pragma omp parallel for schedule(dynamic, 4)
  for (int c = 0; c < o->nchunks; c++) {
    const chunk *ch = &o->chunks[c];
    const param_info *p = &o->table->p[ch->tensor];
    float lam = p->decay ? o->cfg.weight_decay : 0.0f;
    float *m = o->m, *v = o->v;
    const size_t lo = o->lo;
#pragma omp simd
    for (size_t i = ch->begin; i < ch->end; i++) {
      float u = adam_dir(k, g[i - lo], &m[i - lo], &v[i - lo]) + lam * w[i];
      w[i] -= lr * u;
    }
  }
}

static int cmp_float(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return x < y ? -1 : x > y;
}

static void ratio_stats(optim *o, optim_stats *st) {
  int n = 0;
  for (int t = 0; t < o->table->n; t++)
    if (o->table->p[t].adapt || o->cfg.adapt_all) o->sorted[n++] = o->ratio[t];
  st->trust_min = st->trust_median = st->trust_max = 1.0f;
  if (!n) return;
  qsort(o->sorted, (size_t)n, sizeof(float), cmp_float);
  st->trust_min = o->sorted[0];
  st->trust_max = o->sorted[n - 1];
  st->trust_median = n % 2 ? o->sorted[n / 2] : 0.5f * (o->sorted[n / 2 - 1] + o->sorted[n / 2]);
}

void optim_step(optim *o, float *w, const float *g, float lr, optim_stats *st) {
  optim_stats s = {.lr = lr, .trust_min = 1, .trust_median = 1, .trust_max = 1};
  s.grad_norm = optim_grad_norm(o, g);
  if (!isfinite(s.grad_norm)) {
    s.skipped = true;
    s.skipped_total = ++o->skipped;
    s.clip = 0.0;
    if (st) *st = s;
    return;
  }
  s.clip = o->cfg.max_grad_norm > 0 && s.grad_norm > o->cfg.max_grad_norm
               ? o->cfg.max_grad_norm / s.grad_norm
               : 1.0;
  int64_t t = ++o->steps;
  coefs k = {.b1 = o->cfg.beta1,
             .b2 = o->cfg.beta2,
             .omb1 = 1.0f - o->cfg.beta1,
             .omb2 = 1.0f - o->cfg.beta2,
             .bc1 = 1.0f,
             .bc2 = 1.0f,
             .eps = o->cfg.eps,
             .clip = (float)s.clip};
  if (o->cfg.bias_correction) {
    k.bc1 = (float)(1.0 / (1.0 - pow(o->cfg.beta1, (double)t)));
    k.bc2 = (float)(1.0 / (1.0 - pow(o->cfg.beta2, (double)t)));
  }
  if (o->cfg.kind == OPTIM_ADAMW) {
    adamw_pass(o, w, g, &k, lr);
  } else {
    lamb_pass1(o, w, g, &k);
    memset(o->wnorm, 0, (size_t)o->table->n * sizeof(double));
    memset(o->unorm, 0, (size_t)o->table->n * sizeof(double));
    for (int c = 0; c < o->nchunks; c++) {
      o->wnorm[o->chunks[c].tensor] += o->part_a[c];
      o->unorm[o->chunks[c].tensor] += o->part_b[c];
    }
    /* Tensors straddle shards: every rank needs the whole tensor's norms. */
    if (o->sum) o->sum(o->sum_ctx, o->wnorm, 2 * (size_t)o->table->n);
    for (int i = 0; i < o->table->n; i++) o->ratio[i] = trust_ratio(o, i);
    lamb_pass2(o, w, &k, lr);
    ratio_stats(o, &s);
  }
  s.skipped_total = o->skipped;
  if (st) *st = s;
}
