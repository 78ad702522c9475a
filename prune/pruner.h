// Pruning while training: masks on a gradual (Zhu & Gupta 2017) or one-shot schedule,
// unstructured (magnitude) or structured (whole units of the groups a model declares in
// Model::prune_groups(): CNN channels; a transformer's attention-head groups, FFN neurons and
// hidden size).
//
// Masks are applied to the weights after every optimizer step and to the gradients before it,
// so pruned weights stay exactly zero through momentum and weight decay; QAT's fake-quant reads
// the masked weights (and, for channels, the zeroed BN gamma/beta folds to zero filters).
// Every slice a pruned unit owns is zero (a channel's filter, BN gamma and beta, and its readers'
// input weights; an FFN neuron's gate and up rows and its down column), so its output is exactly 0
// in training and evaluation and nothing reads it, which is what lets physical removal
// (prune/remove.h) drop it without changing the outputs.
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/train_hook.h"
#include "models/model.h"
#include "prune/prune_config.h"

namespace qd {

// s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3 for t0 <= t <= t0 + n dt (steps); 0 before
// t0, s_f after. One-shot: s_f from t0.
double scheduled_sparsity(const PruneConfig& cfg, double target, int64_t step, int64_t steps_per_epoch);

// Checks prune.exclude / prune.layer_targets against the model; returns {key, message} for the
// first bad entry (which lists the valid names), nothing when all is well.
std::optional<std::pair<std::string, std::string>> check_prune_names(const PruneConfig& cfg, Model& model);

// A group's slice with its tensor. A ".*" slice expands to the PerChannelState tensors of the
// modules under its path, each with block = its size along dim / the group's units.
struct ResolvedSlice {
  std::string name;
  torch::Tensor t;
  int64_t dim = 0, block = 1;
  SliceRole role = SliceRole::kWeight;
};
// Error (a bug in the model's declaration) for a name that is not a tensor of `model` or a slice
// whose size is not units * block.
std::vector<ResolvedSlice> resolve_slices(torch::nn::Module& model, const PruneGroup& g);
// The entries of dimension `s.dim` that units `keep` ([K] int64) own.
torch::Tensor slice_indices(const ResolvedSlice& s, const torch::Tensor& keep);

// The activation criterion's measurement: runs calibration examples through the model (forward
// only) and returns, per group name, each unit's summed activation magnitude ([units]).
using UnitImportance = std::function<std::map<std::string, torch::Tensor>(Model&)>;

class PruneHook : public TrainHook {
 public:
  // `importance`: required by criterion activation, unused otherwise.
  explicit PruneHook(PruneConfig cfg, UnitImportance importance = {})
      : cfg_(std::move(cfg)), importance_(std::move(importance)) {}
  std::string name() const override { return "prune"; }
  void on_train_begin(TrainState& state) override;
  void on_step_begin(TrainState& state) override;
  void on_after_backward(TrainState& state) override;
  void on_after_optimizer_step(TrainState& state) override;
  void on_epoch_end(TrainState& state) override;
  void save_state(torch::serialize::OutputArchive& ar) const override;
  void load_state(torch::serialize::InputArchive& ar) override;

  // Recomputes every mask for the schedule's sparsity at `step` and applies it (public for tests).
  void update_masks(int64_t step, int64_t steps_per_epoch);
  // Fraction of each unit (layer or channel group) that is pruned, by unit name.
  std::map<std::string, double> sparsity() const;
  const std::vector<PruneGroup>& groups() const { return groups_; }
  // Structured: per group (groups() order) the indices of its kept units ([K] int64, CPU); every
  // unit of a group not pruned (excluded, or before its first mask).
  std::vector<torch::Tensor> kept_units() const;

 private:
  struct Unit {
    std::string name;
    double target = 0.0;
    torch::Tensor weight;  // magnitude: the weight itself
    int group = -1;        // structured: index into groups_
    torch::Tensor mask;    // magnitude: like weight; structured: [units]; undefined until pruning starts
  };
  void collect(Model& model);
  void apply_masks(bool to_grads);
  // Tells the normalizations over a pruned dimension which units are kept (when masks change, not
  // every step).
  void set_norms_kept();
  // [units] float64; `measured`: the activation criterion's measurement of this update.
  torch::Tensor unit_scores(size_t group, const std::map<std::string, torch::Tensor>& measured) const;

  PruneConfig cfg_;
  UnitImportance importance_;
  Model* model_ = nullptr;
  std::vector<Unit> units_;
  std::vector<PruneGroup> groups_;
  std::vector<std::vector<ResolvedSlice>> slices_;  // per group
  int64_t last_update_ = -1;  // step of the last update
};

}  // namespace qd
