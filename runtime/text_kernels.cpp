#include "runtime/text_kernels.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "formats/half.h"
#include "runtime/graph.h"
#include "runtime/kernels.h"
#include "runtime/thread_pool.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace qd::rt {

float fp16_round(float f) { return fmt::half_to_float(fmt::float_to_half(f)); }

void dequantize_row(const QuantWeight& w, int64_t row, float* out) {
  if (w.f32) {
    std::memcpy(out, w.f32 + row * w.cols, static_cast<size_t>(w.cols) * sizeof(float));
    return;
  }
  const int8_t* q = w.i8 + row * w.cols;
  const float* s = w.scale + row * (w.cols / w.group);
  for (int64_t j = 0; j < w.cols; ++j) out[j] = static_cast<float>(q[j]) * s[j / w.group];
}

namespace {
// A rounded value into [-127, 127]; NaN (an activation that overflowed upstream) as 0, so that no
// float-to-int conversion is ever out of range.
int8_t saturate_int8(float v) { return std::isnan(v) ? int8_t{0} : static_cast<int8_t>(std::clamp(v, -127.0f, 127.0f)); }
}  // namespace

static void quantize_row_portable(const float* x, int64_t k, ActQuant q, int8_t* out, float* scales) {
  if (q == ActQuant::kPerToken) {
    float amax = 0.0f;
    for (int64_t j = 0; j < k; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float s = amax / 127.0f;
    const float safe = s > 0.0f ? s : 1.0f;  // an all-zero row stays zero
    for (int64_t j = 0; j < k; ++j) out[j] = saturate_int8(std::nearbyint(x[j] / safe));  // half to even, as torch::round
    scales[0] = safe;
    return;
  }
  for (int64_t b = 0; b < k / 32; ++b) {
    const float* xb = x + b * 32;
    float amax = 0.0f;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(xb[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < 32; ++j) out[b * 32 + j] = saturate_int8(std::round(xb[j] * id));  // roundf: half away from zero
    scales[b] = fp16_round(d);
  }
}

namespace {

// The portable reference: the exact int32 dot products of `tokens` quantized input rows (row t at
// x + t * k) with up to 4 consecutive weight rows (row r at w + r * ldw), block by block:
//   out[(t * 4 + r) * blocks + b] = sum over block b of x_t[j] * w_r[j],
// blocks of `block` values. The tiled kernels below compute the same exact sums (x and w are in
// [-127, 127]: activations saturate there, weights validate so), so only the float arithmetic
// after them (linear_forward, shared) decides the result bits.
void dots_generic(const int8_t* x, int64_t tokens, const int8_t* w, int64_t ldw, int64_t k, int64_t block, int rows, int32_t* out) {
  const int64_t blocks = (k + block - 1) / block;
  for (int64_t t = 0; t < tokens; ++t)
    for (int r = 0; r < rows; ++r)
      for (int64_t b = 0; b < blocks; ++b) {
        int32_t acc = 0;
        for (int64_t j = b * block; j < std::min(k, (b + 1) * block); ++j) acc += static_cast<int32_t>(x[t * k + j]) * w[r * ldw + j];
        out[(t * 4 + r) * blocks + b] = acc;
      }
}

// ---- packed (tiled) kernels: 16 weight rows x 4 tokens per step ---------------------------------
//
// acc[(t * blocks + b) * 16 + lane] = exact int32 sum over block b of x_t[j] * w[panel * 16 + lane][j],
// for the `tokens` (1 to 4) input rows xs[0..tokens-1] (quads of int8, or of uint8 x + 128 for VNNI).
using PanelDots = void (*)(const uint8_t* const* xs, int tokens, const PackedLinear& p, int64_t panel, int32_t* acc);

#if defined(__x86_64__)
// The body of a panel kernel for NT (1 to 4) tokens, a compile-time count: decoding (one token)
// does a quarter of the 4-token tile's work.
#define QD_PANEL_BODY(DOT)                                                                                     \
  const int8_t* wp = p.w.data() + panel * p.qstride * 64;                                                      \
  const int64_t per_block = p.blocks == 1 ? p.quads : p.block / 4;                                             \
  const uint8_t* x0 = xs[0];                                                                                   \
  const uint8_t* x1 = xs[NT > 1 ? 1 : 0];                                                                      \
  const uint8_t* x2 = xs[NT > 2 ? 2 : 0];                                                                      \
  const uint8_t* x3 = xs[NT > 3 ? 3 : 0];                                                                      \
  for (int64_t b = 0; b < p.blocks; ++b) {                                                                     \
    __m256i a00 = _mm256_setzero_si256(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00,   \
            a31 = a00;                                                                                         \
    for (int64_t q = b * per_block, q1 = q + per_block; q < q1; ++q) {                                         \
      const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + q * 64));                   \
      const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + q * 64 + 32));              \
      int32_t v;                                                                                               \
      std::memcpy(&v, x0 + q * 4, 4);                                                                          \
      __m256i xb = _mm256_set1_epi32(v);                                                                       \
      a00 = DOT(a00, xb, w0), a01 = DOT(a01, xb, w1);                                                          \
      if (NT > 1) {                                                                                            \
        std::memcpy(&v, x1 + q * 4, 4);                                                                        \
        xb = _mm256_set1_epi32(v);                                                                             \
        a10 = DOT(a10, xb, w0), a11 = DOT(a11, xb, w1);                                                        \
      }                                                                                                        \
      if (NT > 2) {                                                                                            \
        std::memcpy(&v, x2 + q * 4, 4);                                                                        \
        xb = _mm256_set1_epi32(v);                                                                             \
        a20 = DOT(a20, xb, w0), a21 = DOT(a21, xb, w1);                                                        \
      }                                                                                                        \
      if (NT > 3) {                                                                                            \
        std::memcpy(&v, x3 + q * 4, 4);                                                                        \
        xb = _mm256_set1_epi32(v);                                                                             \
        a30 = DOT(a30, xb, w0), a31 = DOT(a31, xb, w1);                                                        \
      }                                                                                                        \
    }                                                                                                          \
    const __m256i c0 = OFFSET(0), c1 = OFFSET(8);                                                              \
    int32_t* o = acc + b * 16;                                                                                 \
    const int64_t step = p.blocks * 16;                                                                        \
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), _mm256_sub_epi32(a00, c0));                             \
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 8), _mm256_sub_epi32(a01, c1));                         \
    if (NT > 1) {                                                                                              \
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + step), _mm256_sub_epi32(a10, c0));                    \
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + step + 8), _mm256_sub_epi32(a11, c1));                \
    }                                                                                                          \
    if (NT > 2) {                                                                                              \
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 2 * step), _mm256_sub_epi32(a20, c0));                \
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 2 * step + 8), _mm256_sub_epi32(a21, c1));            \
    }                                                                                                          \
    if (NT > 3) {                                                                                              \
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 3 * step), _mm256_sub_epi32(a30, c0));                \
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 3 * step + 8), _mm256_sub_epi32(a31, c1));            \
    }                                                                                                          \
  }

