#include "runtime/kernels.h"

#include <algorithm>
#include <cstring>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

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

PackedConvWeights pack_conv_weights(const int8_t* weight, const ConvShape& s) {
  PackedConvWeights p;
  p.out_c = s.out_c, p.in_c = s.in_c, p.in_cp = (s.in_c + 1) / 2 * 2, p.kernel = s.kernel;
  auto w_at = [&](int o, int c, int ky, int kx) {
    return weight[((static_cast<int64_t>(o) * s.in_c + c) * s.kernel + ky) * s.kernel + kx];
  };
  if (active_isa() >= Isa::kAvx512Vnni && s.out_c > 8) {
    p.quads = true, p.lanes = 16;
    p.in_cp = (s.in_c + 3) / 4 * 4;
    const int blocks = (s.out_c + 15) / 16, run = s.kernel * p.in_cp, quads = run / 4;
    p.data8.assign(static_cast<size_t>(blocks) * s.kernel * quads * 64, 0);
    p.weight_sum.assign(static_cast<size_t>(s.out_c), 0);
    for (int o = 0; o < s.out_c; ++o)
      for (int ky = 0; ky < s.kernel; ++ky)
        for (int k = 0; k < run; ++k) {
          const int kx = k / p.in_cp, c = k % p.in_cp;
          if (c >= s.in_c) continue;
          const int8_t v = w_at(o, c, ky, kx);
          p.weight_sum[static_cast<size_t>(o)] += v;
          p.data8[((static_cast<size_t>(o / 16) * s.kernel + ky) * quads + k / 4) * 64 + (o % 16) * 4 + k % 4] = v;
        }
    return p;
  }
  // int16 pairs, 8 channels per block (VNNI layers of 8 channels or fewer come here too: a
  // 16-lane block would leave half its lanes idle).
  p.lanes = 8;
  const int L = p.lanes, blocks = (s.out_c + L - 1) / L, run = s.kernel * p.in_cp, pairs = run / 2;
  p.data.assign(static_cast<size_t>(blocks) * s.kernel * pairs * 2 * L, 0);
  for (int b = 0; b < blocks; ++b)
    for (int ky = 0; ky < s.kernel; ++ky)
      for (int k = 0; k < run; ++k) {
        const int kx = k / p.in_cp, c = k % p.in_cp;
        if (c >= s.in_c) continue;
        for (int lane = 0; lane < L; ++lane) {
          const int o = b * L + lane;
          if (o >= s.out_c) break;
          p.data[((static_cast<size_t>(b) * s.kernel + ky) * pairs + k / 2) * 2 * L + lane * 2 + k % 2] = w_at(o, c, ky, kx);
        }
      }
  return p;
}

