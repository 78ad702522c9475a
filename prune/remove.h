// Physical removal: turns a structurally pruned (masked) model into a smaller dense one.
//
// Every producing slice of a pruned unit is zero (models/structure.h), so its output is exactly
// zero; removal cuts every slice the model declares for the unit (producers, the consumers' matching
// inputs, per-unit state such as BN statistics and per-channel QAT scales) out of a model built
// from Model::pruned_config. The smaller model's outputs equal the masked model's up to float
// summation order.
#pragma once

#include <memory>
#include <vector>

#include "models/model.h"
#include "models/model_config.h"
#include "qat/qat_config.h"

namespace qd {

struct RemovalResult {
  std::shared_ptr<Model> model;  // the smaller dense model, weights and buffers copied in
  ModelConfig config;            // its architecture (Model::pruned_config)
  std::vector<int64_t> kept;     // surviving units per group (Model::prune_groups() order)
  std::vector<int64_t> total;    // units per group before removal
};

// `qat`: the QAT config the masked model was prepared with, or null for none. Throws UserError
// where removal is not supported (per-channel activation quantizers; group-wise quantized weights
// that lose inputs).
RemovalResult remove_pruned_units(Model& masked, const ModelConfig& cfg, const InputSpec& in, const QatConfig* qat);
// The same with the kept units given, per group of Model::prune_groups() ([K] int64 indices each):
// the smaller model built from `model`, whose pruned units need not be zero (prune.remove: start
// cuts before any mask touched the weights).
RemovalResult remove_units(Model& model, const ModelConfig& cfg, const InputSpec& in, const QatConfig* qat,
                           const std::vector<torch::Tensor>& keep);

}  // namespace qd
