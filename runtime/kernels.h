// Integer-only int8 kernels of the edge runtime: im2col convolution over a blocked int8 GEMM with
// int32 accumulation, requantized per output channel by a fixed-point multiplier. No LibTorch, no
// floating point in the arithmetic. Tensors are single images in CHW order.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/fixed_point.h"

namespace qd::rt {

// C[M, N] = sum_k A[M, K] * (B[K, N] - b_zero), int8 x int8 -> int32. A row-major (weights, one
// row per output channel), B row-major (im2col: one row per (c, ky, kx), one column per pixel).
void gemm_s8s8_s32(const int8_t* a, const int8_t* b, int32_t* c, int m, int n, int k, int32_t b_zero);

struct ConvShape {
  int in_c = 1, in_h = 1, in_w = 1;
  int out_c = 1, kernel = 3, stride = 1, pad = 1;
  int out_h() const { return (in_h + 2 * pad - kernel) / stride + 1; }
  int out_w() const { return (in_w + 2 * pad - kernel) / stride + 1; }
};

struct Requant {
  int32_t in_zero = 0;   // zero point of the input activations (also the padding value)
  int32_t out_zero = 0;  // zero point of the output
  int32_t out_min = -128, out_max = 127;  // clamp; out_min = out_zero fuses a ReLU
  const int32_t* bias = nullptr;                 // [out_c], in units of in_scale * w_scale[c]
  const QuantizedMultiplier* multiplier = nullptr;  // [out_c]: in_scale * w_scale[c] / out_scale
};

// out[O, OH, OW] = clamp(out_zero + M[o] * (bias[o] + sum (w - 0) * (x - in_zero))).
// `scratch` holds the im2col matrix and the accumulators between calls.
struct ConvScratch {
  std::vector<int8_t> col;
  std::vector<int32_t> acc;
};
void conv2d_s8(const int8_t* in, const int8_t* weight, const ConvShape& s, const Requant& r, int8_t* out,
               ConvScratch& scratch);

}  // namespace qd::rt