// AVX2: signed inputs; |x| (unsigned) times w with x's sign, pairs to int16 (no saturation: |pair|
// <= 2 * 127 * 127), then to int32: 4 products per lane per step.
__attribute__((target("avx2"))) inline __m256i panel_dot_avx2(__m256i acc, __m256i xb, __m256i w) {
  const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(xb, xb), _mm256_sign_epi8(w, xb));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}
// VNNI: unsigned inputs x + 128 straight into vpdpbusd; the offset 128 * sum(w) comes off after.
__attribute__((target("avx2,avx512vl,avx512vnni"))) inline __m256i panel_dot_vnni(__m256i acc, __m256i xb, __m256i w) {
  return _mm256_dpbusd_epi32(acc, xb, w);
}

#define OFFSET(at) _mm256_setzero_si256()
template <int NT>
__attribute__((target("avx2"))) void panel_avx2_n(const uint8_t* const* xs, const PackedLinear& p, int64_t panel, int32_t* acc) {
  QD_PANEL_BODY(panel_dot_avx2)
}
#undef OFFSET
#define OFFSET(at) _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.offset.data() + (panel * p.blocks + b) * 16 + (at)))
template <int NT>
__attribute__((target("avx2,avx512vl,avx512vnni"))) void panel_vnni_n(const uint8_t* const* xs, const PackedLinear& p, int64_t panel,
                                                                      int32_t* acc) {
  QD_PANEL_BODY(panel_dot_vnni)
}
#undef OFFSET
void panel_avx2(const uint8_t* const* xs, int tokens, const PackedLinear& p, int64_t panel, int32_t* acc) {
  switch (tokens) {
    case 1: return panel_avx2_n<1>(xs, p, panel, acc);
    case 2: return panel_avx2_n<2>(xs, p, panel, acc);
    case 3: return panel_avx2_n<3>(xs, p, panel, acc);
    default: return panel_avx2_n<4>(xs, p, panel, acc);
  }
}
void panel_vnni(const uint8_t* const* xs, int tokens, const PackedLinear& p, int64_t panel, int32_t* acc) {
  switch (tokens) {
    case 1: return panel_vnni_n<1>(xs, p, panel, acc);
    case 2: return panel_vnni_n<2>(xs, p, panel, acc);
    case 3: return panel_vnni_n<3>(xs, p, panel, acc);
    default: return panel_vnni_n<4>(xs, p, panel, acc);
  }
}
#undef QD_PANEL_BODY
#endif