namespace {

// The requantization of one block of 8 output channels, laid out for the vector path: lane l is
// channel block * 8 + l (absent channels: multiplier 0). round(x * m / 2^ts) is computed as
// ((x * m + 2^62 + 2^(ts - 1)) >>> ts) - 2^(62 - ts): non-negative before the logical shift (AVX2 has
// no 64-bit arithmetic shift), the same floor. `vector` is false when some shift is positive
// (a factor >= 1, whose product could leave int32): that block takes the scalar path.
struct BlockRequant {
  int32_t bias[8], multiplier[8];
  int64_t add[8], sub[8], shift[8];
  QuantizedMultiplier q[8];
  int channels = 8;
  bool vector = true;
};

BlockRequant block_requant(const Requant& r, int block, int out_c, const int32_t* bias_adjust) {
  BlockRequant b;
  b.channels = std::min(8, out_c - block * 8);
  for (int l = 0; l < 8; ++l) {
    const int o = block * 8 + l;
    const bool real = l < b.channels;
    b.q[l] = real ? r.multiplier[o] : QuantizedMultiplier{};
    b.bias[l] = (real && r.bias ? r.bias[o] : 0) + (real && bias_adjust ? bias_adjust[o] : 0);
    b.multiplier[l] = b.q[l].multiplier;
    const int ts = 31 - b.q[l].shift;
    b.shift[l] = ts;
    b.add[l] = (int64_t{1} << 62) + (int64_t{1} << (ts - 1));
    b.sub[l] = (int64_t{1} << 62) >> ts;
    b.vector = b.vector && b.q[l].shift <= 0;
  }
  return b;
}

// Writes the nb x 8 block (acc[j * stride + lane]: pixel j, channel lane) requantized to int8 CHW.
void store_scalar(const int32_t* acc, int stride, const BlockRequant& b, const Requant& r, int nb, int8_t* out,
                  int64_t pixels) {
  for (int l = 0; l < b.channels; ++l)
    for (int j = 0; j < nb; ++j) {
      // Saturating: a well-formed model never gets near the limit, a hostile file must not overflow.
      const int64_t v = r.out_zero + int64_t{multiply_by_quantized_multiplier(
                                         saturate_int32(int64_t{acc[j * stride + l]} + b.bias[l]), b.q[l])};
      out[l * pixels + j] = static_cast<int8_t>(std::clamp<int64_t>(v, r.out_min, r.out_max));
    }
}

// The accumulators of 8 output channels (one weight block) for 8 output pixels of one row,
// acc[j * 8 + lane]. rows[j] points at pixel j's receptive field (row ky at + ky * row_stride) in
// the padded input.

void block_generic(const int16_t* w, int kernel, int pairs, const int16_t* const* rows, int row_stride, int32_t* acc) {
  for (int j = 0; j < 8; ++j) {
    int32_t a[8] = {};
    for (int ky = 0; ky < kernel; ++ky) {
      const int16_t* x = rows[j] + static_cast<int64_t>(ky) * row_stride;
      const int16_t* wk = w + static_cast<int64_t>(ky) * pairs * 16;
      for (int p = 0; p < pairs; ++p) {
        const int32_t x0 = x[2 * p], x1 = x[2 * p + 1];
        for (int lane = 0; lane < 8; ++lane) a[lane] += wk[p * 16 + 2 * lane] * x0 + wk[p * 16 + 2 * lane + 1] * x1;
      }
    }
    std::memcpy(acc + j * 8, a, sizeof(a));
  }
}

// The quad format (see PackedConvWeights), 16 lanes: acc[j * 16 + lane] = sum w * x_u8.
void block_generic_quads(const int8_t* w, int kernel, int quads, const uint8_t* const* rows, int row_stride,
                         int32_t* acc) {
  for (int j = 0; j < 8; ++j) {
    int32_t a[16] = {};
    for (int ky = 0; ky < kernel; ++ky) {
      const uint8_t* x = rows[j] + static_cast<int64_t>(ky) * row_stride;
      const int8_t* wk = w + static_cast<int64_t>(ky) * quads * 64;
      for (int q = 0; q < quads * 4; ++q)
        for (int lane = 0; lane < 16; ++lane) a[lane] += wk[(q / 4) * 64 + lane * 4 + q % 4] * int32_t{x[q]};
    }
    std::memcpy(acc + j * 16, a, sizeof(a));
  }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// One body for both x86 kernels (each needs its own target attribute, which templates cannot
// carry): 8 accumulators, one per pixel, each 8 channels wide; STEP(acc, weights, pair pointer)
// adds the products of one channel pair.
#define QD_RT_BLOCK_BODY(STEP)                                                                          \
  __m256i a[8];                                                                                        \
  for (int j = 0; j < 8; ++j) a[j] = _mm256_setzero_si256();                                           \
  for (int ky = 0; ky < kernel; ++ky) {                                                                \
    const int64_t off = static_cast<int64_t>(ky) * row_stride;                                         \
    const int16_t* r[8];                                                                               \
    for (int j = 0; j < 8; ++j) r[j] = rows[j] + off;                                                  \
    const int16_t* wk = w + static_cast<int64_t>(ky) * pairs * 16;                                     \
    for (int p = 0; p < pairs; ++p) {                                                                  \
      const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wk + p * 16));            \
      for (int j = 0; j < 8; ++j) a[j] = STEP(a[j], wv, r[j] + 2 * p);                                  \
    }                                                                                                  \
  }                                                                                                    \
  for (int j = 0; j < 8; ++j) _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + j * 8), a[j]);

