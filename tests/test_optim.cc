/* test_optim.cc: unit tests of the optimizers: the learning-rate schedule,
 * the optim.* config keys, and LAMB / AdamW steps on a small parameter table
 * against a double-precision loop written here, including clipping, trust
 * ratio statistics, skipped steps and independence of the thread count. */
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "optim.h"

namespace {

constexpr size_t kChunk = 16384; /* CHUNK in optim.c */

/* ---- Learning-rate schedule ------------------------------------------------- */

lr_schedule Sched(double lr, double warmup, int64_t total, double power, double end) {
  lr_schedule s = lr_schedule_default();
  s.lr = lr;
  s.warmup = warmup;
  s.total_steps = total;
  s.power = power;
  s.end_lr = end;
  return s;
}

/* The schedule written out for t past warmup W. */
double PolyAt(double lr, double end, double W, double total, double power, double t) {
  return end + (lr - end) * std::pow(1.0 - (t - W) / (total - W), power);
}

TEST(LrSchedule, DefaultIsPolyWithoutWarmup) {
  lr_schedule s = lr_schedule_default();
  EXPECT_EQ(s.kind, SCHED_POLY);
  EXPECT_EQ(s.lr, 1e-3);
  EXPECT_EQ(s.warmup, 0.0);
  EXPECT_EQ(s.power, 1.0);
  /* total_steps 0: no decay at all */
  EXPECT_EQ(lr_at(&s, 0), 1e-3);
  EXPECT_EQ(lr_at(&s, 123456789), 1e-3);
}

TEST(LrSchedule, WarmupBoundariesAndLinearDecay) {
  const double lr = 1e-3;
  lr_schedule s = Sched(lr, 10, 110, 1.0, 0.0);
  EXPECT_EQ(lr_at(&s, 0), 0.0);
  EXPECT_DOUBLE_EQ(lr_at(&s, 1), lr * 1 / 10);
  EXPECT_DOUBLE_EQ(lr_at(&s, 9), lr * 9 / 10);   /* W - 1 */
  EXPECT_DOUBLE_EQ(lr_at(&s, 10), lr);           /* W: the peak, continuous */
  EXPECT_DOUBLE_EQ(lr_at(&s, 11), lr * 0.99);    /* W + 1 */
  EXPECT_DOUBLE_EQ(lr_at(&s, 60), lr * 0.5);     /* mid-decay */
  EXPECT_NEAR(lr_at(&s, 109), lr * 0.01, 1e-18); /* total - 1 */
  EXPECT_EQ(lr_at(&s, 110), 0.0);                /* total: end_lr */
  EXPECT_EQ(lr_at(&s, 111), 0.0);
  EXPECT_EQ(lr_at(&s, int64_t{1} << 40), 0.0);
  /* monotone: up during warmup, down after */
  for (int64_t t = 1; t <= 10; t++) EXPECT_GT(lr_at(&s, t), lr_at(&s, t - 1)) << t;
  for (int64_t t = 11; t <= 110; t++) EXPECT_LT(lr_at(&s, t), lr_at(&s, t - 1)) << t;
}

TEST(LrSchedule, EndLrAndPowers) {
  const double lr = 2e-3, end = 1e-5;
  for (double power : {1.0, 0.5, 2.0}) {
    SCOPED_TRACE(power);
    lr_schedule s = Sched(lr, 4, 104, power, end);
    EXPECT_DOUBLE_EQ(lr_at(&s, 2), lr * 0.5);
    EXPECT_DOUBLE_EQ(lr_at(&s, 4), lr);
    for (int64_t t : {5, 29, 54, 79, 103})
      EXPECT_NEAR(lr_at(&s, t), PolyAt(lr, end, 4, 104, power, (double)t), 1e-15) << t;
    EXPECT_EQ(lr_at(&s, 104), end);
    EXPECT_EQ(lr_at(&s, 1000), end);
    for (int64_t t = 4; t < 104; t++) EXPECT_GT(lr_at(&s, t), end) << t;
  }
  /* power 0.5 a quarter of the way: sqrt(3/4) of the span above end_lr */
  lr_schedule s = Sched(lr, 4, 104, 0.5, end);
  EXPECT_NEAR(lr_at(&s, 29), end + (lr - end) * std::sqrt(0.75), 1e-15);
  EXPECT_GT(lr_at(&s, 29), PolyAt(lr, end, 4, 104, 1.0, 29)); /* above the linear decay */
}

TEST(LrSchedule, FractionalWarmupRoundsToNearestStep) {
  const double lr = 1e-3;
  /* 0.27 * 40 = 10.8 -> 11 warmup steps */
  lr_schedule s = Sched(lr, 0.27, 40, 1.0, 0.0);
  EXPECT_DOUBLE_EQ(lr_at(&s, 10), lr * 10 / 11);
  EXPECT_DOUBLE_EQ(lr_at(&s, 11), lr);
  EXPECT_DOUBLE_EQ(lr_at(&s, 12), lr * (1.0 - 1.0 / 29));
  /* 0.21 * 40 = 8.4 -> 8 */
  s = Sched(lr, 0.21, 40, 1.0, 0.0);
  EXPECT_DOUBLE_EQ(lr_at(&s, 7), lr * 7 / 8);
  EXPECT_DOUBLE_EQ(lr_at(&s, 8), lr);
  EXPECT_DOUBLE_EQ(lr_at(&s, 9), lr * (1.0 - 1.0 / 32));
  /* a fraction that rounds to no warmup at all */
  s = Sched(lr, 0.01, 40, 1.0, 0.0);
  EXPECT_EQ(lr_at(&s, 0), lr);
}

TEST(LrSchedule, NonIntegerWarmupStepsNeverExceedPeak) {
  /* W = 2.5 steps: t = 2 is still inside warmup (t < W). */
  const double lr = 1e-3;
  lr_schedule s = Sched(lr, 2.5, 100, 1.0, 0.0);
  EXPECT_DOUBLE_EQ(lr_at(&s, 2), lr * 2 / 2.5);
  for (int64_t t = 0; t <= 120; t++) EXPECT_LE(lr_at(&s, t), lr) << t;
}

TEST(LrSchedule, ConstantAfterWarmup) {
  const double lr = 5e-4;
  lr_schedule s = Sched(lr, 5, 50, 1.0, 1e-6);
  s.kind = SCHED_CONSTANT;
  EXPECT_EQ(lr_at(&s, 0), 0.0);
  EXPECT_DOUBLE_EQ(lr_at(&s, 2), lr * 2 / 5);
  EXPECT_DOUBLE_EQ(lr_at(&s, 4), lr * 4 / 5);
  for (int64_t t : {5, 6, 49, 50, 51, 100000}) EXPECT_EQ(lr_at(&s, t), lr) << t;
  s.warmup = 0;
  EXPECT_EQ(lr_at(&s, 0), lr);
}

TEST(LrSchedule, NoTotalStepsMeansNoDecay) {
  const double lr = 1e-3;
  lr_schedule s = Sched(lr, 3, 0, 1.0, 1e-5);
  EXPECT_DOUBLE_EQ(lr_at(&s, 1), lr / 3);
  for (int64_t t : {3, 4, 1000}) EXPECT_EQ(lr_at(&s, t), lr) << t;
  s.total_steps = -5;
  EXPECT_EQ(lr_at(&s, 10), lr);
}

TEST(LrSchedule, WarmupAsLongAsTotalEndsAtEndLr) {
  lr_schedule s = Sched(1e-3, 10, 10, 1.0, 1e-5);
  EXPECT_DOUBLE_EQ(lr_at(&s, 9), 1e-3 * 9 / 10);
  EXPECT_EQ(lr_at(&s, 10), 1e-5);
  EXPECT_EQ(lr_at(&s, 11), 1e-5);
}

/* ---- Config keys -------------------------------------------------------------- */

struct KeyCase {
  const char *key, *value;
};

bool SameConfig(const optim_config &a, const optim_config &b) {
  return a.kind == b.kind && a.beta1 == b.beta1 && a.beta2 == b.beta2 && a.eps == b.eps &&
         a.weight_decay == b.weight_decay && a.bias_correction == b.bias_correction &&
         a.adapt_all == b.adapt_all && a.trust_min == b.trust_min && a.trust_max == b.trust_max &&
         a.max_grad_norm == b.max_grad_norm;
}

bool SameSchedule(const lr_schedule &a, const lr_schedule &b) {
  return a.kind == b.kind && a.lr == b.lr && a.warmup == b.warmup &&
         a.total_steps == b.total_steps && a.power == b.power && a.end_lr == b.end_lr;
}

TEST(OptimKeys, DefaultsAreDocumented) {
  optim_config c = optim_config_default();
  EXPECT_EQ(c.kind, OPTIM_LAMB);
  EXPECT_EQ(c.beta1, 0.9f);
  EXPECT_EQ(c.beta2, 0.999f);
  EXPECT_EQ(c.eps, 1e-6f);
  EXPECT_EQ(c.weight_decay, 0.01f);
  EXPECT_TRUE(c.bias_correction);
  EXPECT_FALSE(c.adapt_all);
  EXPECT_EQ(c.trust_min, 0.0f);
  EXPECT_EQ(c.trust_max, 0.0f);
  EXPECT_EQ(c.max_grad_norm, 1.0f);
  /* every key has a line in the help text */
  std::string help = optim_keys_help();
  for (const char *k : {"name", "lr", "schedule", "warmup", "decay_power", "end_lr", "total_steps",
                        "beta1", "beta2", "eps", "weight_decay", "bias_correction", "adapt_all",
                        "trust_min", "trust_max", "max_grad_norm"})
    EXPECT_NE(help.find(std::string("optim.") + k + " "), std::string::npos) << k;
}

TEST(OptimKeys, EveryKeySets) {
  optim_config c = optim_config_default();
  lr_schedule s = lr_schedule_default();
  const KeyCase sets[] = {
      {"name", "adamw"},       {"lr", "0.00176"},         {"schedule", "constant"},
      {"warmup", "0.1"},       {"decay_power", "0.5"},    {"end_lr", "1e-6"},
      {"total_steps", "7038"}, {"beta1", "0.85"},         {"beta2", "0.98"},
      {"eps", "1e-8"},         {"weight_decay", "0.125"}, {"bias_correction", "false"},
      {"adapt_all", "true"},   {"trust_min", "0.01"},     {"trust_max", "10"},
      {"max_grad_norm", "-1"},
  };
  for (const KeyCase &k : sets)
    ASSERT_EQ(optim_set_key(&c, &s, k.key, k.value), STATUS_OK)
        << k.key << ": " << status_message();
  EXPECT_EQ(c.kind, OPTIM_ADAMW);
  EXPECT_EQ(s.lr, 0.00176);
  EXPECT_EQ(s.kind, SCHED_CONSTANT);
  EXPECT_EQ(s.warmup, 0.1);
  EXPECT_EQ(s.power, 0.5);
  EXPECT_EQ(s.end_lr, 1e-6);
  EXPECT_EQ(s.total_steps, 7038);
  EXPECT_EQ(c.beta1, 0.85f);
  EXPECT_EQ(c.beta2, 0.98f);
  EXPECT_EQ(c.eps, 1e-8f);
  EXPECT_EQ(c.weight_decay, 0.125f);
  EXPECT_FALSE(c.bias_correction);
  EXPECT_TRUE(c.adapt_all);
  EXPECT_EQ(c.trust_min, 0.01f);
  EXPECT_EQ(c.trust_max, 10.0f);
  EXPECT_EQ(c.max_grad_norm, -1.0f);
  /* and back */
  const KeyCase back[] = {{"name", "lamb"},
                          {"schedule", "poly"},
                          {"bias_correction", "1"},
                          {"adapt_all", "no"},
                          {"max_grad_norm", "0"}};
  for (const KeyCase &k : back)
    ASSERT_EQ(optim_set_key(&c, &s, k.key, k.value), STATUS_OK) << k.key;
  EXPECT_EQ(c.kind, OPTIM_LAMB);
  EXPECT_EQ(s.kind, SCHED_POLY);
  EXPECT_TRUE(c.bias_correction);
  EXPECT_FALSE(c.adapt_all);
  EXPECT_EQ(c.max_grad_norm, 0.0f);
  for (const char *t : {"true", "1", "yes"}) {
    c.adapt_all = false;
    ASSERT_EQ(optim_set_key(&c, &s, "adapt_all", t), STATUS_OK);
    EXPECT_TRUE(c.adapt_all) << t;
  }
  for (const char *f : {"false", "0", "no"}) {
    c.bias_correction = true;
    ASSERT_EQ(optim_set_key(&c, &s, "bias_correction", f), STATUS_OK);
    EXPECT_FALSE(c.bias_correction) << f;
  }
}

TEST(OptimKeys, BadValuesNameTheKeyAndChangeNothing) {
  const KeyCase bad[] = {
      {"name", "sgd"},
      {"name", ""},
      {"name", "LAMB"},
      {"schedule", "cosine"},
      {"schedule", ""},
      {"lr", "abc"},
      {"lr", ""},
      {"lr", "-0.001"},
      {"lr", "1e-3x"},
      {"lr", "nan"},
      {"lr", "inf"},
      {"warmup", "-1"},
      {"warmup", "ten"},
      {"decay_power", "-0.5"},
      {"end_lr", "-1e-6"},
      {"total_steps", "-10"},
      {"total_steps", "many"},
      {"beta1", "0.9.1"},
      {"beta2", ""},
      {"eps", "tiny"},
      {"weight_decay", "1e999"},
      {"bias_correction", "maybe"},
      {"bias_correction", ""},
      {"adapt_all", "TRUE!"},
      {"trust_min", "low"},
      {"trust_max", "-inf"},
      {"max_grad_norm", "one"},
      {"max_grad_norm", "NaN"},
  };
  for (const KeyCase &k : bad) {
    optim_config c = optim_config_default(), c0 = c;
    lr_schedule s = lr_schedule_default(), s0 = s;
    status_set(STATUS_OK, "%s", "");
    EXPECT_EQ(optim_set_key(&c, &s, k.key, k.value), STATUS_CONFIG) << k.key << "=" << k.value;
    std::string msg = status_message();
    EXPECT_NE(msg.find(std::string("optim.") + k.key), std::string::npos) << msg;
    EXPECT_NE(msg.find(std::string("'") + k.value + "'"), std::string::npos) << msg;
    EXPECT_TRUE(SameConfig(c, c0)) << k.key << "=" << k.value;
    EXPECT_TRUE(SameSchedule(s, s0)) << k.key << "=" << k.value;
  }
}

TEST(OptimKeys, UnknownKeyIsNamed) {
  optim_config c = optim_config_default();
  lr_schedule s = lr_schedule_default();
  for (const char *k : {"momentum", "", "optim.lr", "LR", "beta"}) {
    EXPECT_EQ(optim_set_key(&c, &s, k, "0.5"), STATUS_CONFIG) << k;
    EXPECT_NE(std::string(status_message()).find(std::string("'optim.") + k + "'"),
              std::string::npos)
        << status_message();
  }
}

/* ---- Steps on a small table -------------------------------------------------- */

struct Spec {
  const char *name;
  std::vector<int64_t> shape;
  bool flags;      /* decay and adapt */
  double w_scale;  /* 0: all zero */
  double w_offset; /* LayerNorm-like weights sit around 1 */
  double g_scale;
};

/* A parameter table with weights and gradient streams drawn from a fixed seed. */
class Model {
 public:
  explicit Model(const std::vector<Spec> &specs, uint32_t seed = 5) : specs_(specs), rng_(seed) {
    param_table_init(&t_);
    for (const Spec &s : specs)
      EXPECT_GE(param_table_add(&t_, s.name, (int)s.shape.size(), s.shape.data(), s.flags, s.flags),
                0);
    w_.resize(t_.total);
    std::normal_distribution<double> n(0.0, 1.0);
    for (int i = 0; i < t_.n; i++)
      for (size_t j = 0; j < t_.p[i].numel; j++)
        w_[t_.p[i].offset + j] = (float)(specs[i].w_offset + specs[i].w_scale * n(rng_));
  }
  ~Model() { param_table_free(&t_); }
  Model(const Model &) = delete;
  Model &operator=(const Model &) = delete;

