// Physical channel removal: turns a channel-pruned (masked) model into a smaller dense one.
//
// A pruned channel's filter, BN gamma and BN beta are zero, so its output is exactly zero; its
// producers lose the channel (conv filter, BN entries, per-channel QAT weight scales) and its
// consumers lose the matching inputs (next convs' input channels, the classifier's inputs —
// h*w of them per channel after a flatten). The smaller model's outputs equal the masked
// model's up to float summation order.
#pragma once

#include <memory>
#include <vector>

#include "models/model.h"
#include "models/model_config.h"
#include "qat/qat_config.h"

namespace qd {

struct RemovalResult {
  std::shared_ptr<Model> model;  // the smaller dense model, weights and buffers copied in
  ModelConfig config;            // its architecture: the input config with model.channels set
  std::vector<int64_t> kept;     // surviving channels per channel group
  std::vector<int64_t> total;    // channels per group before removal
};

// `qat`: the QAT config the masked model was prepared with, or null for none. Throws UserError
// where removal is not supported (per-channel activation quantizers).
RemovalResult remove_pruned_channels(Model& masked, const ModelConfig& cfg, const InputSpec& in, const QatConfig* qat);

}  // namespace qd