// Two int16 (one channel pair) as an int32, broadcast to every lane.
__attribute__((target("avx2"))) inline __m256i pair_avx2(const int16_t* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof(v));
  return _mm256_set1_epi32(v);
}
__attribute__((target("avx2"))) inline __m256i step_avx2(__m256i acc, __m256i w, const int16_t* x) {
  return _mm256_add_epi32(acc, _mm256_madd_epi16(w, pair_avx2(x)));
}
__attribute__((target("avx2"))) void block_avx2(const int16_t* w, int kernel, int pairs, const int16_t* const* rows,
                                                int row_stride, int32_t* acc) {
  QD_RT_BLOCK_BODY(step_avx2)
}

// AVX-512 VNNI fuses the multiply-add of int16 pairs (vpdpwssd, in its 256-bit form).
__attribute__((target("avx2,avx512vl,avx512vnni"))) inline __m256i step_vnni(__m256i acc, __m256i w,
                                                                              const int16_t* x) {
  int32_t v;
  std::memcpy(&v, x, sizeof(v));
  return _mm256_dpwssd_epi32(acc, w, _mm256_set1_epi32(v));
}
__attribute__((target("avx2,avx512vl,avx512vnni"))) void block_vnni(const int16_t* w, int kernel, int pairs,
                                                                     const int16_t* const* rows, int row_stride,
                                                                     int32_t* acc) {
  QD_RT_BLOCK_BODY(step_vnni)
}
#undef QD_RT_BLOCK_BODY

// The quad format with vpdpbusd: four u8 x s8 products per lane per instruction (no saturation).
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void block_dpbusd(const int8_t* w, int kernel, int quads,
                                                                          const uint8_t* const* rows, int row_stride,
                                                                          int32_t* acc) {
  __m512i a[8];
  for (int j = 0; j < 8; ++j) a[j] = _mm512_setzero_si512();
  for (int ky = 0; ky < kernel; ++ky) {
    const int64_t off = static_cast<int64_t>(ky) * row_stride;
    const uint8_t* r[8];
    for (int j = 0; j < 8; ++j) r[j] = rows[j] + off;
    const int8_t* wk = w + static_cast<int64_t>(ky) * quads * 64;
    for (int q = 0; q < quads; ++q) {
      const __m512i wv = _mm512_loadu_si512(wk + q * 64);
      for (int j = 0; j < 8; ++j) {
        int32_t v;
        std::memcpy(&v, r[j] + 4 * q, sizeof(v));
        a[j] = _mm512_dpbusd_epi32(a[j], _mm512_set1_epi32(v), wv);
      }
    }
  }
  for (int j = 0; j < 8; ++j) _mm512_storeu_si512(acc + j * 16, a[j]);
}