  const param_table *table() const { return &t_; }
  std::vector<float> &weights() { return w_; }
  /* A fresh gradient; every tensor at its own scale. */
  std::vector<float> NextGrad() {
    std::vector<float> g(t_.total);
    std::normal_distribution<double> n(0.0, 1.0);
    for (int i = 0; i < t_.n; i++)
      for (size_t j = 0; j < t_.p[i].numel; j++)
        g[t_.p[i].offset + j] = (float)(specs_[i].g_scale * n(rng_));
    return g;
  }

 private:
  std::vector<Spec> specs_;
  std::mt19937_64 rng_;
  param_table t_;
  std::vector<float> w_;
};

std::vector<Spec> SmallSpecs() {
  return {
      {"enc.dense.weight", {48, 40}, true, 0.1, 0.0, 0.02},
      {"enc.dense.bias", {40}, false, 0.1, 0.0, 0.05},
      {"enc.LayerNorm.weight", {40}, false, 0.1, 1.0, 0.03},
      {"big.weight", {400, 300}, true, 0.05, 0.0, 0.004}, /* 120000: 8 chunks */
      {"head.weight", {30, 20}, true, 0.2, 0.0, 0.1},
  };
}

/* The update written out in double from the formulas. */
struct RefOptim {
  optim_config c;
  const param_table *t;
  std::vector<double> m, v;
  int64_t steps = 0;
  double grad_norm = 0, clip = 0;
  bool skipped = false;
  std::vector<double> ratios; /* of the tensors with a trust ratio, in table order */

