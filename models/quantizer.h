// Where quantization attaches to the CNN models (issue 14). A model declares its quantization
// points once, in Model::attach_quantizers: which tensors are quantized (its input, every
// Conv-BN unit's folded weights and output, residual sums, pooled features, the classifier's
// weights), under which layer names, and which quantizer feeds which layer. qat/ decides what
// quantizes them: it hands the model a QuantizerFactory (qat/module_qat.h, attach_qat) that maps
// each point to its quantization-aware twin, chosen per layer name by `qat.layers`. Models include
// nothing of qat/; models/linear.h is the same idea for the transformers' Linear and Embedding.
//
// The twins are registered under the names the model gives them ("qat", "out_quant",
// "input_quant", ...), so their state lives in checkpoints next to the layer's.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>

namespace qd {

class ConvBnReluImpl;

// Quantizes one tensor: an activation (observed scale; it may fuse the ReLU before it) or a
// layer's weights.
class TensorQuantizer : public torch::nn::Module {
 public:
  virtual torch::Tensor forward(const torch::Tensor& x) = 0;
  // A layer's bias as its deployed int32 addition computes it: rounded to units of
  // (input scale x this weight quantizer's scale), `input` the quantizer of the layer's input.
  // `bias` unchanged while this quantizer is off or `input` has no scale yet.
  virtual torch::Tensor quantize_bias(const torch::Tensor& bias, const TensorQuantizer* input) const = 0;
};

// The quantization-aware twin of a Conv-BN(-ReLU) unit: it folds BatchNorm into the weights it
// quantizes. Computes the unit's convolution and BatchNorm (before its ReLU / output quantizer).
class ConvBnQuantizer : public torch::nn::Module {
 public:
  virtual torch::Tensor forward(const torch::Tensor& x, ConvBnReluImpl& unit) = 0;
};

// What qat/ gives a model that declares its quantization points: one twin per point. `layer`
// is the layer's name as the model's module tree spells it (what `qat.layers` patterns match).
class QuantizerFactory {
 public:
  virtual ~QuantizerFactory() = default;
  // An activation [N, channels, ...] that is not a layer's output (the model's input, a residual
  // sum, pooled features); `relu`: the input is pre-ReLU and the ReLU is fused in.
  virtual std::shared_ptr<TensorQuantizer> activation(const std::string& point, int64_t channels, bool relu) = 0;
  // The weights [out, ...] of a plain layer (a classifier), quantized per output channel.
  virtual std::shared_ptr<TensorQuantizer> weight(const std::string& layer, int64_t out) = 0;
  // The twin of a Conv-BN unit whose input `input` quantizes (its scale rounds the folded bias;
  // null: none), and the quantizer of the unit's output (fusing its ReLU, if it has one).
  virtual std::shared_ptr<ConvBnQuantizer> conv_bn(const std::string& layer, ConvBnReluImpl& unit,
                                                   const TensorQuantizer* input) = 0;
  virtual std::shared_ptr<TensorQuantizer> output(const std::string& layer, ConvBnReluImpl& unit) = 0;
};

}  // namespace qd