// store_scalar's arithmetic on 8 channels at once (see BlockRequant), for blocks whose shifts are
// all <= 0: |x * M| <= |x| < 2^31, so no saturation is needed.
__attribute__((target("avx2"))) void store_avx2(const int32_t* acc, int stride, const BlockRequant& b, const Requant& r,
                                                int nb, int8_t* out, int64_t pixels) {
  const __m256i bias = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.bias));
  const __m256i m = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.multiplier));
  const __m256i m_odd = _mm256_srli_epi64(m, 32);
  // 64-bit lanes of the even (0, 2, 4, 6) and odd (1, 3, 5, 7) channels.
  const __m256i add_e = _mm256_set_epi64x(b.add[6], b.add[4], b.add[2], b.add[0]);
  const __m256i add_o = _mm256_set_epi64x(b.add[7], b.add[5], b.add[3], b.add[1]);
  const __m256i sub_e = _mm256_set_epi64x(b.sub[6], b.sub[4], b.sub[2], b.sub[0]);
  const __m256i sub_o = _mm256_set_epi64x(b.sub[7], b.sub[5], b.sub[3], b.sub[1]);
  const __m256i sh_e = _mm256_set_epi64x(b.shift[6], b.shift[4], b.shift[2], b.shift[0]);
  const __m256i sh_o = _mm256_set_epi64x(b.shift[7], b.shift[5], b.shift[3], b.shift[1]);
  const __m256i zp = _mm256_set1_epi32(r.out_zero), lo = _mm256_set1_epi32(r.out_min), hi = _mm256_set1_epi32(r.out_max);
  alignas(32) int32_t res[8];
  for (int j = 0; j < nb; ++j) {
    const __m256i x = _mm256_add_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc + j * stride)), bias);
    __m256i e = _mm256_mul_epi32(x, m);
    __m256i o = _mm256_mul_epi32(_mm256_srli_epi64(x, 32), m_odd);
    e = _mm256_sub_epi64(_mm256_srlv_epi64(_mm256_add_epi64(e, add_e), sh_e), sub_e);
    o = _mm256_sub_epi64(_mm256_srlv_epi64(_mm256_add_epi64(o, add_o), sh_o), sub_o);
    __m256i v = _mm256_blend_epi32(e, _mm256_slli_epi64(o, 32), 0xAA);
    v = _mm256_min_epi32(_mm256_max_epi32(_mm256_add_epi32(v, zp), lo), hi);
    _mm256_store_si256(reinterpret_cast<__m256i*>(res), v);
    for (int l = 0; l < b.channels; ++l) out[l * pixels + j] = static_cast<int8_t>(res[l]);
  }
}
// AMX-INT8: the CPU has the tiles (CPUID leaf 7: EDX bits 24 tile, 25 int8), the OS saves their
// state (XCR0 bits 17 and 18), and Linux grants this process the tile data (arch_prctl
// ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA; without it the first tile instruction faults).
bool amx_usable() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 24)) || !(d & (1u << 25))) return false;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return false;  // OSXSAVE: xgetbv is allowed
  uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  if ((lo & (3u << 17)) != (3u << 17)) return false;
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

Isa detect_isa() {
  if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx2"))
    return amx_usable() ? Isa::kAmx : Isa::kAvx512Vnni;
  return __builtin_cpu_supports("avx2") ? Isa::kAvx2 : Isa::kGeneric;
}
#else
Isa detect_isa() { return Isa::kGeneric; }
void block_vnni(const int16_t*, int, int, const int16_t* const*, int, int32_t*) {}
void block_avx2(const int16_t*, int, int, const int16_t* const*, int, int32_t*) {}
void store_avx2(const int32_t*, int, const BlockRequant&, const Requant&, int, int8_t*, int64_t) {}
void block_dpbusd(const int8_t*, int, int, const uint8_t* const*, int, int32_t*) {}
#endif

}  // namespace

namespace {
Isa& isa_state() {
  static Isa isa = detect_isa();
  return isa;
}
}  // namespace

Isa best_isa() {
  static const Isa best = detect_isa();
  return best;
}
void force_isa(Isa isa) { isa_state() = std::min(isa, best_isa()); }
Isa active_isa() { return isa_state(); }

