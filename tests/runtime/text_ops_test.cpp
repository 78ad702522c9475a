// The transformer ops of the runtime (runtime/ops_text.cpp, text_kernels.h) against plain
// double-precision references written from their definitions (qat/module_qat.h, qat/ggml_quant.h,
// models/llama.cpp): fp16 rounding, the two on-the-fly activation quantizations, quantized linear
// layers in every weight/input combination, norms, activations, grouped-query rotary attention and
// its KV cache, and a small encoder graph end to end with a dynamic token count. No LibTorch.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "formats/half.h"
#include "runtime/executor.h"
#include "runtime/kernels.h"
#include "runtime/qdm.h"
#include "runtime/text_kernels.h"
#include "runtime/thread_pool.h"
#include "tests/runtime/model_builders.h"

namespace qd::rt {
namespace {

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

std::vector<float> randn(size_t n, std::mt19937& g, float sd = 1.0f) {
  std::normal_distribution<float> d(0.0f, sd);
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}

// The half nearest to f (ties to the even mantissa), by search over the exactly representable halves.
uint16_t reference_half(float f) {
  const double x = std::fabs(static_cast<double>(f));
  uint16_t best = 0;
  double best_err = INFINITY;
  // Halves are ordered like their bit patterns for non-negative values.
  uint16_t lo = 0, hi = 0x7C00;
  while (hi - lo > 1) {
    const uint16_t mid = static_cast<uint16_t>((lo + hi) / 2);
    if (fmt::half_to_float(mid) <= x) lo = mid; else hi = mid;
  }
  for (uint16_t c : {lo, hi}) {
    const double err = std::fabs(fmt::half_to_float(c) - x);
    if (err < best_err || (err == best_err && (c & 1u) == 0)) best = c, best_err = err;
  }
  if (x >= 65520.0) best = 0x7C00;  // the overflow threshold: ties at 65520 go up to infinity
  return static_cast<uint16_t>(best | (std::signbit(f) ? 0x8000u : 0u));
}

TEST(TextOps, FloatToHalfRoundsToNearestEven) {
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    if ((h & 0x7C00u) == 0x7C00u && (h & 0x3FFu)) continue;  // NaN
    ASSERT_EQ(fmt::float_to_half(fmt::half_to_float(static_cast<uint16_t>(h))), h) << h;
  }
  // Midpoints between neighbours (normal and subnormal) tie to even; random floats match the search.
  for (uint16_t h : {uint16_t{0x0001}, uint16_t{0x0002}, uint16_t{0x03FF}, uint16_t{0x0400}, uint16_t{0x3C00}, uint16_t{0x3C01}, uint16_t{0x7BFE}}) {
    const float mid = static_cast<float>((static_cast<double>(fmt::half_to_float(h)) + fmt::half_to_float(static_cast<uint16_t>(h + 1))) / 2);
    EXPECT_EQ(fmt::float_to_half(mid), (h & 1u) ? h + 1 : h) << h;
    EXPECT_EQ(fmt::float_to_half(-mid), static_cast<uint16_t>(((h & 1u) ? h + 1 : h) | 0x8000u)) << h;
  }
  std::mt19937 g(1);
  std::uniform_real_distribution<float> e(-30.0f, 17.0f);
  for (int i = 0; i < 200000; ++i) {
    const float f = std::ldexp(1.0f + (g() % 8388608u) / 8388608.0f, static_cast<int>(e(g))) * ((g() & 1u) ? -1.0f : 1.0f);
    ASSERT_EQ(fmt::float_to_half(f), reference_half(f)) << f;
  }
  EXPECT_EQ(fmt::float_to_half(65519.0f), 0x7BFFu);
  EXPECT_EQ(fmt::float_to_half(65520.0f), 0x7C00u);
  EXPECT_TRUE(std::isnan(fp16_round(NAN)));
}

TEST(TextOps, ActivationQuantizationIsTheSimulations) {
  std::mt19937 g(2);
  std::vector<float> x = randn(64, g);
  x[3] = 0.0f;
  // per_token: s = max|x| / 127, q = round_half_even(x / s).
  std::vector<int8_t> q(64);
  float s = 0.0f;
  quantize_row(x.data(), 64, ActQuant::kPerToken, q.data(), &s);
  float amax = 0.0f;
  for (float v : x) amax = std::max(amax, std::fabs(v));
  EXPECT_EQ(s, amax / 127.0f);
  for (int j = 0; j < 64; ++j) EXPECT_EQ(q[static_cast<size_t>(j)], static_cast<int8_t>(std::nearbyint(x[static_cast<size_t>(j)] / s))) << j;
  // A tie: 0.5 * s rounds to 0 (even), 1.5 * s to 2.
  std::vector<float> tie = {127.0f, 0.5f, 1.5f, -2.5f};
  quantize_row(tie.data(), 4, ActQuant::kPerToken, q.data(), &s);
  EXPECT_EQ(q[1], 0);
  EXPECT_EQ(q[2], 2);
  EXPECT_EQ(q[3], -2);
  // q8_0: per block d = max|x| / 127 (stored as fp16), q = roundf(x * (1 / d)), half away from zero.
  std::vector<float> d(2);
  quantize_row(x.data(), 64, ActQuant::kQ8_0, q.data(), d.data());
  for (int b = 0; b < 2; ++b) {
    float m = 0.0f;
    for (int j = 0; j < 32; ++j) m = std::max(m, std::fabs(x[static_cast<size_t>(b * 32 + j)]));
    const float db = m / 127.0f;
    EXPECT_EQ(d[static_cast<size_t>(b)], fmt::half_to_float(fmt::float_to_half(db)));
    for (int j = 0; j < 32; ++j)
      EXPECT_EQ(q[static_cast<size_t>(b * 32 + j)], static_cast<int8_t>(std::round(x[static_cast<size_t>(b * 32 + j)] * (1.0f / db))));
  }
  std::vector<float> tie32(32, 0.0f);
  tie32[0] = 127.0f, tie32[1] = 0.5f, tie32[2] = -2.5f;
  quantize_row(tie32.data(), 32, ActQuant::kQ8_0, q.data(), d.data());
  EXPECT_EQ(q[1], 1);
  EXPECT_EQ(q[2], -3);
  // Non-finite activations (an overflow upstream) quantize without undefined behaviour: NaN as 0.
  std::vector<float> bad(32, 1.0f);
  bad[0] = NAN, bad[1] = INFINITY;
  quantize_row(bad.data(), 32, ActQuant::kQ8_0, q.data(), d.data());
  EXPECT_EQ(q[0], 0);
  quantize_row(bad.data(), 32, ActQuant::kPerToken, q.data(), d.data());
  EXPECT_EQ(q[0], 0);
  std::vector<float> zeros(32, 0.0f);
  quantize_row(zeros.data(), 32, ActQuant::kQ8_0, q.data(), d.data());
  EXPECT_EQ(d[0], 0.0f);
  EXPECT_EQ(q[0], 0);
}

// A random int8 weight [n, k] with scales per (row, group).
struct TestWeight {
  std::vector<int8_t> q;
  std::vector<float> s, f;
  QuantWeight view(int64_t n, int64_t k, int64_t group, bool as_float) const {
    QuantWeight w;
    w.rows = n, w.cols = k;
    if (as_float) {
      w.f32 = f.data();
    } else {
      w.i8 = q.data(), w.scale = s.data(), w.group = group;
    }
    return w;
  }
};
TestWeight make_weight(int64_t n, int64_t k, int64_t group, std::mt19937& g) {
  TestWeight w;
  std::uniform_int_distribution<int> qd(-127, 127);
  std::uniform_real_distribution<float> sd(0.001f, 0.02f);
  for (int64_t i = 0; i < n * k; ++i) w.q.push_back(static_cast<int8_t>(qd(g)));
  for (int64_t i = 0; i < n * (k / group); ++i) w.s.push_back(sd(g));
  for (int64_t o = 0; o < n; ++o)
    for (int64_t j = 0; j < k; ++j) w.f.push_back(w.q[static_cast<size_t>(o * k + j)] * w.s[static_cast<size_t>(o * (k / group) + j / group)]);
  return w;
}

TEST(TextOps, LinearMatchesTheDequantizedProductInEveryMode) {
  std::mt19937 g(3);
  const int64_t t = 5, n = 24, k = 128;
  const std::vector<float> x = randn(static_cast<size_t>(t * k), g), bias = randn(static_cast<size_t>(n), g);
  struct Case {
    ActQuant q;
    int64_t group;
    bool as_float;
  };
  for (const Case c : {Case{ActQuant::kPerToken, k, false}, Case{ActQuant::kPerToken, 32, false}, Case{ActQuant::kQ8_0, 32, false},
                       Case{ActQuant::kQ8_0, k, false}, Case{ActQuant::kQ8_0, 64, false}, Case{ActQuant::kNone, 32, false},
                       Case{ActQuant::kNone, k, true}}) {
    const TestWeight w = make_weight(n, k, c.group, g);
    std::vector<float> y(static_cast<size_t>(t * n));
    LinearScratch scratch;
    linear_forward(x.data(), t, w.view(n, k, c.group, c.as_float), bias.data(), c.q, y.data(), scratch);
    // Reference: the simulation's fake-quantized input times the dequantized weight, in double.
    for (int64_t r = 0; r < t; ++r) {
      std::vector<double> xd(static_cast<size_t>(k));
      if (c.q == ActQuant::kNone) {
        for (int64_t j = 0; j < k; ++j) xd[static_cast<size_t>(j)] = x[static_cast<size_t>(r * k + j)];
      } else {
        std::vector<int8_t> q(static_cast<size_t>(k));
        std::vector<float> sc(static_cast<size_t>(k));
        quantize_row(x.data() + r * k, k, c.q, q.data(), sc.data());
        const int64_t xb = c.q == ActQuant::kPerToken ? k : 32;
        for (int64_t j = 0; j < k; ++j) xd[static_cast<size_t>(j)] = static_cast<double>(q[static_cast<size_t>(j)]) * sc[static_cast<size_t>(j / xb)];
      }
      for (int64_t o = 0; o < n; ++o) {
        double want = bias[static_cast<size_t>(o)];
        double mag = std::fabs(want);
        for (int64_t j = 0; j < k; ++j) {
          want += xd[static_cast<size_t>(j)] * w.f[static_cast<size_t>(o * k + j)];
          mag += std::fabs(xd[static_cast<size_t>(j)] * w.f[static_cast<size_t>(o * k + j)]);
        }
        ASSERT_NEAR(y[static_cast<size_t>(r * n + o)], want, 1e-6 * mag + 1e-7)
            << "mode " << static_cast<int>(c.q) << " group " << c.group << " token " << r << " output " << o;
      }
    }
  }
}

// The int8 dot products picked at run time (AVX2, AVX-512 VNNI, AMX) against the portable one: the
// same outputs bit for bit (exact int32 block sums, the same float operations after them), on
// extreme values too, widths with tails past the last 32 (and past whole 64-value AMX chunks),
// every block arrangement; 7 tokens x 37 rows (a partial 4-token tile, a partial panel) and 37
// tokens x 100 rows (AMX: token groups of 16, 16 and 5; panel groups of 4 and 3).
TEST(TextOps, EveryInstructionSetComputesTheSameLinearBitForBit) {
  std::mt19937 g(12);
  struct Case {
    ActQuant q;
    int64_t k, group;
  };
  for (const Case c : {Case{ActQuant::kPerToken, 384, 384}, Case{ActQuant::kPerToken, 100, 100}, Case{ActQuant::kPerToken, 102, 102},
                       Case{ActQuant::kPerToken, 96, 32}, Case{ActQuant::kQ8_0, 96, 32}, Case{ActQuant::kQ8_0, 256, 256},
                       Case{ActQuant::kQ8_0, 128, 64}}) {
    for (const auto& [t, n] : {std::pair<int64_t, int64_t>{7, 37}, std::pair<int64_t, int64_t>{37, 100}}) {
      std::vector<float> x = randn(static_cast<size_t>(t * c.k), g);
      for (int64_t j = 0; j < c.k; j += 3) x[static_cast<size_t>(j)] = (j % 2 ? 1 : -1) * 1e3f;  // saturate the row at +-127
      TestWeight w = make_weight(n, c.k, c.group, g);
      for (size_t i = 0; i < w.q.size(); i += 5) w.q[i] = static_cast<int8_t>(i % 2 ? 127 : -127);
      const std::vector<float> bias = randn(static_cast<size_t>(n), g);
      std::vector<float> want(static_cast<size_t>(t * n)), got(want.size());
      LinearScratch scratch;
      force_isa(Isa::kGeneric);
      linear_forward(x.data(), t, w.view(n, c.k, c.group, false), bias.data(), c.q, want.data(), scratch);
      for (const Isa isa : {Isa::kAvx2, Isa::kAvx512Vnni, Isa::kAmx}) {
        if (isa > best_isa()) {
          std::printf("[   INFO   ] instruction set %d not on this CPU: its int8 dot product is not checked here\n", static_cast<int>(isa));
          continue;
        }
        force_isa(isa);
        linear_forward(x.data(), t, w.view(n, c.k, c.group, false), bias.data(), c.q, got.data(), scratch);
        for (size_t i = 0; i < want.size(); ++i)
          ASSERT_EQ(got[i], want[i]) << "isa " << static_cast<int>(isa) << " k " << c.k << " group " << c.group << " at " << i;
        // The tiled kernels on the packed weight (16-row panels, 4-token tiles): the same bits.
        const PackedLinear packed = pack_linear(w.view(n, c.k, c.group, false), c.q);
        ASSERT_FALSE(packed.empty()) << "k " << c.k << " group " << c.group;
        std::fill(got.begin(), got.end(), 0.0f);
        linear_forward(x.data(), t, w.view(n, c.k, c.group, false), bias.data(), c.q, got.data(), scratch, &packed);
        for (size_t i = 0; i < want.size(); ++i)
          ASSERT_EQ(got[i], want[i]) << "packed, isa " << static_cast<int>(isa) << " k " << c.k << " group " << c.group << " at " << i;
        // One token at a time (decoding) through the packed kernels: the same bits as that row of the whole.
        std::vector<float> one(static_cast<size_t>(n));
        for (int64_t r = 0; r < t; ++r) {
          linear_forward(x.data() + r * c.k, 1, w.view(n, c.k, c.group, false), bias.data(), c.q, one.data(), scratch, &packed);
          for (int64_t o = 0; o < n; ++o) ASSERT_EQ(one[static_cast<size_t>(o)], want[static_cast<size_t>(r * n + o)]) << "token " << r << " output " << o;
        }
      }
      force_isa(best_isa());
    }
  }
}

// GELU's erf (our rational fit, runtime/text_kernels.cpp) against erf in double on a dense grid
// over the whole float range that matters, and the AVX2 loop against the portable one bit for
// bit, specials included (NaN stays NaN, +inf stays +inf, -inf gives NaN as x * 0 does).
TEST(TextOps, GeluIsErfWithinHalfAMillionthOnEveryInstructionSet) {
  double worst = 0.0;
  std::vector<float> xs;
  for (int i = -600000; i <= 600000; ++i) xs.push_back(static_cast<float>(i) * 1e-5f);  // [-6, 6]
  for (float v : {1e-30f, -1e-30f, 1e-8f, 30.0f, -30.0f, 1e30f, -1e30f}) xs.push_back(v);
  for (float v : xs) {
    // gelu = x (1 + erf(x / sqrt 2)) / 2: the erf error is 2 |gelu - exact| / |x|.
    const double exact = 0.5 * double{v} * (1.0 + std::erf(double{v} / std::sqrt(2.0)));
    if (v != 0.0f && std::isfinite(v) && std::fabs(v) < 1e6f) worst = std::max(worst, 2.0 * std::fabs(double{gelu(v)} - exact) / std::fabs(double{v}));
  }
  EXPECT_LT(worst, 5e-7) << "erf's largest error on [-6, 6], seen through GELU (the fit's 3.7e-7 plus GELU's float32 rounding)";
  EXPECT_EQ(gelu(0.0f), 0.0f);
  EXPECT_EQ(gelu(20.0f), 20.0f);
  EXPECT_EQ(gelu(-20.0f), -0.0f);
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  for (float v : {nan, inf, -inf, -0.0f}) xs.push_back(v);
  std::vector<float> want(xs.size()), got(xs.size());
  force_isa(Isa::kGeneric);
  gelu_rows(xs.data(), static_cast<int64_t>(xs.size()), want.data());
  EXPECT_TRUE(std::isnan(want[want.size() - 4]));
  EXPECT_EQ(want[want.size() - 3], inf);
  EXPECT_TRUE(std::isnan(want[want.size() - 2]));
  for (const Isa isa : {Isa::kAvx2, Isa::kAvx512Vnni, Isa::kAmx}) {
    if (isa > best_isa()) {
      std::printf("[   INFO   ] instruction set %d not on this CPU: its GELU is not checked here\n", static_cast<int>(isa));
      continue;
    }
    force_isa(isa);
    gelu_rows(xs.data(), static_cast<int64_t>(xs.size()), got.data());
    ASSERT_EQ(std::memcmp(got.data(), want.data(), want.size() * sizeof(float)), 0) << "isa " << static_cast<int>(isa);
  }
  force_isa(best_isa());
}

// The softmax's exponential against exp in double (within 2 ulp where the result is normal), and
// every instruction set against the portable loop bit for bit, with a shift and specials.
TEST(TextOps, SoftmaxExpIsWithinTwoUlpOnEveryInstructionSet) {
  std::vector<float> xs;
  for (int i = -900000; i <= 880000; ++i) xs.push_back(static_cast<float>(i) * 1e-4f);  // [-90, 88]
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  for (float v : {0.0f, -0.0f, -1e-30f, 1e-30f, -200.0f, nan, -inf, inf}) xs.push_back(v);
  std::vector<float> want = xs, got = xs;
  force_isa(Isa::kGeneric);
  exp_shifted(want.data(), static_cast<int64_t>(want.size()), 0.0f);
  double worst_ulp = 0.0;
  for (size_t i = 0; i + 8 < xs.size(); ++i) {
    const double e = std::exp(double{xs[i]});
    if (xs[i] < -87.0f) {
      ASSERT_EQ(want[i], 0.0f) << xs[i];
      continue;
    }
    const double ulp = std::ldexp(1.0, std::ilogb(e) - 23);
    worst_ulp = std::max(worst_ulp, std::fabs(double{want[i]} - e) / ulp);
  }
  EXPECT_LT(worst_ulp, 2.0) << "largest error, in ulp of the result";
  const size_t s = xs.size() - 8;
  EXPECT_EQ(want[s], 1.0f);
  EXPECT_EQ(want[s + 4], 0.0f);
  EXPECT_TRUE(std::isnan(want[s + 5]));
  EXPECT_EQ(want[s + 6], 0.0f);
  for (const Isa isa : {Isa::kAvx2, Isa::kAvx512Vnni, Isa::kAmx}) {
    if (isa > best_isa()) {
      std::printf("[   INFO   ] instruction set %d not on this CPU: its exp is not checked here\n", static_cast<int>(isa));
      continue;
    }
    force_isa(isa);
    got = xs;
    exp_shifted(got.data(), static_cast<int64_t>(got.size()), 0.0f);
    ASSERT_EQ(std::memcmp(got.data(), want.data(), want.size() * sizeof(float)), 0) << "isa " << static_cast<int>(isa);
    // With a shift (the softmax's row maximum): exp(x - shift) alike too.
    std::vector<float> a(xs.begin(), xs.begin() + 1000), b = a;
    force_isa(Isa::kGeneric);
    exp_shifted(a.data(), 1000, -3.25f);
    force_isa(isa);
    exp_shifted(b.data(), 1000, -3.25f);
    ASSERT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << "isa " << static_cast<int>(isa) << " shifted";
  }
  force_isa(best_isa());
}

// The per-token quantization picked at run time (8 values at a time) against the portable loop, bit
// for bit, on the values that trip vector code: NaN (-> 0, not in the row's maximum), infinities
// (inf / inf is NaN -> 0), all-zero rows (scale 1), signed zeros, exact .5 steps (half to even),
// and widths with tails past the last 8.
TEST(TextOps, EveryInstructionSetQuantizesATokenAlike) {
  std::mt19937 g(21);
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  std::vector<std::vector<float>> rows;
  for (const int64_t k : {1, 7, 8, 13, 64, 100, 384}) rows.push_back(randn(static_cast<size_t>(k), g));
  rows.push_back(std::vector<float>(24, 0.0f));
  rows.push_back({-0.0f, 0.0f, -0.0f, 1e-40f, -1e-40f, 0.0f, 0.0f, 0.0f, 0.0f});
  std::vector<float> half_steps;  // max 127: then x / s = x exactly, .5 ties round to even
  for (int i = -40; i <= 40; ++i) half_steps.push_back(static_cast<float>(i) + 0.5f);
  half_steps.push_back(127.0f);
  rows.push_back(half_steps);
  std::vector<float> specials = randn(37, g);
  specials[3] = nan, specials[17] = -nan, specials[30] = 1e30f;
  rows.push_back(specials);
  std::vector<float> infinite = randn(19, g);
  infinite[9] = inf, infinite[11] = -inf;
  rows.push_back(infinite);
  for (const std::vector<float>& x : rows) {
    const int64_t k = static_cast<int64_t>(x.size());
    std::vector<int8_t> want(x.size()), got(x.size());
    float want_s = -1.0f, got_s = -2.0f;
    force_isa(Isa::kGeneric);
    quantize_row(x.data(), k, ActQuant::kPerToken, want.data(), &want_s);
    for (const Isa isa : {Isa::kAvx2, Isa::kAvx512Vnni}) {
      if (isa > best_isa()) {
        std::printf("[   INFO   ] instruction set %d not on this CPU: its token quantization is not checked here\n", static_cast<int>(isa));
        continue;
      }
      force_isa(isa);
      quantize_row(x.data(), k, ActQuant::kPerToken, got.data(), &got_s);
      ASSERT_EQ(std::memcmp(&got_s, &want_s, sizeof(float)), 0) << "isa " << static_cast<int>(isa) << " k " << k << ": scale " << got_s << " vs " << want_s;
      for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(got[i], want[i]) << "isa " << static_cast<int>(isa) << " k " << k << " at " << i << " x " << x[i];
    }
    force_isa(best_isa());
  }
  // The portable loop itself: ties to even, NaN to 0, an all-zero row keeps scale 1.
  force_isa(Isa::kGeneric);
  std::vector<int8_t> q(half_steps.size());
  float sc = 0.0f;
  quantize_row(half_steps.data(), static_cast<int64_t>(half_steps.size()), ActQuant::kPerToken, q.data(), &sc);
  EXPECT_EQ(sc, 1.0f);
  EXPECT_EQ(q[40], 0);   // 0.5 -> 0
  EXPECT_EQ(q[41], 2);   // 1.5 -> 2
  EXPECT_EQ(q[38], -2);  // -1.5 -> -2
  quantize_row(specials.data(), 37, ActQuant::kPerToken, q.data(), &sc);
  EXPECT_EQ(q[3], 0);
  EXPECT_EQ(q[30], 127);
  force_isa(best_isa());
}

// Linear layers and attention split their outputs over the threads: 1, 2 and 3 threads give the
// same bits (each output is the same operations on whichever thread), and so does a row count
// that does not divide into the threads' share.
TEST(TextOps, ResultsDoNotDependOnTheThreadCount) {
  std::mt19937 g(22);
  const int64_t t = 6, n = 45, k = 160;
  const std::vector<float> x = randn(static_cast<size_t>(t * k), g), bias = randn(static_cast<size_t>(n), g);
  AttentionConfig c;
  c.heads = 6, c.kv_heads = 3, c.head_dim = 16, c.causal = true, c.rope_theta = 10000.0f, c.max_positions = 32;
  const std::vector<float> q = randn(static_cast<size_t>(t * 96), g), kk = randn(static_cast<size_t>(t * 48), g),
                           v = randn(static_cast<size_t>(t * 48), g);
  struct Result {
    std::vector<float> lin[3], att;
  };
  auto compute = [&](int threads_n) {
    set_threads(threads_n);
    EXPECT_EQ(threads(), threads_n);
    Result r;
    int i = 0;
    for (const ActQuant mode : {ActQuant::kPerToken, ActQuant::kQ8_0, ActQuant::kNone}) {
      const TestWeight w = make_weight(n, k, mode == ActQuant::kPerToken ? k : 32, g);
      r.lin[i].resize(static_cast<size_t>(t * n));
      LinearScratch scratch;
      const QuantWeight view = w.view(n, k, mode == ActQuant::kPerToken ? k : 32, false);
      const PackedLinear packed = pack_linear(view, mode);
      linear_forward(x.data(), t, view, bias.data(), mode, r.lin[i].data(), scratch, &packed);
      ++i;
    }
    KvCache cache;
    r.att.resize(static_cast<size_t>(t * 96));
    attention_forward(c, q.data(), kk.data(), v.data(), t, cache, r.att.data());
    return r;
  };
  const std::mt19937 start = g;
  g = start;
  const Result one = compute(1);
  for (const int threads_n : {2, 3}) {
    g = start;  // the same weights
    const Result many = compute(threads_n);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(many.lin[i], one.lin[i]) << threads_n << " threads, linear mode " << i;
    EXPECT_EQ(many.att, one.att) << threads_n << " threads, attention";
  }
  // An error on a worker reaches the caller.
  EXPECT_THROW(parallel_for(8, 1, [](int64_t b, int64_t) { if (b > 0) throw QdmError("worker"); }), QdmError);
  set_threads(1);
}

TEST(TextOps, NormsAndActivationsMatchTheirDefinitions) {
  std::mt19937 g(4);
  const int64_t d = 96;
  const std::vector<float> x = randn(static_cast<size_t>(d), g, 3.0f), w = randn(static_cast<size_t>(d), g), b = randn(static_cast<size_t>(d), g);
  std::vector<float> y(static_cast<size_t>(d));
  layer_norm_row(x.data(), d, w.data(), b.data(), 1e-12f, y.data());
  double mean = 0, var = 0;
  for (float v : x) mean += v;
  mean /= d;
  for (float v : x) var += (v - mean) * (v - mean);
  var /= d;
  for (int64_t j = 0; j < d; ++j)
    EXPECT_NEAR(y[static_cast<size_t>(j)], (x[static_cast<size_t>(j)] - mean) / std::sqrt(var + 1e-12) * w[static_cast<size_t>(j)] + b[static_cast<size_t>(j)], 1e-5);
  rms_norm_row(x.data(), d, w.data(), 1e-5f, y.data());
  double ss = 0;
  for (float v : x) ss += double{v} * v;
  for (int64_t j = 0; j < d; ++j)
    EXPECT_NEAR(y[static_cast<size_t>(j)], w[static_cast<size_t>(j)] * x[static_cast<size_t>(j)] / std::sqrt(ss / d + 1e-5), 1e-5);
  for (float v : {-6.0f, -1.0f, -0.1f, 0.0f, 0.3f, 2.0f, 9.0f}) {
    EXPECT_NEAR(gelu(v), 0.5 * v * (1 + std::erf(v / std::sqrt(2.0))), 1e-6) << v;
    EXPECT_NEAR(silu(v), v / (1 + std::exp(-double{v})), 1e-6) << v;
  }
}

// Attention from its definition, in double: rotary positions (HF's rotate_half), grouped-query heads.
std::vector<double> reference_attention(const AttentionConfig& c, const std::vector<float>& q, const std::vector<float>& k,
                                        const std::vector<float>& v, int64_t t) {
  const int64_t hd = c.head_dim, half = hd / 2, qw = c.heads * hd, kvw = c.kv_heads * hd;
  auto rope = [&](std::vector<double> x, int64_t pos) {
    if (c.rope_theta <= 0) return x;
    std::vector<double> y(x.size());
    for (int64_t i = 0; i < half; ++i) {
      const double a = pos / std::pow(double{c.rope_theta}, 2.0 * i / hd);
      y[static_cast<size_t>(i)] = x[static_cast<size_t>(i)] * std::cos(a) - x[static_cast<size_t>(i + half)] * std::sin(a);
      y[static_cast<size_t>(i + half)] = x[static_cast<size_t>(i + half)] * std::cos(a) + x[static_cast<size_t>(i)] * std::sin(a);
    }
    return y;
  };
  std::vector<double> out(static_cast<size_t>(t * qw));
  for (int64_t r = 0; r < t; ++r)
    for (int64_t h = 0; h < c.heads; ++h) {
      const int64_t kvh = h / (c.heads / c.kv_heads);
      const std::vector<double> qr = rope(std::vector<double>(q.begin() + r * qw + h * hd, q.begin() + r * qw + h * hd + hd), r);
      const int64_t keys = c.causal ? r + 1 : t;
      std::vector<double> p(static_cast<size_t>(keys));
      double mx = -INFINITY, sum = 0;
      for (int64_t j = 0; j < keys; ++j) {
        const std::vector<double> kr = rope(std::vector<double>(k.begin() + j * kvw + kvh * hd, k.begin() + j * kvw + kvh * hd + hd), j);
        double dot = 0;
        for (int64_t i = 0; i < hd; ++i) dot += qr[static_cast<size_t>(i)] * kr[static_cast<size_t>(i)];
        p[static_cast<size_t>(j)] = dot / std::sqrt(double(hd));
        mx = std::max(mx, p[static_cast<size_t>(j)]);
      }
      for (double& e : p) sum += (e = std::exp(e - mx));
      for (int64_t j = 0; j < keys; ++j)
        for (int64_t i = 0; i < hd; ++i)
          out[static_cast<size_t>(r * qw + h * hd + i)] += p[static_cast<size_t>(j)] / sum * v[static_cast<size_t>(j * kvw + kvh * hd + i)];
    }
  return out;
}

// Attention (causal with rotary positions and grouped-query heads, and bidirectional, 37 keys: a
// vector width's tail) and the norms, on every instruction set: the same bits as the portable build.
TEST(TextOps, AttentionAndNormsAreTheSameBitsOnEveryInstructionSet) {
  std::mt19937 g(8);
  AttentionConfig c;
  c.heads = 6, c.kv_heads = 2, c.head_dim = 32, c.rope_theta = 10000.0f, c.max_positions = 64;
  const int64_t t = 37, d = 389;
  const std::vector<float> q = randn(static_cast<size_t>(t * 192), g), k = randn(static_cast<size_t>(t * 64), g),
                           v = randn(static_cast<size_t>(t * 64), g), x = randn(static_cast<size_t>(d), g),
                           w = randn(static_cast<size_t>(d), g), b = randn(static_cast<size_t>(d), g);
  const auto run = [&](bool causal) {
    c.causal = causal;
    KvCache cache;
    std::vector<float> out(static_cast<size_t>(t * 192)), ln(static_cast<size_t>(d)), rms(static_cast<size_t>(d));
    attention_forward(c, q.data(), k.data(), v.data(), t, cache, out.data());
    layer_norm_row(x.data(), d, w.data(), b.data(), 1e-12f, ln.data());
    rms_norm_row(x.data(), d, w.data(), 1e-5f, rms.data());
    out.insert(out.end(), ln.begin(), ln.end());
    out.insert(out.end(), rms.begin(), rms.end());
    return out;
  };
  for (const bool causal : {true, false}) {
    force_isa(Isa::kGeneric);
    const std::vector<float> want = run(causal);
    for (const Isa isa : {Isa::kAvx2, Isa::kAvx512Vnni, Isa::kAmx}) {
      if (isa > best_isa()) {
        std::printf("[   INFO   ] instruction set %d not on this CPU: its attention is not checked here\n", static_cast<int>(isa));
        continue;
      }
      force_isa(isa);
      const std::vector<float> got = run(causal);
      ASSERT_EQ(std::memcmp(got.data(), want.data(), want.size() * sizeof(float)), 0) << "isa " << static_cast<int>(isa) << " causal " << causal;
    }
    force_isa(best_isa());
  }
}

TEST(TextOps, GroupedQueryRotaryAttentionAndItsKvCache) {
  std::mt19937 g(5);
  AttentionConfig c;
  c.heads = 6, c.kv_heads = 2, c.head_dim = 8, c.causal = true, c.rope_theta = 10000.0f, c.max_positions = 64;
  const int64_t t = 7;
  const std::vector<float> q = randn(static_cast<size_t>(t * 48), g), k = randn(static_cast<size_t>(t * 16), g), v = randn(static_cast<size_t>(t * 16), g);
  for (const bool causal : {true, false}) {
    c.causal = causal;
    KvCache cache;
    std::vector<float> out(static_cast<size_t>(t * 48));
    attention_forward(c, q.data(), k.data(), v.data(), t, cache, out.data());
    const std::vector<double> want = reference_attention(c, q, k, v, t);
    for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], want[i], 2e-5) << "causal " << causal << " element " << i;
    EXPECT_EQ(cache.positions, t);
  }
  // A 3-token prompt, then one token at a time through the cache = all 7 at once.
  c.causal = true;
  KvCache all, step;
  std::vector<float> once(static_cast<size_t>(t * 48)), prompt(3 * 48), one(48);
  attention_forward(c, q.data(), k.data(), v.data(), t, all, once.data());
  attention_forward(c, q.data(), k.data(), v.data(), 3, step, prompt.data());
  for (size_t i = 0; i < prompt.size(); ++i) ASSERT_NEAR(prompt[i], once[i], 1e-6) << i;
  for (int64_t r = 3; r < t; ++r) {
    attention_forward(c, q.data() + r * 48, k.data() + r * 16, v.data() + r * 16, 1, step, one.data());
    for (int64_t i = 0; i < 48; ++i) ASSERT_NEAR(one[static_cast<size_t>(i)], once[static_cast<size_t>(r * 48 + i)], 1e-6) << r << " " << i;
  }
  EXPECT_EQ(step.positions, t);
  KvCache full;
  full.positions = 60;
  full.k.resize(60 * 16), full.v.resize(60 * 16);
  EXPECT_THROW(attention_forward(c, q.data(), k.data(), v.data(), t, full, once.data()), QdmError);
}

