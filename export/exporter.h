// Export: a trained QAT run -> the integer model (runtime/model.h) -> student.qdm and ONNX files.
//
// BN is folded exactly as QAT's deployed forward folds it, pruned channels are already gone (a
// channel-pruned run exports its physically smaller `<run>/pruned/` model), and weights are
// quantized with the trained scales: the integers are those the fake-quant simulation used, so
// the runtime reproduces the simulation up to its rounding (docs/export.md).
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include "models/model.h"
#include "runtime/model.h"

namespace qd {

// The integer model of `model` (prepared for QAT, quantizers initialised, a checkpoint loaded).
// Call in eval mode on CPU. Throws UserError for what the integer runtime cannot express
// (per-channel or non-8-bit activations, asymmetric weights, a model without export support).
rt::Model build_int_model(Model& model, const InputSpec& in);

// The integer runtime next to the fake-quant simulation on the same images, layer by layer.
struct Diff {
  int64_t elements = 0;  // compared int8 values
  int64_t equal = 0;     // identical
  int64_t off_by_one = 0;
  int32_t max_diff = 0;  // largest |runtime - simulation| in LSBs
  void add(int32_t d) {
    elements += 1, equal += d == 0, off_by_one += d == 1;
    max_diff = std::max(max_diff, d);
  }
};
struct LayerAgreement {
  std::string name;  // a layer whose simulated output the model can capture
  Diff end_to_end;   // the runtime run on its own from the pixels
  Diff local;        // the runtime fed the simulation's values at every earlier captured layer:
                     // this layer's (or block's) own rounding, without differences carried in
};
struct Agreement {
  int64_t samples = 0;
  int64_t argmax_equal = 0;
  int64_t runtime_correct = 0, simulation_correct = 0;
  double max_logit_diff = 0.0;
  std::vector<LayerAgreement> layers;
  double argmax_agreement() const { return samples ? static_cast<double>(argmax_equal) / samples : 0.0; }
};

// Runs `int_model` (the integer runtime) and `model` (eval mode, CPU) on `images` ([N, C, H, W]
// uint8, converted to [0, 1] as training does) and compares every captured layer and the logits.
// `progress`: draw a progress bar. `sim_logits`, if given, receives the simulation's logits [N, classes].
Agreement compare_with_simulation(Model& model, const rt::Model& int_model, const torch::Tensor& images,
                                  const torch::Tensor& labels, bool progress, std::vector<float>* sim_logits = nullptr);

}  // namespace qd
