/* test_kernels.cc: checks every layer kernel's forward against a double
 * precision implementation written here, and its backward against central
 * finite differences of L = sum(R * output) for a fixed random R. */
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "kernels.h"

namespace {

/* ---- Helpers ---------------------------------------------------------------- */

std::vector<float> RandVec(std::mt19937 &g, size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto &x : v) x = d(g);
  return v;
}

double Dot(const std::vector<float> &r, const float *y) {
  double s = 0;
  for (size_t i = 0; i < r.size(); i++) s += (double)r[i] * (double)y[i];
  return s;
}

/* Central differences of f with respect to every element of v. The step
 * actually taken is measured in float so the quotient divides by it. */
std::vector<double> NumGrad(std::vector<float> &v, const std::function<double()> &f, float h) {
  std::vector<double> g(v.size());
  for (size_t i = 0; i < v.size(); i++) {
    float x0 = v[i];
    v[i] = x0 + h;
    float xp = v[i];
    double fp = f();
    v[i] = x0 - h;
    float xm = v[i];
    double fm = f();
    v[i] = x0;
    g[i] = (fp - fm) / ((double)xp - (double)xm);
  }
  return g;
}

/* fp32 central differences with h ~ 1e-2 on O(1) inputs carry a truncation
 * error of about h^2 f'''/6 and rounding noise of about 1e-6 / h, both far
 * inside 2e-3 of the largest gradient; a wrong backward is off by O(1). */
testing::AssertionResult GradClose(const std::vector<float> &a, const std::vector<double> &num,
                                   double rel = 2e-3, double abs = 1e-4) {
  if (a.size() != num.size()) return testing::AssertionFailure() << "size mismatch";
  double mx = 0;
  for (double v : num) mx = std::max(mx, std::fabs(v));
  double tol = rel * mx + abs;
  for (size_t i = 0; i < a.size(); i++)
    if (!(std::fabs((double)a[i] - num[i]) <= tol))
      return testing::AssertionFailure() << "element " << i << ": analytic " << a[i] << " numeric "
                                         << num[i] << " (tolerance " << tol << ")";
  return testing::AssertionSuccess();
}

/* Checks a gradient and that the check has teeth: the gradient must be
 * large enough, and a 1% error on its largest element must be caught. */
void ExpectGrad(const std::string &what, const std::vector<float> &a,
                const std::vector<double> &num) {
  size_t arg = 0;
  for (size_t i = 0; i < num.size(); i++)
    if (std::fabs(num[i]) > std::fabs(num[arg])) arg = i;
  ASSERT_FALSE(num.empty()) << what;
  EXPECT_GT(std::fabs(num[arg]), 0.05) << what << ": gradient too small to test";
  EXPECT_TRUE(GradClose(a, num)) << what;
  std::vector<float> bad = a;
  bad[arg] *= 1.01f;
  EXPECT_FALSE(GradClose(bad, num)) << what << ": a 1% error on the largest element passes";
  bad = a;
  bad[arg] = -bad[arg];
  EXPECT_FALSE(GradClose(bad, num)) << what << ": a sign error passes";
}

std::vector<float> Minus(const std::vector<float> &a, const std::vector<float> &b) {
  std::vector<float> d(a.size());
  for (size_t i = 0; i < a.size(); i++) d[i] = a[i] - b[i];
  return d;
}

rng_key Key(uint64_t seed, uint32_t step, uint32_t stream) {
  rng_key k;
  k.seed = seed;
  k.step = step;
  k.sample = 0;
  k.stream = stream;
  return k;
}

dropout_desc Drop(float p, uint32_t step, uint32_t sample_base, int T) {
  dropout_desc d;
  d.p = p;
  d.key = Key(0x5eed, step, rng_stream(1, 2));
  d.sample_base = sample_base;
  d.T = T;
  return d;
}

/* The multiplier (0 or 1/(1-p)) of element (n, j) of an [N,C] array as
 * kernels.h documents it: row n is token n % T of sequence sample_base +
 * n / T, element j is number (n % T)*C + j of that sequence's stream, and
 * an element is kept when its uniform is >= p. */
std::vector<float> DropMultipliers(const dropout_desc &d, int N, int C) {
  std::vector<float> m((size_t)N * C), u(C);
  float scale = 1.0f / (1.0f - d.p);
  for (int n = 0; n < N; n++) {
    rng_key k = d.key;
    k.sample = d.sample_base + (uint32_t)(n / d.T);
    rng_uniform(k, (uint32_t)((n % d.T) * C), (size_t)C, u.data());
    for (int j = 0; j < C; j++) m[(size_t)n * C + j] = u[j] >= d.p ? scale : 0.0f;
  }
  return m;
}

/* ---- Linear ------------------------------------------------------------------- */

const int kN = 5, kIn = 6, kOut = 9;