  RefOptim(const optim_config &cfg, const param_table *tab)
      : c(cfg), t(tab), m(tab->total, 0.0), v(tab->total, 0.0) {}

  void Step(std::vector<double> &w, const std::vector<float> &g, double lr) {
    double ss = 0;
    for (float x : g) ss += (double)x * x;
    grad_norm = std::sqrt(ss);
    ratios.clear();
    skipped = !std::isfinite(grad_norm);
    if (skipped) return;
    clip = c.max_grad_norm > 0 && grad_norm > c.max_grad_norm ? c.max_grad_norm / grad_norm : 1.0;
    steps++;
    const double b1 = c.beta1, b2 = c.beta2, eps = c.eps, wd = c.weight_decay;
    const double bc1 = c.bias_correction ? 1.0 / (1.0 - std::pow(b1, (double)steps)) : 1.0;
    const double bc2 = c.bias_correction ? 1.0 / (1.0 - std::pow(b2, (double)steps)) : 1.0;
    for (int i = 0; i < t->n; i++) {
      const param_info &p = t->p[i];
      std::vector<double> u(p.numel);
      double wn = 0, un = 0;
      for (size_t j = 0; j < p.numel; j++) {
        const size_t k = p.offset + j;
        const double gc = g[k] * clip;
        m[k] = b1 * m[k] + (1 - b1) * gc;
        v[k] = b2 * v[k] + (1 - b2) * gc * gc;
        u[j] = (m[k] * bc1) / (std::sqrt(v[k] * bc2) + eps) + (p.decay ? wd * w[k] : 0.0);
        wn += w[k] * w[k];
        un += u[j] * u[j];
      }
      double r = 1.0;
      if (c.kind == OPTIM_LAMB && (p.adapt || c.adapt_all)) {
        wn = std::sqrt(wn);
        un = std::sqrt(un);
        r = wn > 0 && un > 0 ? wn / un : 1.0;
        if (c.trust_min > 0) r = std::max(r, (double)c.trust_min);
        if (c.trust_max > 0) r = std::min(r, (double)c.trust_max);
        ratios.push_back(r);
      }
      for (size_t j = 0; j < p.numel; j++) w[p.offset + j] -= lr * r * u[j];
    }
  }
};

/* ‖a - b‖ / ‖b‖ over one tensor (b in double). */
double RelL2(const float *a, const double *b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    den += b[i] * b[i];
  }
  return den > 0 ? std::sqrt(num / den) : (num > 0 ? INFINITY : 0.0);
}