#if defined(__x86_64__)
// per_token quantization of a row, 8 values at a time: the same IEEE operations as the portable
// loop (max of magnitudes, x / s correctly rounded, round half to even, clamp, NaN to 0).
__attribute__((target("avx2"))) void quantize_per_token_avx2(const float* x, int64_t k, int8_t* out, float* scale) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 m = _mm256_setzero_ps();
  int64_t j = 0;
  // maxps returns its second operand when either is NaN: NaN values leave m as it is, as std::max does.
  for (; j + 8 <= k; j += 8) m = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + j), abs_mask), m);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, m);
  float amax = 0.0f;
  for (float v : lanes) amax = std::max(amax, v);
  for (; j < k; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float s = amax / 127.0f;
  const float safe = s > 0.0f ? s : 1.0f;
  const __m256 sv = _mm256_set1_ps(safe), lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
  for (j = 0; j + 8 <= k; j += 8) {
    const __m256 v = _mm256_loadu_ps(x + j);
    __m256 r = _mm256_round_ps(_mm256_div_ps(v, sv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r = _mm256_and_ps(r, _mm256_cmp_ps(r, r, _CMP_ORD_Q));  // NaN (x NaN, or inf / inf) -> 0
    r = _mm256_min_ps(_mm256_max_ps(r, lo), hi);
    const __m256i i32 = _mm256_cvtps_epi32(r);
    const __m128i i16 = _mm_packs_epi32(_mm256_castsi256_si128(i32), _mm256_extracti128_si256(i32, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(out + j), _mm_packs_epi16(i16, i16));
  }
  for (; j < k; ++j) out[j] = saturate_int8(std::nearbyint(x[j] / safe));
  scale[0] = safe;
}
#endif

}  // namespace

void quantize_row(const float* x, int64_t k, ActQuant q, int8_t* out, float* scales) {
#if defined(__x86_64__)
  if (q == ActQuant::kPerToken && active_isa() != Isa::kGeneric) return quantize_per_token_avx2(x, k, out, scales);
#endif
  quantize_row_portable(x, k, q, out, scales);
}

PackedLinear pack_linear(const QuantWeight& w, ActQuant q) {
  PackedLinear p;
  if (!w.i8 || q == ActQuant::kNone) return p;
  const int64_t k = w.cols, xb = q == ActQuant::kPerToken ? k : 32, block = std::min(xb, w.group), blocks = k / block;
  if (blocks > 1 && block % 4 != 0) return p;
  p.rows = w.rows, p.cols = k, p.quads = (k + 3) / 4, p.qstride = (p.quads + 15) / 16 * 16, p.panels = (w.rows + 15) / 16;
  p.block = block, p.blocks = blocks;
  p.w.assign(static_cast<size_t>(p.panels * p.qstride * 64), 0);
  p.offset.assign(static_cast<size_t>(p.panels * blocks * 16), 0);
  p.scale.assign(static_cast<size_t>(p.panels * blocks * 16), 0.0f);
  const int64_t groups = k / w.group;
  for (int64_t o = 0; o < w.rows; ++o) {
    const int64_t panel = o / 16, lane = o % 16;
    const int8_t* row = w.i8 + o * k;
    for (int64_t j = 0; j < k; ++j) p.w[static_cast<size_t>(((panel * p.qstride + j / 4) * 16 + lane) * 4 + j % 4)] = row[j];
    for (int64_t b = 0; b < blocks; ++b) {
      int32_t sum = 0;
      for (int64_t j = b * block; j < (b + 1) * block; ++j) sum += row[j];
      const size_t at = static_cast<size_t>((panel * blocks + b) * 16 + lane);
      p.offset[at] = 128 * sum;
      p.scale[at] = w.scale[o * groups + (b * block) / w.group];
    }
  }
  return p;
}

namespace {

PanelDots panel_dots() {
#if defined(__x86_64__)
  switch (active_isa()) {
    case Isa::kAmx:  // shapes the AMX path does not take (blocks within a row)
    case Isa::kAvx512Vnni:
      return panel_vnni;
    case Isa::kAvx2:
      return panel_avx2;
    case Isa::kGeneric:
      break;
  }
#endif
  return nullptr;
}

// The float finish of one token's outputs o0 .. o0 + lanes - 1 with one block per row (per-token
// inputs, per-row weights): the portable path's operations, for every kernel.
__attribute__((always_inline)) inline void finish_row(const int32_t* a, float sxt, const float* sw, const float* bias, int64_t o0,
                                                      int64_t lanes, float* yt) {
  for (int64_t l = 0; l < lanes; ++l) {
    const float sum = static_cast<float>(a[l]) * (sxt * sw[l]);
    yt[l] = bias ? sum + bias[o0 + l] : sum;
  }
}

// The float finish of one token's 16 lanes with several blocks per row: per lane the sum over
// blocks b in order of float(exact block sum) * (input scale * weight scale), plus the bias. The
// lanes are independent (the inner loop runs across them), so the AVX2 build computes the
// portable bits.
__attribute__((always_inline)) inline void finish_blocks_body(const int32_t* a, int64_t blocks, int64_t per_x, const float* sx,
                                                              const float* sw, const float* bias, int64_t o0, int64_t lanes, float* yt) {
  float sum[16];
  for (int l = 0; l < 16; ++l) sum[l] = static_cast<float>(a[l]) * (sx[0] * sw[l]);
  for (int64_t b = 1; b < blocks; ++b) {
    const float sxb = sx[b / per_x];
    const int32_t* ab = a + b * 16;
    const float* swb = sw + b * 16;
    for (int l = 0; l < 16; ++l) sum[l] += static_cast<float>(ab[l]) * (sxb * swb[l]);
  }
  for (int64_t l = 0; l < lanes; ++l) yt[l] = bias ? sum[l] + bias[o0 + l] : sum[l];
}
void finish_blocks_generic(const int32_t* a, int64_t blocks, int64_t per_x, const float* sx, const float* sw, const float* bias,
                           int64_t o0, int64_t lanes, float* yt) {
  finish_blocks_body(a, blocks, per_x, sx, sw, bias, o0, lanes, yt);
}
#if defined(__x86_64__)
__attribute__((target("avx2"))) void finish_blocks_avx2(const int32_t* a, int64_t blocks, int64_t per_x, const float* sx, const float* sw,
                                                        const float* bias, int64_t o0, int64_t lanes, float* yt) {
  finish_blocks_body(a, blocks, per_x, sx, sw, bias, o0, lanes, yt);
}
#endif

#if defined(__x86_64__)
// ---- AMX: int8 tiles ---------------------------------------------------------------------------
//
// tdpbssd C[m][n] += sum_i A[m][4 r + i] * B[r][4 n + i] over 16 rows r of B: with A = up to 16
// tokens' quantized inputs (64 consecutive values each) and B = 16 quads of a packed panel (its
// 1 KiB as stored), C[token][lane] is the exact int32 partial sum. Tiles 0-3: the sums of up to
// four panels for one group of tokens; 4: the inputs; 5, 6, 7: the panels' weights in turn.
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

__attribute__((target("amx-tile,amx-int8"))) void amx_configure(int tokens) {
  TileConfig c;
  for (int t = 0; t < 8; ++t) c.colsb[t] = 64, c.rows[t] = static_cast<uint8_t>(t <= 4 ? tokens : 16);
  // Not _tile_loadconfig: GCC 12's declares only the first 8 bytes as read, and the stores to
  // the rest of the configuration were dropped (the first tile instruction then faulted).
  __asm__ volatile("ldtilecfg %0" : : "m"(c));
}
__attribute__((target("amx-tile,amx-int8"))) void amx_release() { _tile_release(); }

// acc[(panel * 16 + token) * 16 + lane] for kPanels panels from `w` (panel stride `pstride`
// bytes), the inputs x (rows `xstride` bytes apart, `chunks` x 64 values each).
template <int kPanels>
__attribute__((target("amx-tile,amx-int8"))) void amx_panels(const int8_t* x, int64_t xstride, const int8_t* w, int64_t pstride,
                                                             int64_t chunks, int32_t* acc) {
  _tile_zero(0);
  if (kPanels > 1) _tile_zero(1);
  if (kPanels > 2) _tile_zero(2);
  if (kPanels > 3) _tile_zero(3);
  for (int64_t q = 0; q < chunks; ++q) {
    _tile_loadd(4, x + q * 64, xstride);
    _tile_loadd(5, w + q * 1024, 64);
    _tile_dpbssd(0, 4, 5);
    if (kPanels > 1) {
      _tile_loadd(6, w + pstride + q * 1024, 64);
      _tile_dpbssd(1, 4, 6);
    }
    if (kPanels > 2) {
      _tile_loadd(7, w + 2 * pstride + q * 1024, 64);
      _tile_dpbssd(2, 4, 7);
    }
    if (kPanels > 3) {
      _tile_loadd(5, w + 3 * pstride + q * 1024, 64);
      _tile_dpbssd(3, 4, 5);
    }
  }
  _tile_stored(0, acc, 64);
  if (kPanels > 1) _tile_stored(1, acc + 256, 64);
  if (kPanels > 2) _tile_stored(2, acc + 512, 64);
  if (kPanels > 3) _tile_stored(3, acc + 768, 64);
}

// The float finish of a tile's sums for `panels` panels x m tokens (AVX2 build of finish_row: its
// loop over lanes is elementwise, so the bits are the portable ones).
__attribute__((target("avx2"))) void amx_finish(const int32_t* acc, int panels, int m, int64_t panel0, int64_t t0, const PackedLinear& p,
                                                const float* xs, const float* bias, float* y) {
  const int64_t n = p.rows;
  for (int i = 0; i < panels; ++i) {
    const int64_t o0 = (panel0 + i) * 16, lanes = std::min<int64_t>(16, n - o0);
    const float* sw = p.scale.data() + (panel0 + i) * 16;
    for (int tt = 0; tt < m; ++tt) finish_row(acc + (i * 16 + tt) * 16, xs[t0 + tt], sw, bias, o0, lanes, y + (t0 + tt) * n + o0);
  }
}

// The packed path on AMX (one block per row): inputs quantized in s.q, copied to rows of whole
// 64-value chunks (zeros past k, as the panels hold zeros there). Token groups outside, panel
// groups inside: the tiles are configured once per group size.
void linear_amx(const PackedLinear& p, int64_t tokens, const float* bias, float* y, LinearScratch& s) {
  const int64_t k = p.cols, stride = p.qstride * 4, chunks = p.qstride / 16, pstride = p.qstride * 64;
  s.qp.resize(static_cast<size_t>(tokens * stride));
  for (int64_t t = 0; t < tokens; ++t) {
    std::memcpy(s.qp.data() + t * stride, s.q.data() + t * k, static_cast<size_t>(k));
    std::memset(s.qp.data() + t * stride + k, 0, static_cast<size_t>(stride - k));
  }
  const int8_t* xq = reinterpret_cast<const int8_t*>(s.qp.data());
  const float* xs = s.scales.data();
  const int64_t groups = (p.panels + 3) / 4;
  parallel_for(groups, 1, [&](int64_t g0, int64_t g1) {
    alignas(64) int32_t acc[4 * 16 * 16];
    int configured = 0;
    for (int64_t t0 = 0; t0 < tokens; t0 += 16) {
      const int m = static_cast<int>(std::min<int64_t>(16, tokens - t0));
      if (m != configured) amx_configure(m), configured = m;
      const int8_t* x = xq + t0 * stride;
      for (int64_t g = g0; g < g1; ++g) {
        const int64_t panel0 = g * 4;
        const int panels = static_cast<int>(std::min<int64_t>(4, p.panels - panel0));
        const int8_t* w = p.w.data() + panel0 * pstride;
        switch (panels) {
          case 4: amx_panels<4>(x, stride, w, pstride, chunks, acc); break;
          case 3: amx_panels<3>(x, stride, w, pstride, chunks, acc); break;
          case 2: amx_panels<2>(x, stride, w, pstride, chunks, acc); break;
          default: amx_panels<1>(x, stride, w, pstride, chunks, acc); break;
        }
        amx_finish(acc, panels, m, panel0, t0, p, xs, bias, y);
      }
    }
    if (configured) amx_release();
  });
}
#endif

// The packed path: inputs already quantized in s.q / s.scales; the float finish is the one of
// the unpacked path (the same operations per output, lane by lane).
void linear_packed(const PackedLinear& p, PanelDots dots, int64_t tokens, const float* bias, ActQuant q, float* y,
                   LinearScratch& s) {
#if defined(__x86_64__)
  if (active_isa() == Isa::kAmx && p.blocks == 1) return linear_amx(p, tokens, bias, y, s);
#endif
  const int64_t k = p.cols, n = p.rows, stride = p.qstride * 4;
  const int64_t x_blocks = q == ActQuant::kPerToken ? 1 : k / 32, per_x = (q == ActQuant::kPerToken ? k : 32) / p.block;
  const bool offset = active_isa() >= Isa::kAvx512Vnni;
  s.qp.assign(static_cast<size_t>(tokens * stride), offset ? 128 : 0);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t j = 0; j < k; ++j)
      s.qp[static_cast<size_t>(t * stride + j)] = static_cast<uint8_t>(offset ? s.q[static_cast<size_t>(t * k + j)] + 128 : s.q[static_cast<size_t>(t * k + j)]);
  const float* xs = s.scales.data();
  const uint8_t* xq = s.qp.data();
  const int64_t blocks = p.blocks;
  parallel_for(p.panels, 1, [&](int64_t p0, int64_t p1) {
    std::vector<int32_t> acc(static_cast<size_t>(4 * blocks * 16));
    for (int64_t panel = p0; panel < p1; ++panel) {
      const int64_t o0 = panel * 16, lanes = std::min<int64_t>(16, n - o0);
      const float* sw = p.scale.data() + panel * blocks * 16;
      for (int64_t t0 = 0; t0 < tokens; t0 += 4) {
        const int tt = static_cast<int>(std::min<int64_t>(4, tokens - t0));
        const uint8_t* rows[4];
        for (int i = 0; i < tt; ++i) rows[i] = xq + (t0 + i) * stride;
        dots(rows, tt, p, panel, acc.data());
        for (int i = 0; i < tt; ++i) {
          const int64_t t = t0 + i;
          const float* sx = xs + t * x_blocks;
          const int32_t* a = acc.data() + i * blocks * 16;
          float* yt = y + t * n + o0;
          if (blocks == 1) {
            finish_row(a, sx[0], sw, bias, o0, lanes, yt);
            continue;
          }
#if defined(__x86_64__)
          if (active_isa() != Isa::kGeneric) {
            finish_blocks_avx2(a, blocks, per_x, sx, sw, bias, o0, lanes, yt);
            continue;
          }
#endif
          finish_blocks_generic(a, blocks, per_x, sx, sw, bias, o0, lanes, yt);
        }
      }
    }
  });
}

}  // namespace

void linear_forward(const float* x, int64_t tokens, const QuantWeight& w, const float* bias, ActQuant q, float* y,
                    LinearScratch& s, const PackedLinear* packed) {
  const int64_t k = w.cols, n = w.rows;
  if (q == ActQuant::kNone) {
    parallel_for(n, 16, [&](int64_t o0, int64_t o1) {
      std::vector<float> row(static_cast<size_t>(w.f32 ? 0 : k));
      for (int64_t o = o0; o < o1; ++o) {
        if (!w.f32) dequantize_row(w, o, row.data());  // int8 weights, float inputs
        const float* wr = w.f32 ? w.f32 + o * k : row.data();
        for (int64_t t = 0; t < tokens; ++t) {
          const float* xr = x + t * k;
          float acc = 0.0f;
          for (int64_t j = 0; j < k; ++j) acc += xr[j] * wr[j];
          y[t * n + o] = bias ? acc + bias[o] : acc;
        }
      }
    });
    return;
  }
  // Each output: the sum over blocks b of float(exact int32 block sum) * (sx[b / per_x] * sw[b / per_w]),
  // starting from block 0's product, the blocks in order (the finer of the input's blocks and the weight's groups), plus the bias:
  // the same float operations whatever the instruction set, thread count or loop order.
  const int64_t xb = q == ActQuant::kPerToken ? k : 32, wg = w.group, block = std::min(xb, wg);
  const int64_t x_blocks = k / xb, w_groups = k / wg, blocks = k / block, per_x = xb / block, per_w = wg / block;
  s.q.resize(static_cast<size_t>(tokens * k));
  s.scales.resize(static_cast<size_t>(tokens * x_blocks));
  for (int64_t t = 0; t < tokens; ++t) quantize_row(x + t * k, k, q, s.q.data() + t * k, s.scales.data() + t * x_blocks);
  if (packed && !packed->empty()) {
    if (const PanelDots pd = panel_dots()) return linear_packed(*packed, pd, tokens, bias, q, y, s);
  }
  // The portable path (CPUs without a tiled kernel, and the reference the tests hold them to).
  constexpr int kRows = 4;  // weight rows per call: read once for all the tokens while they are in L1
  const int8_t* xq = s.q.data();
  const float* xs = s.scales.data();
  // Which input scale and weight scale each block takes (no integer division in the loops).
  s.block_x.resize(static_cast<size_t>(blocks));
  s.block_w.resize(static_cast<size_t>(blocks));
  for (int64_t b = 0; b < blocks; ++b) s.block_x[static_cast<size_t>(b)] = static_cast<int32_t>(b / per_x), s.block_w[static_cast<size_t>(b)] = static_cast<int32_t>(b / per_w);
  const int32_t* bx = s.block_x.data();
  const int32_t* bw = s.block_w.data();
  parallel_for((n + kRows - 1) / kRows, 4, [&](int64_t c0, int64_t c1) {
    std::vector<int32_t> acc(static_cast<size_t>(tokens * kRows * blocks));
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t o0 = c * kRows;
      const int rows = static_cast<int>(std::min<int64_t>(kRows, n - o0));
      const int32_t* a = acc.data();
      dots_generic(xq, tokens, w.i8 + o0 * k, k, k, block, rows, acc.data());
      for (int64_t t = 0; t < tokens; ++t) {
        const float* sx = xs + t * x_blocks;
        float* yt = y + t * n;
        for (int r = 0; r < rows; ++r) {
          const int64_t o = o0 + r;
          const float* sw = w.scale + o * w_groups;
          const int32_t* ab = a + (t * kRows + r) * blocks;
          float sum = static_cast<float>(ab[0]) * (sx[bx[0]] * sw[bw[0]]);
          for (int64_t b = 1; b < blocks; ++b) sum += static_cast<float>(ab[b]) * (sx[bx[b]] * sw[bw[b]]);
          yt[o] = bias ? sum + bias[o] : sum;
        }
      }
    }
  });
}