// The cache's storage forms: attention over keys and values kept in f16, per-row int8 or Q8_0
// blocks equals the reference over the same rows rounded that way (quantize_row, the simulation's
// qat.kv_cache); token-by-token through the cache equals the whole sequence; the quantized forms
// take a quarter of the memory (plus scales).
TEST(TextOps, KvCacheStoresKeepTheirRowsAsTheSimulationRoundsThem) {
  std::mt19937 g(15);
  AttentionConfig c;
  c.heads = 4, c.kv_heads = 2, c.head_dim = 32, c.causal = true, c.max_positions = 32;
  const int64_t t = 6, kvw = 64, qw = 128;
  const std::vector<float> q = randn(static_cast<size_t>(t * qw), g), k = randn(static_cast<size_t>(t * kvw), g),
                           v = randn(static_cast<size_t>(t * kvw), g);
  // Each row of head_dim values as the store keeps it.
  auto stored = [&](const std::vector<float>& x, KvStore s) {
    std::vector<float> out(x.size());
    for (size_t r = 0; r < x.size() / 32; ++r) {
      const float* row = x.data() + r * 32;
      if (s == KvStore::kF16) {
        for (int i = 0; i < 32; ++i) out[r * 32 + static_cast<size_t>(i)] = fp16_round(row[i]);
        continue;
      }
      std::vector<int8_t> qv(32);
      float scale = 0.0f;
      quantize_row(row, 32, s == KvStore::kQ8_0 ? ActQuant::kQ8_0 : ActQuant::kPerToken, qv.data(), &scale);
      for (int i = 0; i < 32; ++i) out[r * 32 + static_cast<size_t>(i)] = static_cast<float>(qv[static_cast<size_t>(i)]) * scale;
    }
    return out;
  };
  size_t f32_bytes = 0;
  for (const KvStore s : {KvStore::kF32, KvStore::kF16, KvStore::kPerToken, KvStore::kQ8_0}) {
    c.kv = s;
    c.rope_theta = 0.0f;  // the reference rounds the rows it is given: no rotation in between
    KvCache cache;
    std::vector<float> out(static_cast<size_t>(t * qw));
    attention_forward(c, q.data(), k.data(), v.data(), t, cache, out.data());
    AttentionConfig plain = c;
    plain.kv = KvStore::kF32;
    const std::vector<double> want = reference_attention(plain, q, s == KvStore::kF32 ? k : stored(k, s), s == KvStore::kF32 ? v : stored(v, s), t);
    for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], want[i], 2e-5) << "store " << static_cast<int>(s) << " element " << i;
    if (s == KvStore::kF32) f32_bytes = cache.bytes();
    if (s == KvStore::kQ8_0) {
      EXPECT_LT(cache.bytes() * 3, f32_bytes) << "int8 rows and a scale per 32";
    }
    // With rotary positions: one token at a time through the cache = all at once.
    c.rope_theta = 10000.0f;
    KvCache all, step;
    std::vector<float> once(static_cast<size_t>(t * qw)), one(static_cast<size_t>(qw));
    attention_forward(c, q.data(), k.data(), v.data(), t, all, once.data());
    for (int64_t r = 0; r < t; ++r) {
      attention_forward(c, q.data() + r * qw, k.data() + r * kvw, v.data() + r * kvw, 1, step, one.data());
      for (int64_t i = 0; i < qw; ++i) ASSERT_NEAR(one[static_cast<size_t>(i)], once[static_cast<size_t>(r * qw + i)], 1e-6) << r;
    }
  }
}