/* Runs `steps` updates of the optimizer and of the reference from the same
 * start and compares, after every step, each tensor's total change, the
 * moments and the statistics. */
void CompareWithReference(const optim_config &cfg, Model &model, int steps, float lr,
                          double delta_tol) {
  const param_table *t = model.table();
  std::vector<float> w = model.weights();
  const std::vector<float> w0 = w;
  std::vector<double> rw(w.begin(), w.end());
  optim *o = nullptr;
  ASSERT_EQ(optim_init(&o, &cfg, t), STATUS_OK) << status_message();
  RefOptim ref(cfg, t);
  for (int s = 0; s < steps; s++) {
    SCOPED_TRACE("step " + std::to_string(s + 1));
    std::vector<float> g = model.NextGrad();
    optim_stats st;
    optim_step(o, w.data(), g.data(), lr, &st);
    ref.Step(rw, g, lr);
    ASSERT_FALSE(st.skipped);
    EXPECT_EQ(optim_steps_taken(o), s + 1);
    EXPECT_NEAR(st.grad_norm, ref.grad_norm, 1e-12 * ref.grad_norm);
    EXPECT_NEAR(st.clip, ref.clip, 1e-12);
    EXPECT_EQ(st.lr, lr);
    for (int i = 0; i < t->n; i++) {
      const param_info &p = t->p[i];
      std::vector<float> dc(p.numel);
      std::vector<double> dr(p.numel);
      for (size_t j = 0; j < p.numel; j++) {
        dc[j] = (float)((double)w[p.offset + j] - w0[p.offset + j]);
        dr[j] = rw[p.offset + j] - w0[p.offset + j];
      }
      /* allowed: delta_tol of the change, plus the rounding of the weights
       * to float at every step (half an ulp, at most 2^-24 |w|) */
      double num = 0, den = 0, wn = 0;
      for (size_t j = 0; j < p.numel; j++) {
        num += ((double)dc[j] - dr[j]) * ((double)dc[j] - dr[j]);
        den += dr[j] * dr[j];
        wn += rw[p.offset + j] * rw[p.offset + j];
      }
      const double bound = delta_tol * std::sqrt(den) + (s + 1) * std::ldexp(std::sqrt(wn), -24);
      EXPECT_LE(std::sqrt(num), bound) << p.name << ": relative error " << std::sqrt(num / den);
      EXPECT_LE(RelL2(optim_moment1(o) + p.offset, ref.m.data() + p.offset, p.numel), 1e-6)
          << p.name;
      EXPECT_LE(RelL2(optim_moment2(o) + p.offset, ref.v.data() + p.offset, p.numel), 1e-6)
          << p.name;
    }
    if (cfg.kind == OPTIM_LAMB && !ref.ratios.empty()) {
      std::vector<double> r = ref.ratios;
      std::sort(r.begin(), r.end());
      const size_t n = r.size();
      const double med = n % 2 ? r[n / 2] : 0.5 * (r[n / 2 - 1] + r[n / 2]);
      EXPECT_NEAR(st.trust_min, r.front(), 1e-5 * r.front());
      EXPECT_NEAR(st.trust_max, r.back(), 1e-5 * r.back());
      EXPECT_NEAR(st.trust_median, med, 1e-5 * med);
    } else {
      EXPECT_EQ(st.trust_min, 1.0f);
      EXPECT_EQ(st.trust_median, 1.0f);
      EXPECT_EQ(st.trust_max, 1.0f);
    }
  }
  optim_free(o);
}