namespace {
// A sum over j < d in 8 interleaved lanes (lane l takes j = l, l + 8, ...), the lanes then added
// in a fixed tree: what one 8-wide register computes, written so that every build of it (SSE2,
// AVX2) performs the same IEEE operations and the result does not depend on the CPU.
template <class F>
__attribute__((always_inline)) inline float lane_sum(int64_t d, F f) {
  float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  int64_t j = 0;
  for (; j + 8 <= d; j += 8)
    for (int l = 0; l < 8; ++l) acc[l] += f(j + l);
  for (int l = 0; j < d; ++j, ++l) acc[l] += f(j);
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

__attribute__((always_inline)) inline void layer_norm_body(const float* x, int64_t d, const float* weight, const float* bias, float eps,
                                                           float* y) {
  const float mean = lane_sum(d, [&](int64_t j) { return x[j]; }) / static_cast<float>(d);
  const float var = lane_sum(d, [&](int64_t j) { return (x[j] - mean) * (x[j] - mean); }) / static_cast<float>(d);
  const float r = 1.0f / std::sqrt(var + eps);
  for (int64_t j = 0; j < d; ++j) y[j] = (x[j] - mean) * r * weight[j] + bias[j];
}
__attribute__((always_inline)) inline void rms_norm_body(const float* x, int64_t d, const float* weight, float eps, float* y) {
  const float ss = lane_sum(d, [&](int64_t j) { return x[j] * x[j]; });
  const float r = 1.0f / std::sqrt(ss / static_cast<float>(d) + eps);
  for (int64_t j = 0; j < d; ++j) y[j] = weight[j] * (x[j] * r);
}
void layer_norm_generic(const float* x, int64_t d, const float* w, const float* b, float eps, float* y) { layer_norm_body(x, d, w, b, eps, y); }
void rms_norm_generic(const float* x, int64_t d, const float* w, float eps, float* y) { rms_norm_body(x, d, w, eps, y); }
#if defined(__x86_64__)
__attribute__((target("avx2"))) void layer_norm_avx2(const float* x, int64_t d, const float* w, const float* b, float eps, float* y) {
  layer_norm_body(x, d, w, b, eps, y);
}
__attribute__((target("avx2"))) void rms_norm_avx2(const float* x, int64_t d, const float* w, float eps, float* y) {
  rms_norm_body(x, d, w, eps, y);
}
#endif
}  // namespace

void layer_norm_row(const float* x, int64_t d, const float* weight, const float* bias, float eps, float* y) {
#if defined(__x86_64__)
  if (active_isa() != Isa::kGeneric) return layer_norm_avx2(x, d, weight, bias, eps, y);
#endif
  layer_norm_generic(x, d, weight, bias, eps, y);
}

void rms_norm_row(const float* x, int64_t d, const float* weight, float eps, float* y) {
#if defined(__x86_64__)
  if (active_isa() != Isa::kGeneric) return rms_norm_avx2(x, d, weight, eps, y);
#endif
  rms_norm_generic(x, d, weight, eps, y);
}

// erf as a rational function of our own fit (tested: |error| < 4e-7 against erf in double;
// float32's spacing at 1 is 6e-8, libm's erff is within one ulp): x P(x^2) / Q(x^2) on x clamped
// to [-3.95, 3.95], where it gives exactly +-1 (erf(3.95) is 1 - 2e-8: 1 in float32), so that
// GELU's far negative tail is exactly 0 as in training. Only +, *, / and min/max: the same IEEE
// operations, in the same order, in the portable loop and the AVX2 one below, so every CPU
// computes the same bits (vectorized libm erf would not). Coefficients: a least-squares rational
// fit (Sanathanan-Koerner iterations, P(0) pinned to 2/sqrt(pi)) evaluated in float32.
namespace {
constexpr float kErfP[7] = {1.12837923f, 0.184923813f, 0.054323215f, 0.00384381902f, 0.000381275226f, 4.73553746e-06f, -1.34422384e-08f};
constexpr float kErfQ[6] = {1.0f, 0.497217894f, 0.113881327f, 0.0154563067f, 0.00130863418f, 6.35921169e-05f};

// NaN passes through the clamp (std::max / std::min return their first operand then).
inline float erf_rational(float x) {
  const float c = std::min(std::max(x, -3.95f), 3.95f), z = c * c;
  float p = kErfP[6];
  for (int i = 5; i >= 0; --i) p = p * z + kErfP[i];
  float q = kErfQ[5];
  for (int i = 4; i >= 0; --i) q = q * z + kErfQ[i];
  return c * p / q;
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) void gelu_avx2(const float* x, int64_t n, float* y) {
  const __m256 lo = _mm256_set1_ps(-3.95f), hi = _mm256_set1_ps(3.95f), r2 = _mm256_set1_ps(0.70710678118654752440f),
               half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    // max/min return their second operand when one is NaN: NaN passes as in erf_rational.
    const __m256 c = _mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_mul_ps(v, r2))), z = _mm256_mul_ps(c, c);
    __m256 p = _mm256_set1_ps(kErfP[6]);
    for (int k = 5; k >= 0; --k) p = _mm256_add_ps(_mm256_mul_ps(p, z), _mm256_set1_ps(kErfP[k]));
    __m256 q = _mm256_set1_ps(kErfQ[5]);
    for (int k = 4; k >= 0; --k) q = _mm256_add_ps(_mm256_mul_ps(q, z), _mm256_set1_ps(kErfQ[k]));
    const __m256 erf = _mm256_div_ps(_mm256_mul_ps(c, p), q);
    _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_mul_ps(v, half), _mm256_add_ps(one, erf)));
  }
  for (; i < n; ++i) y[i] = gelu(x[i]);
}
#endif
}  // namespace

