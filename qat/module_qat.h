// Quantization-aware training attached by module type (issue 14), the way torch.ao maps
// nn.Linear to its QAT module: each layer type gets a quantization-aware twin, configured per
// layer name by `qat.layers` (first matching pattern) and attached by attach_qat(). Models declare
// their structure once and include nothing of qat/:
//   transformers: the Linear, Embedding and QuantPoint layers of models/linear.h -> LayerQat;
//   CNNs: the quantization points that Model::attach_quantizers declares (models/quantizer.h):
//         a Conv-BN unit -> ConvBnQat (qat/conv_bn.h) plus a static output quantizer that fuses
//         its ReLU; the classifier's weights, the input, residual sums, pooled features ->
//         FakeQuantize. Their names: the layer's ("block0", "stage1_block0.conv1", "classifier",
//         "fc") or the point's ("input_quant", "head_quant", "stage1_block0.add_quant").
//
// What the twin computes (all with the straight-through estimator: the gradient reaches the float
// weight / input unchanged, clipped where a static scale clamps):
//   weights, format onnx:  symmetric, one float32 scale per output row (per_channel), per tensor,
//                          or per group of `group_size` consecutive inputs of a row (blocked
//                          DequantizeLinear); min-max of the weight itself every step, or LSQ.
//   weights, format ggml:  llama.cpp's Q8_0 / Q4_0 blocks of 32 with fp16 scales, rounded as its
//                          quantizer rounds (qat/ggml_quant.h): what trains is what the GGUF holds.
//   inputs (Linear, and a tied output projection's input):
//     dynamic none:      a static per-tensor scale, observed and synchronised across ranks (QatHook)
//     dynamic per_token: s = max|x_row| / qmax in float32, q = round_half_even(x / s) clamped,
//                        x' = q * s, for every row (token) of the last dimension
//     dynamic per_block: each row in Q8_0 blocks of 32 with fp16 scales: what llama.cpp's CPU dot
//                        products do to the activation row before multiplying by a quantized weight
// Norms, softmax, rotary embeddings and the nonlinearities stay float (docs/qat.md says why).
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "models/linear.h"
#include "models/model.h"
#include "models/quantizer.h"
#include "qat/fake_quantize.h"
#include "qat/qat_config.h"

namespace qd {

class LayerQatImpl : public LayerQuantizer {
 public:
  // A twin for a [out, in] weight (Embedding: [count, dim]); `layer` names it in messages.
  // `with_weight` false: an activation point only (a QuantPoint, rows of `in` values).
  LayerQatImpl(const QatConfig& cfg, const LayerQuantRule& rule, int64_t out, int64_t in, const std::string& layer,
               bool with_weight = true);
  torch::Tensor weight(const torch::Tensor& w) override;
  torch::Tensor input(const torch::Tensor& x) override;

  // Switched by QatHook's schedule (and its own quantizers' observers with it); stored in `flags`.
  void set_enabled(bool on);
  bool enabled() const { return enabled_; }
  void load_flags();  // after a checkpoint was loaded
  const QuantSpec& weight_spec() const { return weight_spec_; }
  const QuantSpec& input_spec() const { return input_spec_; }

  FakeQuantize weight_quant{nullptr};  // format onnx (rows or groups as channels)
  FakeQuantize input_quant{nullptr};   // dynamic none
  torch::Tensor flags;                 // [1] uint8: enabled

 private:
  QuantSpec weight_spec_, input_spec_;
  int64_t out_, in_;
  bool enabled_ = false;
};
TORCH_MODULE(LayerQat);

// Attaches a twin to every Linear / Embedding of `model` whose rule is enabled, and with
// qat.kv_cache an input-only twin to every KV-cache QuantPoint (names ending k_cache / v_cache);
// or, for a CNN of the zoo, a twin to each of its quantization points. UserError when a pattern
// of qat.layers matches no layer (a typo would silently quantize nothing), a layer's width does
// not fit its rule's groups or blocks, a CNN layer's rule asks for what its integer export does
// not run, or the model has no quantization support (mlp). Returns the number of twins attached.
int64_t attach_qat(torch::nn::Module& model, const QatConfig& cfg);

// The mapping attach_qat gives a CNN (for a single unit in tests: unit->attach_quantizers(*f, name, input)).
std::unique_ptr<QuantizerFactory> cnn_quantizer_factory(const QatConfig& cfg);

// The names of a CNN's quantization points in forward order: what qat.layers patterns match.
// Attaches default twins to `model` (give it a throwaway model).
std::vector<std::string> cnn_quantization_points(Model& model);

// The quantizable layers of `model`: (name, kind "linear" | "embedding", [out, in]) in order.
struct QuantizableLayer {
  std::string name, kind;
  int64_t out = 0, in = 0;
};
std::vector<QuantizableLayer> quantizable_layers(torch::nn::Module& model);

// Every twin inside `m`, in registration order.
std::vector<LayerQat> layer_qats(torch::nn::Module& m);

// Dynamic per-token fake quantization of the rows of x's last dimension (see above); exposed for
// tests and the runtime's reference.
torch::Tensor per_token_fake_quant(const torch::Tensor& x, int bits);

}  // namespace qd
