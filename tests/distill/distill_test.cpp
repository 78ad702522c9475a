// Distillation: the KD loss against a hand computation, the frozen teacher, the teacher-output
// cache (hit, miss, invalidation, corruption), feature adapters and config errors.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "common/atomic_file.h"
#include "common/error.h"
#include "data/augment.h"
#include "distill/distill_hook.h"
#include "distill/feature_adapter.h"
#include "distill/kd_loss.h"
#include "distill/teacher.h"
#include "distill/teacher_cache.h"
#include "tests/test_hooks.h"
#include "tests/test_util.h"
#include "trainer/experiment.h"
#include "trainer/trainer.h"

namespace qd {
namespace {

namespace fs = std::filesystem;

// ---- losses -----------------------------------------------------------------------------

// KL(p_t || p_s) at temperature T, by hand, in double.
double hand_kl(const std::vector<std::vector<double>>& s, const std::vector<std::vector<double>>& t, double T) {
  double total = 0;
  for (size_t b = 0; b < s.size(); ++b) {
    double zs = 0, zt = 0;
    for (size_t k = 0; k < s[b].size(); ++k) zs += std::exp(s[b][k] / T), zt += std::exp(t[b][k] / T);
    for (size_t k = 0; k < s[b].size(); ++k) {
      const double pt = std::exp(t[b][k] / T) / zt, ps = std::exp(s[b][k] / T) / zs;
      total += pt * std::log(pt / ps);
    }
  }
  return total / s.size();
}

TEST(KdLoss, MatchesHandComputationWithTSquaredScaling) {
  const std::vector<std::vector<double>> s = {{1.0, 2.0, 0.5}, {-1.0, 0.0, 3.0}};
  const std::vector<std::vector<double>> t = {{0.5, 2.5, 0.0}, {0.0, 0.2, 2.0}};
  torch::Tensor st = torch::tensor({1.0, 2.0, 0.5, -1.0, 0.0, 3.0}).view({2, 3});
  torch::Tensor tt = torch::tensor({0.5, 2.5, 0.0, 0.0, 0.2, 2.0}).view({2, 3});
  for (double T : {1.0, 2.0, 4.0}) {
    const double loss = kd_logit_loss(st, tt, T).item<double>();
    EXPECT_NEAR(loss, T * T * hand_kl(s, t, T), 1e-5) << "T = " << T;
  }
  EXPECT_NEAR(kd_logit_loss(st, st, 3.0).item<double>(), 0.0, 1e-6) << "KL of equal distributions";
}

TEST(KdLoss, GradientMatchesClosedForm) {
  // d/ds [T^2 KL(p_t || p_s)] averaged over B = T (p_s - p_t) / B
  torch::Tensor s = torch::tensor({1.0, 2.0, 0.5, -1.0, 0.0, 3.0}).view({2, 3}).requires_grad_(true);
  torch::Tensor t = torch::tensor({0.5, 2.5, 0.0, 0.0, 0.2, 2.0}).view({2, 3});
  const double T = 2.0;
  kd_logit_loss(s, t, T).backward();
  torch::Tensor expected = T * (torch::softmax(s.detach() / T, 1) - torch::softmax(t / T, 1)) / 2.0;
  EXPECT_TRUE(torch::allclose(s.grad(), expected, 1e-5, 1e-6)) << s.grad() << expected;
}

TEST(KdLoss, AlphaZeroIsCrossEntropyAndAlphaMixes) {
  torch::manual_seed(0);
  torch::Tensor s = torch::randn({4, 10}), t = torch::randn({4, 10});
  torch::Tensor y = torch::tensor({1, 2, 3, 4}, torch::kInt64);
  const double ce = torch::nn::functional::cross_entropy(s, y).item<double>();
  EXPECT_NEAR(distill_loss(s, t, y, 0.0, 4.0).total.item<double>(), ce, 1e-6);
  const DistillLoss l = distill_loss(s, t, y, 0.7, 4.0);
  EXPECT_NEAR(l.total.item<double>(), 0.7 * l.kd.item<double>() + 0.3 * ce, 1e-5);
}

TEST(FeatureAdapter, ShapesForMapsAndVectors) {
  FeatureAdapter conv(std::vector<int64_t>{8, 14, 14}, std::vector<int64_t>{32, 7, 7});
  EXPECT_EQ(conv(torch::rand({3, 8, 14, 14})).sizes(), (std::vector<int64_t>{3, 32, 7, 7}));
  FeatureAdapter same(std::vector<int64_t>{8, 7, 7}, std::vector<int64_t>{16, 7, 7});
  EXPECT_EQ(same(torch::rand({2, 8, 7, 7})).sizes(), (std::vector<int64_t>{2, 16, 7, 7}));
  FeatureAdapter lin(std::vector<int64_t>{16}, std::vector<int64_t>{128});
  EXPECT_EQ(lin(torch::rand({5, 16})).sizes(), (std::vector<int64_t>{5, 128}));
  EXPECT_THROW(FeatureAdapter(std::vector<int64_t>{16}, std::vector<int64_t>{8, 7, 7}), UserError);
  EXPECT_THROW(FeatureAdapter(std::vector<int64_t>{8, 7, 7}, std::vector<int64_t>{8, 14, 14}), UserError);
}

// ---- a real (tiny) teacher run ----------------------------------------------------------

struct TeacherRun {
  test::TempDir dir;
  std::string run_dir;
  TeacherRun(int width = 8) {
    const std::string cfg = dir.file("teacher.yaml");
    write_file_atomic(cfg, concat("experiment: {name: teacher, output_dir: ", dir.path().string(),
                                  "}\nmodel: {name: convnet, width: ", width,
                                  ", depth: 2}\ndata: {train_subset: 512, test_subset: 200, batch_size: 64}\n"
                                  "trainer: {epochs: 1, progress: false, threads: 2}\n"));
    TrainCommand cmd;
    cmd.config_path = cfg;
    EXPECT_EQ(run_train(cmd), 0);
    run_dir = dir.file("teacher");
  }
};

ExperimentConfig student_config(const TeacherRun& t, const std::string& extra = "") {
  return parse_experiment_config(
      concat("experiment: {name: student, output_dir: ", t.dir.path().string(), ", role: student}\n",
             "model: {name: convnet, width: 4, depth: 2}\n",
             "data: {train_subset: 512, test_subset: 200, batch_size: 64}\n",
             "trainer: {epochs: 1, progress: false, threads: 2}\n", "distill: {teacher: ", t.run_dir, extra, "}\n"),
      "student.yaml");
}

TEST(Teacher, IsFrozenAndBitIdenticalAfterTraining) {
  TeacherRun t;
  ExperimentConfig cfg = student_config(t);
  const DataBundle data = load_data(cfg.data);
  Teacher teacher = load_teacher(cfg.distill, input_spec(data), cfg.data.dataset, torch::kCPU, true);
  std::vector<torch::Tensor> before;
  for (auto& p : teacher.model->parameters()) {
    EXPECT_FALSE(p.requires_grad());
    before.push_back(p.detach().clone());
  }
  std::vector<torch::Tensor> buffers_before;
  for (auto& b : teacher.model->buffers()) buffers_before.push_back(b.clone());
  Model* teacher_model = teacher.model.get();

  auto student = build_model(cfg, data);
  Trainer trainer(cfg, student, data, "");
  DistillHookOptions o;
  o.cfg = cfg.distill;
  o.cfg.cache = false;  // the teacher runs every step: the strongest test of "no gradient"
  o.cache_dir = t.dir.file("cache");
  auto hook = std::make_shared<DistillHook>(o, std::move(teacher), data.train);
  trainer.add_hook(hook);
  trainer.fit();

  EXPECT_FALSE(teacher_model->is_training()) << "teacher stays in eval mode";
  const auto params = teacher_model->parameters();
  for (size_t i = 0; i < params.size(); ++i) {
    EXPECT_FALSE(params[i].grad().defined()) << "teacher parameter " << i << " received a gradient";
    EXPECT_TRUE(torch::equal(params[i], before[i]));
  }
  const auto buffers = teacher_model->buffers();
  for (size_t i = 0; i < buffers.size(); ++i) EXPECT_TRUE(torch::equal(buffers[i], buffers_before[i])) << "BN stats";
  // The optimizer holds only the student's parameters.
  size_t n = 0;
  for (auto& g : trainer.optimizer()->param_groups()) n += g.params().size();
  EXPECT_EQ(n, student->parameters().size());
}

TEST(Teacher, MissingOrIncompatibleTeacherIsAUserError) {
  TeacherRun t;
  ExperimentConfig cfg = student_config(t);
  const DataBundle data = load_data(cfg.data);
  DistillConfig missing = cfg.distill;
  missing.teacher = t.dir.file("nope");
  try {
    load_teacher(missing, input_spec(data), cfg.data.dataset, torch::kCPU, true);
    FAIL();
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("no such teacher run directory"), std::string::npos) << e.what();
  }
  EXPECT_THROW(load_teacher(cfg.distill, input_spec(data), DatasetKind::kMnist, torch::kCPU, true), UserError);
  InputSpec wrong = input_spec(data);
  wrong.num_classes = 7;  // the checkpoint's classifier has 10 outputs
  EXPECT_THROW(load_teacher(cfg.distill, wrong, cfg.data.dataset, torch::kCPU, true), UserError);
}

// ---- the cache ----------------------------------------------------------------------------

TEST(TeacherCache, MissHitInvalidationAndCorruption) {
  TeacherRun t;
  ExperimentConfig cfg = student_config(t);
  const DataBundle data = load_data(cfg.data);
  Teacher teacher = load_teacher(cfg.distill, input_spec(data), cfg.data.dataset, torch::kCPU, true);
  TeacherCacheSpec spec;
  spec.views = 2;
  spec.augment.random_crop = true;
  spec.augment.views = 2;
  spec.seed = 5;
  spec.path = t.dir.file("cache/t.qdc");
  spec.key = teacher_cache_key(teacher.fingerprint, data.train, 2, spec.augment, 5);

  TeacherCache first = TeacherCache::load_or_build(spec, *teacher.model, data.train, torch::kCPU, nullptr);
  EXPECT_TRUE(first.built) << "miss: built";
  EXPECT_EQ(first.table.sizes(), (std::vector<int64_t>{512, 2, 10}));
  EXPECT_EQ(first.table.scalar_type(), torch::kFloat16);
  // The cached logits are the teacher's on exactly that view of the sample.
  {
    torch::NoGradGuard g;
    torch::Tensor x = slice_batch(data.train, 17, 18).inputs;
    torch::Tensor view1 = augment_batch(x, spec.augment, {augment_view_seed(5, 17, 1)});
    torch::Tensor expect = teacher.model->forward(view1.contiguous(torch::MemoryFormat::ChannelsLast));
    torch::Tensor got = first.lookup({17}, {1}, torch::kCPU);
    EXPECT_TRUE(torch::allclose(got, expect, 1e-2, 1e-2)) << got << expect;  // fp16 storage
  }

  TeacherCache second = TeacherCache::load_or_build(spec, *teacher.model, data.train, torch::kCPU, nullptr);
  EXPECT_FALSE(second.built) << "hit: read from the file";
  EXPECT_TRUE(torch::equal(first.table, second.table));

  // Another teacher (other weights) gives another key: the old file is stale and rebuilt.
  TeacherRun other(4);
  Teacher teacher2 = load_teacher(student_config(other).distill, input_spec(data), cfg.data.dataset, torch::kCPU, true);
  TeacherCacheSpec spec2 = spec;
  spec2.key = teacher_cache_key(teacher2.fingerprint, data.train, 2, spec.augment, 5);
  EXPECT_NE(spec2.key, spec.key);
  TeacherCache third = TeacherCache::load_or_build(spec2, *teacher2.model, data.train, torch::kCPU, nullptr);
  EXPECT_TRUE(third.built);
  EXPECT_NE(third.rebuild_reason.find("stale"), std::string::npos) << third.rebuild_reason;

  // Flip one payload byte: the CRC catches it and the file is rebuilt, never used.
  std::string bytes = read_file(spec2.path);
  bytes[bytes.size() - 7] = static_cast<char>(bytes[bytes.size() - 7] ^ 0x40);
  write_file_atomic(spec2.path, bytes);
  TeacherCache fourth = TeacherCache::load_or_build(spec2, *teacher2.model, data.train, torch::kCPU, nullptr);
  EXPECT_TRUE(fourth.built);
  EXPECT_NE(fourth.rebuild_reason.find("CRC"), std::string::npos) << fourth.rebuild_reason;
  EXPECT_TRUE(torch::equal(fourth.table, third.table));
  // Truncated file: rebuilt too.
  write_file_atomic(spec2.path, bytes.substr(0, bytes.size() / 2));
  TeacherCache fifth = TeacherCache::load_or_build(spec2, *teacher2.model, data.train, torch::kCPU, nullptr);
  EXPECT_TRUE(fifth.built);
}

TEST(DistillHook, UsesCacheOnlyWhereItIsCorrect) {
  TeacherRun t;
  for (const auto& [aug, views, expect_cache] :
       std::vector<std::tuple<bool, int, bool>>{{false, 0, true}, {true, 0, false}, {true, 3, true}}) {
    ExperimentConfig cfg = student_config(t, concat(", cache_dir: ", t.dir.file("cache")));
    cfg.data.augment.random_crop = aug;
    cfg.data.augment.views = views;
    const DataBundle data = load_data(cfg.data);
    DistillHookOptions o;
    o.cfg = cfg.distill;
    o.augment = cfg.data.augment;
    o.cache_dir = cfg.distill.cache_dir;
    auto hook = std::make_shared<DistillHook>(
        o, load_teacher(cfg.distill, input_spec(data), cfg.data.dataset, torch::kCPU, true), data.train);
    auto student = build_model(cfg, data);
    Trainer trainer(cfg, student, data, "");
    trainer.add_hook(hook);
    const TrainResult r = trainer.fit();
    EXPECT_EQ(hook->uses_cache(), expect_cache) << "augment " << aug << " views " << views << ": " << hook->cache_note();
    EXPECT_EQ(r.epochs_completed, 1);
  }
}

TEST(DistillHook, FeatureKdTrainsAdaptersAndLogsEveryTerm) {
  TeacherRun t;
  ExperimentConfig cfg = student_config(t, ", hint_student: [block1], hint_teacher: [block1], hint_weight: 0.5");
  cfg.trainer.log_every = 1;
  const DataBundle data = load_data(cfg.data);
  DistillHookOptions o;
  o.cfg = cfg.distill;
  o.cache_dir = t.dir.file("cache");
  auto hook = std::make_shared<DistillHook>(
      o, load_teacher(cfg.distill, input_spec(data), cfg.data.dataset, torch::kCPU, true), data.train);
  auto student = build_model(cfg, data);
  Trainer trainer(cfg, student, data, t.dir.file("student_run"));
  trainer.add_hook(hook);
  trainer.fit();
  const auto adapter_params = hook->parameters();
  ASSERT_EQ(adapter_params.size(), 1u);  // 1x1 conv, no bias: student block1 [4, 28, 28] -> teacher block1 [8, 28, 28]
  EXPECT_EQ(adapter_params[0].sizes(), (std::vector<int64_t>{8, 4, 1, 1}));
  size_t n = 0;
  for (auto& g : trainer.optimizer()->param_groups()) n += g.params().size();
  EXPECT_EQ(n, student->parameters().size() + 1) << "adapters are trained";
  std::ifstream in(t.dir.file("student_run") + "/metrics.jsonl");
  bool saw = false;
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    if (j["type"] == "step") saw = j.contains("loss_ce") && j.contains("loss_kd") && j.contains("loss_hint");
  }
  EXPECT_TRUE(saw) << "every loss term is logged separately";
}