TEST(Linear, ForwardMatchesDouble) {
  std::mt19937 g(1);
  auto x = RandVec(g, kN * kIn, -1, 1), W = RandVec(g, kOut * kIn, -1, 1);
  std::vector<float> y(kN * kOut);
  k_linear_fwd(y.data(), x.data(), W.data(), kN, kIn, kOut);
  for (int n = 0; n < kN; n++)
    for (int o = 0; o < kOut; o++) {
      double s = 0;
      for (int i = 0; i < kIn; i++) s += (double)x[n * kIn + i] * W[o * kIn + i];
      EXPECT_NEAR(y[n * kOut + o], s, 1e-5) << n << "," << o;
    }
}

TEST(Linear, BackwardMatchesFiniteDifferences) {
  std::mt19937 g(2);
  auto x = RandVec(g, kN * kIn, -1, 1), W = RandVec(g, kOut * kIn, -1, 1);
  auto R = RandVec(g, kN * kOut, -1, 1);
  std::vector<float> ones(kN, 1.0f), y(kN * kOut);
  auto L = [&] {
    k_linear_fwd(y.data(), x.data(), W.data(), kN, kIn, kOut);
    return Dot(R, y.data());
  };

  /* dW and db accumulate onto what is there; dx overwrites (NaN must not
   * leak through a zero beta). */
  auto dW0 = RandVec(g, kOut * kIn, -1, 1), db0 = RandVec(g, kOut, -1, 1);
  std::vector<float> dW = dW0, db = db0, dx(kN * kIn, NAN);
  k_linear_bwd(dx.data(), false, dW.data(), db.data(), R.data(), x.data(), W.data(), ones.data(),
               kN, kIn, kOut);
  auto num_x = NumGrad(x, L, 1e-2f), num_W = NumGrad(W, L, 1e-2f);
  ExpectGrad("dx", dx, num_x);
  ExpectGrad("dW (accumulated)", Minus(dW, dW0), num_W);
  std::vector<double> colsum(kOut, 0.0);
  for (int n = 0; n < kN; n++)
    for (int o = 0; o < kOut; o++) colsum[o] += R[n * kOut + o];
  ExpectGrad("db (accumulated)", Minus(db, db0), colsum);

  /* With dx_acc the product is added to dx. */
  auto dx0 = RandVec(g, kN * kIn, -1, 1);
  std::vector<float> dxa = dx0;
  k_linear_bwd(dxa.data(), true, dW.data(), nullptr, R.data(), x.data(), W.data(), ones.data(), kN,
               kIn, kOut);
  ExpectGrad("dx (accumulated)", Minus(dxa, dx0), num_x);
  /* The second call added dW once more; db was left alone (NULL). */
  std::vector<float> twice = Minus(dW, dW0);
  for (auto &v : twice) v *= 0.5f;
  ExpectGrad("dW after two calls / 2", twice, num_W);

  /* dx may be NULL. */
  std::vector<float> dW2(kOut * kIn, 0.0f);
  k_linear_bwd(nullptr, false, dW2.data(), nullptr, R.data(), x.data(), W.data(), ones.data(), kN,
               kIn, kOut);
  ExpectGrad("dW without dx", dW2, num_W);
}

/* ---- Activations -------------------------------------------------------------- */

double GeluErf(double x) { return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))); }
double GeluErfGrad(double x, double *scale) {
  double cdf = 0.5 * (1.0 + std::erf(x / std::sqrt(2.0)));
  double t = x * std::exp(-0.5 * x * x) / std::sqrt(2.0 * M_PI);
  *scale = std::fabs(cdf) + std::fabs(t); /* the terms' size, for cancellation */
  return cdf + t;
}
double GeluTanh(double x) {
  double u = std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x);
  return 0.5 * x * (1.0 + std::tanh(u));
}
double GeluTanhGrad(double x, double *scale) {
  double u = std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x), th = std::tanh(u);
  double du = std::sqrt(2.0 / M_PI) * (1.0 + 3 * 0.044715 * x * x);
  double a = 0.5 * (1.0 + th), b = 0.5 * x * (1.0 - th * th) * du;
  *scale = std::fabs(a) + std::fabs(b);
  return a + b;
}

/* Worst error of k_act against f over x in [-10, 10] step 0.01, in units of
 * the tolerance rel * |f| + abs; <= 1 passes. */
double WorstActError(act_kind a, double (*f)(double), double rel, double abs, double *at) {
  double worst = 0;
  for (int i = 0; i <= 2000; i++) {
    float x = (float)(-10.0 + 0.01 * i);
    double ref = f(x), err = std::fabs((double)k_act(a, x) - ref) / (rel * std::fabs(ref) + abs);
    if (err > worst) {
      worst = err;
      *at = x;
    }
  }
  return worst;
}

TEST(Activation, GeluMatchesErfFormula) {
  /* Tolerance: 2e-6 relative, or 1e-7 absolute where gelu is near zero
   * (x -> 0, and x < -5 where gelu < 1.5e-6). */
  double at = 0;
  EXPECT_LE(WorstActError(ACT_GELU, GeluErf, 2e-6, 1e-7, &at), 1.0) << "at x = " << at;
  /* The check can tell the erf form from the tanh approximation. */
  EXPECT_GT(WorstActError(ACT_GELU_TANH, GeluErf, 2e-6, 1e-7, &at), 100.0);
}