optim_config Cfg(optim_kind kind) {
  optim_config c = optim_config_default();
  c.kind = kind;
  return c;
}

TEST(OptimStep, LambMatchesDoubleLoop) {
  Model model(SmallSpecs());
  CompareWithReference(Cfg(OPTIM_LAMB), model, 6, 1e-2f, 1e-5);
}

TEST(OptimStep, LambVariantsMatchDoubleLoop) {
  struct Variant {
    const char *what;
    optim_config c;
  };
  std::vector<Variant> vs;
  optim_config c = Cfg(OPTIM_LAMB);
  c.bias_correction = false;
  vs.push_back({"no bias correction", c});
  c = Cfg(OPTIM_LAMB);
  c.adapt_all = true;
  c.weight_decay = 0.1f;
  vs.push_back({"adapt_all", c});
  c = Cfg(OPTIM_LAMB);
  c.trust_min = 0.15f; /* between the ratios of the matrices (about 0.05 to 0.2) */
  c.trust_max = 0.19f;
  vs.push_back({"trust clamp", c});
  c = Cfg(OPTIM_LAMB);
  c.max_grad_norm = 0;
  c.beta1 = 0.8f;
  c.beta2 = 0.95f;
  c.eps = 1e-4f;
  vs.push_back({"no clipping, other betas and eps", c});
  for (const Variant &v : vs) {
    SCOPED_TRACE(v.what);
    Model model(SmallSpecs());
    CompareWithReference(v.c, model, 4, 1e-2f, 1e-5);
  }
}

TEST(OptimStep, TrustClampBindsAtBothEnds) {
  Model model(SmallSpecs());
  optim_config c = Cfg(OPTIM_LAMB);
  c.adapt_all = true;
  optim *o = nullptr;
  ASSERT_EQ(optim_init(&o, &c, model.table()), STATUS_OK);
  std::vector<float> g = model.NextGrad(), w = model.weights();
  optim_stats st;
  optim_step(o, w.data(), g.data(), 1e-2f, &st);
  optim_free(o);
  ASSERT_LT(st.trust_min * 1.5f, st.trust_median);
  ASSERT_GT(st.trust_max, 1.5f * st.trust_median);
  /* clamp strictly inside the spread: both ends bind and are reported as set */
  c.trust_min = 0.5f * (st.trust_min + st.trust_median);
  c.trust_max = 0.5f * (st.trust_max + st.trust_median);
  ASSERT_EQ(optim_init(&o, &c, model.table()), STATUS_OK);
  w = model.weights();
  optim_step(o, w.data(), g.data(), 1e-2f, &st);
  EXPECT_EQ(st.trust_min, c.trust_min);
  EXPECT_EQ(st.trust_max, c.trust_max);
  optim_free(o);
}

TEST(OptimStep, AdamWMatchesDoubleLoop) {
  optim_config c = Cfg(OPTIM_ADAMW);
  c.weight_decay = 0.05f;
  Model model(SmallSpecs());
  CompareWithReference(c, model, 6, 1e-3f, 1e-5);
  c.max_grad_norm = -1;
  c.bias_correction = false;
  Model model2(SmallSpecs());
  CompareWithReference(c, model2, 3, 1e-3f, 1e-5);
}

