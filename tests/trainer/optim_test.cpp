#include "trainer/optim.h"

#include <gtest/gtest.h>

#include <cmath>
#include <sstream>
#include <tuple>

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

// The fused step is AdamW's update (to float rounding), and its state is AdamW's: a checkpoint of
// one resumes in the other.
TEST(Optimizer, FusedAdamWEqualsAdamWAndSharesItsState) {
  torch::manual_seed(3);
  const torch::Tensor w0 = torch::randn({7, 5}), b0 = torch::randn({5});
  const auto make = [&](bool fused, torch::Tensor& w, torch::Tensor& b) {
    w = w0.clone().requires_grad_(true);
    b = b0.clone().requires_grad_(true);
    OptimizerConfig oc;
    oc.name = OptimizerKind::kAdamW;
    oc.lr = 0.05;
    oc.weight_decay = 0.1;
    oc.beta2 = 0.95;
    oc.fused = fused;
    return make_optimizer(oc, {w, b});
  };
  torch::Tensor wf, bf, wr, br;
  auto fused = make(true, wf, bf), ref = make(false, wr, br);
  EXPECT_NE(dynamic_cast<FusedAdamW*>(fused.get()), nullptr);
  EXPECT_EQ(dynamic_cast<FusedAdamW*>(ref.get()), nullptr);
  const torch::Tensor x = torch::randn({11, 7});
  for (int step = 0; step < 6; ++step) {
    for (auto [opt, w, b] : {std::make_tuple(fused.get(), wf, bf), std::make_tuple(ref.get(), wr, br)}) {
      opt->zero_grad();
      torch::tanh(torch::matmul(x, w) + b).pow(2).sum().backward();
      opt->step();
    }
    ASSERT_TRUE(torch::allclose(wf, wr, 1e-5, 1e-6)) << "step " << step << ": " << (wf - wr).abs().max().item<float>();
    ASSERT_TRUE(torch::allclose(bf, br, 1e-5, 1e-6)) << "step " << step;
  }
  ASSERT_FALSE(torch::allclose(wf, w0, 1e-3, 1e-3)) << "the parameters moved";
  // Save the fused optimizer, load it into a plain AdamW: the same moments and step count.
  torch::serialize::OutputArchive out;
  fused->save(out);
  std::ostringstream bytes;
  out.save_to(bytes);
  torch::serialize::InputArchive in;
  std::istringstream is(bytes.str());
  in.load_from(is);
  torch::Tensor w2, b2;
  auto loaded = make(false, w2, b2);
  loaded->load(in);
  const auto& st = static_cast<torch::optim::AdamWParamState&>(*loaded->state().at(w2.unsafeGetTensorImpl()));
  const auto& mine = static_cast<torch::optim::AdamWParamState&>(*fused->state().at(wf.unsafeGetTensorImpl()));
  EXPECT_EQ(st.step(), 6);
  EXPECT_TRUE(torch::equal(st.exp_avg(), mine.exp_avg()));
  EXPECT_TRUE(torch::equal(st.exp_avg_sq(), mine.exp_avg_sq()));
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
