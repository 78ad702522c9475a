// Conv-BN folding for quantization-aware training (Jacob et al. 2018, section 3.2; the scheme of
// PyTorch's torch.ao.nn.intrinsic.qat.ConvBn2d).
//
// The deployed int8 model has no BatchNorm: it is folded into the convolution,
//   W_fold = W * gamma / sqrt(var + eps)          (per output channel)
//   b_fold = beta - gamma * mean / sqrt(var + eps)
// so QAT must fake-quantize W_fold, not W. While BN still trains, the convolution runs with the
// fake-quantized folded weights (folded with the RUNNING variance), its output is scaled back by
// sqrt(var + eps) / gamma and BatchNorm then normalizes with the batch statistics and updates its
// running statistics as usual. Once BN is frozen (or in eval mode) the forward pass is exactly
// the deployed one: conv(x, fq(W_fold)) + b_fold.
#pragma once

#include <torch/torch.h>

#include <functional>

#include "models/model.h"
#include "models/quantizer.h"
#include "qat/fake_quantize.h"

namespace qd {

// The BatchNorm tensors a fold needs (shared with the BN module, not copies).
struct BnTensors {
  torch::Tensor weight, bias, running_mean, running_var;  // [C]
  double eps = 1e-5;
};

struct FoldedWeights {
  torch::Tensor weight;  // W * gamma / sqrt(var + eps): [O, ...] like W
  torch::Tensor bias;    // beta - gamma * mean / sqrt(var + eps): [O]
};

// Folds BN (running statistics) into a conv [O, I, kh, kw] or linear [O, I] weight with
// optional bias (undefined: none).
FoldedWeights fold_bn(const torch::Tensor& weight, const torch::Tensor& bias, const BnTensors& bn);

// The quantization-aware twin of a Conv-BN(-ReLU) unit (models/quantizer.h): the weight
// quantizer of the folded weights and whether BN is frozen. The unit's output quantizer is a
// twin of its own (it may fuse the ReLU). Registered as the unit's submodule "qat".
class ConvBnQatImpl : public ConvBnQuantizer {
 public:
  // `weight`: the spec of the folded weights (cfg.weight_spec() of the layer's rule), per output
  // channel. `input_quant`: the quantizer of this conv's input (null: none). Once it has a scale,
  // the deployed forward rounds the folded bias to the int32 the integer runtime adds (in_scale *
  // w_scale units), so the simulation computes what deploys. Not owned (a sibling module).
  ConvBnQatImpl(const QuantSpec& weight, int64_t out_channels, const FakeQuantizeImpl* input_quant);

  // The unit's conv -> BN: plain while fake-quant is off and BN trains, else folded as below.
  torch::Tensor forward(const torch::Tensor& x, ConvBnReluImpl& unit) override;

  // conv2d(x, W) -> BN, with folding and weight fake-quant as described above. `bn_train`
  // runs the BN module in training mode (batch statistics, running-statistics update, sync BN).
  torch::Tensor fold_forward(const torch::Tensor& x, const torch::Tensor& conv_weight, torch::IntArrayRef stride,
                             torch::IntArrayRef padding, const BnTensors& bn,
                             const std::function<torch::Tensor(const torch::Tensor&)>& bn_train);
  void set_bn_frozen(bool frozen);
  bool bn_frozen() const { return bn_frozen_; }
  void load_flags();

  FakeQuantize weight_quant{nullptr};
  torch::Tensor frozen_flag;  // [1] uint8 buffer (checkpointed)

 private:
  bool bn_frozen_ = false;
  const FakeQuantizeImpl* input_quant_ = nullptr;
};
TORCH_MODULE(ConvBnQat);

}  // namespace qd