float gelu(float x) { return x * 0.5f * (1.0f + erf_rational(x * 0.70710678118654752440f)); }

void gelu_rows(const float* x, int64_t n, float* y) {
#if defined(__x86_64__)
  if (active_isa() != Isa::kGeneric) return gelu_avx2(x, n, y);
#endif
  for (int64_t i = 0; i < n; ++i) y[i] = gelu(x[i]);
}
float silu(float x) { return x / (1.0f + std::exp(-x)); }

// exp for the softmax, in the classic Cephes form: n = round(x log2 e), r = x - n ln 2 (ln 2 in
// two parts), e^r by a degree-7 polynomial, times 2^n built in the exponent bits; 0 below -87
// (where 2^n would leave the normal range; e^-87 is 1.6e-38), NaN passes through. Within 2 ulp
// of expf (tested); the same IEEE operations in the portable loop and the AVX2 one.
namespace {
constexpr float kExpLo = -87.0f, kExpHi = 88.0f, kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kExpC[6] = {5.0000001201e-1f, 1.6666665459e-1f, 4.1665795894e-2f, 8.3334519073e-3f, 1.3981999507e-3f, 1.9875691500e-4f};

inline float exp_poly(float x) {
  if (std::isnan(x)) return x;
  if (x < kExpLo) return 0.0f;
  const float c = std::min(x, kExpHi);
  const float n = std::nearbyint(c * kLog2e);
  const float r = (c - n * kLn2Hi) - n * kLn2Lo;
  float p = kExpC[5];
  for (int i = 4; i >= 0; --i) p = p * r + kExpC[i];
  const float e = (p * (r * r) + r) + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return e * scale;
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) void exp_shifted_avx2(float* x, int64_t n, float shift) {
  const __m256 lo = _mm256_set1_ps(kExpLo), hi = _mm256_set1_ps(kExpHi), l2e = _mm256_set1_ps(kLog2e), c1 = _mm256_set1_ps(kLn2Hi),
               c2 = _mm256_set1_ps(kLn2Lo), one = _mm256_set1_ps(1.0f), sh = _mm256_set1_ps(shift);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 x0 = _mm256_sub_ps(_mm256_loadu_ps(x + i), sh);
    const __m256 c = _mm256_min_ps(hi, x0);  // NaN lanes are replaced below
    const __m256 k = _mm256_round_ps(_mm256_mul_ps(c, l2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 r = _mm256_sub_ps(_mm256_sub_ps(c, _mm256_mul_ps(k, c1)), _mm256_mul_ps(k, c2));
    __m256 p = _mm256_set1_ps(kExpC[5]);
    for (int j = 4; j >= 0; --j) p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(kExpC[j]));
    const __m256 e = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(p, _mm256_mul_ps(r, r)), r), one);
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    __m256 y = _mm256_mul_ps(e, _mm256_castsi256_ps(bits));
    y = _mm256_and_ps(y, _mm256_cmp_ps(x0, lo, _CMP_GE_OQ));           // below -87 (and NaN): 0
    y = _mm256_blendv_ps(y, x0, _mm256_cmp_ps(x0, x0, _CMP_UNORD_Q));  // NaN: itself
    _mm256_storeu_ps(x + i, y);
  }
  for (; i < n; ++i) x[i] = exp_poly(x[i] - shift);
}
#endif
}  // namespace

