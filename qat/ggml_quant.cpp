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
}  // namespace

torch::Tensor ggml_quantize_dequantize(const torch::Tensor& w, GgmlBlockType type) {
  torch::NoGradGuard g;
  QD_CHECK(w.dim() >= 1 && w.size(-1) % kGgmlBlock == 0, Error, "ggml block quantization: the last dimension (",
           w.dim() ? w.size(-1) : 0, ") is not a multiple of ", kGgmlBlock);
  const torch::Tensor b = w.detach().to(torch::kFloat32).reshape({-1, kGgmlBlock});  // [blocks, 32]
  torch::Tensor out;
  if (type == GgmlBlockType::kQ8_0) {
    const torch::Tensor d = b.abs().amax(1, /*keepdim=*/true) / 127.0f;
    const torch::Tensor q = roundf_away(b * inverse_or_zero(d));
    out = q * d.to(torch::kHalf).to(torch::kFloat32);
  } else {
    const torch::Tensor imax = b.abs().argmax(1, /*keepdim=*/true);  // first of ties, as numpy's argmax
    const torch::Tensor d = b.gather(1, imax) / -8.0f;
    const torch::Tensor q = (b * inverse_or_zero(d) + 8.5f).trunc().clamp(0.0, 15.0);
    out = d.to(torch::kHalf).to(torch::kFloat32) * (q - 8.0f);
  }
  return out.reshape(w.sizes()).to(w.scalar_type());
}

torch::Tensor ggml_fake_quant(const torch::Tensor& w, GgmlBlockType type) {
  // deq + (w - w) is deq exactly (w + (deq - w) need not be), and its gradient is 1.
  return ggml_quantize_dequantize(w, type) + (w - w.detach());
}

}  // namespace qd
