#include "trainer/optim.h"

#include <gtest/gtest.h>

#include <cmath>

#include "models/registry.h"

namespace qd {
namespace {

TEST(LrSchedule, WarmupIsLinearThenCosineReachesMin) {
  OptimizerConfig o;
  o.lr = 1.0;
  ScheduleConfig s;
  s.name = ScheduleKind::kCosine;
  s.warmup_epochs = 1;
  s.warmup_start_factor = 0.0;
  s.min_lr = 0.1;
  LrSchedule lr(o, s, /*steps_per_epoch=*/10, /*epochs=*/3);
  EXPECT_DOUBLE_EQ(lr.lr_at(0), 0.1);   // (0 + 1) / 10
  EXPECT_DOUBLE_EQ(lr.lr_at(4), 0.5);
  EXPECT_DOUBLE_EQ(lr.lr_at(9), 1.0);
  EXPECT_DOUBLE_EQ(lr.lr_at(10), 1.0);  // cosine starts at the peak
  EXPECT_NEAR(lr.lr_at(20), 0.1 + 0.9 * 0.5, 1e-12);  // half way through the cosine
  EXPECT_NEAR(lr.lr_at(30), 0.1, 1e-12);
}

TEST(LrSchedule, StepMultipliesAtMilestones) {
  OptimizerConfig o;
  o.lr = 0.8;
  ScheduleConfig s;
  s.name = ScheduleKind::kStep;
  s.milestones = {2, 3};
  s.gamma = 0.5;
  LrSchedule lr(o, s, 10, 5);
  EXPECT_DOUBLE_EQ(lr.lr_at(19), 0.8);
  EXPECT_DOUBLE_EQ(lr.lr_at(20), 0.4);
  EXPECT_DOUBLE_EQ(lr.lr_at(35), 0.2);
}

TEST(LrSchedule, StepWithWarmup) {
  OptimizerConfig o;
  o.lr = 1.0;
  ScheduleConfig s;
  s.name = ScheduleKind::kStep;
  s.milestones = {1};
  s.warmup_epochs = 0.5;
  s.warmup_start_factor = 0.5;
  LrSchedule lr(o, s, 10, 2);
  EXPECT_DOUBLE_EQ(lr.lr_at(0), 0.5 + 0.5 * 1 / 5.0);
  EXPECT_DOUBLE_EQ(lr.lr_at(5), 1.0);
  EXPECT_DOUBLE_EQ(lr.lr_at(10), 0.1);
}

TEST(Optimizer, NormAndBiasGetNoWeightDecayUnlessAsked) {
  ModelConfig mc;
  mc.name = ModelKind::kConvNet;
  mc.width = 4;
  mc.depth = 2;
  auto model = make_model(mc, InputSpec{});
  OptimizerConfig oc;
  auto opt = make_optimizer(oc, model->parameters());
  ASSERT_EQ(opt->param_groups().size(), 2u);
  auto& g0 = static_cast<torch::optim::SGDOptions&>(opt->param_groups()[0].options());
  auto& g1 = static_cast<torch::optim::SGDOptions&>(opt->param_groups()[1].options());
  EXPECT_DOUBLE_EQ(g0.weight_decay(), 5e-4);
  EXPECT_TRUE(g0.nesterov());
  EXPECT_DOUBLE_EQ(g1.weight_decay(), 0.0);
  for (const auto& p : opt->param_groups()[1].params()) EXPECT_EQ(p.dim(), 1);
  oc.decay_norm_and_bias = true;
  EXPECT_EQ(make_optimizer(oc, model->parameters())->param_groups().size(), 1u);
  oc.name = OptimizerKind::kAdamW;
  EXPECT_NE(dynamic_cast<torch::optim::AdamW*>(make_optimizer(oc, model->parameters()).get()), nullptr);
}

TEST(Optimizer, SetLrReachesEveryGroup) {
  ModelConfig mc;
  mc.name = ModelKind::kMlp;
  mc.width = 4;
  mc.depth = 1;
  auto model = make_model(mc, InputSpec{});
  auto opt = make_optimizer(OptimizerConfig{}, model->parameters());
  set_lr(*opt, 0.0123);
  for (auto& g : opt->param_groups()) EXPECT_DOUBLE_EQ(g.options().get_lr(), 0.0123);
}

}  // namespace
}  // namespace qd