TEST(OptimStep, ZeroTensorGetsRatioOne) {
  std::vector<Spec> specs = SmallSpecs();
  specs.push_back({"pooler.weight", {16, 16}, true, 0.0, 0.0, 0.05});
  specs.push_back({"LayerNorm.bias", {16}, false, 0.0, 0.0, 0.05});
  Model model(specs);
  const param_table *t = model.table();
  const int z = param_table_find(t, "pooler.weight"), zb = param_table_find(t, "LayerNorm.bias");
  for (bool all : {false, true}) {
    SCOPED_TRACE(all ? "adapt_all" : "default flags");
    optim_config c = Cfg(OPTIM_LAMB);
    c.adapt_all = all;
    optim *o = nullptr;
    ASSERT_EQ(optim_init(&o, &c, t), STATUS_OK);
    std::vector<float> w = model.weights();
    std::vector<float> g = model.NextGrad();
    optim_stats st;
    const float lr = 1e-2f;
    optim_step(o, w.data(), g.data(), lr, &st);
    /* step 1 with bias correction: u = g/(|g| + eps), the weight term is 0; r = 1 */
    const double clip = st.clip;
    for (int idx : {z, zb}) {
      const param_info &p = t->p[idx];
      for (size_t j = 0; j < p.numel; j++) {
        const double gc = (double)g[p.offset + j] * clip;
        const double want = -lr * gc / (std::fabs(gc) + c.eps);
        ASSERT_NEAR(w[p.offset + j], want, 5e-6 * std::fabs(want)) << p.name << "[" << j << "]";
      }
    }
    /* the other matrices have ratios near 0.1, so the zero tensor's 1 is the
     * largest (with adapt_all the LayerNorm weights have ratios near 1) */
    if (!all) {
      EXPECT_EQ(st.trust_max, 1.0f);
    }
    optim_free(o);
  }
}

TEST(OptimStep, ClipFactorReported) {
  Model model(SmallSpecs());
  std::vector<float> g = model.NextGrad();
  double ss = 0;
  for (float x : g) ss += (double)x * x;
  const double G = std::sqrt(ss);
  ASSERT_GT(G, 0.5);
  struct {
    float mgn;
    double clip;
  } cases[] = {{(float)(G / 4), (float)(G / 4) / G},
               {1e-3f, 1e-3f / G},
               {0.0f, 1.0},
               {-1.0f, 1.0},
               {(float)(2 * G), 1.0}};
  for (auto &k : cases) {
    SCOPED_TRACE(k.mgn);
    optim_config c = Cfg(OPTIM_ADAMW);
    c.max_grad_norm = k.mgn;
    optim *o = nullptr;
    ASSERT_EQ(optim_init(&o, &c, model.table()), STATUS_OK);
    std::vector<float> w = model.weights();
    optim_stats st;
    optim_step(o, w.data(), g.data(), 1e-3f, &st);
    EXPECT_NEAR(st.grad_norm, G, 1e-12 * G);
    EXPECT_NEAR(st.clip, k.clip, 1e-12 * k.clip);
    /* the moments saw the clipped gradient: m = (1 - b1) clip g */
    const float *m = optim_moment1(o);
    for (size_t i = 0; i < g.size(); i += 997) {
      const double want = (1.0 - (double)c.beta1) * k.clip * g[i];
      ASSERT_NEAR(m[i], want, 1e-6 * std::fabs(want) + 1e-30) << i;
    }
    optim_free(o);
  }
}

/* Everything an optimizer holds, for bit-for-bit comparisons. */
struct Snapshot {
  std::vector<float> w, m, v;
  int64_t steps;
  Snapshot(optim *o, const std::vector<float> &weights)
      : w(weights),
        m(optim_moment1(o), optim_moment1(o) + weights.size()),
        v(optim_moment2(o), optim_moment2(o) + weights.size()),
        steps(optim_steps_taken(o)) {}
  bool operator==(const Snapshot &b) const {
    return steps == b.steps && !std::memcmp(w.data(), b.w.data(), w.size() * sizeof(float)) &&
           !std::memcmp(m.data(), b.m.data(), m.size() * sizeof(float)) &&
           !std::memcmp(v.data(), b.v.data(), v.size() * sizeof(float));
  }
};

TEST(OptimStep, NonFiniteGradientSkipsTheStep) {
  for (optim_kind kind : {OPTIM_LAMB, OPTIM_ADAMW}) {
    SCOPED_TRACE(kind == OPTIM_LAMB ? "lamb" : "adamw");
    Model model(SmallSpecs());
    const param_table *t = model.table();
    optim_config c = Cfg(kind);
    optim *o = nullptr;
    ASSERT_EQ(optim_init(&o, &c, t), STATUS_OK);
    std::vector<float> w = model.weights();
    optim_stats st;
    for (int s = 0; s < 2; s++) {
      std::vector<float> g = model.NextGrad();
      optim_step(o, w.data(), g.data(), 1e-2f, &st);
      ASSERT_FALSE(st.skipped);
      EXPECT_EQ(st.skipped_total, 0u);
    }
    const Snapshot before(o, w);
    const size_t big = t->p[param_table_find(t, "big.weight")].offset;
    const float inf = std::numeric_limits<float>::infinity();
    const float nan = std::numeric_limits<float>::quiet_NaN();
    /* inf and NaN, in the first tensor and in a later chunk of the big one */
    const std::pair<size_t, float> bad[] = {
        {3, inf}, {big + kChunk, nan}, {big + 2 * kChunk + 7, -inf}, {0, nan}};
    uint64_t n = 0;
    for (auto [at, val] : bad) {
      std::vector<float> g = model.NextGrad();
      g[at] = val;
      optim_step(o, w.data(), g.data(), 1e-2f, &st);
      EXPECT_TRUE(st.skipped) << at;
      EXPECT_EQ(st.skipped_total, ++n);
      EXPECT_FALSE(std::isfinite(st.grad_norm));
      EXPECT_TRUE(Snapshot(o, w) == before)
          << "state changed by a skipped step, bad value at " << at;
    }
    /* the next finite step is step 3 and counts as taken */
    std::vector<float> g = model.NextGrad();
    optim_step(o, w.data(), g.data(), 1e-2f, &st);
    EXPECT_FALSE(st.skipped);
    EXPECT_EQ(st.skipped_total, n);
    EXPECT_EQ(optim_steps_taken(o), 3);
    optim_free(o);
  }
}