void exp_shifted(float* x, int64_t n, float shift) {
#if defined(__x86_64__)
  if (active_isa() != Isa::kGeneric) return exp_shifted_avx2(x, n, shift);
#endif
  for (int64_t i = 0; i < n; ++i) x[i] = exp_poly(x[i] - shift);
}

namespace {

// One side (keys or values) of the cache in its storage form.
struct KvSide {
  std::vector<float>& f32;
  std::vector<uint16_t>& f16;
  std::vector<int8_t>& q;
  std::vector<float>& scale;
};

void kv_resize(KvSide s, KvStore type, int64_t rows, int64_t hd) {
  const size_t n = static_cast<size_t>(rows * hd);
  switch (type) {
    case KvStore::kF32: s.f32.resize(n); break;
    case KvStore::kF16: s.f16.resize(n); break;
    case KvStore::kPerToken: s.q.resize(n), s.scale.resize(static_cast<size_t>(rows)); break;
    case KvStore::kQ8_0: s.q.resize(n), s.scale.resize(n / 32); break;
  }
}

void kv_store(KvSide s, KvStore type, int64_t row, int64_t hd, const float* x) {
  const size_t at = static_cast<size_t>(row * hd);
  switch (type) {
    case KvStore::kF32: std::memcpy(s.f32.data() + at, x, static_cast<size_t>(hd) * sizeof(float)); break;
    case KvStore::kF16:
      for (int64_t i = 0; i < hd; ++i) s.f16[at + static_cast<size_t>(i)] = fmt::float_to_half(x[i]);
      break;
    case KvStore::kPerToken: quantize_row(x, hd, ActQuant::kPerToken, s.q.data() + at, s.scale.data() + row); break;
    case KvStore::kQ8_0: quantize_row(x, hd, ActQuant::kQ8_0, s.q.data() + at, s.scale.data() + at / 32); break;
  }
}

// Row `row` as floats: a pointer into the cache (f32) or into `buf`.
const float* kv_load(const KvSide& s, KvStore type, int64_t row, int64_t hd, float* buf) {
  const size_t at = static_cast<size_t>(row * hd);
  switch (type) {
    case KvStore::kF32: return s.f32.data() + at;
    case KvStore::kF16:
      for (int64_t i = 0; i < hd; ++i) buf[i] = fmt::half_to_float(s.f16[at + static_cast<size_t>(i)]);
      return buf;
    case KvStore::kPerToken:
      for (int64_t i = 0; i < hd; ++i) buf[i] = static_cast<float>(s.q[at + static_cast<size_t>(i)]) * s.scale[static_cast<size_t>(row)];
      return buf;
    case KvStore::kQ8_0:
      for (int64_t i = 0; i < hd; ++i)
        buf[i] = static_cast<float>(s.q[at + static_cast<size_t>(i)]) * s.scale[(at + static_cast<size_t>(i)) / 32];
      return buf;
  }
  return buf;
}

}  // namespace

