/* test_compute.cc: the compute table's backends. bf16 rounding against an
 * independent nearest-even rule computed in double; the oneDNN linear
 * products (forward, weight and input gradients, with and without
 * accumulation) against double-precision sums of the same operands rounded
 * to bf16 first, so the check isolates the product plumbing (transposes,
 * strides, accumulation) from bf16's own error; fp32-onednn against the
 * fp32 (OpenBLAS) table. */
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "compute.h"

namespace {

uint32_t Bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

float FromBits(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* The bf16 nearest to x, ties to the even significand, by comparing the two
 * bf16 neighbours of x in double (2^128 standing for the overflow to inf). */
uint16_t NearestEven(float x) {
  uint32_t u = Bits(x);
  if (std::isnan(x)) return 0; /* checked separately */
  uint32_t lo = u & 0xffff0000u, hi = lo + 0x10000u;
  if ((u & 0xffffu) == 0) return (uint16_t)(lo >> 16);
  auto value = [](uint32_t b) {
    if ((b & 0x7fffffffu) == 0x7f800000u)
      return std::copysign(std::ldexp(1.0, 128), (double)FromBits(b));
    return (double)FromBits(b);
  };
  double dl = std::fabs((double)x - value(lo)), dh = std::fabs(value(hi) - (double)x);
  if (dl < dh) return (uint16_t)(lo >> 16);
  if (dh < dl) return (uint16_t)(hi >> 16);
  return (uint16_t)(((lo >> 16) & 1) ? hi >> 16 : lo >> 16);
}

double Bf16Value(float x) {
  uint16_t b;
  compute_to_bf16(&b, &x, 1);
  return (double)FromBits((uint32_t)b << 16);
}

TEST(Compute, Bf16RoundsToNearestEven) {
  std::vector<float> xs = {0.0f,
                           -0.0f,
                           1.0f,
                           -1.0f,
                           INFINITY,
                           -INFINITY,
                           3.4028235e38f,
                           -3.4028235e38f,
                           1e-45f,
                           -1e-45f,
                           1.17549435e-38f,
                           FromBits(0x3f808000u) /* tie, even below */,
                           FromBits(0x3f818000u) /* tie, even above */,
                           FromBits(0x7f7f8000u) /* tie at the top: to inf */,
                           FromBits(0x3f807fffu),
                           FromBits(0x3f808001u)};
  std::mt19937 rng(5);
  for (int i = 0; i < 200000; i++) {
    float f = FromBits(rng());
    if (!std::isnan(f)) xs.push_back(f);
  }
  std::vector<uint16_t> got(xs.size());
  compute_to_bf16(got.data(), xs.data(), xs.size());
  int bad = 0;
  for (size_t i = 0; i < xs.size() && bad < 5; i++)
    if (got[i] != NearestEven(xs[i])) {
      bad++;
      ADD_FAILURE() << "bf16 of " << xs[i] << " (bits " << std::hex << Bits(xs[i]) << ") is "
                    << got[i] << ", expected " << NearestEven(xs[i]);
    }
  float nans[2] = {NAN, FromBits(0x7f800001u)}; /* quiet, and signalling with a low payload */
  uint16_t nb[2];
  compute_to_bf16(nb, nans, 2);
  for (uint16_t b : nb) EXPECT_TRUE(std::isnan(FromBits((uint32_t)b << 16))) << std::hex << b;
}

struct Linear {
  int N, in, out;
  std::vector<float> x, W, dy, y, dW, db, dx, ones;
  Linear(int n, int i, int o, unsigned seed) : N(n), in(i), out(o) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    auto fill = [&](std::vector<float> &v, size_t k) {
      v.resize(k);
      for (float &e : v) e = nd(rng);
    };
    fill(x, (size_t)N * in);
    fill(W, (size_t)out * in);
    fill(dy, (size_t)N * out);
    fill(dW, (size_t)out * in); /* accumulated into */
    fill(dx, (size_t)N * in);   /* accumulated into */
    fill(db, (size_t)out);
    y.assign((size_t)N * out, 0.0f);
    ones.assign((size_t)N, 1.0f);
  }
};

/* max |got - want| / max |want| */
double RelErr(const std::vector<float> &got, const std::vector<double> &want) {
  double e = 0, m = 0;
  for (size_t i = 0; i < got.size(); i++) {
    e = std::max(e, std::fabs((double)got[i] - want[i]));
    m = std::max(m, std::fabs(want[i]));
  }
  return e / m;
}

/* The three products of a linear layer in double from operands mapped by r
 * (identity, or rounding to bf16); acc: the outputs start from the inputs'
 * dW and dx. */
void Expected(const Linear &L, double (*r)(float), std::vector<double> &y, std::vector<double> &dW,
              std::vector<double> &dx) {
  y.assign((size_t)L.N * L.out, 0.0);
  dW.assign(L.dW.begin(), L.dW.end());
  dx.assign(L.dx.begin(), L.dx.end());
  for (int n = 0; n < L.N; n++)
    for (int o = 0; o < L.out; o++)
      for (int i = 0; i < L.in; i++) {
        double xv = r(L.x[(size_t)n * L.in + i]), wv = r(L.W[(size_t)o * L.in + i]),
               g = r(L.dy[(size_t)n * L.out + o]);
        y[(size_t)n * L.out + o] += xv * wv;
        dW[(size_t)o * L.in + i] += g * xv;
        dx[(size_t)n * L.in + i] += g * wv;
      }
}

double Same(float v) { return (double)v; }

class ComputeBackend : public ::testing::Test {
 protected:
  compute c = {&compute_fp32_ops, nullptr};
  void TearDown() override { compute_close(&c); }
  /* Opens precision; false (test skipped with the reason) when the CPU
   * cannot run it. */
  bool Open(const char *precision) {
    status_t st = compute_open(&c, precision, 0);
    if (st == STATUS_CONFIG && strstr(status_message(), "needs a CPU")) return false;
    EXPECT_EQ(st, STATUS_OK) << status_message();
    return st == STATUS_OK;
  }
  /* Runs the three products with W inside a "parameter buffer" synced first
   * (so bf16 reads its copy of the weights). */
  void Run(Linear &L) {
    std::vector<float> params(L.W.size() + 64, 0.5f);
    std::copy(L.W.begin(), L.W.end(), params.begin() + 32);
    cx_sync(&c, params.data(), params.size());
    const float *W = params.data() + 32;
    cx_linear_fwd(&c, L.y.data(), L.x.data(), W, L.N, L.in, L.out);
    cx_linear_bwd(&c, L.dx.data(), true, L.dW.data(), nullptr, L.dy.data(), L.x.data(), W,
                  L.ones.data(), L.N, L.in, L.out);
  }
};

TEST_F(ComputeBackend, Bf16LinearIsTheProductOfRoundedOperands) {
  if (!Open("bf16")) GTEST_SKIP() << "this CPU cannot run bf16: " << status_message();
  for (auto [N, in, out] : {std::tuple{7, 5, 3}, {33, 48, 130}, {64, 256, 1}, {5, 300, 70}}) {
    SCOPED_TRACE(testing::Message() << N << "x" << in << "->" << out);
    Linear L(N, in, out, (unsigned)(N * 1000 + in));
    std::vector<double> y, dW, dx, y0, dW0, dx0;
    Expected(L, Bf16Value, y, dW, dx);
    Expected(L, Same, y0, dW0, dx0);
    Run(L);
    /* fp32 accumulation of exact bf16 products: errors of order K * 2^-24. */
    EXPECT_LT(RelErr(L.y, y), 1e-5);
    EXPECT_LT(RelErr(L.dW, dW), 1e-5);
    EXPECT_LT(RelErr(L.dx, dx), 1e-5);
    /* And it is bf16: the unrounded products are further away than fp32 would be. */
    EXPECT_GT(RelErr(L.y, y0), 1e-4);
  }
}

TEST_F(ComputeBackend, Fp32OnednnMatchesOpenblas) {
  ASSERT_TRUE(Open("fp32-onednn"));
  Linear A(33, 48, 130, 9), B = A;
  Run(A);
  compute_close(&c); /* fp32 */
  Run(B);
  std::vector<double> y(B.y.begin(), B.y.end()), dW(B.dW.begin(), B.dW.end()),
      dx(B.dx.begin(), B.dx.end());
  EXPECT_LT(RelErr(A.y, y), 1e-6);
  EXPECT_LT(RelErr(A.dW, dW), 1e-6);
  EXPECT_LT(RelErr(A.dx, dx), 1e-6);
}

TEST(Compute, UnknownPrecisionIsNamed) {
  compute c = {&compute_fp32_ops, nullptr};
  EXPECT_EQ(compute_open(&c, "fp16", 0), STATUS_CONFIG);
  EXPECT_NE(strstr(status_message(), "'fp16'"), nullptr) << status_message();
  EXPECT_NE(strstr(status_message(), "bf16"), nullptr) << status_message();
  EXPECT_EQ(c.ops, &compute_fp32_ops);
}

}  // namespace
