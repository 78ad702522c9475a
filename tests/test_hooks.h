// Helpers for tests that run the trainer: a hook that stops a run part-way, the model state to
// compare runs bit for bit, and one whole experiment run (with its config's hooks).
#pragma once

#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "common/train_hook.h"
#include "trainer/experiment.h"
#include "trainer/trainer.h"

namespace qd::test {

// Simulates a job killed at the start of epoch `at` (after the previous epoch's checkpoint).
class KillAtEpoch : public TrainHook {
 public:
  explicit KillAtEpoch(int64_t at) : at_(at) {}
  std::string name() const override { return "kill"; }
  void on_epoch_begin(TrainState& s) override {
    if (s.epoch == at_) throw std::runtime_error("killed");
  }

 private:
  int64_t at_;
};

// Copies of every parameter, then every buffer.
inline std::vector<torch::Tensor> state_of(torch::nn::Module& m) {
  std::vector<torch::Tensor> out;
  for (auto& p : m.parameters()) out.push_back(p.detach().clone());
  for (auto& b : m.buffers()) out.push_back(b.detach().clone());
  return out;
}

// Trains `cfg` with its experiment hooks (KD, pruning, QAT) into `run_dir` on CPU; with
// kill_at > 0 the run is killed at the start of that epoch. Returns the final model state.
inline std::vector<torch::Tensor> run_experiment(const ExperimentConfig& cfg, const DataBundle& data,
                                                 const std::string& run_dir, int64_t kill_at = 0) {
  set_threads(cfg.trainer.threads);
  auto model = build_model(cfg, data);
  Trainer t(cfg, model, data, run_dir);
  add_experiment_hooks(t, cfg, *model, data, torch::kCPU);
  if (kill_at > 0) {
    t.add_hook(std::make_shared<KillAtEpoch>(kill_at));
    EXPECT_THROW(t.fit(), std::runtime_error);
  } else {
    t.fit();
  }
  return state_of(*model);
}

}  // namespace qd::test
