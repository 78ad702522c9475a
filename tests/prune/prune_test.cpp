// Pruning: the schedule, masks that survive optimizer steps, channel dependency groups on a
// ResNet and a flatten-head ConvNet, and config errors.
#include <gtest/gtest.h>

#include "common/error.h"
#include "models/registry.h"
#include "models/zoo.h"
#include "prune/pruner.h"
#include "prune/remove.h"
#include "qat/qat_hook.h"
#include "trainer/experiment_config.h"

namespace qd {
namespace {

std::shared_ptr<Model> model_from(const std::string& model_yaml) {
  ExperimentConfig c = parse_experiment_config("experiment: {name: t}\nmodel: " + model_yaml + "\n", "t.yaml");
  torch::manual_seed(0);
  return make_model(c.model, InputSpec{});
}

bool ends_with_running(const std::string& k) {
  return k.find("running_mean") != std::string::npos || k.find("running_var") != std::string::npos;
}

TrainState state_for(Model& m, int64_t step, int64_t steps_per_epoch) {
  TrainState s;
  s.model = &m;
  s.global_step = step;
  s.steps_per_epoch = steps_per_epoch;
  s.epoch = step / steps_per_epoch;
  return s;
}

// Channel pruning of `fraction` of every group, all at once (one-shot at step 0).
PruneConfig one_shot_channels(double fraction) {
  PruneConfig c;
  c.enabled = true;
  c.schedule = PruneSchedule::kOneShot;
  c.target_sparsity = fraction;
  return c;
}

TEST(PruneSchedule, ZhuGuptaCubicAndOneShot) {
  PruneConfig c;
  c.initial_sparsity = 0.1;
  c.target_sparsity = 0.5;
  c.start_epoch = 1;
  c.end_epoch = 3;  // t0 = 100, n dt = 200 steps at 100 steps per epoch
  EXPECT_DOUBLE_EQ(scheduled_sparsity(c, 0.5, 99, 100), 0.0);
  EXPECT_DOUBLE_EQ(scheduled_sparsity(c, 0.5, 100, 100), 0.1);
  EXPECT_DOUBLE_EQ(scheduled_sparsity(c, 0.5, 200, 100), 0.5 + (0.1 - 0.5) * 0.125);  // (1 - 1/2)^3
  EXPECT_DOUBLE_EQ(scheduled_sparsity(c, 0.5, 250, 100), 0.5 + (0.1 - 0.5) * std::pow(0.25, 3));
  EXPECT_DOUBLE_EQ(scheduled_sparsity(c, 0.5, 300, 100), 0.5);
  EXPECT_DOUBLE_EQ(scheduled_sparsity(c, 0.5, 10000, 100), 0.5);
  c.schedule = PruneSchedule::kOneShot;
  EXPECT_DOUBLE_EQ(scheduled_sparsity(c, 0.5, 99, 100), 0.0);
  EXPECT_DOUBLE_EQ(scheduled_sparsity(c, 0.5, 100, 100), 0.5);
}

TEST(PruneMasks, MagnitudeMasksSurviveMomentumAndWeightDecay) {
  auto m = model_from("{name: convnet, width: 4, depth: 2}");
  PruneConfig c;
  c.enabled = true;
  c.method = PruneMethod::kMagnitude;
  c.schedule = PruneSchedule::kOneShot;
  c.target_sparsity = 0.5;
  c.exclude = {"classifier"};
  PruneHook hook(c);
  TrainState s = state_for(*m, 0, 10);
  hook.on_train_begin(s);
  torch::optim::SGD opt(m->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9).weight_decay(0.01));
  const torch::Tensor x = torch::rand({8, 1, 28, 28});
  auto step = [&] {
    opt.zero_grad();
    m->forward(x).pow(2).sum().backward();
    hook.on_after_backward(s);
    opt.step();
    hook.on_after_optimizer_step(s);
  };
  step();  // momentum builds up before pruning
  hook.on_step_begin(s);  // one-shot: prunes now
  const auto sp = hook.sparsity();
  ASSERT_EQ(sp.size(), 2u);  // block0, block1; the classifier is excluded
  const torch::Tensor w0 = m->named_parameters()["block0.conv.weight"];
  const int64_t zeros = w0.numel() - w0.count_nonzero().item<int64_t>();
  EXPECT_EQ(zeros, w0.numel() / 2);  // exactly half: 4*1*3*3 = 36 -> 18
  const torch::Tensor pruned = w0.eq(0);
  for (int i = 0; i < 5; ++i) step();
  EXPECT_TRUE(torch::equal(w0.eq(0).logical_and(pruned), pruned)) << "pruned weights came back";
  EXPECT_EQ(w0.count_nonzero().item<int64_t>(), w0.numel() / 2);
  EXPECT_GT(m->named_parameters()["classifier.weight"].count_nonzero().item<int64_t>(), 30);
}

TEST(PruneGroups, ResNetResidualStreamsAreCoupled) {
  auto m = model_from("{name: resnet, width: 4, depth: 14}");  // 2 blocks per stage
  const std::vector<PruneGroup> groups = m->prune_groups();
  std::map<std::string, const PruneGroup*> by_name;
  for (const auto& g : groups) by_name[g.name] = &g;
  ASSERT_TRUE(by_name.count("stem") && by_name.count("stage2") && by_name.count("stage3"));
  EXPECT_EQ(by_name["stem"]->layers,
            (std::vector<std::string>{"stem", "stage1_block0.conv2", "stage1_block1.conv2"}));
  EXPECT_EQ(by_name["stage2"]->layers,
            (std::vector<std::string>{"stage2_block0.shortcut", "stage2_block0.conv2", "stage2_block1.conv2"}));
  EXPECT_EQ(by_name["stem"]->readers, (std::vector<std::string>{"stage1_block0.conv1", "stage1_block1.conv1",
                                                                 "stage2_block0.shortcut", "stage2_block0.conv1"}));
  // Each reader's input channels are cut with the stream: a consumer slice along dimension 1.
  std::vector<std::string> consumers;
  for (const auto& sl : by_name["stem"]->slices)
    if (sl.role == SliceRole::kConsumer) consumers.push_back(sl.tensor + "@" + std::to_string(sl.dim));
  EXPECT_EQ(consumers, (std::vector<std::string>{"stage1_block0.conv1.conv.weight@1", "stage1_block1.conv1.conv.weight@1",
                                                 "stage2_block0.shortcut.conv.weight@1", "stage2_block0.conv1.conv.weight@1"}));
  EXPECT_EQ(by_name["stage3"]->readers.back(), "fc");
  EXPECT_EQ(by_name["stage3"]->units, 16);
  EXPECT_EQ(by_name["stage1_block0.conv1"]->readers.at(0), "stage1_block0.conv2");
  EXPECT_EQ(groups.size(), 3u + 6u);  // 3 streams + one inner group per block
  EXPECT_EQ(groups[0].name, "stem");
  EXPECT_EQ(groups[1].name, "stage1_block0.conv1");
  EXPECT_EQ(groups[3].name, "stage2");

  // Pruning half of every group zeroes exactly those channels of the residual stream, through
  // every addition: the pooled features of pruned stage-3 channels are exactly 0.
  PruneHook hook(one_shot_channels(0.5));
  TrainState s = state_for(*m, 0, 10);
  hook.on_train_begin(s);
  {
    torch::NoGradGuard g;  // make the zero-init residual BN non-trivial first
    for (auto& p : m->parameters()) p.add_(torch::randn_like(p) * 0.1);
  }
  hook.on_step_begin(s);
  m->set_capture({"features"});
  m->train();
  m->forward(torch::rand({6, 1, 28, 28}));
  const torch::Tensor feat = m->captured().at("features");  // [6, 16]
  auto params = m->named_parameters();
  const torch::Tensor kept = params["stage3_block0.shortcut.bn.weight"].ne(0);
  EXPECT_EQ(kept.sum().item<int64_t>(), 8);
  for (int64_t ch = 0; ch < 16; ++ch) {
    if (kept[ch].item<bool>()) continue;
    EXPECT_EQ(feat.select(1, ch).abs().max().item<float>(), 0.0f) << "channel " << ch;
    for (const auto& l : by_name["stage3"]->layers) EXPECT_EQ(params[l + ".conv.weight"][ch].abs().sum().item<float>(), 0.0f);
  }
}

TEST(PruneGroups, ConvNetFlattenHeadConsumerTakesHxWFeaturesPerChannel) {
  auto m = model_from("{name: convnet, width: 4, depth: 4, head: flatten}");  // pool after block1 only: 14x14
  const std::vector<PruneGroup> groups = m->prune_groups();
  ASSERT_EQ(groups.size(), 4u);
  EXPECT_EQ(groups[0].readers.at(0), "block1");
  const DimSlice& head = groups[3].slices.back();
  EXPECT_EQ(head.tensor, "classifier.weight");
  EXPECT_EQ(head.role, SliceRole::kConsumer);
  EXPECT_EQ(head.block, 196);
  EXPECT_EQ(m->named_parameters()["classifier.weight"].size(1), groups[3].units * 196);
  auto gap = model_from("{name: convnet, width: 4, depth: 4, head: gap}");
  EXPECT_EQ(gap->prune_groups()[3].slices.back().block, 1);
}

TEST(PruneGroups, ChannelCriteriaPickTheWeakestAndKeepOne) {
  auto m = model_from("{name: convnet, width: 4, depth: 1}");
  torch::Tensor gamma = m->named_parameters()["block0.bn.weight"];
  {
    torch::NoGradGuard g;
    gamma.copy_(torch::tensor({0.5f, -0.1f, 2.0f, 0.05f}));
  }
  PruneConfig c = one_shot_channels(0.5);
  c.criterion = PruneCriterion::kBnGamma;
  PruneHook hook(c);
  TrainState s = state_for(*m, 0, 10);
  hook.on_train_begin(s);
  hook.on_step_begin(s);
  EXPECT_TRUE(torch::equal(gamma.ne(0), torch::tensor({true, false, true, false})));
  PruneConfig all = c;
  all.target_sparsity = 0.99;  // floor(0.99 * 4) = 3: one channel always survives
  PruneHook h2(all);
  h2.on_train_begin(s);
  h2.on_step_begin(s);
  EXPECT_EQ(gamma.count_nonzero().item<int64_t>(), 1);
}

TEST(PruneConfig, BadEntriesNameTheKeyAndTheValidLayers) {
  auto err = [](const std::string& prune) {
    try {
      ExperimentConfig c = parse_experiment_config(
          "experiment: {name: t}\nmodel: {name: convnet, width: 4, depth: 2}\nprune:\n" + prune, "p.yaml");
      auto m = make_model(c.model, InputSpec{});
      if (auto bad = check_prune_names(c.prune, *m)) return bad->first + ": " + bad->second;
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(err("  target_sparsity: 1.0\n").find("prune.target_sparsity"), std::string::npos);
  EXPECT_NE(err("  target_sparsity: -0.1\n").find("prune.target_sparsity"), std::string::npos);
  const std::string unknown = err("  exclude: [block9]\n");
  EXPECT_NE(unknown.find("prune.exclude: 'block9'"), std::string::npos) << unknown;
  EXPECT_NE(unknown.find("valid: block0, block1"), std::string::npos) << unknown;
  EXPECT_NE(err("  layer_targets: [\"block1=1.5\"]\n").find("outside [0, 1)"), std::string::npos);
  EXPECT_NE(err("  layer_targets: [\"block1\"]\n").find("NAME=SPARSITY"), std::string::npos);
  EXPECT_EQ(err("  method: magnitude\n  exclude: [classifier, block0]\n"), "no error");
  EXPECT_NE(err("  start_epoch: 3\n  end_epoch: 2\n").find("prune.end_epoch"), std::string::npos);
}

// Prunes half the channels of every group (one-shot), optionally after QAT observed a batch,
// removes them physically and checks the smaller model computes the same outputs.
void check_removal(const std::string& model_yaml, bool qat_on) {
  ExperimentConfig c = parse_experiment_config("experiment: {name: t}\nmodel: " + model_yaml + "\n", "t.yaml");
  torch::manual_seed(5);
  std::shared_ptr<Model> m = make_model(c.model, InputSpec{});
  QatConfig q;
  q.enabled = true;
  if (qat_on) attach_qat(*m, q);
  {
    torch::NoGradGuard g;  // non-trivial BN statistics and residual gammas
    for (auto& p : m->parameters()) p.add_(torch::randn_like(p) * 0.1);
    for (auto& b : m->named_buffers())
      if (ends_with_running(b.key())) b.value().uniform_(0.5, 1.5);
  }
  PruneHook hook(one_shot_channels(0.5));
  TrainState s = state_for(*m, 0, 10);
  hook.on_train_begin(s);
  hook.on_step_begin(s);
  const torch::Tensor x = torch::rand({5, 1, 28, 28});
  if (qat_on) {
    auto fqs = fake_quantizers(*m);
    for (auto& f : fqs) f->set_enabled(true), f->set_observing(true);
    m->train();
    m->forward(x);
    QatHook::sync_observers(fqs, nullptr, 1);
  }
  m->eval();
  const torch::Tensor want = m->forward(x);
  RemovalResult r = remove_pruned_units(*m, c.model, InputSpec{}, qat_on ? &q : nullptr);
  r.model->eval();
  const torch::Tensor got = r.model->forward(x);
  EXPECT_LT(count_params(*r.model), count_params(*m) * 0.6) << model_yaml;
  for (size_t i = 0; i < r.kept.size(); ++i) EXPECT_EQ(r.kept[i], r.total[i] - r.total[i] / 2) << model_yaml << " group " << i;
  if (!qat_on) {
    EXPECT_TRUE(torch::allclose(got, want, 1e-5, 1e-5))
        << model_yaml << ": max difference " << (got - want).abs().max().item<float>();
  } else {
    // Fake-quant rounds: a float summation-order difference of 1e-7 can move an activation that
    // sits on a rounding boundary by one step, so quantized outputs agree to a step, not to
    // 1e-5. With the quantizers off (same folded weights and BN) they agree to 1e-5.
    EXPECT_TRUE(torch::allclose(got, want, 1e-3, 1e-3))
        << model_yaml << " (QAT): max difference " << (got - want).abs().max().item<float>();
    set_fake_quant_enabled(*m, false);
    set_fake_quant_enabled(*r.model, false);
    const torch::Tensor a = m->forward(x), b = r.model->forward(x);
    EXPECT_TRUE(torch::allclose(a, b, 1e-5, 1e-5)) << model_yaml << " (QAT off): " << (a - b).abs().max().item<float>();
  }
  // The smaller model's architecture round-trips through its config.
  std::shared_ptr<Model> again = make_model(r.config, InputSpec{});
  EXPECT_EQ(count_params(*again), count_params(*r.model));
}

TEST(PruneRemoval, SmallerModelComputesTheSameOutputs) {
  for (const bool qat_on : {false, true}) {
    check_removal("{name: convnet, width: 8, depth: 4, head: gap}", qat_on);
    check_removal("{name: convnet, width: 8, depth: 4, head: flatten}", qat_on);
    check_removal("{name: resnet, width: 8, depth: 14}", qat_on);
  }
}

}  // namespace
}  // namespace qd