TEST(OptimStep, FirstFiniteStepAfterSkipsIsStepOne) {
  for (optim_kind kind : {OPTIM_LAMB, OPTIM_ADAMW}) {
    SCOPED_TRACE(kind == OPTIM_LAMB ? "lamb" : "adamw");
    Model model(SmallSpecs());
    optim_config c = Cfg(kind);
    std::vector<float> bad = model.NextGrad(), good = model.NextGrad(), good2 = model.NextGrad();
    bad[11] = std::numeric_limits<float>::quiet_NaN();
    optim *a = nullptr, *b = nullptr;
    ASSERT_EQ(optim_init(&a, &c, model.table()), STATUS_OK);
    ASSERT_EQ(optim_init(&b, &c, model.table()), STATUS_OK);
    std::vector<float> wa = model.weights(), wb = model.weights();
    optim_stats st;
    optim_step(a, wa.data(), bad.data(), 1e-2f, &st);
    optim_step(a, wa.data(), bad.data(), 1e-2f, &st);
    ASSERT_TRUE(st.skipped);
    EXPECT_EQ(optim_steps_taken(a), 0);
    for (const std::vector<float> *g : {&good, &good2}) {
      optim_step(a, wa.data(), g->data(), 1e-2f, &st);
      optim_step(b, wb.data(), g->data(), 1e-2f, &st);
      EXPECT_TRUE(Snapshot(a, wa) == Snapshot(b, wb));
    }
    optim_free(a);
    optim_free(b);
  }
}

TEST(OptimStep, HugeFiniteGradientIsClippedNotSkipped) {
  /* Squares overflow float but the norm is summed in double. */
  Model model(SmallSpecs());
  optim_config c = Cfg(OPTIM_LAMB);
  optim *o = nullptr;
  ASSERT_EQ(optim_init(&o, &c, model.table()), STATUS_OK);
  std::vector<float> w = model.weights(), g = model.NextGrad();
  g[5] = 1e30f;
  optim_stats st;
  optim_step(o, w.data(), g.data(), 1e-2f, &st);
  EXPECT_FALSE(st.skipped);
  EXPECT_NEAR(st.grad_norm, 1e30, 1e30 * 1e-6);
  EXPECT_NEAR(st.clip, 1e-30, 1e-36);
  for (float x : w) ASSERT_TRUE(std::isfinite(x));
  optim_free(o);
}

TEST(OptimStep, TrustStatsOddAndEvenCounts) {
  /* Four adapted tensors (even: the median is the mean of the middle two),
   * then adapt_all over all seven (odd). */
  Model model({{"a.weight", {10, 10}, true, 0.02, 0, 0.1},
               {"b.weight", {10, 10}, true, 0.1, 0, 0.1},
               {"c.weight", {10, 10}, true, 0.4, 0, 0.1},
               {"d.weight", {10, 10}, true, 1.6, 0, 0.1},
               {"a.bias", {10}, false, 0.05, 0, 0.1},
               {"LayerNorm.weight", {10}, false, 0.1, 1, 0.1},
               {"LayerNorm.bias", {10}, false, 0.3, 0, 0.1}});
  for (bool all : {false, true}) {
    SCOPED_TRACE(all);
    optim_config c = Cfg(OPTIM_LAMB);
    c.adapt_all = all;
    CompareWithReference(c, model, 3, 1e-2f, 1e-5);
  }
}

TEST(OptimStep, AdamWReportsNoRatios) {
  Model model(SmallSpecs());
  optim_config c = Cfg(OPTIM_ADAMW);
  c.adapt_all = true; /* has no effect on AdamW */
  CompareWithReference(c, model, 2, 1e-3f, 1e-5);
}

/* ---- Norms and threads ------------------------------------------------------- */

