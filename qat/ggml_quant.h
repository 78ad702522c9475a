// Fake quantization on llama.cpp's block grids (issue 14): a weight [..., I] is cut along its last
// dimension into blocks of 32 and rounded exactly as ggml's reference quantizer
// (quantize_row_q8_0_ref / quantize_row_q4_0_ref, and the gguf package) does, scales stored as
// fp16, so that the weights QAT trains on are the weights a Q8_0 / Q4_0 GGUF file will hold:
//   Q8_0: d = max|x| / 127,            q = roundf(x / d) in [-127, 127],  x' = fp16(d) * q
//   Q4_0: d = (the x of largest |x|) / -8, q = min(15, trunc(x / d + 8.5)), x' = fp16(d) * (q - 8)
// (all in float32, with 1/d computed once per block, as the references do). The straight-through
// estimator passes the gradient to the float weight unchanged.
#pragma once

#include <torch/torch.h>

namespace qd {

enum class GgmlBlockType { kQ8_0, kQ4_0 };
constexpr int64_t kGgmlBlock = 32;

// The blocks of `w` as a GGUF file stores them: `q` int8 [..., I] (Q8_0: in [-127, 127]; Q4_0: the
// stored nibble minus 8, in [-8, 7]) and `d` float32 [..., I / 32], the block scales already rounded
// to fp16, so that q * d (per block) is ggml_quantize_dequantize(w) exactly. No gradient.
struct GgmlBlocks {
  torch::Tensor q, d;
};
GgmlBlocks ggml_quantize(const torch::Tensor& w, GgmlBlockType type);
// The dequantized weight (no gradient); the last dimension must be a multiple of 32.
torch::Tensor ggml_quantize_dequantize(const torch::Tensor& w, GgmlBlockType type);
// Forward: ggml_quantize_dequantize(w); backward: identity (straight-through).
torch::Tensor ggml_fake_quant(const torch::Tensor& w, GgmlBlockType type);

}  // namespace qd