TEST(Activation, GeluTanhMatchesTanhFormula) {
  /* For x < -3 the result is 0.5 x (1 + tanh(u)) with tanh(u) within an ulp
   * of -1, so fp32 cancellation leaves an absolute error of about
   * |x| * 6e-8 even with a correctly rounded tanh: hence 3e-7 absolute. */
  double at = 0;
  EXPECT_LE(WorstActError(ACT_GELU_TANH, GeluTanh, 2e-6, 3e-7, &at), 1.0) << "at x = " << at;
  EXPECT_GT(WorstActError(ACT_GELU, GeluTanh, 2e-6, 3e-7, &at), 100.0);
}

TEST(Activation, ReluIsExact) {
  for (float x : {-3.5f, -1e-30f, 0.0f, 1e-30f, 2.25f}) {
    EXPECT_EQ(k_act(ACT_RELU, x), x > 0 ? x : 0.0f) << x;
    EXPECT_EQ(k_act_grad(ACT_RELU, x), x > 0 ? 1.0f : 0.0f) << x;
  }
}

/* Worst error of k_act_grad(a) against the derivative grad over x in
 * [-10, 10] step 0.01, in units of rel * (|term 1| + |term 2|) + abs. */
double WorstGradError(act_kind a, double (*grad)(double, double *), double rel, double abs,
                      double *at) {
  double worst = 0;
  for (int i = 0; i <= 2000; i++) {
    float x = (float)(-10.0 + 0.01 * i);
    double scale = 0, ref = grad(x, &scale);
    double err = std::fabs((double)k_act_grad(a, x) - ref) / (rel * scale + abs);
    if (err > worst) {
      worst = err;
      *at = x;
    }
  }
  return worst;
}

TEST(Activation, GradMatchesAnalyticDerivative) {
  /* Both derivatives are sums of two terms that cancel (gelu's near
   * x = -0.75), so the error is measured relative to the terms' size. The
   * tanh form's second term has the factor 1 - tanh(u)^2, which for
   * |x| > 4 is computed from a tanh within an ulp of +-1: its absolute
   * error of about 6e-8 is multiplied by 0.5 |x| du/dx (about 9 at |x| = 5),
   * hence 3e-6 absolute there; such gradients are far below anything
   * training resolves. */
  double at = 0;
  EXPECT_LE(WorstGradError(ACT_GELU, GeluErfGrad, 5e-6, 3e-7, &at), 1.0) << "gelu at x = " << at;
  EXPECT_LE(WorstGradError(ACT_GELU_TANH, GeluTanhGrad, 5e-6, 3e-6, &at), 1.0)
      << "gelu_tanh at x = " << at;
  /* Each check tells the two derivatives apart. */
  EXPECT_GT(WorstGradError(ACT_GELU, GeluTanhGrad, 5e-6, 3e-6, &at), 100.0);
  EXPECT_GT(WorstGradError(ACT_GELU_TANH, GeluErfGrad, 5e-6, 3e-7, &at), 100.0);
}

/* ---- Bias + activation ---------------------------------------------------------- */

TEST(BiasAct, BackwardMatchesFiniteDifferences) {
  const int N = 5, C = 13;
  const float h = 1e-2f;
  for (act_kind a : {ACT_GELU, ACT_GELU_TANH, ACT_RELU}) {
    SCOPED_TRACE("act " + std::to_string((int)a));
    std::mt19937 g(3 + (int)a);
    auto x = RandVec(g, N * C, -3, 3), b = RandVec(g, C, -1, 1), R = RandVec(g, N * C, -1, 1);
    /* Keep x + b away from ReLU's kink by more than the step. */
    for (int n = 0; n < N; n++)
      for (int j = 0; j < C; j++) {
        float &v = x[n * C + j];
        if (std::fabs(v + b[j]) < 0.1f) v += v + b[j] >= 0 ? 0.2f : -0.2f;
      }
    std::vector<float> pre(N * C), act(N * C);
    auto L = [&] {
      pre = x;
      k_bias_act_fwd(pre.data(), act.data(), b.data(), N, C, a);
      return Dot(R, act.data());
    };
    L();
    for (int i = 0; i < N * C; i++) {
      ASSERT_EQ(pre[i], x[i] + b[i % C]) << i;
      ASSERT_EQ(act[i], k_act(a, pre[i])) << i;
    }
    std::vector<float> dpre(N * C);
    k_act_bwd(dpre.data(), R.data(), pre.data(), N, C, a);
    /* In place gives the same (pre must be unperturbed: before any FD). */
    std::vector<float> inplace = R;
    k_act_bwd(inplace.data(), inplace.data(), pre.data(), N, C, a);
    EXPECT_EQ(inplace, dpre);
    ExpectGrad("dx", dpre, NumGrad(x, L, h));
    /* The bias gradient is the column sum of dpre (the caller forms it). */
    std::vector<float> db(C, 0.0f);
    for (int i = 0; i < N * C; i++) db[i % C] += dpre[i];
    ExpectGrad("db", db, NumGrad(b, L, h));
  }
}

