#include "runtime/kernels.h"

#include <algorithm>
#include <cstring>

namespace qd::rt {

void gemm_s8s8_s32(const int8_t* a, const int8_t* b, int32_t* c, int m, int n, int k, int32_t b_zero) {
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

void conv2d_s8(const int8_t* in, const int8_t* weight, const ConvShape& s, const Requant& r, int8_t* out,
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
        for (int y = 0; y < oh; ++y) {
          const int iy = y * s.stride - s.pad + ky;
          int8_t* dst = row + y * ow;
          if (iy < 0 || iy >= s.in_h) {
            std::memset(dst, pad_value, static_cast<size_t>(ow));
            continue;
          }
          const int8_t* src = in + (static_cast<int64_t>(c) * s.in_h + iy) * s.in_w;
          for (int x = 0; x < ow; ++x) {
            const int ix = x * s.stride - s.pad + kx;
            dst[x] = (ix < 0 || ix >= s.in_w) ? pad_value : src[ix];
          }
        }
      }
  gemm_s8s8_s32(weight, col, scratch.acc.data(), s.out_c, pixels, k, r.in_zero);
  for (int o = 0; o < s.out_c; ++o) {
    const int32_t bias = r.bias ? r.bias[o] : 0;
    const QuantizedMultiplier q = r.multiplier[o];
    const int32_t* acc = scratch.acc.data() + static_cast<int64_t>(o) * pixels;
    int8_t* dst = out + static_cast<int64_t>(o) * pixels;
    for (int p = 0; p < pixels; ++p) {
      const int32_t v = r.out_zero + multiply_by_quantized_multiplier(acc[p] + bias, q);
      dst[p] = static_cast<int8_t>(std::clamp(v, r.out_min, r.out_max));
    }
  }
}

}  // namespace qd::rt