// ids -> embedding (int8 rows) -> layer_norm -> linear (per-token int8) -> gelu -> linear -> add
// -> mean_pool -> l2_normalize: a one-layer encoder's FFN path, with a dynamic token count.
Graph tiny_encoder(std::mt19937& g) {
  const int64_t vocab = 50, d = 32, f = 64;
  Graph gr;
  gr.metadata["task"] = "sentence_embedding";
  const int32_t ids = gr.add_value({"input_ids", DType::kI32, {-1}});
  auto rows = [&](const char* name, int64_t w) { return gr.add_value({name, DType::kF32, {-1, w}}); };
  const int32_t e = rows("embed", d), n = rows("norm", d), h = rows("ffn_in", f), a = rows("act", f), o = rows("ffn_out", d), r = rows("residual", d);
  const int32_t pooled = gr.add_value({"pooled", DType::kF32, {d}}), emb = gr.add_value({"embedding", DType::kF32, {d}});
  gr.inputs = {ids};
  gr.outputs = {emb};
  auto qweight = [&](Node& node, int64_t out, int64_t in) {
    const TestWeight w = make_weight(out, in, in, g);
    node.attrs["weight"] = Attr::of_tensor(DType::kI8, {out, in}, w.q);
    node.attrs["weight_scale"] = Attr::of_tensor(DType::kF32, {out, 1}, w.s);
  };
  qweight(gr.add_node("embedding", "embed", {ids}, {e}), vocab, d);
  Node& ln = gr.add_node("layer_norm", "norm", {e}, {n});
  ln.attrs["weight"] = Attr::of_tensor(DType::kF32, {d}, randn(static_cast<size_t>(d), g));
  ln.attrs["bias"] = Attr::of_tensor(DType::kF32, {d}, randn(static_cast<size_t>(d), g));
  ln.attrs["eps"] = Attr::of_float(1e-12f);
  Node& l1 = gr.add_node("linear", "ffn_in", {n}, {h});
  qweight(l1, f, d);
  l1.attrs["bias"] = Attr::of_tensor(DType::kF32, {f}, randn(static_cast<size_t>(f), g));
  l1.attrs["input_quant"] = Attr::of_string("per_token");
  gr.add_node("gelu", "act", {h}, {a});
  Node& l2 = gr.add_node("linear", "ffn_out", {a}, {o});
  qweight(l2, d, f);
  l2.attrs["input_quant"] = Attr::of_string("per_token");
  gr.add_node("add", "residual", {e, o}, {r});
  gr.add_node("mean_pool", "pool", {r}, {pooled});
  gr.add_node("l2_normalize", "normalize", {pooled}, {emb});
  return gr;
}