/* ---- Residual + LayerNorm -------------------------------------------------------- */

struct LnCase {
  const char *name;
  bool bias, dropout, resid;
};

/* Names the case in test listings (instead of its bytes). */
void PrintTo(const LnCase &c, std::ostream *os) { *os << c.name; }

class AddLn : public testing::TestWithParam<LnCase> {
 protected:
  static constexpr int N = 6, C = 13, T = 3;
  static constexpr float eps = 1e-12f;

  void SetUp() override {
    std::mt19937 g(4);
    x = RandVec(g, N * C, -2, 2);
    bias = RandVec(g, C, -1, 1);
    resid = RandVec(g, N * C, -2, 2);
    gamma = RandVec(g, C, 0.5f, 1.5f);
    beta = RandVec(g, C, -1, 1);
    R = RandVec(g, N * C, -1, 1);
    drop = Drop(0.3f, 7, 4, T);
  }

  bool XOnly() const { return !GetParam().bias && !GetParam().dropout && !GetParam().resid; }
  const dropout_desc *DropPtr() const { return GetParam().dropout ? &drop : nullptr; }

  void Forward() {
    s.assign(N * C, 0.0f);
    y.assign(N * C, 0.0f);
    mean.assign(N, 0.0f);
    rstd.assign(N, 0.0f);
    k_add_ln_fwd(XOnly() ? nullptr : s.data(), y.data(), mean.data(), rstd.data(), x.data(),
                 GetParam().bias ? bias.data() : nullptr, DropPtr(),
                 GetParam().resid ? resid.data() : nullptr, gamma.data(), beta.data(), N, C, eps);
  }

  double Objective() {
    Forward();
    return Dot(R, y.data());
  }

  std::vector<float> x, bias, resid, gamma, beta, R, s, y, mean, rstd;
  dropout_desc drop;
};

TEST_P(AddLn, ForwardMatchesDoubleLayerNorm) {
  Forward();
  std::vector<float> m =
      GetParam().dropout ? DropMultipliers(drop, N, C) : std::vector<float>(N * C, 1.0f);
  int dropped = 0;
  for (int n = 0; n < N; n++) {
    std::vector<double> sd(C);
    double mu = 0, var = 0;
    for (int j = 0; j < C; j++) {
      int i = n * C + j;
      double v = (double)x[i] + (GetParam().bias ? bias[j] : 0.0);
      v = v * m[i] + (GetParam().resid ? resid[i] : 0.0);
      dropped += m[i] == 0.0f;
      sd[j] = v;
      mu += v / C;
      if (!XOnly()) {
        EXPECT_NEAR(s[i], v, 1e-5 * (1 + std::fabs(v))) << "s " << i;
      }
    }
    for (int j = 0; j < C; j++) var += (sd[j] - mu) * (sd[j] - mu) / C;
    double rs = 1.0 / std::sqrt(var + eps);
    EXPECT_NEAR(mean[n], mu, 1e-5) << n;
    EXPECT_NEAR(rstd[n], rs, 1e-5 * rs) << n;
    for (int j = 0; j < C; j++)
      EXPECT_NEAR(y[n * C + j], (sd[j] - mu) * rs * gamma[j] + beta[j], 2e-5) << n << "," << j;
  }
  if (GetParam().dropout) {
    /* p = 0.3 over 78 elements: both outcomes occur, so the test covers them. */
    EXPECT_GT(dropped, 5);
    EXPECT_LT(dropped, N * C - 5);
  }
}

TEST_P(AddLn, BackwardMatchesFiniteDifferences) {
  const float h = 1e-2f;
  const int nt = omp_get_max_threads();
  Forward();
  std::mt19937 g(5);
  auto dgamma0 = RandVec(g, C, -1, 1), dbeta0 = RandVec(g, C, -1, 1), dbias0 = RandVec(g, C, -1, 1);
  std::vector<float> dgamma = dgamma0, dbeta = dbeta0, dbias = dbias0;
  std::vector<float> dx(N * C, NAN), dresid(N * C, NAN), scratch((size_t)nt * 3 * C, NAN);
  k_add_ln_bwd(dx.data(), GetParam().resid ? dresid.data() : nullptr,
               GetParam().bias ? dbias.data() : nullptr, dgamma.data(), dbeta.data(), R.data(),
               XOnly() ? x.data() : s.data(), mean.data(), rstd.data(), gamma.data(), DropPtr(), N,
               C, scratch.data(), nt);
  auto L = [&] { return Objective(); };
  ExpectGrad("dx", dx, NumGrad(x, L, h));
  ExpectGrad("dgamma", Minus(dgamma, dgamma0), NumGrad(gamma, L, h));
  ExpectGrad("dbeta", Minus(dbeta, dbeta0), NumGrad(beta, L, h));
  if (GetParam().bias) ExpectGrad("dbias", Minus(dbias, dbias0), NumGrad(bias, L, h));
  if (GetParam().resid) ExpectGrad("dresid", dresid, NumGrad(resid, L, h));
  if (GetParam().dropout) {
    std::vector<float> m = DropMultipliers(drop, N, C);
    for (int i = 0; i < N * C; i++)
      if (m[i] == 0.0f) {
        EXPECT_EQ(dx[i], 0.0f) << "dropped element " << i;
      }
  }
}

