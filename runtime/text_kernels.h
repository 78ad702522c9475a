// Kernels of the transformer ops (runtime/ops_text.cpp): quantized linear layers, norms,
// activations and attention on [tokens, features] float rows. Portable C++ first; each vector
// version picked at run time is tested against these (tests/runtime/text_ops_test.cpp). No LibTorch.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

namespace qd::rt {

// IEEE binary16 rounding of a float (nearest, ties to even), as ggml stores block scales.
float fp16_round(float f);

// A weight [rows, cols]: f32, or int8 with one scale per (row, group of `group` columns).
struct QuantWeight {
  int64_t rows = 0, cols = 0;
  const float* f32 = nullptr;
  const int8_t* i8 = nullptr;
  const float* scale = nullptr;  // [rows, cols / group]
  int64_t group = 0;
};
void dequantize_row(const QuantWeight& w, int64_t row, float* out);  // [cols]

// How a linear layer's input row is quantized on the fly (qat/module_qat.h):
//   per_token: s = max|x| / 127, q = round_half_even(x / s), one scale per row (0 rows stay 0);
//   q8_0:      blocks of 32, d = max|x| / 127, q = roundf(x * (1 / d)) (half away from zero), d kept
//              as fp16: ggml's reference quantize_row_q8_0.
enum class ActQuant { kNone, kPerToken, kQ8_0 };
// Quantizes one row of `k` values; `scales` gets one scale per block (k / block values).
void quantize_row(const float* x, int64_t k, ActQuant q, int8_t* out, float* scales);

struct LinearScratch {
  std::vector<int8_t> q;       // quantized input rows
  std::vector<float> scales;   // their block scales
  std::vector<float> row;      // a dequantized weight row (int8 weights, float inputs)
};
// y[t, o] = sum_k x[t, k] w[o, k] + bias[o]. Quantized inputs: the exact int32 sum of each block
// (the finer of the weight's groups and the input's blocks), times both scales, summed in float.
void linear_forward(const float* x, int64_t tokens, const QuantWeight& w, const float* bias, ActQuant q, float* y,
                    LinearScratch& scratch);

void layer_norm_row(const float* x, int64_t d, const float* weight, const float* bias, float eps, float* y);
void rms_norm_row(const float* x, int64_t d, const float* weight, float eps, float* y);
float gelu(float x);  // erf form
float silu(float x);

// How the KV cache keeps keys and values, each row of head_dim values (one position, one kv head):
//   f32; f16 (IEEE half, round to nearest even: llama.cpp's default cache); per_token (int8, one
//   scale per row, as quantize_row's per_token); q8_0 (int8 in blocks of 32 with fp16 scales, as
//   quantize_row's q8_0). The quantized forms are what QAT's qat.kv_cache simulates.
enum class KvStore { kF32, kF16, kPerToken, kQ8_0 };

struct AttentionConfig {
  int64_t heads = 1, kv_heads = 1, head_dim = 2, max_positions = 1;
  bool causal = false;
  float rope_theta = 0.0f;  // 0: no rotary positions
  KvStore kv = KvStore::kF32;
};
// Keys and values of earlier tokens (rotary positions applied), row r = position * kv_heads + head.
struct KvCache {
  std::vector<float> k, v;          // kF32: [rows, head_dim]
  std::vector<uint16_t> k16, v16;   // kF16
  std::vector<int8_t> kq, vq;       // kPerToken, kQ8_0
  std::vector<float> ks, vs;        // their scales: per row (per_token) or per 32 values (q8_0)
  int64_t positions = 0;
  void clear() { *this = KvCache(); }
  size_t bytes() const {
    return (k.size() + v.size() + ks.size() + vs.size()) * sizeof(float) + (k16.size() + v16.size()) * 2 + kq.size() + vq.size();
  }
};
// q [T, heads * hd], k and v [T, kv_heads * hd] for positions cache.positions .. + T - 1; appends
// k and v to the cache; out [T, heads * hd]. Throws QdmError past max_positions.
void attention_forward(const AttentionConfig& c, const float* q, const float* k, const float* v, int64_t tokens,
                       KvCache& cache, float* out);

}  // namespace qd::rt