namespace {

// One head's attention for `tokens` queries (row t at q + t * stride) over keys laid out as kt
// [hd, total] and values as vf [total, hd]: scores summed over i in order, scaled, softmax (the
// row maximum subtracted, the exponentials summed in key order), outputs summed over keys in
// order. Every loop that vectorizes runs over independent elements, so the SSE2 and AVX2 builds
// of it compute the same bits.
struct AttendArgs {
  const float* q;
  int64_t stride;
  const float* kt;
  const float* vf;
  int64_t total, hd, tokens, past;
  bool causal;
  float scale;
  float* p;    // [total] scratch
  float* out;  // row t at out + t * stride
};

__attribute__((always_inline)) inline void attend_body(const AttendArgs& a) {
  const int64_t hd = a.hd, total = a.total;
  for (int64_t t = 0; t < a.tokens; ++t) {
    const int64_t keys = a.causal ? a.past + t + 1 : total;
    const float* qr = a.q + t * a.stride;
    float* pj = a.p;
    std::fill(pj, pj + keys, 0.0f);
    for (int64_t i = 0; i < hd; ++i) {
      const float qi = qr[i];
      const float* ki = a.kt + i * total;
      for (int64_t j = 0; j < keys; ++j) pj[j] += qi * ki[j];
    }
    for (int64_t j = 0; j < keys; ++j) pj[j] *= a.scale;
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < keys; ++j) mx = std::max(mx, pj[j]);
    exp_shifted(pj, keys, mx);
    float sum = 0.0f;
    for (int64_t j = 0; j < keys; ++j) sum += pj[j];
    for (int64_t j = 0; j < keys; ++j) pj[j] /= sum;
    float* o = a.out + t * a.stride;
    std::fill(o, o + hd, 0.0f);
    for (int64_t j = 0; j < keys; ++j) {
      const float w = pj[j];
      const float* vr = a.vf + j * hd;
      for (int64_t i = 0; i < hd; ++i) o[i] += w * vr[i];
    }
  }
}
void attend_generic(const AttendArgs& a) { attend_body(a); }
#if defined(__x86_64__)
__attribute__((target("avx2"))) void attend_avx2(const AttendArgs& a) { attend_body(a); }
#endif

}  // namespace