void conv2d_s8(const int8_t* in, const PackedConvWeights& w, const ConvShape& s, const Requant& r, int8_t* out,
               ConvScratch& scratch) {
  const int oh = s.out_h(), ow = s.out_w(), pixels = oh * ow;
  const int cp = w.in_cp, hp = s.in_h + 2 * s.pad, wp = s.in_w + 2 * s.pad;
  const int L = w.lanes, blocks = (s.out_c + L - 1) / L, row_stride = wp * cp;
  const int steps = s.kernel * cp / (w.quads ? 4 : 2);  // channel pairs or quads per kernel row
  std::vector<int32_t> adjust;  // quads: sum w * (x + 128) - (in_zero + 128) * sum w = sum w * (x - in_zero)
  if (w.quads) {
    // The padded HWC input as x + 128 (uint8); padding reads in_zero + 128, i.e. real 0 once the
    // weight sum term is removed. Channels beyond in_c have zero weights.
    scratch.padded8.assign(static_cast<size_t>(hp) * wp * cp, static_cast<uint8_t>(r.in_zero + 128));
    for (int c = 0; c < s.in_c; ++c)
      for (int y = 0; y < s.in_h; ++y) {
        const int8_t* src = in + (static_cast<int64_t>(c) * s.in_h + y) * s.in_w;
        uint8_t* dst = scratch.padded8.data() + (static_cast<int64_t>(y + s.pad) * wp + s.pad) * cp + c;
        for (int x = 0; x < s.in_w; ++x) dst[static_cast<int64_t>(x) * cp] = static_cast<uint8_t>(src[x] + 128);
      }
    for (int32_t ws : w.weight_sum) adjust.push_back(-(r.in_zero + 128) * ws);
  } else {
    // The padded HWC input, x - in_zero: padding and the odd channel's partner are exactly 0.
    scratch.padded.assign(static_cast<size_t>(hp) * wp * cp, 0);
    for (int c = 0; c < s.in_c; ++c)
      for (int y = 0; y < s.in_h; ++y) {
        const int8_t* src = in + (static_cast<int64_t>(c) * s.in_h + y) * s.in_w;
        int16_t* dst = scratch.padded.data() + (static_cast<int64_t>(y + s.pad) * wp + s.pad) * cp + c;
        for (int x = 0; x < s.in_w; ++x) dst[static_cast<int64_t>(x) * cp] = static_cast<int16_t>(src[x] - r.in_zero);
      }
  }
  // Requantization parameters per 8 channels (a 16-lane block is two of them).
  std::vector<BlockRequant> requant;
  for (int h = 0; h < (s.out_c + 7) / 8; ++h)
    requant.push_back(block_requant(r, h, s.out_c, adjust.empty() ? nullptr : adjust.data()));
  const Isa isa = active_isa();
  const bool avx2 = isa >= Isa::kAvx2, vnni = isa >= Isa::kAvx512Vnni;
  const int16_t* rows[8];
  const uint8_t* rows8[8];
  alignas(64) int32_t acc[128];
  for (int y = 0; y < oh; ++y)
    for (int x0 = 0; x0 < ow; x0 += 8) {
      const int nb = std::min(8, ow - x0);
      for (int j = 0; j < 8; ++j) {  // past the row's end: recompute the last pixel, not stored
        const int64_t off =
            (static_cast<int64_t>(y) * s.stride * wp + static_cast<int64_t>(x0 + std::min(j, nb - 1)) * s.stride) * cp;
        rows[j] = scratch.padded.data() + (w.quads ? 0 : off);
        rows8[j] = scratch.padded8.data() + (w.quads ? off : 0);
      }
      for (int b = 0; b < blocks; ++b) {
        if (w.quads) {
          const int8_t* wb = w.data8.data() + static_cast<size_t>(b) * s.kernel * steps * 64;
          if (vnni)
            block_dpbusd(wb, s.kernel, steps, rows8, row_stride, acc);
          else
            block_generic_quads(wb, s.kernel, steps, rows8, row_stride, acc);
        } else {
          const int16_t* wb = w.data.data() + static_cast<size_t>(b) * s.kernel * steps * 2 * L;
          if (vnni)
            block_vnni(wb, s.kernel, steps, rows, row_stride, acc);
          else if (avx2)
            block_avx2(wb, s.kernel, steps, rows, row_stride, acc);
          else
            block_generic(wb, s.kernel, steps, rows, row_stride, acc);
        }
        for (int h = 0; h < L / 8 && (b * L + h * 8) < s.out_c; ++h) {
          const BlockRequant& q = requant[static_cast<size_t>(b * L / 8 + h)];
          int8_t* dst = out + static_cast<int64_t>(b * L + h * 8) * pixels + static_cast<int64_t>(y) * ow + x0;
          if (avx2 && q.vector)
            store_avx2(acc + h * 8, L, q, r, nb, dst, pixels);
          else
            store_scalar(acc + h * 8, L, q, r, nb, dst, pixels);
        }
      }
    }
}

}  // namespace qd::rt