// Generation's rewrite (qdistill-run --prompt): the head of a norm computes the last token's row
// only, and that row is the full graph's last row bit for bit; a graph of another shape is left as
// it is.
TEST(TextOps, LastTokenOutputIsTheLastRowOfTheWholeOutput) {
  std::mt19937 g(31);
  const int64_t vocab = 40, d = 32;
  Graph gr;
  const int32_t ids = gr.add_value({"input_ids", DType::kI32, {-1}});
  const int32_t e = gr.add_value({"embed", DType::kF32, {-1, d}}), n = gr.add_value({"norm", DType::kF32, {-1, d}}),
                logits = gr.add_value({"logits", DType::kF32, {-1, vocab}});
  gr.inputs = {ids};
  gr.outputs = {logits};
  const TestWeight we = make_weight(vocab, d, 32, g), wh = make_weight(vocab, d, 32, g);
  Node& emb = gr.add_node("embedding", "embed", {ids}, {e});
  emb.attrs["weight"] = Attr::of_tensor(DType::kI8, {vocab, d}, we.q);
  emb.attrs["weight_scale"] = Attr::of_tensor(DType::kF32, {vocab, 1}, we.s);
  Node& nn = gr.add_node("rms_norm", "norm", {e}, {n});
  nn.attrs["weight"] = Attr::of_tensor(DType::kF32, {d}, randn(static_cast<size_t>(d), g));
  nn.attrs["eps"] = Attr::of_float(1e-5f);
  Node& head = gr.add_node("linear", "lm_head", {n}, {logits});
  head.attrs["weight"] = Attr::of_tensor(DType::kI8, {vocab, d}, wh.q);
  head.attrs["weight_scale"] = Attr::of_tensor(DType::kF32, {vocab, 1}, wh.s);
  head.attrs["input_quant"] = Attr::of_string("q8_0");
  ASSERT_EQ(validate(gr), "");
  const Graph last = last_token_output(gr);
  ASSERT_EQ(validate(last), "");
  ASSERT_EQ(last.nodes.size(), 4u);
  EXPECT_EQ(last.nodes[1].op, "last_row");
  const std::vector<int32_t> tokens = {3, 17, 5, 39, 0, 22, 8};
  Executor full(gr), one(last);
  for (Executor* ex : {&full, &one}) {
    ex->input(0).resize({static_cast<int64_t>(tokens.size())});
    std::copy(tokens.begin(), tokens.end(), ex->input(0).data<int32_t>());
    ex->run();
  }
  ASSERT_EQ(one.output(0).shape, (Shape{1, vocab}));
  EXPECT_EQ(std::memcmp(one.output(0).data<float>(), full.output(0).data<float>() + (tokens.size() - 1) * vocab, vocab * sizeof(float)), 0);
  // An encoder (its output is not a head over a norm) is returned as it was.
  std::mt19937 g2(3);
  const Graph enc = tiny_encoder(g2);
  EXPECT_EQ(last_token_output(enc).nodes.size(), enc.nodes.size());
}

