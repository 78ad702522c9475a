// What structured pruning may remove, declared once by each model: groups of units (a conv's
// channels, a transformer layer's attention-head groups or FFN neurons, the hidden size) and, for
// every unit, each slice of each tensor that belongs to it. prune/ reads nothing else: it scores
// units from these slices, zeroes a pruned unit's slices under a mask (so its output is exactly
// zero, and nothing reads it) and, for physical removal, cuts every slice out of a copy of the model. A model
// knows its shape; the pruner knows no model.
//
// Example (a Llama layer's FFN): unit j owns row j of gate and of up (producers: silu(0) * 0 is
// 0) and column j of down (consumer); a CNN channel owns a filter, its BN gamma, beta and running
// statistics, and the matching input channel of every conv that reads it.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

namespace qd {

enum class SliceRole {
  kWeight,    // produces the unit's output: zeroed by the mask; the l1 / l2 criteria score its norm
  kScale,     // produces: zeroed; the bn_gamma criterion scores |value| (BN gamma, norm scales)
  kMasked,    // produces: zeroed, never scored (BN beta, biases)
  kConsumer,  // reads the unit's output: zeroed too (its input is zero anyway, and zero weights keep
              // a weight quantizer's per-row range what the smaller model's is), never scored
  kState,     // per-unit state: cut on removal only (BN running statistics)
};

// Slice `dim` of `tensor` (a parameter's or buffer's name, as named_parameters() gives it) in
// units of `block` consecutive entries: unit u owns entries [u * block, (u + 1) * block).
// A name ending in ".*" stands for every tensor under that module path whose size along `dim` is
// a multiple of units (the per-channel state of a quantizer twin, see PerChannelState; present
// only with QAT), each unit owning size / units consecutive entries; such names may match nothing.
struct DimSlice {
  std::string tensor;
  int64_t dim = 0;
  int64_t block = 1;
  SliceRole role = SliceRole::kWeight;
};

// A normalization over a prunable dimension (RMSNorm, LayerNorm): zeroed entries would still count
// in its statistic, so it is told which units are kept and normalizes over those alone (a masked
// model then computes what the smaller one does).
class PrunableNorm {
 public:
  virtual ~PrunableNorm() = default;
  // keep: [units] float, 1 kept / 0 pruned; undefined: all kept.
  virtual void set_kept(const torch::Tensor& keep) = 0;
};

// A module holding state indexed by its layer's output channels along dim 0 (the per-channel
// scales of a weight quantizer twin): what a ".*" slice expands to.
class PerChannelState {
 public:
  virtual ~PerChannelState() = default;
  // Names relative to the module; empty when the state is per tensor.
  virtual std::vector<std::string> per_channel_tensors() const = 0;
};

struct PruneGroup {
  std::string name;                 // prune.exclude / prune.layer_targets name ("block3", "layer2.ffn", "hidden")
  std::string axis;                 // channels, heads, ffn, hidden
  std::vector<std::string> layers;  // names of its producing layers (also accepted by exclude / layer_targets)
  int64_t units = 0;
  std::vector<DimSlice> slices;
  std::vector<PrunableNorm*> norms;  // borrowed from the model
  // Layers that read the units (for `qdistill layers`), in forward order.
  std::vector<std::string> readers;
};

}  // namespace qd
