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
  std::vector<int32_t> block_x, block_w;  // per block of the dot products: its input scale, its weight scale
  std::vector<uint8_t> qp;                // the quantized input rows for the packed kernels, padded to whole quads
};
// An int8 weight rearranged once (at model load) for the tiled kernels of linear_forward: panels
// of 16 rows, in each the rows' weights four input columns at a time (one int32 lane per row), so
// that one broadcast input quad multiplies 8 rows per instruction and no horizontal sums are
// needed. With each (panel, block): the block's weight scales in lane order, and 128 x the sum of
// its weights (AVX-512 VNNI feeds the inputs as unsigned x + 128 and subtracts that back: exact).
//   w[((panel * qstride + q) * 16 + lane) * 4 + e] = weight[panel * 16 + lane][4 q + e] (0 past the edges)
// qstride: quads rounded up to 16, so that a panel is whole AMX tiles (16 quads x 16 rows, 1 KiB:
// the layout of tdpbssd's second operand).
struct PackedLinear {
  int64_t rows = 0, cols = 0, quads = 0, qstride = 0, panels = 0, block = 0, blocks = 0;
  std::vector<int8_t> w;
  std::vector<int32_t> offset;  // [panels, blocks, 16]
  std::vector<float> scale;     // [panels, blocks, 16]
  bool empty() const { return rows == 0; }
};
// The packed form of `w` for inputs quantized as `q`; empty when the tiled kernels do not apply
// (float weights or inputs, or blocks that are not whole input quads).
PackedLinear pack_linear(const QuantWeight& w, ActQuant q);

// y[t, o] = sum_k x[t, k] w[o, k] + bias[o]. Quantized inputs: the exact int32 sum of each block
// (the finer of the weight's groups and the input's blocks), times both scales, summed in float,
// the same float operations in every kernel (the portable one, and the packed AVX2 / AVX-512 VNNI /
// AMX ones) and
// on any number of threads. `packed`: pack_linear(w, q), used when the CPU has a tiled kernel
// (without it, or on other CPUs, the portable kernel runs).
void linear_forward(const float* x, int64_t tokens, const QuantWeight& w, const float* bias, ActQuant q, float* y,
                    LinearScratch& scratch, const PackedLinear* packed = nullptr);

void layer_norm_row(const float* x, int64_t d, const float* weight, const float* bias, float eps, float* y);
void rms_norm_row(const float* x, int64_t d, const float* weight, float eps, float* y);
float gelu(float x);  // erf form, x * 0.5 * (1 + erf(x / sqrt 2)), erf by a rational fit (|error| < 4e-7)
void gelu_rows(const float* x, int64_t n, float* y);  // gelu of n values: AVX2 where present, the same bits
float silu(float x);
// x[i] = exp(x[i] - shift), the softmax's exponential (Cephes' polynomial, within 2 ulp of expf;
// 0 below e^-87): AVX2 where present, the same bits.
void exp_shifted(float* x, int64_t n, float shift);

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