TEST(TextOps, EncoderGraphRunsAnyTokenCountAndRoundTripsItsFile) {
  std::mt19937 g(6);
  const Graph gr = tiny_encoder(g);
  ASSERT_EQ(validate(gr), "");
  const std::vector<uint8_t> bytes = serialize_graph(gr);
  EXPECT_EQ(serialize_graph(parse_graph(bytes.data(), bytes.size())), bytes);
  Executor ex(parse_graph(bytes.data(), bytes.size()));
  for (const int64_t t : {1, 5, 17}) {
    Buffer& ids = ex.input(0);
    ids.resize({t});
    for (int64_t i = 0; i < t; ++i) ids.data<int32_t>()[i] = static_cast<int32_t>((i * 7 + 3) % 50);
    ex.run();
    const Buffer& out = ex.output(0);
    ASSERT_EQ(out.shape, Shape{32});
    double norm = 0;
    for (int64_t j = 0; j < 32; ++j) norm += double{out.data<float>()[j]} * out.data<float>()[j];
    EXPECT_NEAR(norm, 1.0, 1e-5) << t;
    // The pooled vector is the mean of the residual rows.
    const Buffer& res = ex.value(6);
    ASSERT_EQ(res.shape, (Shape{t, 32}));
    for (int64_t j = 0; j < 32; ++j) {
      double m = 0;
      for (int64_t r = 0; r < t; ++r) m += res.data<float>()[r * 32 + j];
      EXPECT_NEAR(ex.value(7).data<float>()[j], m / t, 1e-5);
    }
  }
  ex.input(0).data<int32_t>()[2] = 50;
  try {
    ex.run();
    FAIL() << "ran token id 50 of a 50-token vocabulary";
  } catch (const QdmError& e) {
    EXPECT_TRUE(contains(e.what(), "token id 50 at position 2 is outside [0, 50)")) << e.what();
  }
}