TEST_P(AddLn, BackwardIndependentOfThreadCount) {
  /* Scratch is per thread: 1 thread and more threads than cores must agree
   * up to the order of the per-thread sums. */
  Forward();
  const float *sp = XOnly() ? x.data() : s.data();
  std::vector<float> ref_g, ref_b, ref_x;
  for (int nt : {1, 3}) {
    std::vector<float> dx(N * C), dg(C, 0.0f), dbt(C, 0.0f), dbs(C, 0.0f),
        scratch((size_t)nt * 3 * C);
    k_add_ln_bwd(dx.data(), nullptr, GetParam().bias ? dbs.data() : nullptr, dg.data(), dbt.data(),
                 R.data(), sp, mean.data(), rstd.data(), gamma.data(), DropPtr(), N, C,
                 scratch.data(), nt);
    if (nt == 1) {
      ref_g = dg;
      ref_b = dbt;
      ref_x = dx;
      continue;
    }
    EXPECT_EQ(dx, ref_x);
    for (int j = 0; j < C; j++) {
      EXPECT_NEAR(dg[j], ref_g[j], 1e-5) << j;
      EXPECT_NEAR(dbt[j], ref_b[j], 1e-5) << j;
    }
  }
}

TEST_P(AddLn, BackwardWithoutDx) {
  /* dx may be NULL: the parameter gradients (and dresid) still come out. */
  Forward();
  const int nt = omp_get_max_threads();
  std::vector<float> dresid(N * C), dg(C, 0.0f), dbt(C, 0.0f), scratch((size_t)nt * 3 * C);
  k_add_ln_bwd(nullptr, GetParam().resid ? dresid.data() : nullptr, nullptr, dg.data(), dbt.data(),
               R.data(), XOnly() ? x.data() : s.data(), mean.data(), rstd.data(), gamma.data(),
               DropPtr(), N, C, scratch.data(), nt);
  auto L = [&] { return Objective(); };
  ExpectGrad("dgamma", dg, NumGrad(gamma, L, 1e-2f));
  ExpectGrad("dbeta", dbt, NumGrad(beta, L, 1e-2f));
  if (GetParam().resid) ExpectGrad("dresid", dresid, NumGrad(resid, L, 1e-2f));
}

INSTANTIATE_TEST_SUITE_P(Configs, AddLn,
                         testing::Values(LnCase{"x_only", false, false, false},
                                         LnCase{"bias_resid", true, false, true},
                                         LnCase{"bias_dropout_resid", true, true, true}),
                         [](const testing::TestParamInfo<LnCase> &i) { return i.param.name; });

/* ---- Dropout --------------------------------------------------------------------- */

TEST(Dropout, KeepsAboutOneMinusPScaledAndFollowsTheKey) {
  const int N = 200, C = 256, T = 50;
  const float p = 0.3f;
  std::mt19937 g(6);
  auto x0 = RandVec(g, (size_t)N * C, 0.5f, 2.0f); /* never zero */
  dropout_desc d = Drop(p, 11, 10, T);
  std::vector<float> x = x0;
  k_dropout(x.data(), &d, N, C);
  std::vector<float> m = DropMultipliers(d, N, C);
  size_t kept = 0;
  for (size_t i = 0; i < x.size(); i++) {
    if (x[i] != 0.0f) {
      kept++;
      ASSERT_FLOAT_EQ(x[i], x0[i] * (1.0f / (1.0f - p))) << i;
    }
    ASSERT_EQ(x[i] != 0.0f, m[i] != 0.0f) << "element " << i << " against the documented layout";
  }
  /* Kept fraction: standard error sqrt(0.21 / 51200) = 0.002; 5 sigma. */
  EXPECT_NEAR((double)kept / x.size(), 1.0 - p, 0.01);

  std::vector<float> again = x0;
  k_dropout(again.data(), &d, N, C);
  EXPECT_EQ(again, x) << "same key, different mask";

  /* Another step (or another sample base) gives another mask: two
   * independent masks disagree on 2p(1-p) = 42% of elements. */
  for (int which = 0; which < 2; which++) {
    dropout_desc e = d;
    if (which == 0)
      e.key.step++;
    else
      e.sample_base++;
    std::vector<float> y = x0;
    k_dropout(y.data(), &e, N, C);
    size_t differ = 0;
    for (size_t i = 0; i < y.size(); i++) differ += (y[i] == 0.0f) != (x[i] == 0.0f);
    EXPECT_NEAR((double)differ / y.size(), 2 * p * (1 - p), 0.02) << which;
  }

  /* p = 0 and no descriptor leave x alone. */
  std::vector<float> y = x0;
  dropout_desc off = d;
  off.p = 0.0f;
  k_dropout(y.data(), &off, N, C);
  k_dropout(y.data(), nullptr, N, C);
  EXPECT_EQ(y, x0);
}

