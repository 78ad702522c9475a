// Integer requantization with a fixed-point multiplier, as in gemmlowp and TFLite (Jacob et al.
// 2018, section 2.2): a real factor M in (0, 1) — or any positive M — is stored as a 32-bit
// multiplier m in [2^30, 2^31) and a power-of-two shift, M ≈ m · 2^(shift − 31), and applied to an
// int32 accumulator as an exact 64-bit product and one rounding right shift. No floating point
// at inference time. Header-only, no dependencies (part of the edge runtime).
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

inline int32_t saturate_int32(int64_t v) {
  return static_cast<int32_t>(
      std::clamp<int64_t>(v, std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max()));
}

// round(x * M) for the multiplier's M, in integers only, rounding ONCE: x * m is exact in int64
// (|x|, m < 2^31) and one rounding right shift by 31 - shift gives the nearest integer, ties
// upward (TFLite's single-rounding mode). gemmlowp's original form rounds twice (a doubling high
// multiply, then a rounding shift), which moves about one result in 2^(fraction bits kept) by
// one step; rounding once keeps the runtime on training's float rounding except where float
// error itself decides (docs/export.md). Saturates to int32.
inline int32_t multiply_by_quantized_multiplier(int32_t x, QuantizedMultiplier q) {
  const int total_shift = 31 - q.shift;  // in [1, 62] for shift in [-31, 30]
  const int64_t prod = static_cast<int64_t>(x) * q.multiplier;
  const int64_t rounded = (prod + (int64_t{1} << (total_shift - 1))) >> total_shift;  // arithmetic: floor
  return saturate_int32(rounded);
}

}  // namespace qd::rt
