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
#define QD_PANEL_BODY(PREP, DOT)                                                                                \
  const int8_t* wp = p.w.data() + panel * p.quads * 64;                                                        \
  const int64_t per_block = p.blocks == 1 ? p.quads : p.block / 4;                                             \
  const uint8_t* x0 = xs[0];                                                                                   \
  const uint8_t* x1 = xs[tokens > 1 ? 1 : 0];                                                                  \
  const uint8_t* x2 = xs[tokens > 2 ? 2 : 0];                                                                  \
  const uint8_t* x3 = xs[tokens > 3 ? 3 : 0];                                                                  \
  for (int64_t b = 0; b < p.blocks; ++b) {                                                                     \
    __m256i a00 = _mm256_setzero_si256(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00,   \
            a31 = a00;                                                                                         \
    for (int64_t q = b * per_block, q1 = q + per_block; q < q1; ++q) {                                         \
      const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + q * 64));                   \
      const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + q * 64 + 32));              \
      int32_t v;                                                                                               \
      std::memcpy(&v, x0 + q * 4, 4);                                                                          \
      __m256i xb = _mm256_set1_epi32(v);                                                                       \
      PREP a00 = DOT(a00, xb, w0), a01 = DOT(a01, xb, w1);                                                     \
      std::memcpy(&v, x1 + q * 4, 4);                                                                          \
      xb = _mm256_set1_epi32(v);                                                                               \
      PREP a10 = DOT(a10, xb, w0), a11 = DOT(a11, xb, w1);                                                     \
      std::memcpy(&v, x2 + q * 4, 4);                                                                          \
      xb = _mm256_set1_epi32(v);                                                                               \
      PREP a20 = DOT(a20, xb, w0), a21 = DOT(a21, xb, w1);                                                     \
      std::memcpy(&v, x3 + q * 4, 4);                                                                          \
      xb = _mm256_set1_epi32(v);                                                                               \
      PREP a30 = DOT(a30, xb, w0), a31 = DOT(a31, xb, w1);                                                     \
    }                                                                                                          \
    const __m256i c0 = OFFSET(0), c1 = OFFSET(8);                                                              \
    int32_t* o = acc + b * 16;                                                                                 \
    const int64_t step = p.blocks * 16;                                                                        \
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), _mm256_sub_epi32(a00, c0));                             \
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 8), _mm256_sub_epi32(a01, c1));                         \
    if (tokens > 1) {                                                                                          \
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + step), _mm256_sub_epi32(a10, c0));                    \
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + step + 8), _mm256_sub_epi32(a11, c1));                \
    }                                                                                                          \
    if (tokens > 2) {                                                                                          \
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 2 * step), _mm256_sub_epi32(a20, c0));                \
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 2 * step + 8), _mm256_sub_epi32(a21, c1));            \
    }                                                                                                          \
    if (tokens > 3) {                                                                                          \
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
__attribute__((target("avx2"))) void panel_avx2(const uint8_t* const* xs, int tokens, const PackedLinear& p, int64_t panel,
                                                int32_t* acc) {
  QD_PANEL_BODY(, panel_dot_avx2)
}
#undef OFFSET
#define OFFSET(at) _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.offset.data() + (panel * p.blocks + b) * 16 + (at)))
__attribute__((target("avx2,avx512vl,avx512vnni"))) void panel_vnni(const uint8_t* const* xs, int tokens, const PackedLinear& p,
                                                                    int64_t panel, int32_t* acc) {
  QD_PANEL_BODY(, panel_dot_vnni)
}
#undef OFFSET
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
  p.rows = w.rows, p.cols = k, p.quads = (k + 3) / 4, p.panels = (w.rows + 15) / 16, p.block = block, p.blocks = blocks;
  p.w.assign(static_cast<size_t>(p.panels * p.quads * 64), 0);
  p.offset.assign(static_cast<size_t>(p.panels * blocks * 16), 0);
  p.scale.assign(static_cast<size_t>(p.panels * blocks * 16), 0.0f);
  const int64_t groups = k / w.group;
  for (int64_t o = 0; o < w.rows; ++o) {
    const int64_t panel = o / 16, lane = o % 16;
    const int8_t* row = w.i8 + o * k;
    for (int64_t j = 0; j < k; ++j) p.w[static_cast<size_t>(((panel * p.quads + j / 4) * 16 + lane) * 4 + j % 4)] = row[j];
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

// The packed path: inputs already quantized in s.q / s.scales; the float finish is the one of
// the unpacked path (the same operations per output, lane by lane).
void linear_packed(const PackedLinear& p, PanelDots dots, int64_t tokens, const float* bias, ActQuant q, float* y,
                   LinearScratch& s) {
  const int64_t k = p.cols, n = p.rows, stride = p.quads * 4;
  const int64_t x_blocks = q == ActQuant::kPerToken ? 1 : k / 32, per_x = (q == ActQuant::kPerToken ? k : 32) / p.block;
  const bool offset = active_isa() == Isa::kAvx512Vnni;
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
            const float sxt = sx[0];
            for (int64_t l = 0; l < lanes; ++l) {
              const float sum = static_cast<float>(a[l]) * (sxt * sw[l]);
              yt[l] = bias ? sum + bias[o0 + l] : sum;
            }
            continue;
          }
          for (int64_t l = 0; l < lanes; ++l) {
            float sum = static_cast<float>(a[l]) * (sx[0] * sw[l]);
            for (int64_t b = 1; b < blocks; ++b) sum += static_cast<float>(a[b * 16 + l]) * (sx[b / per_x] * sw[b * 16 + l]);
            yt[l] = bias ? sum + bias[o0 + l] : sum;
          }
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

void layer_norm_row(const float* x, int64_t d, const float* weight, const float* bias, float eps, float* y) {
  float mean = 0.0f;
  for (int64_t j = 0; j < d; ++j) mean += x[j];
  mean /= static_cast<float>(d);
  float var = 0.0f;
  for (int64_t j = 0; j < d; ++j) var += (x[j] - mean) * (x[j] - mean);
  var /= static_cast<float>(d);
  const float r = 1.0f / std::sqrt(var + eps);
  for (int64_t j = 0; j < d; ++j) y[j] = (x[j] - mean) * r * weight[j] + bias[j];
}

void rms_norm_row(const float* x, int64_t d, const float* weight, float eps, float* y) {
  float ss = 0.0f;
  for (int64_t j = 0; j < d; ++j) ss += x[j] * x[j];
  const float r = 1.0f / std::sqrt(ss / static_cast<float>(d) + eps);
  for (int64_t j = 0; j < d; ++j) y[j] = weight[j] * (x[j] * r);
}

float gelu(float x) { return x * 0.5f * (1.0f + std::erf(x * 0.70710678118654752440f)); }
float silu(float x) { return x / (1.0f + std::exp(-x)); }

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
      for (int64_t t = 0; t < tokens; ++t) {
        const int64_t keys = c.causal ? past + t + 1 : total;
        const float* qr = qrot.data() + t * qw + h * hd;
        float* pj = p.data();
        std::fill(pj, pj + keys, 0.0f);
        for (int64_t i = 0; i < hd; ++i) {
          const float qi = qr[i];
          const float* ki = kt.data() + i * total;
          for (int64_t j = 0; j < keys; ++j) pj[j] += qi * ki[j];
        }
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < keys; ++j) mx = std::max(mx, pj[j] *= scale);
        float sum = 0.0f;
        for (int64_t j = 0; j < keys; ++j) sum += (pj[j] = std::exp(pj[j] - mx));
        float* o = out + t * qw + h * hd;
        std::fill(o, o + hd, 0.0f);
        for (int64_t j = 0; j < keys; ++j) {
          const float w = pj[j] / sum;
          const float* vr = vf.data() + j * hd;
          for (int64_t i = 0; i < hd; ++i) o[i] += w * vr[i];
        }
      }
    }
  });
}

}  // namespace qd::rt
