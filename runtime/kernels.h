// Integer-only int8 kernels of the edge runtime: a blocked int8 GEMM (the classifier) and a direct
// convolution that reads its im2col rows in place from a padded HWC copy of the input, both with
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

// The instruction sets the kernels can use; the best one the CPU has is picked at run time. Tests
// force each to check them all against the same reference. kAmx (Intel AMX-INT8 tiles, with the
// operating system's permission to use them) serves the transformer linear layers
// (runtime/text_kernels.h) and implies AVX-512 VNNI for everything else.
enum class Isa { kGeneric, kAvx2, kAvx512Vnni, kAmx };
Isa best_isa();             // what this CPU supports best
void force_isa(Isa isa);    // for tests: use `isa` (must be <= best_isa()) from now on
Isa active_isa();

// Convolution weights rearranged once (at model load) for the kernel: int16, blocks of 8 output
// channels, per kernel row the (kx, channel) run in channel pairs:
//   data[((block * kernel + ky) * pairs + p) * 16 + lane * 2 + e],  pairs = kernel * in_cp / 2,
// the weight of output channel block * 8 + lane at (ky, kx, c) with kx * in_cp + c = 2 p + e, zero
// where the channel does not exist (in_cp = in_c rounded up to even, out_c up to a multiple of 8).
// Packed for the instruction set active when packing (active_isa()).
//
// With AVX-512 VNNI and more than 8 output channels the weights are int8 quads instead (u8 x s8 products, four per lane per
// instruction): data8[((block * kernel + ky) * quads + q) * 64 + lane * 4 + e], 16 lanes,
// quads = kernel * in_cq / 4 (in_cq = in_c rounded up to a multiple of 4), with each channel's
// weight sum, which turns sum w * (x + 128) back into sum w * (x - in_zero).
struct PackedConvWeights {
  std::vector<int16_t> data;
  std::vector<int8_t> data8;
  std::vector<int32_t> weight_sum;  // [out_c], quads only
  bool quads = false;
  int out_c = 0, in_c = 0, in_cp = 0, kernel = 1, lanes = 8;
};
PackedConvWeights pack_conv_weights(const int8_t* weight, const ConvShape& s);  // weight [O, I, k, k]

// Reused buffers: the padded input (HWC; int16 x - in_zero, or uint8 x + 128 for quads).
struct ConvScratch {
  std::vector<int16_t> padded;
  std::vector<uint8_t> padded8;
};

// out[O, OH, OW] = clamp(out_zero + M[o] * (bias[o] + sum w * (x - in_zero))), padding = in_zero.
// Direct convolution: the input is laid out once as padded HWC int16 (x - in_zero), so each kernel
// row of a receptive field is one contiguous run and no im2col matrix is built; the inner loop
// multiplies pairs of int16 (AVX2 vpmaddwd on x86 with AVX2, picked at run time; portable C++
// elsewhere). Exact: products and sums fit int32 for K <= 65536.
void conv2d_s8(const int8_t* in, const PackedConvWeights& w, const ConvShape& s, const Requant& r, int8_t* out,
               ConvScratch& scratch);

}  // namespace qd::rt