// A BERT's embedding end: word rows + position rows (int8) + the token-type row as bias, and a
// pooled sentence projected by a linear layer that reads a vector (sentence-transformers' Dense),
// against a double-precision reference.
TEST(TextOps, PositionsAndAProjectedSentenceMatchTheReference) {
  std::mt19937 g(9);
  const int64_t vocab = 20, positions = 8, d = 32, out_d = 16;
  Graph gr;
  const int32_t ids = gr.add_value({"input_ids", DType::kI32, {-1}});
  const int32_t e = gr.add_value({"word", DType::kF32, {-1, d}}), p = gr.add_value({"positions", DType::kF32, {-1, d}});
  const int32_t pooled = gr.add_value({"pooled", DType::kF32, {d}}), dense = gr.add_value({"dense", DType::kF32, {out_d}});
  gr.inputs = {ids};
  gr.outputs = {dense};
  const TestWeight word = make_weight(vocab, d, d, g), pos = make_weight(positions, d, d, g), proj = make_weight(out_d, d, d, g);
  const std::vector<float> type_row = randn(static_cast<size_t>(d), g), proj_bias = randn(static_cast<size_t>(out_d), g);
  Node& en = gr.add_node("embedding", "word", {ids}, {e});
  en.attrs["weight"] = Attr::of_tensor(DType::kI8, {vocab, d}, word.q);
  en.attrs["weight_scale"] = Attr::of_tensor(DType::kF32, {vocab, 1}, word.s);
  Node& pn = gr.add_node("add_positions", "position", {e}, {p});
  pn.attrs["weight"] = Attr::of_tensor(DType::kI8, {positions, d}, pos.q);
  pn.attrs["weight_scale"] = Attr::of_tensor(DType::kF32, {positions, 1}, pos.s);
  pn.attrs["bias"] = Attr::of_tensor(DType::kF32, {d}, type_row);
  gr.add_node("mean_pool", "pool", {p}, {pooled});
  Node& ln = gr.add_node("linear", "dense", {pooled}, {dense});
  ln.attrs["weight"] = Attr::of_tensor(DType::kI8, {out_d, d}, proj.q);
  ln.attrs["weight_scale"] = Attr::of_tensor(DType::kF32, {out_d, 1}, proj.s);
  ln.attrs["bias"] = Attr::of_tensor(DType::kF32, {out_d}, proj_bias);
  ASSERT_EQ(validate(gr), "");
  Executor ex(gr);
  const std::vector<int32_t> tokens = {3, 19, 0, 7, 7};
  const int64_t t = static_cast<int64_t>(tokens.size());
  ex.input(0).resize({t});
  std::copy(tokens.begin(), tokens.end(), ex.input(0).data<int32_t>());
  ex.run();
  // The reference in double: the table rows are q * s; the pooled mean; then the float product.
  std::vector<double> mean(static_cast<size_t>(d), 0.0);
  for (int64_t r = 0; r < t; ++r)
    for (int64_t j = 0; j < d; ++j) {
      const size_t id = static_cast<size_t>(tokens[static_cast<size_t>(r)]);
      const double x = static_cast<double>(word.q[id * static_cast<size_t>(d) + static_cast<size_t>(j)]) * word.s[id] +
                       static_cast<double>(pos.q[static_cast<size_t>(r * d + j)]) * pos.s[static_cast<size_t>(r)] +
                       type_row[static_cast<size_t>(j)];
      EXPECT_NEAR(ex.value(p).data<float>()[r * d + j], x, 1e-5 * (1 + std::fabs(x)));
      mean[static_cast<size_t>(j)] += x / static_cast<double>(t);
    }
  ASSERT_EQ(ex.output(0).shape, Shape{out_d});
  for (int64_t o = 0; o < out_d; ++o) {
    double y = proj_bias[static_cast<size_t>(o)];
    for (int64_t j = 0; j < d; ++j) y += static_cast<double>(proj.q[static_cast<size_t>(o * d + j)]) * proj.s[static_cast<size_t>(o)] * mean[static_cast<size_t>(j)];
    EXPECT_NEAR(ex.output(0).data<float>()[o], y, 1e-4 * (1 + std::fabs(y))) << o;
  }
  // More tokens than the table has positions: a clear error, not a read past the table.
  ex.input(0).resize({positions + 1});
  std::fill_n(ex.input(0).data<int32_t>(), positions + 1, 1);
  try {
    ex.run();
    FAIL() << "ran 9 tokens with 8 positions";
  } catch (const QdmError& err) {
    EXPECT_TRUE(contains(err.what(), "9 tokens, but the model has 8 positions")) << err.what();
  }
}