TEST(Dropout, UniformEqualToPIsKept) {
  /* The mask keeps an element when its uniform is >= p; pinned here with a
   * p equal to one element's uniform (a 24-bit value, exact in float), as
   * the odds of meeting the boundary by chance are 2^-24 per element. */
  const int N = 2, C = 8, T = 2;
  dropout_desc d = Drop(0.5f, 2, 0, T);
  std::vector<float> u(C);
  rng_key k = d.key;
  k.sample = 0;
  rng_uniform(k, 0, C, u.data());
  int j = (int)(std::max_element(u.begin(), u.end()) - u.begin()); /* > 0 surely */
  d.p = u[j];
  std::vector<float> x((size_t)N * C, 1.0f);
  k_dropout(x.data(), &d, N, C);
  EXPECT_NE(x[j], 0.0f) << "u == p must be kept";
  for (int i = 0; i < C; i++) {
    if (i != j) {
      EXPECT_EQ(x[i] == 0.0f, u[i] < d.p) << i;
    }
  }
}

/* ---- Attention -------------------------------------------------------------------- */

class Attention : public testing::Test {
 protected:
  static constexpr int B = 2, T = 5, NH = 2, D = 3, H = NH * D, H3 = 3 * H;

  void SetUp() override {
    std::mt19937 g(7);
    qkv = RandVec(g, B * T * H3, -1.5f, 1.5f);
    R = RandVec(g, B * T * H, -1, 1);
    mask.assign(B * T, 1);
    mask[1 * T + T - 1] = mask[1 * T + T - 2] = 0; /* sequence 1: last two are padding */
    nt = omp_get_max_threads();
    ctx.assign(B * T * H, 0.0f);
    probs.assign(B * NH * T * T, 0.0f);
  }

  void Forward(const dropout_desc *d) {
    std::vector<float> scratch((size_t)nt * T * T);
    k_attention_fwd(ctx.data(), probs.data(), qkv.data(), mask.data(), B, T, NH, D, d,
                    scratch.data(), nt);
  }

  std::vector<float> Backward(const dropout_desc *d) {
    std::vector<float> dqkv(B * T * H3, NAN), scratch((size_t)nt * 2 * T * T);
    k_attention_bwd(dqkv.data(), R.data(), probs.data(), qkv.data(), mask.data(), B, T, NH, D, d,
                    scratch.data(), nt);
    return dqkv;
  }

  /* softmax(q k^T / sqrt(D) + (1 - mask) * -10000) v in double. */
  void Naive(std::vector<double> *c, std::vector<double> *P) const {
    c->assign(B * T * H, 0.0);
    P->assign(B * NH * T * T, 0.0);
    for (int b = 0; b < B; b++)
      for (int h = 0; h < NH; h++)
        for (int i = 0; i < T; i++) {
          double sc[T], mx = -1e300, sum = 0;
          for (int j = 0; j < T; j++) {
            double dot = 0;
            for (int e = 0; e < D; e++)
              dot +=
                  (double)qkv[(b * T + i) * H3 + h * D + e] * qkv[(b * T + j) * H3 + H + h * D + e];
            sc[j] = dot / std::sqrt((double)D) + (mask[b * T + j] ? 0.0 : -10000.0);
            mx = std::max(mx, sc[j]);
          }
          for (int j = 0; j < T; j++) sum += sc[j] = std::exp(sc[j] - mx);
          for (int j = 0; j < T; j++) {
            double pij = sc[j] / sum;
            (*P)[((b * NH + h) * T + i) * T + j] = pij;
            for (int e = 0; e < D; e++)
              (*c)[(b * T + i) * H + h * D + e] += pij * qkv[(b * T + j) * H3 + 2 * H + h * D + e];
          }
        }
  }

  std::vector<float> qkv, R, ctx, probs;
  std::vector<int32_t> mask;
  int nt = 1;
};

TEST_F(Attention, ForwardMatchesNaiveDouble) {
  Forward(nullptr);
  std::vector<double> c, P;
  Naive(&c, &P);
  for (size_t i = 0; i < P.size(); i++) EXPECT_NEAR(probs[i], P[i], 2e-6) << "probs " << i;
  for (size_t i = 0; i < c.size(); i++) EXPECT_NEAR(ctx[i], c[i], 1e-5) << "ctx " << i;
  /* Padded keys get exactly zero probability. */
  for (int h = 0; h < NH; h++)
    for (int i = 0; i < T; i++)
      for (int j = T - 2; j < T; j++) EXPECT_EQ(probs[((1 * NH + h) * T + i) * T + j], 0.0f);
}

TEST_F(Attention, BackwardMatchesFiniteDifferences) {
  Forward(nullptr);
  std::vector<float> dqkv = Backward(nullptr);
  auto L = [&] {
    Forward(nullptr);
    return Dot(R, ctx.data());
  };
  ExpectGrad("dqkv", dqkv, NumGrad(qkv, L, 1e-2f));
  /* Padded keys and values get no gradient. */
  for (int t = T - 2; t < T; t++)
    for (int c = H; c < H3; c++) EXPECT_EQ(dqkv[(1 * T + t) * H3 + c], 0.0f) << t << "," << c;
}

