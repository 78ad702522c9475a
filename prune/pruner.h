// Pruning while training: masks on a gradual (Zhu & Gupta 2017) or one-shot schedule,
// unstructured (magnitude) or structured (whole channels, in dependency groups).
//
// Masks are applied to the weights after every optimizer step and to the gradients before it,
// so pruned weights stay exactly zero through momentum and weight decay; QAT's fake-quant reads
// the masked weights (and, for channels, the zeroed BN gamma/beta folds to zero filters).
// A pruned channel's conv filter, BN gamma and BN beta are all zero, so its output is exactly 0
// in training and evaluation, which is what lets export remove it without changing the outputs.
#pragma once

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

class PruneHook : public TrainHook {
 public:
  explicit PruneHook(PruneConfig cfg) : cfg_(std::move(cfg)) {}
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
  const std::vector<ChannelGroup>& groups() const { return groups_; }

 private:
  struct Unit {
    std::string name;
    double target = 0.0;
    torch::Tensor weight;  // magnitude: the weight itself
    int group = -1;        // channel: index into groups_
    torch::Tensor mask;    // magnitude: like weight; channel: [C]; undefined until pruning starts
  };
  void collect(Model& model);
  void apply_masks(bool to_grads);
  torch::Tensor channel_scores(const ChannelGroup& g) const;  // [C]

  PruneConfig cfg_;
  std::vector<Unit> units_;
  std::vector<ChannelGroup> groups_;
  int64_t last_update_ = -1;  // step of the last update
};

}  // namespace qd
