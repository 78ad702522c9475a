// Integer requantization with a fixed-point multiplier, as in gemmlowp and TFLite (Jacob et al.
// 2018, section 2.2): a real factor M in (0, 1) — or any positive M — is stored as a 32-bit
// multiplier m in [2^30, 2^31) and a power-of-two shift, M ≈ m · 2^(shift − 31), and applied to an
// int32 accumulator with a rounding doubling high multiply and a rounding right shift. No
// floating point at inference time. Header-only, no dependencies (part of the edge runtime).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace qd::rt {

struct QuantizedMultiplier {
  int32_t multiplier = 0;  // in [2^30, 2^31), or 0 for a zero factor
  int shift = 0;           // M = multiplier * 2^(shift - 31); shift <= 0 is a right shift
};

// Decomposes `real` (>= 0, finite) into the fixed-point form above.
inline QuantizedMultiplier quantize_multiplier(double real) {
  QuantizedMultiplier q;
  if (!(real > 0.0) || !std::isfinite(real)) return q;
  int exp = 0;
  const double frac = std::frexp(real, &exp);  // real = frac * 2^exp, frac in [0.5, 1)
  int64_t m = static_cast<int64_t>(std::llround(frac * static_cast<double>(int64_t{1} << 31)));
  if (m == (int64_t{1} << 31)) {  // frac rounded up to 1.0
    m /= 2;
    ++exp;
  }
  q.multiplier = static_cast<int32_t>(m);
  q.shift = exp;
  return q;
}

// (a * b * 2) >> 32 with rounding to nearest (ties away from zero) and saturation of the one
// overflow case (a == b == INT32_MIN). gemmlowp's SaturatingRoundingDoublingHighMul.
inline int32_t saturating_rounding_doubling_high_mul(int32_t a, int32_t b) {
  if (a == std::numeric_limits<int32_t>::min() && b == std::numeric_limits<int32_t>::min())
    return std::numeric_limits<int32_t>::max();
  const int64_t ab = static_cast<int64_t>(a) * static_cast<int64_t>(b);
  const int64_t nudge = ab >= 0 ? (int64_t{1} << 30) : (1 - (int64_t{1} << 30));
  return static_cast<int32_t>((ab + nudge) / (int64_t{1} << 31));
}

// x / 2^exponent rounded to nearest, ties away from zero. gemmlowp's RoundingDivideByPOT.
inline int32_t rounding_divide_by_pot(int32_t x, int exponent) {
  if (exponent <= 0) return x;
  const int32_t mask = static_cast<int32_t>((int64_t{1} << exponent) - 1);
  const int32_t remainder = x & mask;
  const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
  return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

// round(x * M) for the multiplier's M, in integers only.
inline int32_t multiply_by_quantized_multiplier(int32_t x, QuantizedMultiplier q) {
  const int left = q.shift > 0 ? q.shift : 0, right = q.shift > 0 ? 0 : -q.shift;
  const int64_t shifted = static_cast<int64_t>(x) * (int64_t{1} << left);
  const int32_t xs = static_cast<int32_t>(std::clamp<int64_t>(shifted, std::numeric_limits<int32_t>::min(),
                                                              std::numeric_limits<int32_t>::max()));
  return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(xs, q.multiplier), right);
}

}  // namespace qd::rt
