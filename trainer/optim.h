// Optimizer and learning-rate schedule factories.
#pragma once

#include <torch/torch.h>

#include <memory>

#include "trainer/experiment_config.h"

namespace qd {

// torch::optim::AdamW whose step runs ATen's fused AdamW kernel (one pass over each parameter,
// its gradient and both moments) instead of AdamW's seven elementwise passes; the same update up
// to float rounding, and the same state and checkpoint format as AdamW (it is one).
class FusedAdamW : public torch::optim::AdamW {
 public:
  using torch::optim::AdamW::AdamW;
  torch::Tensor step(LossClosure closure = nullptr) override;
};

// SGD (momentum, Nesterov) or AdamW (FusedAdamW unless cfg.fused is false). Unless cfg.decay_norm_and_bias, parameters with fewer than
// two dimensions (BatchNorm weights, biases) go in a second group without weight decay.
std::unique_ptr<torch::optim::Optimizer> make_optimizer(const OptimizerConfig& cfg, const std::vector<torch::Tensor>& params);

// Learning rate as a pure function of the step, so resuming needs no scheduler state.
class LrSchedule {
 public:
  LrSchedule(const OptimizerConfig& opt, const ScheduleConfig& cfg, int64_t steps_per_epoch, int64_t epochs);
  double lr_at(int64_t step) const;  // step: optimizer steps taken so far (0-based)

 private:
  ScheduleConfig cfg_;
  double base_lr_;
  int64_t steps_per_epoch_, total_steps_, warmup_steps_;
};

void set_lr(torch::optim::Optimizer& opt, double lr);

}  // namespace qd