TEST_F(Attention, DropoutForwardAndBackwardAgree) {
  dropout_desc d = Drop(0.2f, 3, 8, T);
  Forward(nullptr);
  std::vector<float> plain = ctx, plain_probs = probs;
  Forward(&d);
  EXPECT_EQ(probs, plain_probs) << "probs are stored before dropout";
  EXPECT_NE(ctx, plain) << "dropout changed nothing";
  std::vector<float> first = ctx;
  Forward(&d);
  EXPECT_EQ(ctx, first) << "same key, different output";

  std::vector<float> dqkv = Backward(&d);
  auto L = [&] {
    Forward(&d);
    return Dot(R, ctx.data());
  };
  ExpectGrad("dqkv with dropout", dqkv, NumGrad(qkv, L, 1e-2f));
  /* Without dropout the backward of the same probs differs: the check
   * sees the mask. */
  Forward(&d);
  EXPECT_FALSE(GradClose(Backward(nullptr), NumGrad(qkv, L, 1e-2f)));
}

/* Causal attention over more positions than one of the kernels' query blocks
 * (64): forward and backward against the same operations in double. Sequence 0
 * is full; sequence 1 ends in padding. Every key carries the causal bit. */
TEST(CausalAttention, BlocksMatchDoubleForwardAndBackward) {
  const int B = 2, T = 150, NH = 2, D = 4, H = NH * D, H3 = 3 * H, pad = 10;
  std::mt19937 g(11);
  std::vector<float> qkv = RandVec(g, (size_t)B * T * H3, -1.5f, 1.5f);
  std::vector<float> R = RandVec(g, (size_t)B * T * H, -1, 1);
  std::vector<int32_t> mask((size_t)B * T, K_ATTN_KEY | K_ATTN_CAUSAL);
  for (int t = T - pad; t < T; t++) mask[(size_t)T + t] = K_ATTN_CAUSAL;
  const int nt = omp_get_max_threads();
  std::vector<float> ctx((size_t)B * T * H), probs((size_t)B * NH * T * T, NAN);
  std::vector<float> scratch((size_t)nt * 2 * T * T), dqkv((size_t)B * T * H3, NAN);
  k_attention_fwd(ctx.data(), probs.data(), qkv.data(), mask.data(), B, T, NH, D, nullptr,
                  scratch.data(), nt);
  k_attention_bwd(dqkv.data(), R.data(), probs.data(), qkv.data(), mask.data(), B, T, NH, D,
                  nullptr, scratch.data(), nt);
  const double scale = 1.0 / std::sqrt((double)D);
  auto at = [&](int b, int t, int part, int h, int e) {
    return (double)qkv[((size_t)b * T + t) * H3 + part * H + h * D + e];
  };
  double worst_p = 0, worst_c = 0, worst_g = 0, gmax = 0;
  for (int b = 0; b < B; b++)
    for (int h = 0; h < NH; h++) {
      std::vector<double> P((size_t)T * T, 0.0), dP((size_t)T * T, 0.0), G((size_t)T * H3, 0.0);
      for (int i = 0; i < T; i++) {
        double mx = -1e300, sum = 0;
        for (int j = 0; j <= i; j++) {
          double dot = 0;
          for (int e = 0; e < D; e++) dot += at(b, i, 0, h, e) * at(b, j, 1, h, e);
          P[(size_t)i * T + j] = dot * scale + (mask[(size_t)b * T + j] & K_ATTN_KEY ? 0 : -10000);
          mx = std::max(mx, P[(size_t)i * T + j]);
        }
        for (int j = 0; j <= i; j++)
          sum += P[(size_t)i * T + j] = std::exp(P[(size_t)i * T + j] - mx);
        for (int j = 0; j <= i; j++) P[(size_t)i * T + j] /= sum;
      }
      for (int i = 0; i < T; i++) {
        const float *r = &R[((size_t)b * T + i) * H + h * D];
        for (int e = 0; e < D; e++) {
          double c = 0;
          for (int j = 0; j <= i; j++) c += P[(size_t)i * T + j] * at(b, j, 2, h, e);
          worst_c = std::max(worst_c, std::fabs(c - ctx[((size_t)b * T + i) * H + h * D + e]));
        }
        double dot = 0;
        for (int j = 0; j <= i; j++) {
          double d = 0;
          for (int e = 0; e < D; e++) d += r[e] * at(b, j, 2, h, e);
          dP[(size_t)i * T + j] = d;
          dot += d * P[(size_t)i * T + j];
          for (int e = 0; e < D; e++)
            G[(size_t)j * H3 + 2 * H + h * D + e] += P[(size_t)i * T + j] * r[e];
        }
        for (int j = 0; j < T; j++) {
          double ds = j <= i ? P[(size_t)i * T + j] * (dP[(size_t)i * T + j] - dot) * scale : 0;
          worst_p = std::max(worst_p, std::fabs(P[(size_t)i * T + j] -
                                                probs[(((size_t)b * NH + h) * T + i) * T + j]));
          for (int e = 0; e < D; e++) {
            G[(size_t)i * H3 + h * D + e] += ds * at(b, j, 1, h, e);
            G[(size_t)j * H3 + H + h * D + e] += ds * at(b, i, 0, h, e);
          }
        }
      }
      for (int t = 0; t < T; t++)
        for (int part = 0; part < 3; part++)
          for (int e = 0; e < D; e++) {
            size_t k = (size_t)t * H3 + part * H + h * D + e;
            gmax = std::max(gmax, std::fabs(G[k]));
            worst_g = std::max(worst_g, std::fabs(G[k] - dqkv[(size_t)b * T * H3 + k]));
          }
    }
  EXPECT_LT(worst_p, 2e-6) << "probabilities";
  EXPECT_LT(worst_c, 1e-5) << "context";
  EXPECT_LT(worst_g, 1e-5 * std::max(1.0, gmax)) << "dqkv (largest " << gmax << ")";
  /* Above the diagonal: exactly zero probability. */
  for (int bh = 0; bh < B * NH; bh++)
    for (int i = 0; i < T; i++)
      for (int j = i + 1; j < T; j++) ASSERT_EQ(probs[((size_t)bh * T + i) * T + j], 0.0f);
}