void attention_forward(const AttentionConfig& c, const float* q, const float* k, const float* v, int64_t tokens,
                       KvCache& cache, float* out) {
  const int64_t hd = c.head_dim, half = hd / 2, qw = c.heads * hd, past = cache.positions;
  if (past + tokens > c.max_positions)
    throw QdmError("attention: " + std::to_string(past + tokens) + " positions exceed the model's " +
                   std::to_string(c.max_positions) + " (start a new sequence)");
  // Rotary angles of HF's llama in float32: inv_freq[i] = 1 / theta^(2i / hd), angle = pos * inv_freq[i];
  // cos and sin once per position, for every head.
  const bool rope = c.rope_theta > 0.0f;
  std::vector<float> inv_freq(static_cast<size_t>(half)), cs(static_cast<size_t>(half)), sn(static_cast<size_t>(half));
  for (int64_t i = 0; rope && i < half; ++i)
    inv_freq[static_cast<size_t>(i)] = 1.0f / std::pow(c.rope_theta, static_cast<float>(2 * i) / static_cast<float>(hd));
  auto angles = [&](int64_t pos) {
    for (int64_t i = 0; i < half; ++i) {
      const float a = static_cast<float>(pos) * inv_freq[static_cast<size_t>(i)];
      cs[static_cast<size_t>(i)] = std::cos(a), sn[static_cast<size_t>(i)] = std::sin(a);
    }
  };
  auto rotate = [&](float* x) {
    for (int64_t i = 0; i < half; ++i) {
      const float c1 = cs[static_cast<size_t>(i)], s1 = sn[static_cast<size_t>(i)];
      const float x1 = x[i], x2 = x[i + half];
      x[i] = x1 * c1 + (-x2) * s1;
      x[i + half] = x2 * c1 + x1 * s1;
    }
  };
  const KvSide ks{cache.k, cache.k16, cache.kq, cache.ks}, vs{cache.v, cache.v16, cache.vq, cache.vs};
  kv_resize(ks, c.kv, (past + tokens) * c.kv_heads, hd);
  kv_resize(vs, c.kv, (past + tokens) * c.kv_heads, hd);
  std::vector<float> qrot(q, q + tokens * qw);  // q with its rotary positions
  std::vector<float> krow(static_cast<size_t>(hd));
  for (int64_t t = 0; t < tokens; ++t) {
    if (rope) angles(past + t);
    for (int64_t h = 0; h < c.kv_heads; ++h) {
      const float* src = k + (t * c.kv_heads + h) * hd;
      std::copy(src, src + hd, krow.begin());
      if (rope) rotate(krow.data());
      const int64_t row = (past + t) * c.kv_heads + h;
      kv_store(ks, c.kv, row, hd, krow.data());
      kv_store(vs, c.kv, row, hd, v + (t * c.kv_heads + h) * hd);
    }
    for (int64_t h = 0; rope && h < c.heads; ++h) rotate(qrot.data() + t * qw + h * hd);
  }
  cache.positions = past + tokens;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const int64_t group = c.heads / c.kv_heads;
  // Heads are independent: split over the threads, each head computed alike on any of them. Per
  // head the keys are laid out once as floats [hd, keys] and the values as [keys, hd], so that the
  // loops below run over contiguous memory (and vectorize) while every sum keeps its order: a
  // score sums over i = 0 .. hd - 1, an output over the keys in order.
  const int64_t total = past + tokens;
  parallel_for(c.heads, 1, [&](int64_t h0, int64_t h1) {
    std::vector<float> p(static_cast<size_t>(total)), buf(static_cast<size_t>(hd));
    std::vector<float> kt(static_cast<size_t>(hd * total)), vf(static_cast<size_t>(total * hd));
    int64_t loaded = -1;
    for (int64_t h = h0; h < h1; ++h) {
      const int64_t kvh = h / group;
      if (kvh != loaded) {
        for (int64_t j = 0; j < total; ++j) {
          const float* kr = kv_load(ks, c.kv, j * c.kv_heads + kvh, hd, buf.data());
          for (int64_t i = 0; i < hd; ++i) kt[static_cast<size_t>(i * total + j)] = kr[i];
          const float* vr = kv_load(vs, c.kv, j * c.kv_heads + kvh, hd, buf.data());
          std::copy(vr, vr + hd, vf.begin() + j * hd);
        }
        loaded = kvh;
      }
      const AttendArgs a{qrot.data() + h * hd, qw, kt.data(), vf.data(), total, hd, tokens, past, c.causal, scale, p.data(),
                         out + h * hd};
#if defined(__x86_64__)
      if (active_isa() != Isa::kGeneric) {
        attend_avx2(a);
        continue;
      }
#endif
      attend_generic(a);
    }
  });
}

}  // namespace qd::rt
