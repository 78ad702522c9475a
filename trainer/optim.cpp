#include "trainer/optim.h"

#include <cmath>

namespace qd {

namespace {
// One group with weight decay, and (if any) one without; `options(wd)` makes a group's options.
template <class Opt, class Options, class MakeOptions>
std::unique_ptr<torch::optim::Optimizer> grouped(const std::vector<torch::Tensor>& decay,
                                                 const std::vector<torch::Tensor>& no_decay, double wd,
                                                 MakeOptions options) {
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, std::make_unique<Options>(options(wd)));
  if (!no_decay.empty()) groups.emplace_back(no_decay, std::make_unique<Options>(options(0.0)));
  return std::make_unique<Opt>(groups, options(wd));
}
}  // namespace

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const OptimizerConfig& cfg, const std::vector<torch::Tensor>& params) {
  std::vector<torch::Tensor> decay, no_decay;
  for (const auto& p : params) {
    if (!p.requires_grad()) continue;
    (cfg.decay_norm_and_bias || p.dim() >= 2 ? decay : no_decay).push_back(p);
  }
  if (cfg.name == OptimizerKind::kSgd) {
    return grouped<torch::optim::SGD, torch::optim::SGDOptions>(decay, no_decay, cfg.weight_decay, [&](double wd) {
      return torch::optim::SGDOptions(cfg.lr).momentum(cfg.momentum).nesterov(cfg.nesterov).weight_decay(wd);
    });
  }
  if (!cfg.fused)
    return grouped<torch::optim::AdamW, torch::optim::AdamWOptions>(decay, no_decay, cfg.weight_decay, [&](double wd) {
      return torch::optim::AdamWOptions(cfg.lr).betas({cfg.beta1, cfg.beta2}).eps(cfg.eps).weight_decay(wd);
    });
  return grouped<FusedAdamW, torch::optim::AdamWOptions>(decay, no_decay, cfg.weight_decay, [&](double wd) {
    return torch::optim::AdamWOptions(cfg.lr).betas({cfg.beta1, cfg.beta2}).eps(cfg.eps).weight_decay(wd);
  });
}

torch::Tensor FusedAdamW::step(LossClosure closure) {
  torch::NoGradGuard no_grad;
  torch::Tensor loss;
  if (closure) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  for (auto& group : param_groups_) {
    const auto& o = static_cast<const torch::optim::AdamWOptions&>(group.options());
    TORCH_CHECK(!o.amsgrad(), "FusedAdamW: amsgrad is not supported");
    std::vector<torch::Tensor> params, grads, exp_avgs, exp_avg_sqs, steps;
    std::vector<torch::optim::AdamWParamState*> states;
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      auto& slot = state_[p.unsafeGetTensorImpl()];
      if (!slot) {
        auto st = std::make_unique<torch::optim::AdamWParamState>();
        st->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        st->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        slot = std::move(st);
      }
      auto* st = static_cast<torch::optim::AdamWParamState*>(slot.get());
      params.push_back(p);
      grads.push_back(p.grad());
      exp_avgs.push_back(st->exp_avg());
      exp_avg_sqs.push_back(st->exp_avg_sq());
      // The kernel reads the step count of this update (1-based) from float tensors, as PyTorch's
      // fused AdamW passes it after incrementing.
      steps.push_back(torch::full({}, static_cast<double>(st->step() + 1), torch::TensorOptions().dtype(torch::kFloat32).device(p.device())));
      states.push_back(st);
    }
    if (params.empty()) continue;
    at::_fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, /*max_exp_avg_sqs=*/{}, steps, o.lr(), std::get<0>(o.betas()),
                      std::get<1>(o.betas()), o.weight_decay(), o.eps(), /*amsgrad=*/false, /*maximize=*/false);
    for (auto* st : states) st->step(st->step() + 1);
  }
  return loss;
}

LrSchedule::LrSchedule(const OptimizerConfig& opt, const ScheduleConfig& cfg, int64_t steps_per_epoch, int64_t epochs)
    : cfg_(cfg),
      base_lr_(opt.lr),
      steps_per_epoch_(std::max<int64_t>(1, steps_per_epoch)),
      total_steps_(std::max<int64_t>(1, steps_per_epoch * epochs)),
      warmup_steps_(static_cast<int64_t>(std::llround(cfg.warmup_epochs * steps_per_epoch))) {
  warmup_steps_ = std::min(warmup_steps_, total_steps_);
}

double LrSchedule::lr_at(int64_t step) const {
  if (step < warmup_steps_) {
    const double f = cfg_.warmup_start_factor;
    return base_lr_ * (f + (1.0 - f) * static_cast<double>(step + 1) / warmup_steps_);
  }
  switch (cfg_.name) {
    case ScheduleKind::kConstant:
      return base_lr_;
    case ScheduleKind::kCosine: {
      const double span = static_cast<double>(std::max<int64_t>(1, total_steps_ - warmup_steps_));
      const double t = std::min(1.0, (step - warmup_steps_) / span);
      return cfg_.min_lr + (base_lr_ - cfg_.min_lr) * 0.5 * (1.0 + std::cos(M_PI * t));
    }
    case ScheduleKind::kStep: {
      const int64_t epoch = step / steps_per_epoch_;
      double lr = base_lr_;
      for (int m : cfg_.milestones)
        if (epoch >= m) lr *= cfg_.gamma;
      return lr;
    }
  }
  return base_lr_;
}

void set_lr(torch::optim::Optimizer& opt, double lr) {
  for (auto& group : opt.param_groups()) group.options().set_lr(lr);
}

}  // namespace qd