/* ---- Softmax cross-entropy ----------------------------------------------------------- */

TEST(SoftmaxXent, LossGradientAndCorrectCount) {
  const int M = 7, V = 11;
  const float coef = 0.37f;
  std::mt19937 g(8);
  auto logits = RandVec(g, M * V, -3, 3), bias = RandVec(g, V, -1, 1);
  std::vector<float> w = {1.0f, 0.0f, 0.5f, 1.0f, 0.0f, 2.0f, 1.0f};
  std::vector<int32_t> ids(M);
  for (int r = 0; r < M; r++) ids[r] = (int32_t)(g() % V);
  /* Rows 0, 2 and 4 predict their label, so the count sees hits and misses. */
  double want_correct = 1.5, want_loss = 0; /* correct starts at 1.5: it accumulates */
  for (int r = 0; r < M; r++) {
    std::vector<float> z(V);
    for (int j = 0; j < V; j++) z[j] = logits[r * V + j] + bias[j];
    int arg = (int)(std::max_element(z.begin(), z.end()) - z.begin());
    if (r % 2 == 0 && r < 5) ids[r] = arg;
    if (ids[r] == arg) want_correct += w[r];
    double mx = z[arg], sum = 0;
    for (int j = 0; j < V; j++) sum += std::exp((double)z[j] - mx);
    want_loss += w[r] * (mx + std::log(sum) - z[ids[r]]);
  }

  std::vector<float> work = logits, dlogits(M * V, NAN);
  double correct = 1.5;
  double loss = k_softmax_xent(work.data(), dlogits.data(), bias.data(), ids.data(), w.data(), coef,
                               M, V, &correct);
  EXPECT_NEAR(loss, want_loss, 1e-5 * want_loss);
  EXPECT_EQ(correct, want_correct);
  for (int i = 0; i < M * V; i++)
    EXPECT_EQ(work[i], logits[i] + bias[i % V]) << "bias added in place";
  for (int r : {1, 4})
    for (int j = 0; j < V; j++) EXPECT_EQ(dlogits[r * V + j], 0.0f) << "w = 0 row " << r;

  std::vector<float> scratch(M * V);
  auto L = [&] {
    std::vector<float> z = logits;
    return coef * k_softmax_xent(z.data(), scratch.data(), bias.data(), ids.data(), w.data(), coef,
                                 M, V, nullptr);
  };
  ExpectGrad("dlogits", dlogits, NumGrad(logits, L, 1e-2f));
}

/* ---- Gather and scatter ---------------------------------------------------------------- */

TEST(GatherScatter, RepeatedRows) {
  const int rowsx = 10;
  const std::vector<int32_t> rows = {3, 0, 3, 9, 3, 1, 0};
  const int M = (int)rows.size();
  for (int C : {1, 13, 64}) {
    SCOPED_TRACE("C = " + std::to_string(C));
    std::mt19937 g(9 + C);
    auto x = RandVec(g, rowsx * C, -1, 1), dout = RandVec(g, M * C, -1, 1);
    std::vector<float> out(M * C);
    k_gather_rows(out.data(), x.data(), rows.data(), M, C);
    for (int i = 0; i < M; i++)
      for (int j = 0; j < C; j++) ASSERT_EQ(out[i * C + j], x[rows[i] * C + j]);

    std::vector<float> dx = x, want = x;
    for (int i = 0; i < M; i++)
      for (int j = 0; j < C; j++) want[rows[i] * C + j] += dout[i * C + j];
    k_scatter_add_rows(dx.data(), dout.data(), rows.data(), M, C);
    for (int i = 0; i < rowsx * C; i++) EXPECT_NEAR(dx[i], want[i], 1e-6) << i;
    /* Row 3 got three contributions, rows never gathered none. */
    EXPECT_NE(dx[3 * C], x[3 * C]);
    EXPECT_EQ(dx[5 * C], x[5 * C]);
  }
}

}  // namespace