// ---- config errors through the command -------------------------------------------------

std::string train_error(const std::string& yaml, const test::TempDir& dir) {
  write_file_atomic(dir.file("s.yaml"), yaml);
  TrainCommand cmd;
  cmd.config_path = dir.file("s.yaml");
  try {
    run_train(cmd);
  } catch (const UserError& e) {
    return e.what();
  }
  return "";
}

TEST(DistillConfig, UnknownLayerListsValidNamesAndMissingTeacherIsClear) {
  TeacherRun t;
  const std::string head = concat("experiment: {name: s, output_dir: ", t.dir.path().string(),
                                  "}\nmodel: {name: convnet, width: 4, depth: 2}\n"
                                  "data: {train_subset: 256, test_subset: 100}\ntrainer: {epochs: 1, progress: false}\n");
  std::string msg = train_error(head + "distill:\n  teacher: " + t.run_dir + "\n  hint_student: [blk1]\n  hint_teacher: [block1]\n", t.dir);
  EXPECT_NE(msg.find("s.yaml:7: distill.hint_student: 'blk1' is not a layer of the student (convnet); valid layers: "
                     "block0, block1, features"),
            std::string::npos)
      << msg;
  msg = train_error(head + "distill:\n  teacher: " + t.run_dir + "\n  hint_student: [block1]\n  hint_teacher: [x]\n", t.dir);
  EXPECT_NE(msg.find("distill.hint_teacher: 'x' is not a layer of the teacher"), std::string::npos) << msg;
  msg = train_error(head + "distill:\n  teacher: " + t.dir.file("missing") + "\n", t.dir);
  EXPECT_NE(msg.find("no such teacher run directory"), std::string::npos) << msg;
  msg = train_error(head + "distill:\n  teacher: " + t.run_dir + "\n  hint_student: [block1]\n", t.dir);
  EXPECT_NE(msg.find("distill.hint_teacher must name one teacher layer per"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(t.dir.file("s"))) << "no run directory for a config error";
}

// The whole student recipe in one run — KD (cached teacher), gradual channel pruning, QAT — killed
// mid-way and resumed gives the same weights and buffers as an uninterrupted run.
TEST(Combined, KdPruneQatResumeIsBitIdentical) {
  TeacherRun t;
  ExperimentConfig c = student_config(t, ", alpha: 0.7, temperature: 3");
  c.data.augment.random_crop = true;
  c.data.augment.views = 2;  // fixed views: the teacher's logits come from the cache
  c.trainer.epochs = 4;
  c.prune.enabled = true;
  c.prune.start_epoch = 0;
  c.prune.end_epoch = 2;
  c.prune.update_every_steps = 2;
  c.qat.enabled = true;
  c.qat.start_epoch = 2;
  c.qat.freeze_observers_epoch = 3;
  const DataBundle data = load_data(c.data);
  auto run = [&](const ExperimentConfig& cfg, const std::string& name, int64_t kill_at) {
    return test::run_experiment(cfg, data, t.dir.file(name), kill_at);
  };
  const auto straight = run(c, "straight", 0);
  run(c, "resumed", 3);  // killed after the first QAT epoch, pruning finished
  ExperimentConfig r = c;
  r.trainer.resume = true;
  const auto resumed = run(r, "resumed", 0);
  ASSERT_EQ(straight.size(), resumed.size());
  for (size_t i = 0; i < straight.size(); ++i) EXPECT_TRUE(torch::equal(straight[i], resumed[i])) << "tensor " << i;
}

}  // namespace
}  // namespace qd
