// Base class of the model zoo and the input layer that folds normalization into the model.
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

#include "models/batchnorm.h"
#include "models/model_config.h"
#include "models/quantizer.h"
#include "models/structure.h"

namespace qd {

class ConvBnReluImpl;
class InputNormImpl;

// One step of the deployed computation, for export (export/exporter.h turns it into integers).
// Nodes are in execution order; node i reads earlier outputs (0: the quantized input, k + 1:
// node k's output) and produces output i + 1. Pointers borrow the model's modules.
struct ExportNode {
  enum Kind { kConvBn, kMaxPool, kAdd, kMeanPool, kLinear } kind = kConvBn;
  std::string name;  // the layer's name; a capturable feature name where there is one
  int input = 0, input2 = -1;
  ConvBnReluImpl* conv = nullptr;           // kConvBn (its qat and out_quant twins)
  int kernel = 2, stride = 2, pad = 0;      // kMaxPool
  TensorQuantizer* out_quant = nullptr;     // kAdd, kMeanPool: the quantizer of the output
  torch::nn::LinearImpl* linear = nullptr;  // kLinear (always last; float logits)
  TensorQuantizer* weight_quant = nullptr;  // kLinear
};
struct ExportGraph {
  InputNormImpl* norm = nullptr;
  TensorQuantizer* input_quant = nullptr;
  std::vector<ExportNode> nodes;
};

// Shape of what a model consumes and produces.
struct InputSpec {
  int64_t channels = 1, height = 28, width = 28;
  int64_t num_classes = 10;
  std::vector<double> mean{0.0}, std{1.0};  // per channel, applied inside the model
};

// Every zoo model takes float pixels in [0, 1], [B, C, H, W], and returns logits [B, classes].
// Normalization is the model's first layer, so checkpoints and exported files need no
// preprocessing knowledge.
//
// Feature capture (for hint distillation): set_capture({"block3"}) makes forward() keep the
// output of those layers in captured() until the next forward. feature_names() lists what can
// be captured, in forward order; "features" is always the classifier's input.
class Model : public torch::nn::Module {
 public:
  virtual torch::Tensor forward(torch::Tensor x) = 0;
  virtual std::string kind() const = 0;
  const std::vector<std::string>& feature_names() const { return feature_names_; }

  void set_capture(std::vector<std::string> names) { capture_ = std::move(names); }

  // Declares the model's quantization points (models/quantizer.h) and registers the twin that
  // `f` makes for each: the normalized input, every conv's folded weights and output (after its
  // ReLU), residual additions, the pooled features and the classifier's weights. qat/'s
  // attach_qat calls it; the twins start disabled until QatHook's schedule turns them on.
  // Throws UserError for models without QAT support.
  virtual void attach_quantizers(QuantizerFactory& f);

  // Structured pruning: what the model may lose, unit by unit (models/structure.h), in a fixed
  // order. Throws UserError for models without structured pruning.
  virtual std::vector<PruneGroup> prune_groups();
  // The architecture of this model with group i of prune_groups() cut to kept[i] units, for
  // physical removal: `cfg` is the config this model was built from. UserError where the
  // architecture cannot express the cut (a llama keeps one FFN width for all its layers, say).
  virtual ModelConfig pruned_config(const ModelConfig& cfg, const std::vector<int64_t>& kept);
  // Physical removal: fills tensor `name` of the smaller model, which this one lacks (a layer that
  // pruned_config adds), from the kept units of each group (prune_groups() order). Returns false
  // for a name it does not know, and removal then refuses. The default knows none.
  virtual bool fill_added_tensor(const std::string& name, torch::Tensor& t, const std::vector<torch::Tensor>& keep);
  // The deployed computation of a model prepared for QAT, for int8 export. Throws UserError for
  // models without export support.
  virtual ExportGraph export_graph();
  const std::map<std::string, torch::Tensor>& captured() const { return captured_; }

 protected:
  void begin_capture() {
    if (!captured_.empty()) captured_.clear();
  }
  // Subclasses list their capturable layers once, in construction order, ending with "features".
  std::vector<std::string> feature_names_;
  void capture(const std::string& name, const torch::Tensor& t) {
    for (const auto& n : capture_)  // usually empty: nothing to do on the training hot path
      if (n == name) captured_[name] = t;
  }

 private:
  std::vector<std::string> capture_;
  std::map<std::string, torch::Tensor> captured_;
};

// (x - mean) / std with per-channel constants stored as buffers (saved with the weights).
class InputNormImpl : public torch::nn::Module {
 public:
  explicit InputNormImpl(const InputSpec& spec);
  torch::Tensor forward(const torch::Tensor& x);  // [B, C, H, W] -> same
  torch::Tensor mean, inv_std;                    // [1, C, 1, 1]
};
TORCH_MODULE(InputNorm);

// 3x3 conv (no bias) -> BatchNorm -> ReLU: the unit QAT folds and pruning scores later.
class ConvBnReluImpl : public torch::nn::Module {
 public:
  ConvBnReluImpl(int64_t in, int64_t out, int64_t kernel = 3, int64_t stride = 1, bool relu = true);
  torch::Tensor forward(const torch::Tensor& x);
  // Registers the twins `f` makes for this unit, named `name` (qat.layers patterns match it):
  // "qat" (the folded, quantized conv-BN, whose input `input` quantizes) and "out_quant" (which
  // fuses the ReLU).
  void attach_quantizers(QuantizerFactory& f, const std::string& name, const TensorQuantizer* input);
  const std::vector<int64_t>& stride() const { return stride_; }
  const std::vector<int64_t>& padding() const { return padding_; }
  torch::nn::Conv2d conv{nullptr};
  BatchNorm bn{nullptr};
  std::shared_ptr<ConvBnQuantizer> qat;        // QAT only
  std::shared_ptr<TensorQuantizer> out_quant;  // QAT only
  bool relu_;

 private:
  std::vector<int64_t> stride_, padding_;
};
TORCH_MODULE(ConvBnRelu);

int64_t count_params(const torch::nn::Module& m);
int64_t count_nonzero_params(const torch::nn::Module& m);
// Parameters of the Embedding tables (models/linear.h): a tied output projection reuses them.
int64_t count_embedding_params(const torch::nn::Module& m);

// The slices of a conv-BN unit's output channels (`name`: its module path): filter, BN gamma and
// beta, running statistics, and its QAT twin's per-channel state.
void append_conv_bn_slices(std::vector<DimSlice>& out, const std::string& name);

// Converts 4-d parameters and buffers to channels-last (NHWC) memory format: about 1.3x faster
// convolutions on CPU with oneDNN. Values are unchanged.
void to_channels_last(torch::nn::Module& m);

}  // namespace qd
