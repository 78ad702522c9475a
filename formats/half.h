// IEEE 754 half precision and bfloat16 to float32, exactly (every half and bfloat16 is a float),
// and float32 to half (round to nearest, ties to even, as F16C and ggml's GGML_FP32_TO_FP16 do),
// without relying on compiler extensions (_Float16) or F16C. Header-only, no dependencies.
#pragma once

#include <cstdint>
#include <cstring>

namespace qd::fmt {

inline float bits_to_float(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// bfloat16 is the top half of a float32.
inline float bf16_to_float(uint16_t b) { return bits_to_float(uint32_t{b} << 16); }

inline float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t{h & 0x8000u} << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t mant = h & 0x3FFu;
  if (exp == 0x1F) return bits_to_float(sign | 0x7F800000u | (mant << 13));  // inf, nan (payload kept)
  if (exp != 0) return bits_to_float(sign | ((exp + 112) << 23) | (mant << 13));  // 127 - 15 = 112
  if (mant == 0) return bits_to_float(sign);                                      // +-0
  // Subnormal: value = mant * 2^-24; normalize it.
  int e = -1;
  do {
    ++e;
    mant <<= 1;
  } while ((mant & 0x400u) == 0);
  return bits_to_float(sign | ((112 - static_cast<uint32_t>(e)) << 23) | ((mant & 0x3FFu) << 13));
}

inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// Round to nearest, ties to even; overflow to +-inf; NaN stays NaN (quiet).
inline uint16_t float_to_half(float f) {
  const uint32_t x = float_to_bits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7FFFFFFFu;
  if (ax > 0x7F800000u) return static_cast<uint16_t>(sign | 0x7E00u);  // NaN
  if (ax >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // rounds to >= 65520: inf
  if (ax < 0x38800000u) {  // below the smallest normal half (2^-14): a subnormal or 0
    // value = ax as float; half subnormal units are 2^-24: round(value / 2^-24) to even.
    const uint32_t exp = ax >> 23;
    if (exp < 102) return sign;  // below 2^-25: rounds to 0
    const uint32_t mant = (ax & 0x7FFFFFu) | 0x800000u;  // 24 significant bits, value = mant * 2^(exp - 150)
    const uint32_t shift = 126 - exp;                     // to units of 2^-24: mant >> (150 - 24 - exp)
    uint32_t h = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1u), halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (h & 1u))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  // Normal: rebias the exponent, round the 23-bit mantissa to 10 bits (a carry may bump the exponent).
  uint32_t h = ((ax >> 23) - 112) << 10 | ((ax >> 13) & 0x3FFu);
  const uint32_t rem = ax & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

}  // namespace qd::fmt
