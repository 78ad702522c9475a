// The edge runtime's integer arithmetic: fixed-point requantization against exact rounding, the
// blocked GEMM and the im2col convolution against direct loops. No LibTorch here: the runtime
// must build and run without it.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "runtime/kernels.h"

namespace qd::rt {
namespace {


TEST(FixedPoint, MultiplierRepresentsTheRealFactor) {
  for (double real : {0.5, 0.25, 1e-3, 0.70710678, 0.999999999, 3.5, 1.0, 2e-7}) {
    const QuantizedMultiplier q = quantize_multiplier(real);
    EXPECT_GE(q.multiplier, int32_t{1} << 30) << real;
    const long double back = static_cast<long double>(q.multiplier) * std::pow(2.0L, q.shift - 31);
    EXPECT_LE(std::fabs(static_cast<double>(back) - real), real * std::pow(2.0, -30)) << real;
  }
  EXPECT_EQ(quantize_multiplier(0.0).multiplier, 0);
}

TEST(FixedPoint, RoundingByHand) {
  const QuantizedMultiplier half = quantize_multiplier(0.5);
  EXPECT_EQ(multiply_by_quantized_multiplier(100, half), 50);
  EXPECT_EQ(multiply_by_quantized_multiplier(3, half), 2);    // 1.5 -> 2
  EXPECT_EQ(multiply_by_quantized_multiplier(-3, half), -1);  // -1.5 -> -1: ties round upward
  EXPECT_EQ(multiply_by_quantized_multiplier(-5, half), -2);
  const QuantizedMultiplier quarter = quantize_multiplier(0.25);
  EXPECT_EQ(multiply_by_quantized_multiplier(7, quarter), 2);    // 1.75
  EXPECT_EQ(multiply_by_quantized_multiplier(-7, quarter), -2);  // -1.75
  EXPECT_EQ(multiply_by_quantized_multiplier(5, quarter), 1);    // 1.25
  // Saturation instead of overflow, for large factors.
  EXPECT_EQ(multiply_by_quantized_multiplier(INT32_MAX, quantize_multiplier(1024.0)), INT32_MAX);
  EXPECT_EQ(multiply_by_quantized_multiplier(INT32_MIN, quantize_multiplier(1024.0)), INT32_MIN);
}

TEST(FixedPoint, RoundsOnceExactly) {
  std::mt19937 gen(7);
  std::uniform_int_distribution<int32_t> xs(-(1 << 24), 1 << 24);
  std::uniform_real_distribution<double> logm(-12.0, 1.5);
  for (int i = 0; i < 200000; ++i) {
    const double real = std::exp(logm(gen));
    const int32_t x = xs(gen);
    const QuantizedMultiplier q = quantize_multiplier(real);
    // The exact product x * m * 2^(shift - 31), rounded half up: what one rounding must give.
    const long double m = static_cast<long double>(q.multiplier) * std::pow(2.0L, q.shift - 31);
    const int64_t want = static_cast<int64_t>(std::floor(static_cast<long double>(x) * m + 0.5L));
    ASSERT_EQ(multiply_by_quantized_multiplier(x, q), want) << "x " << x << " real " << real;
  }
}

TEST(Gemm, MatchesNaiveWithZeroPoint) {
  std::mt19937 gen(3);
  std::uniform_int_distribution<int> v(-128, 127);
  for (const auto& [m, n, k, zp] : std::vector<std::tuple<int, int, int, int>>{{1, 1, 1, 0}, {5, 300, 27, -128}, {16, 784, 72, 3}, {7, 513, 9, 127}}) {
    std::vector<int8_t> a(static_cast<size_t>(m * k)), b(static_cast<size_t>(k * n));
    for (auto& x : a) x = static_cast<int8_t>(v(gen));
    for (auto& x : b) x = static_cast<int8_t>(v(gen));
    a[0] = 0;  // zero weights are skipped: the result must not change
    std::vector<int32_t> c(static_cast<size_t>(m * n));
    gemm_s8s8_s32(a.data(), b.data(), c.data(), m, n, k, zp);
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) {
        int32_t want = 0;
        for (int kk = 0; kk < k; ++kk) want += a[static_cast<size_t>(i * k + kk)] * (b[static_cast<size_t>(kk * n + j)] - zp);
        ASSERT_EQ(c[static_cast<size_t>(i * n + j)], want) << m << "x" << n << "x" << k << " at " << i << "," << j;
      }
  }
}

TEST(Conv, PackedDirectConvMatchesNaiveLoops) {
  std::mt19937 gen(11);
  std::uniform_int_distribution<int> v(-128, 127), bias(-5000, 5000);
  // Odd and even input channels, output channels below, at and past a block of 8, rows longer
  // and shorter than a pixel block of 8.
  for (const auto& [kernel, stride, pad, in_c, out_c, in_w] : std::vector<std::tuple<int, int, int, int, int, int>>{
           {3, 1, 1, 3, 4, 7}, {3, 2, 1, 3, 4, 7}, {1, 2, 0, 3, 4, 7}, {3, 1, 0, 3, 4, 7},
           {3, 1, 1, 1, 8, 28}, {3, 1, 1, 8, 17, 19}, {3, 2, 1, 16, 24, 14}, {1, 1, 0, 5, 9, 3}}) {
    ConvShape s;
    s.in_c = in_c, s.in_h = 9, s.in_w = in_w, s.out_c = out_c, s.kernel = kernel, s.stride = stride, s.pad = pad;
    std::vector<int8_t> in(static_cast<size_t>(s.in_c * s.in_h * s.in_w)), w(static_cast<size_t>(s.out_c * s.in_c * kernel * kernel));
    for (auto& x : in) x = static_cast<int8_t>(v(gen));
    for (auto& x : w) x = static_cast<int8_t>(v(gen));
    std::vector<int32_t> b(static_cast<size_t>(s.out_c));
    for (auto& x : b) x = bias(gen);
    std::vector<QuantizedMultiplier> mult;
    // Factors below 1 take the vector requantization; a block with one above 1 the scalar one.
    for (int o = 0; o < s.out_c; ++o) mult.push_back(quantize_multiplier(o == 9 ? 1.5 : 0.0007 * (o + 1)));
    Requant r;
    r.in_zero = -17;
    r.out_zero = -128;
    r.out_min = -128;  // fused ReLU
    r.bias = b.data();
    r.multiplier = mult.data();
    std::vector<int8_t> out(static_cast<size_t>(s.out_c * s.out_h() * s.out_w()));
    ConvScratch scratch;
    // The last pass packs for VNNI (int8 quads) and runs the portable code on that packing.
    for (int pass = 0; pass < 4; ++pass) {
    const Isa isa = pass == 3 ? Isa::kAvx512Vnni : static_cast<Isa>(pass);
    if (isa > best_isa()) {
      std::printf("[   INFO   ] instruction set %d not on this CPU: its kernel is not checked here\n", static_cast<int>(isa));
      continue;
    }
    force_isa(isa);
    const PackedConvWeights packed = pack_conv_weights(w.data(), s);
    if (pass == 3) force_isa(Isa::kGeneric);
    conv2d_s8(in.data(), packed, s, r, out.data(), scratch);
    for (int o = 0; o < s.out_c; ++o)
      for (int y = 0; y < s.out_h(); ++y)
        for (int x = 0; x < s.out_w(); ++x) {
          int32_t acc = b[static_cast<size_t>(o)];
          for (int c = 0; c < s.in_c; ++c)
            for (int ky = 0; ky < kernel; ++ky)
              for (int kx = 0; kx < kernel; ++kx) {
                const int iy = y * stride - pad + ky, ix = x * stride - pad + kx;
                const int32_t xv = (iy < 0 || iy >= s.in_h || ix < 0 || ix >= s.in_w)
                                       ? r.in_zero
                                       : in[static_cast<size_t>((c * s.in_h + iy) * s.in_w + ix)];
                acc += w[static_cast<size_t>(((o * s.in_c + c) * kernel + ky) * kernel + kx)] * (xv - r.in_zero);
              }
          const int32_t want = std::clamp(r.out_zero + multiply_by_quantized_multiplier(acc, mult[static_cast<size_t>(o)]),
                                          r.out_min, r.out_max);
          ASSERT_EQ(out[static_cast<size_t>((o * s.out_h() + y) * s.out_w() + x)], want)
              << "kernel " << kernel << " stride " << stride << " pad " << pad << " channels " << in_c << "->" << out_c
              << " at " << o << "," << y << "," << x << " pass " << pass;
        }
    }
    force_isa(best_isa());
  }
}

}  // namespace
}  // namespace qd::rt
