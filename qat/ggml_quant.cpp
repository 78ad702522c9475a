#include "qat/ggml_quant.h"

#include "common/error.h"

namespace qd {

namespace {
// ggml's roundf as the gguf package writes it: half away from zero, in float32.
torch::Tensor roundf_away(const torch::Tensor& x) {
  const torch::Tensor a = x.abs(), fl = a.floor();
  return x.sign() * (fl + (2.0f * (a - fl)).floor());
}
// 1 / d per block, 0 where d is 0 (an all-zero block quantizes to zeros).
torch::Tensor inverse_or_zero(const torch::Tensor& d) {
  return torch::where(d == 0, torch::zeros_like(d), torch::ones_like(d) / d);
}

// q (as float: NaN stays NaN) [blocks, 32] and the fp16-rounded d [blocks, 1].
std::pair<torch::Tensor, torch::Tensor> quantize_blocks(const torch::Tensor& w, GgmlBlockType type) {
  QD_CHECK(w.dim() >= 1 && w.size(-1) % kGgmlBlock == 0, Error, "ggml block quantization: the last dimension (",
           w.dim() ? w.size(-1) : 0, ") is not a multiple of ", kGgmlBlock);
  const torch::Tensor b = w.detach().to(torch::kFloat32).reshape({-1, kGgmlBlock});  // [blocks, 32]
  torch::Tensor q, d;
  if (type == GgmlBlockType::kQ8_0) {
    d = b.abs().amax(1, /*keepdim=*/true) / 127.0f;
    q = roundf_away(b * inverse_or_zero(d));
  } else {
    const torch::Tensor imax = b.abs().argmax(1, /*keepdim=*/true);  // first of ties, as numpy's argmax
    d = b.gather(1, imax) / -8.0f;
    q = (b * inverse_or_zero(d) + 8.5f).trunc().clamp(0.0, 15.0) - 8.0f;
  }
  // The fp16 scale is what is stored and multiplied (the quantization itself used the float d).
  return {q, d.to(torch::kHalf).to(torch::kFloat32)};
}
}  // namespace

GgmlBlocks ggml_quantize(const torch::Tensor& w, GgmlBlockType type) {
  torch::NoGradGuard g;
  const auto [q, d] = quantize_blocks(w, type);
  QD_CHECK(torch::isfinite(d).all().item<bool>(), UserError, "ggml block quantization: the weight holds non-finite values");
  std::vector<int64_t> scale_shape = w.sizes().vec();
  scale_shape.back() /= kGgmlBlock;
  return {q.to(torch::kInt8).reshape(w.sizes()), d.reshape(scale_shape)};
}

torch::Tensor ggml_quantize_dequantize(const torch::Tensor& w, GgmlBlockType type) {
  torch::NoGradGuard g;
  const auto [q, d] = quantize_blocks(w, type);
  return (q * d).reshape(w.sizes()).to(w.scalar_type());
}

torch::Tensor ggml_fake_quant(const torch::Tensor& w, GgmlBlockType type) {
  // deq + (w - w) is deq exactly (w + (deq - w) need not be), and its gradient is 1.
  return ggml_quantize_dequantize(w, type) + (w - w.detach());
}

}  // namespace qd
