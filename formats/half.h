// IEEE 754 half precision and bfloat16 to float32, exactly (every half and bfloat16 is a float),
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

}  // namespace qd::fmt
