#include "qat/conv_bn.h"

namespace qd {

namespace {
std::vector<int64_t> per_channel_shape(const torch::Tensor& w) {
  std::vector<int64_t> shape(static_cast<size_t>(w.dim()), 1);
  shape[0] = -1;
  return shape;
}
}  // namespace

FoldedWeights fold_bn(const torch::Tensor& weight, const torch::Tensor& bias, const BnTensors& bn) {
  const torch::Tensor inv_std = torch::rsqrt(bn.running_var + bn.eps);
  const torch::Tensor factor = bn.weight * inv_std;  // [O]
  FoldedWeights f;
  f.weight = weight * factor.view(per_channel_shape(weight));
  const torch::Tensor b = bias.defined() ? bias : torch::zeros_like(bn.running_mean);
  f.bias = bn.bias + (b - bn.running_mean) * factor;
  return f;
}

ConvBnQatImpl::ConvBnQatImpl(const QuantSpec& weight, int64_t out_channels, const FakeQuantizeImpl* input_quant)
    : input_quant_(input_quant) {
  FakeQuantizeOptions o;
  o.spec = weight;
  o.channels = out_channels;
  o.weight = true;
  weight_quant = register_module("weight_quant", FakeQuantize(o));
  frozen_flag = register_buffer("bn_frozen", torch::zeros({1}, torch::kUInt8));
}

void ConvBnQatImpl::set_bn_frozen(bool frozen) {
  if (frozen == bn_frozen_) return;
  bn_frozen_ = frozen;
  torch::NoGradGuard g;
  frozen_flag.fill_(frozen ? 1 : 0);
}

void ConvBnQatImpl::load_flags() { bn_frozen_ = frozen_flag.cpu()[0].item<uint8_t>() != 0; }

torch::Tensor ConvBnQatImpl::forward(const torch::Tensor& x, ConvBnReluImpl& unit) {
  if (!weight_quant->enabled() && !bn_frozen_) return unit.bn(unit.conv(x));
  const BnTensors t{unit.bn->weight, unit.bn->bias, unit.bn->running_mean, unit.bn->running_var, unit.bn->eps};
  return fold_forward(x, unit.conv->weight, unit.stride(), unit.padding(), t,
                      [&unit](const torch::Tensor& v) { return unit.bn(v); });
}

torch::Tensor ConvBnQatImpl::fold_forward(const torch::Tensor& x, const torch::Tensor& conv_weight,
                                          torch::IntArrayRef stride, torch::IntArrayRef padding, const BnTensors& bn,
                                          const std::function<torch::Tensor(const torch::Tensor&)>& bn_train) {
  const torch::Tensor inv_std = torch::rsqrt(bn.running_var + bn.eps);
  const torch::Tensor factor = bn.weight * inv_std;  // [O]; gamma gets gradient through it too
  const std::vector<int64_t> shape = per_channel_shape(conv_weight);
  torch::Tensor w = weight_quant(conv_weight * factor.view(shape));
  if (bn_frozen_ || !is_training()) {
    // The deployed computation: folded bias from the running statistics, rounded to int32.
    const torch::Tensor bias = weight_quant->quantize_bias(bn.bias - bn.running_mean * factor, input_quant_);
    return torch::conv2d(x, w, bias, stride, padding);
  }
  // Undo the fold so BN sees the unscaled convolution: conv(x, fq(W f)) / f, computed as
  // conv(x, fq(W f) / f) — the same by linearity, but on the small weight tensor instead of the
  // activations (not detached: as in PyTorch, gamma's gradients through the fold and the
  // division cancel where quantization is exact). A zero gamma folds to zero weights: divide
  // by 1 there.
  const torch::Tensor safe = torch::where(factor == 0, torch::ones_like(factor), factor);
  const torch::Tensor y = torch::conv2d(x, w / safe.view(shape), {}, stride, padding);  // [N, O, H, W]
  return bn_train(y);
}

}  // namespace qd