TEST(TextOps, ValidationOfTextNodesNamesTheProblem) {
  std::mt19937 g(7);
  const Graph good = tiny_encoder(g);
  auto broken = [&](auto edit) {
    Graph gr = good;
    edit(gr);
    return validate(gr);
  };
  std::string e = broken([](Graph& gr) { gr.nodes[2].attrs["input_quant"] = Attr::of_string("q4"); });
  EXPECT_TRUE(contains(e, "input_quant 'q4': expected none, per_token or q8_0")) << e;
  e = broken([](Graph& gr) { gr.nodes[4].attrs["input_quant"] = Attr::of_string("q8_0"); gr.nodes[4].attrs["weight_scale"].shape = {32, 1}; });
  EXPECT_EQ(e, "");  // 64 inputs: Q8_0 blocks fit
  e = broken([](Graph& gr) { gr.nodes[2].attrs["weight_scale"] = Attr::of_tensor(DType::kF32, {64, 3}, std::vector<float>(192, 0.01f)); });
  EXPECT_TRUE(contains(e, "weight_scale must be f32 [64, groups] with groups dividing 32")) << e;
  e = broken([](Graph& gr) { gr.nodes[1].attrs.erase("bias"); });
  EXPECT_TRUE(contains(e, "node 1 (layer_norm 'norm'): attribute bias is missing")) << e;
  e = broken([](Graph& gr) { gr.values[3].shape = {-1, 65}; });
  EXPECT_TRUE(contains(e, "output 0 is declared ?x65, the op writes ?x64")) << e;
  e = broken([](Graph& gr) { gr.nodes[5].inputs = {0, 5}; });
  EXPECT_TRUE(contains(e, "operand 0 must be f32")) << e;
}


