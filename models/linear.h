// Linear and Embedding layers of the transformer models, with a place where quantization
// attaches. Models build their structure from these types once; qat/module_qat.h maps each layer
// type to its quantization-aware twin and attaches it by layer name (the way torch.ao swaps
// nn.Linear for its QAT module), so models know nothing of how a layer is quantized.
//
// Parameter names are torch::nn::Linear's and torch::nn::Embedding's ("weight", "bias"), and so is
// their initialization (the same random draws), so checkpoints and from-scratch runs are unchanged.
#pragma once

#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace qd {

// What a layer computes with, as its deployment computes it: qat/ implements it. Registered as the
// layer's submodule "qat", so its state (scales, flags) lives in checkpoints with the layer's.
class LayerQuantizer : public torch::nn::Module {
 public:
  // The weight the layer computes with (fake-quantized; straight-through gradient).
  virtual torch::Tensor weight(const torch::Tensor& w) = 0;
  // The layer's input as the deployed kernel reads it (Linear only).
  virtual torch::Tensor input(const torch::Tensor& x) = 0;
};

class LinearImpl : public torch::nn::Module {
 public:
  LinearImpl(int64_t in, int64_t out, bool bias = true);
  torch::Tensor forward(const torch::Tensor& x);  // [..., in] -> [..., out]
  // The weight as computed with: fake-quantized once a quantizer is attached; b·a when factored.
  torch::Tensor effective_weight();
  void attach(std::shared_ptr<LayerQuantizer> q);
  int64_t in_features() const { return first ? first->in_features() : weight.size(1); }
  int64_t out_features() const { return second ? second->out_features() : weight.size(0); }

  // Low-rank factorization (models/lowrank.h): the layer becomes two thinner ones, x -> a·x
  // ([rank, in], submodule "a", no bias) -> b·(a·x) + bias ([out, rank], submodule "b", which takes
  // the bias). Its own weight and bias leave the module (the checkpoint holds a.weight, b.weight,
  // b.bias), and so does its quantizer: quantization attaches to a and b, each a Linear of its own.
  void factorize(const torch::Tensor& a, const torch::Tensor& b);
  bool factored() const { return first != nullptr; }
  int64_t rank() const { return first ? first->out_features() : 0; }

  // Calibration (activation-aware factorization): while record_inputs, forward adds |x| summed
  // over the tokens to input_abs_sum ([in], float64 on the CPU) and their count to input_rows.
  bool record_inputs = false;
  torch::Tensor input_abs_sum;
  int64_t input_rows = 0;

  torch::Tensor weight, bias;  // [out, in], [out] (undefined without bias, and once factored)
  std::shared_ptr<LayerQuantizer> quant;
  std::shared_ptr<LinearImpl> first, second;  // a and b once factored
};
TORCH_MODULE(Linear);

class EmbeddingImpl : public torch::nn::Module {
 public:
  EmbeddingImpl(int64_t count, int64_t dim);
  torch::Tensor forward(const torch::Tensor& ids);  // [...] int64 -> [..., dim]
  // The table as computed with (a tied output projection reads it too).
  torch::Tensor effective_weight() { return quant ? quant->weight(weight) : weight; }
  // A tied output projection's input, as the deployed kernel reads it.
  torch::Tensor head_input(const torch::Tensor& x) { return quant ? quant->input(x) : x; }
  void attach(std::shared_ptr<LayerQuantizer> q);

  torch::Tensor weight;  // [count, dim]
  std::shared_ptr<LayerQuantizer> quant;
};
TORCH_MODULE(Embedding);

// A point of the computation where an activation may be quantized (the keys and values that a
// decoder keeps in its KV cache, say): the identity until qat/ attaches a quantizer, whose
// input() it then applies. Holds no state of its own, so checkpoints are unchanged without QAT.
class QuantPointImpl : public torch::nn::Module {
 public:
  torch::Tensor forward(const torch::Tensor& x) { return quant ? quant->input(x) : x; }
  void attach(std::shared_ptr<LayerQuantizer> q);
  std::shared_ptr<LayerQuantizer> quant;
};
TORCH_MODULE(QuantPoint);

// What a transformer's forward pass exposes for feature distillation (distill/text_feature_kd.h),
// filled only while training and only when a model's `trace` points at one:
//   hidden: Hugging Face's hidden_states: [0] the embedding output, [i] layer i's output (1-based);
//   q, k, v: layer i's projections [B, T, H] at index i - 1 (before heads are split and rotary
//   positions applied).
//   units: structured pruning's activation criterion (Minitron): per prunable group (PruneGroup
//   name), each unit's activation magnitude summed over the tokens seen, float64 on the CPU.
struct TransformerTrace {
  bool want_hidden = false, want_qkv = false, want_units = false;
  bool in_eval = false;  // also record in eval mode (a frozen teacher); a student records only while training
  std::vector<torch::Tensor> hidden, q, k, v;
  std::map<std::string, torch::Tensor> units;
  void clear() { hidden.clear(), q.clear(), k.clear(), v.clear(), units.clear(); }
  // Adds |a| summed over every dimension but the last (its units) to units[group].
  void add_units(const std::string& group, const torch::Tensor& a) {
    torch::Tensor s = a.detach().abs().reshape({-1, a.size(-1)}).sum(0).to(torch::kCPU, torch::kFloat64);
    auto it = units.find(group);
    if (it == units.end()) units.emplace(group, s);
    else it->second += s;
  }
};

}  // namespace qd