TEST(OptimNorm, MultiChunkTensorsSumEveryChunk) {
  /* Tensors of CHUNK - 1, CHUNK, CHUNK + 1 and 5 CHUNK + 3 floats. */
  const int64_t sizes[] = {(int64_t)kChunk - 1, (int64_t)kChunk, (int64_t)kChunk + 1,
                           5 * (int64_t)kChunk + 3};
  std::vector<Spec> specs;
  const char *names[] = {"t0.weight", "t1.weight", "t2.weight", "t3.weight"};
  for (int i = 0; i < 4; i++) specs.push_back({names[i], {sizes[i]}, true, 0.1, 0, 0.01 * (i + 1)});
  Model model(specs);
  const param_table *t = model.table();
  optim_config c = Cfg(OPTIM_LAMB);
  optim *o = nullptr;
  ASSERT_EQ(optim_init(&o, &c, t), STATUS_OK);
  std::vector<float> g = model.NextGrad();
  long double ss = 0;
  for (float x : g) ss += (long double)x * x;
  EXPECT_NEAR(optim_grad_norm(o, g.data()), (double)std::sqrt(ss), 1e-13 * (double)std::sqrt(ss));
  /* a value in the last float of each tensor, and in the first float of a
   * later chunk, reaches the norm */
  for (int i = 0; i < 4; i++) {
    for (size_t at : {t->p[i].offset + t->p[i].numel - 1, t->p[i].offset + kChunk}) {
      if (at >= t->p[i].offset + t->p[i].numel) continue;
      std::vector<float> h(t->total, 0.0f);
      h[at] = 3.0f;
      EXPECT_EQ(optim_grad_norm(o, h.data()), 3.0) << names[i] << " at " << at;
    }
  }
  optim_free(o);
  /* and per-tensor norms over several chunks give the right trust ratios */
  CompareWithReference(c, model, 3, 1e-2f, 1e-5);
}

std::vector<Snapshot> RunWithThreads(int threads, const optim_config &c,
                                     std::vector<double> *norms) {
  const int saved = omp_get_max_threads();
  omp_set_num_threads(threads);
  Model model(SmallSpecs(), 11);
  optim *o = nullptr;
  EXPECT_EQ(optim_init(&o, &c, model.table()), STATUS_OK);
  std::vector<float> w = model.weights();
  std::vector<Snapshot> out;
  /* Blocks of the gradient scaled by powers of two from 2^-8 to 2^8, so that
   * summing the chunks in another order would round differently. */
  auto draw = [&model] {
    std::vector<float> g = model.NextGrad();
    for (size_t i = 0; i < g.size(); i++) g[i] = std::ldexp(g[i], (int)((i / 4096) * 5 % 17) - 8);
    return g;
  };
  for (int s = 0; s < 20; s++) {
    std::vector<float> g = draw();
    norms->push_back(optim_grad_norm(o, g.data()));
  }
  for (int s = 0; s < 3; s++) {
    std::vector<float> g = draw();
    optim_stats st;
    optim_step(o, w.data(), g.data(), 1e-2f, &st);
    norms->push_back(st.grad_norm);
    norms->push_back(st.trust_min);
    norms->push_back(st.trust_median);
    norms->push_back(st.trust_max);
    out.emplace_back(o, w);
  }
  optim_free(o);
  omp_set_num_threads(saved);
  return out;
}

TEST(OptimThreads, BitwiseIdenticalForAnyThreadCount) {
  for (optim_kind kind : {OPTIM_LAMB, OPTIM_ADAMW}) {
    SCOPED_TRACE(kind == OPTIM_LAMB ? "lamb" : "adamw");
    optim_config c = Cfg(kind);
    c.adapt_all = true;
    std::vector<double> n1;
    const std::vector<Snapshot> one = RunWithThreads(1, c, &n1);
    for (int threads : {2, 3, 4}) {
      SCOPED_TRACE(threads);
      std::vector<double> nk;
      const std::vector<Snapshot> k = RunWithThreads(threads, c, &nk);
      ASSERT_EQ(k.size(), one.size());
      for (size_t s = 0; s < k.size(); s++) EXPECT_TRUE(k[s] == one[s]) << "after step " << s + 1;
      ASSERT_EQ(nk.size(), n1.size());
      EXPECT_EQ(std::memcmp(nk.data(), n1.data(), n1.size() * sizeof(double)), 0);
    }
  }
}

/* ---- Lifetime and validation -------------------------------------------------- */

TEST(OptimInit, RejectsBadHyperparameters) {
  Model model(SmallSpecs());
  struct {
    const char *what;
    void (*set)(optim_config *);
  } bad[] = {
      {"beta1 = 1", [](optim_config *c) { c->beta1 = 1.0f; }},
      {"beta1 < 0", [](optim_config *c) { c->beta1 = -0.1f; }},
      {"beta2 = 1", [](optim_config *c) { c->beta2 = 1.0f; }},
      {"eps = 0", [](optim_config *c) { c->eps = 0.0f; }},
      {"eps NaN", [](optim_config *c) { c->eps = NAN; }},
      {"weight_decay < 0", [](optim_config *c) { c->weight_decay = -0.01f; }},
  };
  for (auto &b : bad) {
    optim_config c = optim_config_default();
    b.set(&c);
    optim *o = reinterpret_cast<optim *>(0x1);
    EXPECT_EQ(optim_init(&o, &c, model.table()), STATUS_CONFIG) << b.what;
    EXPECT_EQ(o, nullptr) << b.what;
    EXPECT_NE(std::string(status_message()).find("optimizer"), std::string::npos);
  }
  optim_free(nullptr);
}

TEST(OptimInit, MomentsStartAtZero) {
  Model model(SmallSpecs());
  optim_config c = optim_config_default();
  optim *o = nullptr;
  ASSERT_EQ(optim_init(&o, &c, model.table()), STATUS_OK);
  EXPECT_EQ(optim_steps_taken(o), 0);
  const float *m = optim_moment1(o), *v = optim_moment2(o);
  for (size_t i = 0; i < model.table()->total; i++) {
    ASSERT_EQ(m[i], 0.0f);
    ASSERT_EQ(v[i], 0.0f);
  }
  optim_free(o);
}

}  // namespace