TEST(TextOps, DynamicTokenCountsMustAgreeAtRunTime) {
  Graph g;
  const int32_t a = g.add_value({"a", DType::kF32, {-1, 4}}), b = g.add_value({"b", DType::kF32, {-1, 4}}),
                y = g.add_value({"y", DType::kF32, {-1, 4}});
  g.inputs = {a, b};
  g.outputs = {y};
  g.add_node("add", "sum", {a, b}, {y});
  Executor ex(g);
  ex.input(0).resize({3, 4});
  ex.input(1).resize({3, 4});
  ex.run();
  EXPECT_EQ(ex.output(0).shape, (Shape{3, 4}));
  ex.input(1).resize({2, 4});
  try {
    ex.run();
    FAIL() << "added 3 rows to 2";
  } catch (const QdmError& e) {
    EXPECT_TRUE(contains(e.what(), "operands of 3x4 and 2x4 at run time")) << e.what();
  }
}

TEST(TextOps, EveryTextOpGraphOfTheFuzzSeedsIsValidAndRuns) {
  const Graph g = test_models::every_text_op_graph();
  ASSERT_EQ(validate(g), "");
  for (const OpSpec& op : text_ops())
    EXPECT_TRUE(std::any_of(g.nodes.begin(), g.nodes.end(), [&](const Node& n) { return n.op == op.name; }))
        << op.name << " is missing from the fuzzer's seed graph";
  Executor ex(g);
  for (const int64_t t : {1, 4}) {
    ex.reset();
    ex.input(0).resize({t});
    for (int64_t i = 0; i < t; ++i) ex.input(0).data<int32_t>()[i] = static_cast<int32_t>(i * 11 % 40);
    ex.run();
    double norm = 0;
    for (int64_t j = 0; j < 64; ++j) norm += double{ex.output(0).data<float>()[j]} * ex.output(0).data<float>()[j];
    EXPECT_NEAR(norm, 1.0, 1e-5);
  }
}

}  // namespace
}  // namespace qd::rt
