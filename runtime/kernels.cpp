#include "runtime/kernels.h"

#include <algorithm>
#include <cstring>

namespace qd::rt {

// Built for AVX2 and for the x86-64 baseline, picked at load time (GCC function multiversioning):
// the int8 widening multiply-adds and the 64-bit requantization products vectorize 2-4x wider.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define QD_RT_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define QD_RT_CLONES
#endif

QD_RT_CLONES void gemm_s8s8_s32(const int8_t* a, const int8_t* b, int32_t* c, int m, int n, int k, int32_t b_zero) {
  // Column blocks keep a strip of B and the accumulators in L1; the inner loop over columns
  // vectorizes (widening int8 multiplies into int32 lanes).
  constexpr int kBlockN = 256;
  for (int n0 = 0; n0 < n; n0 += kBlockN) {
    const int nb = std::min(kBlockN, n - n0);
    for (int i = 0; i < m; ++i) {
      int32_t* __restrict ci = c + static_cast<int64_t>(i) * n + n0;
      std::memset(ci, 0, sizeof(int32_t) * static_cast<size_t>(nb));
      const int8_t* ai = a + static_cast<int64_t>(i) * k;
      int32_t row_sum = 0;
      for (int kk = 0; kk < k; ++kk) {
        const int32_t av = ai[kk];
        row_sum += av;
        if (av == 0) continue;  // pruned / zero weights cost nothing
        const int8_t* __restrict bk = b + static_cast<int64_t>(kk) * n + n0;
        for (int j = 0; j < nb; ++j) ci[j] += av * static_cast<int32_t>(bk[j]);
      }
      const int32_t zero_term = row_sum * b_zero;  // sum_k a * b_zero, removed once per row
      for (int j = 0; j < nb; ++j) ci[j] -= zero_term;
    }
  }
}

QD_RT_CLONES void conv2d_s8(const int8_t* in, const int8_t* weight, const ConvShape& s, const Requant& r, int8_t* out,
               ConvScratch& scratch) {
  const int oh = s.out_h(), ow = s.out_w(), pixels = oh * ow;
  const int k = s.in_c * s.kernel * s.kernel;
  scratch.col.resize(static_cast<size_t>(k) * static_cast<size_t>(pixels));
  scratch.acc.resize(static_cast<size_t>(s.out_c) * static_cast<size_t>(pixels));
  // im2col; padding takes the input zero point, whose (x - in_zero) is exactly 0.
  const int8_t pad_value = static_cast<int8_t>(r.in_zero);
  int8_t* col = scratch.col.data();
  for (int c = 0; c < s.in_c; ++c)
    for (int ky = 0; ky < s.kernel; ++ky)
      for (int kx = 0; kx < s.kernel; ++kx) {
        int8_t* row = col + (static_cast<int64_t>(c) * s.kernel * s.kernel + ky * s.kernel + kx) * pixels;
        // Output columns [x0, x1) read inside the input row; the rest is padding.
        const int x0 = std::min(ow, std::max(0, (s.pad - kx + s.stride - 1) / s.stride));
        const int x1 = std::max(x0, std::min(ow, (s.in_w + s.pad - kx + s.stride - 1) / s.stride));
        for (int y = 0; y < oh; ++y) {
          const int iy = y * s.stride - s.pad + ky;
          int8_t* dst = row + y * ow;
          if (iy < 0 || iy >= s.in_h) {
            std::memset(dst, pad_value, static_cast<size_t>(ow));
            continue;
          }
          const int8_t* src = in + (static_cast<int64_t>(c) * s.in_h + iy) * s.in_w;
          const int shift = kx - s.pad;  // input column of output column x: x * stride + shift
          std::memset(dst, pad_value, static_cast<size_t>(x0));
          if (s.stride == 1) {
            if (x1 > x0) std::memcpy(dst + x0, src + x0 + shift, static_cast<size_t>(x1 - x0));
          } else {
            for (int x = x0; x < x1; ++x) dst[x] = src[x * s.stride + shift];
          }
          std::memset(dst + x1, pad_value, static_cast<size_t>(ow - x1));
        }
      }
  gemm_s8s8_s32(weight, col, scratch.acc.data(), s.out_c, pixels, k, r.in_zero);
  for (int o = 0; o < s.out_c; ++o) {
    const int32_t bias = r.bias ? r.bias[o] : 0;
    const QuantizedMultiplier q = r.multiplier[o];
    const int32_t* acc = scratch.acc.data() + static_cast<int64_t>(o) * pixels;
    int8_t* dst = out + static_cast<int64_t>(o) * pixels;
    for (int p = 0; p < pixels; ++p) {
      // Saturating: a well-formed model never gets near the limit, a hostile file must not overflow.
      const int64_t v = r.out_zero + int64_t{multiply_by_quantized_multiplier(saturate_int32(int64_t{acc[p]} + bias), q)};
      dst[p] = static_cast<int8_t>(std::clamp<int64_t>(v, r.out_min, r.out_max));
    }
  }
}

}  // namespace qd::rt
