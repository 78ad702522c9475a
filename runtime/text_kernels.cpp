#include "runtime/text_kernels.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "formats/half.h"
#include "runtime/graph.h"
#include "runtime/kernels.h"

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

void quantize_row(const float* x, int64_t k, ActQuant q, int8_t* out, float* scales) {
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

// sum over blocks b of float(exact int32 dot of block b) * (sx[b / per_x] * sw[b / per_w]), the
// blocks in order: the same float operations whatever the instruction set (the int32 dots are
// exact). x and w hold values in [-127, 127] (activations saturate there; weights validate so).
using BlockDot = float (*)(const int8_t* x, const float* sx, const int8_t* w, const float* sw, int64_t k, int64_t block,
                           int64_t per_x, int64_t per_w);

float blocks_generic(const int8_t* x, const float* sx, const int8_t* w, const float* sw, int64_t k, int64_t block,
                     int64_t per_x, int64_t per_w) {
  float sum = 0.0f;
  for (int64_t b = 0, b0 = 0; b0 < k; ++b, b0 += block) {
    int32_t acc = 0;
    for (int64_t j = b0; j < b0 + block; ++j) acc += static_cast<int32_t>(x[j]) * w[j];
    sum += static_cast<float>(acc) * (sx[b / per_x] * sw[b / per_w]);
  }
  return sum;
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) inline int32_t hsum_avx2(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

// 32 products at a time as ggml does: |x| (unsigned) times w with x's sign, pairs summed to int16
// (|pair| <= 2 * 127 * 127 < 2^15: no saturation), then to int32.
__attribute__((target("avx2"))) inline __m256i dot32_avx2(__m256i acc, const int8_t* x, const int8_t* w) {
  const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
  const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
  const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(xv, xv), _mm256_sign_epi8(wv, xv));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}

__attribute__((target("avx2"))) float blocks_avx2(const int8_t* x, const float* sx, const int8_t* w, const float* sw,
                                                  int64_t k, int64_t block, int64_t per_x, int64_t per_w) {
  float sum = 0.0f;
  for (int64_t b = 0, b0 = 0; b0 < k; ++b, b0 += block) {
    __m256i acc = _mm256_setzero_si256();
    int64_t j = b0;
    for (; j + 32 <= b0 + block; j += 32) acc = dot32_avx2(acc, x + j, w + j);
    int32_t a = hsum_avx2(acc);
    for (; j < b0 + block; ++j) a += static_cast<int32_t>(x[j]) * w[j];
    sum += static_cast<float>(a) * (sx[b / per_x] * sw[b / per_w]);
  }
  return sum;
}

// AVX-512 VNNI (256-bit form): vpdpbusd sums four u8 x s8 products into each int32 lane at once.
__attribute__((target("avx2,avx512vl,avx512vnni"))) float blocks_vnni(const int8_t* x, const float* sx, const int8_t* w,
                                                                     const float* sw, int64_t k, int64_t block,
                                                                     int64_t per_x, int64_t per_w) {
  float sum = 0.0f;
  for (int64_t b = 0, b0 = 0; b0 < k; ++b, b0 += block) {
    __m256i acc = _mm256_setzero_si256();
    int64_t j = b0;
    for (; j + 32 <= b0 + block; j += 32) {
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + j));
      const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + j));
      acc = _mm256_dpbusd_epi32(acc, _mm256_sign_epi8(xv, xv), _mm256_sign_epi8(wv, xv));
    }
    int32_t a = hsum_avx2(acc);
    for (; j < b0 + block; ++j) a += static_cast<int32_t>(x[j]) * w[j];
    sum += static_cast<float>(a) * (sx[b / per_x] * sw[b / per_w]);
  }
  return sum;
}
#endif

BlockDot block_dot() {
#if defined(__x86_64__)
  switch (active_isa()) {
    case Isa::kAvx512Vnni:
      return blocks_vnni;
    case Isa::kAvx2:
      return blocks_avx2;
    case Isa::kGeneric:
      break;
  }
#endif
  return blocks_generic;
}

}  // namespace

void linear_forward(const float* x, int64_t tokens, const QuantWeight& w, const float* bias, ActQuant q, float* y,
                    LinearScratch& s) {
  const int64_t k = w.cols, n = w.rows;
  if (q == ActQuant::kNone) {
    s.row.resize(static_cast<size_t>(k));
    for (int64_t o = 0; o < n; ++o) {
      if (!w.f32) dequantize_row(w, o, s.row.data());  // int8 weights, float inputs
      const float* wr = w.f32 ? w.f32 + o * k : s.row.data();
      for (int64_t t = 0; t < tokens; ++t) {
        const float* xr = x + t * k;
        float acc = 0.0f;
        for (int64_t j = 0; j < k; ++j) acc += xr[j] * wr[j];
        y[t * n + o] = bias ? acc + bias[o] : acc;
      }
    }
    return;
  }
  const int64_t xb = q == ActQuant::kPerToken ? k : 32, wg = w.group, block = std::min(xb, wg);
  const int64_t x_blocks = k / xb, w_groups = k / wg;
  s.q.resize(static_cast<size_t>(tokens * k));
  s.scales.resize(static_cast<size_t>(tokens * x_blocks));
  for (int64_t t = 0; t < tokens; ++t) quantize_row(x + t * k, k, q, s.q.data() + t * k, s.scales.data() + t * x_blocks);
  const BlockDot dot = block_dot();
  // A weight row is read once for all the tokens (prompt processing); each output is the same sum
  // in the same order whatever the loop order.
  for (int64_t o = 0; o < n; ++o) {
    const int8_t* wq = w.i8 + o * k;
    const float* sw = w.scale + o * w_groups;
    for (int64_t t = 0; t < tokens; ++t) {
      const float sum = dot(s.q.data() + t * k, s.scales.data() + t * x_blocks, wq, sw, k, block, xb / block, wg / block);
      y[t * n + o] = bias ? sum + bias[o] : sum;
    }
  }
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
  std::vector<float> p(static_cast<size_t>(past + tokens)), buf(static_cast<size_t>(hd));
  for (int64_t t = 0; t < tokens; ++t) {
    const int64_t keys = c.causal ? past + t + 1 : past + tokens;
    for (int64_t h = 0; h < c.heads; ++h) {
      const float* qr = qrot.data() + t * qw + h * hd;
      const int64_t kvh = h / group;
      float mx = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j < keys; ++j) {
        const float* kr = kv_load(ks, c.kv, j * c.kv_heads + kvh, hd, buf.data());
        float dot = 0.0f;
        for (int64_t i = 0; i < hd; ++i) dot += qr[i] * kr[i];
        p[static_cast<size_t>(j)] = dot * scale;
        mx = std::max(mx, p[static_cast<size_t>(j)]);
      }
      float sum = 0.0f;
      for (int64_t j = 0; j < keys; ++j) sum += (p[static_cast<size_t>(j)] = std::exp(p[static_cast<size_t>(j)] - mx));
      float* o = out + t * qw + h * hd;
      std::fill(o, o + hd, 0.0f);
      for (int64_t j = 0; j < keys; ++j) {
        const float w = p[static_cast<size_t>(j)] / sum;
        const float* vr = kv_load(vs, c.kv, j * c.kv_heads + kvh, hd, buf.data());
        for (int64_t i = 0; i < hd; ++i) o[i] += w * vr[i];
      }
    }
  }
}

}  // namespace qd::rt
