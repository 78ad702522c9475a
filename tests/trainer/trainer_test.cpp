// The trainer on real Fashion-MNIST subsets: it learns, it is deterministic, it resumes
// bit-exactly, and an interrupted checkpoint write never destroys the previous checkpoint.
#include "trainer/trainer.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ATen/autocast_mode.h>

#include <cmath>
#include <filesystem>
#include <sstream>
#include <limits>

#include "common/atomic_file.h"
#include "common/error.h"
#include "models/linear.h"
#include <fstream>
#include "common/checkpoint.h"
#include "trainer/divergence.h"
#include "trainer/precision.h"
#include "trainer/experiment.h"
#include "tests/test_hooks.h"
#include "tests/test_util.h"

namespace qd {
namespace {

namespace fs = std::filesystem;

ExperimentConfig small_config(const std::string& out_dir) {
  ExperimentConfig c = parse_experiment_config(
      "experiment: {name: t}\nmodel: {name: convnet, width: 4, depth: 2, dropout: 0.2}\n", "test.yaml");
  c.experiment.output_dir = out_dir;
  c.data.train_subset = 512;
  c.data.test_subset = 200;
  c.data.batch_size = 64;
  c.data.augment.random_crop = true;
  c.data.augment.hflip = true;
  c.trainer.epochs = 2;
  c.trainer.progress = false;
  c.trainer.threads = 2;
  c.schedule.warmup_epochs = 0.5;
  return c;
}

const DataBundle& fmnist(int64_t train_subset, int64_t test_subset) {
  static std::map<std::pair<int64_t, int64_t>, DataBundle> cache;
  auto key = std::make_pair(train_subset, test_subset);
  if (!cache.count(key)) {
    DataConfig d;
    d.train_subset = train_subset;
    d.test_subset = test_subset;
    if (!fs::exists(d.root + "/train-images-idx3-ubyte.gz"))
      throw std::runtime_error(d.root + " is missing: run scripts/setup.sh (installs dataset-fashion-mnist)");
    cache[key] = load_data(d);
  }
  return cache.at(key);
}

using test::state_of;

void expect_bit_identical(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i], b[i])) << "tensor " << i << " differs";
}

// The tensors of `saved` (state_of order) whose parameter name ends with `suffix`.
std::vector<torch::Tensor> state_of_named(torch::nn::Module& m, const std::vector<torch::Tensor>& saved,
                                          const std::string& suffix) {
  std::vector<torch::Tensor> out;
  size_t i = 0;
  for (const auto& p : m.named_parameters()) {
    const std::string& k = p.key();
    if (k.size() >= suffix.size() && k.compare(k.size() - suffix.size(), suffix.size(), suffix) == 0) out.push_back(saved[i]);
    ++i;
  }
  return out;
}

std::vector<torch::Tensor> train_fresh(const ExperimentConfig& c, const std::string& run_dir) {
  set_threads(c.trainer.threads);
  const DataBundle& data = fmnist(c.data.train_subset, c.data.test_subset);
  auto model = build_model(c, data);
  Trainer t(c, model, data, run_dir);
  t.fit();
  return state_of(*model);
}

// Trains `c` into run_dir until a kill at the start of epoch 2 (after epoch 1's checkpoint).
void train_until_killed(const ExperimentConfig& c, const std::string& run_dir) {
  const DataBundle& data = fmnist(c.data.train_subset, c.data.test_subset);
  auto model = build_model(c, data);
  Trainer t(c, model, data, run_dir);
  t.add_hook(std::make_shared<test::KillAtEpoch>(1));
  EXPECT_THROW(t.fit(), std::runtime_error);
}

TEST(Trainer, OverfitsATinySubset) {
  ExperimentConfig c = parse_experiment_config(
      "experiment: {name: t}\nmodel: {name: convnet, width: 16, depth: 2, head: flatten}\n", "test.yaml");
  c.data.train_subset = 256;
  c.data.batch_size = 32;
  c.trainer.epochs = 25;
  c.trainer.progress = false;
  c.optimizer.lr = 0.05;
  c.optimizer.weight_decay = 0.0;
  const DataBundle& data = fmnist(256, 200);
  auto model = build_model(c, data);
  Trainer t(c, model, data, "");
  t.fit();
  const EvalResult train = evaluate(*model, data.train, 256, torch::kCPU, true);
  EXPECT_GE(train.accuracy, 95.0) << "train loss " << train.loss;
}

TEST(Trainer, SameSeedSameWeights) {
  test::TempDir dir;
  ExperimentConfig c = small_config(dir.path().string());
  c.trainer.epochs = 1;
  const auto a = train_fresh(c, "");
  const auto b = train_fresh(c, "");
  expect_bit_identical(a, b);
  c.experiment.seed = 1;
  const auto other = train_fresh(c, "");
  EXPECT_FALSE(torch::equal(a[0], other[0])) << "a different seed must give different weights";
}

TEST(Trainer, ResumeIsBitIdentical) {
  test::TempDir dir;
  ExperimentConfig c = small_config(dir.path().string());
  const auto straight = train_fresh(c, dir.file("straight"));

  const DataBundle& data = fmnist(c.data.train_subset, c.data.test_subset);
  train_until_killed(c, dir.file("resumed"));
  torch::manual_seed(12345);  // disturb the global RNG: the checkpoint must restore it
  ExperimentConfig r = c;
  r.trainer.resume = true;
  auto model = build_model(r, data);
  Trainer t(r, model, data, dir.file("resumed"));
  const TrainResult res = t.fit();
  EXPECT_EQ(res.epochs_completed, 2);
  expect_bit_identical(straight, state_of(*model));

  // metrics.jsonl holds exactly one epoch record per epoch after the resume.
  std::ifstream in(dir.file("resumed") + "/metrics.jsonl");
  int epochs = 0;
  for (std::string line; std::getline(in, line);) epochs += nlohmann::json::parse(line)["type"] == "epoch";
  EXPECT_EQ(epochs, 2);
}

// QAT state (observer ranges, scales, LSQ scales, freeze flags, folded BN) lives in the model and
// the checkpoint, pruning masks in the hook state: a run killed mid-QAT and mid-pruning resumes
// to the same weights and buffers, bit for bit.
TEST(Trainer, QatAndPruningResumeIsBitIdentical) {
  test::TempDir dir;
  ExperimentConfig c = small_config(dir.path().string());
  c.trainer.epochs = 4;
  c.qat.enabled = true;
  c.qat.start_epoch = 1;
  c.qat.freeze_bn_epoch = 2;
  c.qat.freeze_observers_epoch = 3;
  c.qat.activation.observer = ObserverKind::kLsq;
  c.prune.enabled = true;  // channels, gradual over epochs 0..3, masks updated every 3 steps
  c.prune.start_epoch = 0;
  c.prune.end_epoch = 3;
  c.prune.update_every_steps = 3;
  c.prune.target_sparsity = 0.5;
  const DataBundle& data = fmnist(c.data.train_subset, c.data.test_subset);
  auto run = [&](const ExperimentConfig& cfg, const std::string& name, int64_t kill_at) {
    return test::run_experiment(cfg, data, dir.file(name), kill_at);
  };
  const auto straight = run(c, "straight", 0);
  run(c, "resumed", 2);  // killed after the first QAT epoch, before BN freezes
  torch::manual_seed(777);
  ExperimentConfig r = c;
  r.trainer.resume = true;
  expect_bit_identical(straight, run(r, "resumed", 0));
  // best.pt comes from a QAT epoch, never from the fp32 epoch before it.
  std::ifstream in(dir.file("straight") + "/metrics.jsonl");
  int qat_epochs = 0;
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j["type"] == "epoch") qat_epochs += j["qat_active"].get<double>() > 0;
  }
  EXPECT_EQ(qat_epochs, 3);
  // Both width-4 conv layers end with exactly 2 of their 4 channels.
  auto model = build_model(c, data);
  int64_t kept = 0;
  for (const auto& p : state_of_named(*model, straight, "bn.weight")) kept += p.count_nonzero().item<int64_t>();
  EXPECT_EQ(kept, 2 + 2);
  const CheckpointMeta best = load_checkpoint(dir.file("straight") + "/checkpoints/best.pt", *model, nullptr, {});
  EXPECT_GE(best.epoch, 2);
}

TEST(DivergenceGuard, NonFiniteDivergesAndSoDoesARunningAverageFarAboveItsLowest) {
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  DivergenceGuard g(20.0);
  EXPECT_NE(g.check(nan, 1.0), "");
  EXPECT_NE(g.check(1.0, inf), "");
  EXPECT_NE(g.check(-inf, 1.0), "");
  EXPECT_EQ(g.good_steps(), 0) << "diverged steps do not join the running average";
  // One noisy batch moves the average a tenth of the way; a blow-up does not pass.
  DivergenceGuard h(20.0);
  ASSERT_EQ(h.check(1.0, 1.0), "");
  ASSERT_EQ(h.check(100.0, 1.0), "");
  EXPECT_NEAR(h.running_average(), 10.9, 1e-9);
  const std::string why = h.check(1000.0, 1.0);
  EXPECT_NE(why.find("divergence_factor: 20"), std::string::npos) << why;
  EXPECT_NEAR(h.running_average(), 10.9, 1e-9) << "a diverged step does not move the average";
  // A loss that creeps from chance (2.3) to 65, as the lr-90 Fashion-MNIST run's does, is caught
  // once its average passes 20 x 2.3, not before.
  DivergenceGuard creep(20.0);
  ASSERT_EQ(creep.check(2.3, 1.0), "");
  int steps = 0;
  while (creep.check(65.0, 1.0).empty() && steps < 100) ++steps;
  EXPECT_GE(steps, 10);
  EXPECT_LE(steps, 30);
  EXPECT_LE(creep.running_average(), 20 * 2.3);
  EXPECT_DOUBLE_EQ(creep.lowest_average(), 2.3);
  // A run that fits its data to ~0 is measured against the floor, 0.05.
  DivergenceGuard tiny(20.0);
  ASSERT_EQ(tiny.check(1e-6, 1.0), "");
  EXPECT_EQ(tiny.check(5.0, 1.0), "");  // average 0.5 < 1.0
  EXPECT_NE(tiny.check(20.0, 1.0), "");  // average 2.45
  DivergenceGuard off(0.0);
  ASSERT_EQ(off.check(1.0, 1.0), "");
  EXPECT_EQ(off.check(1e30, 1.0), "");
  EXPECT_NE(off.check(nan, 1.0), "");
}

// Poisons the loss of one optimizer step with NaN (after the forward, before backward).
class PoisonLossAtStep : public TrainHook {
 public:
  PoisonLossAtStep(int64_t step, std::string checkpoint) : step_(step), checkpoint_(std::move(checkpoint)) {}
  std::string name() const override { return "poison"; }
  void on_loss(TrainState& s) override {
    if (s.global_step != step_) return;
    s.loss = s.loss * std::numeric_limits<float>::quiet_NaN();
    if (!checkpoint_.empty() && fs::exists(checkpoint_)) saved = read_file(checkpoint_);
  }
  std::string saved;  // last.pt's bytes when the step was poisoned

 private:
  int64_t step_;
  std::string checkpoint_;
};

TEST(Trainer, DivergenceStopsTheRunAndKeepsTheLastCheckpoint) {
  test::TempDir dir;
  ExperimentConfig c = small_config(dir.path().string());  // 8 steps per epoch
  const DataBundle& data = fmnist(c.data.train_subset, c.data.test_subset);
  auto model = build_model(c, data);
  const std::string run = dir.file("run");
  Trainer t(c, model, data, run);
  auto poison = std::make_shared<PoisonLossAtStep>(11, run + "/checkpoints/last.pt");  // in epoch 2
  t.add_hook(poison);
  try {
    t.fit();
    FAIL() << "a NaN loss must stop the run";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(exit_code_for(e), 1);
    EXPECT_NE(m.find("training diverged at step 12 (epoch 2): the "), std::string::npos) << m;
    EXPECT_NE(m.find("optimizer.lr"), std::string::npos) << m;
    EXPECT_NE(m.find("is as it was"), std::string::npos) << m;
  }
  ASSERT_FALSE(poison->saved.empty()) << "epoch 1 wrote last.pt";
  EXPECT_EQ(read_file(run + "/checkpoints/last.pt"), poison->saved);
  for (auto& p : model->parameters()) EXPECT_TRUE(torch::isfinite(p).all().item<bool>()) << "no NaN step was taken";
}

TEST(Trainer, SkipStepSkipsThePoisonedStepAndCountsIt) {
  test::TempDir dir;
  ExperimentConfig c = small_config(dir.path().string());
  c.trainer.on_divergence = OnDivergence::kSkipStep;
  const DataBundle& data = fmnist(c.data.train_subset, c.data.test_subset);
  auto model = build_model(c, data);
  const std::string run = dir.file("run");
  Trainer t(c, model, data, run);
  t.add_hook(std::make_shared<PoisonLossAtStep>(11, ""));
  const TrainResult r = t.fit();
  EXPECT_EQ(r.epochs_completed, 2);
  for (auto& p : model->parameters()) EXPECT_TRUE(torch::isfinite(p).all().item<bool>());
  std::ifstream in(run + "/metrics.jsonl");
  std::vector<int64_t> skipped;
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j["type"] == "epoch") skipped.push_back(j["skipped_steps"].get<int64_t>());
  }
  EXPECT_EQ(skipped, (std::vector<int64_t>{0, 1}));
}

TEST(LossScaler, OverflowSkipsAndHalvesAndGoodStepsDoubleAfterTheInterval) {
  LossScaler s(/*growth_interval=*/3, /*initial=*/1024.0);
  s.update(false);
  s.update(false);
  EXPECT_EQ(s.scale(), 1024.0);
  EXPECT_EQ(s.growth_count(), 2);
  s.update(false);
  EXPECT_EQ(s.scale(), 2048.0) << "the third good step in a row doubles";
  EXPECT_EQ(s.growth_count(), 0);
  s.update(false);
  s.update(true);
  EXPECT_EQ(s.scale(), 1024.0) << "an overflow halves";
  EXPECT_EQ(s.growth_count(), 0) << "and starts the count again";
  EXPECT_EQ(s.overflow_steps(), 1);

  // Unscaling: the gradients divided by the scale; an inf or a NaN anywhere means skip.
  torch::Tensor a = torch::zeros({2}, torch::requires_grad()), b = torch::zeros({3}, torch::requires_grad());
  a.mutable_grad() = torch::tensor({2048.0f, -4096.0f});
  b.mutable_grad() = torch::tensor({1024.0f, 0.0f, 512.0f});
  EXPECT_TRUE(s.unscale_and_update({a, b}));
  EXPECT_TRUE(torch::equal(a.grad(), torch::tensor({2.0f, -4.0f})));
  EXPECT_TRUE(torch::equal(b.grad(), torch::tensor({1.0f, 0.0f, 0.5f})));
  EXPECT_EQ(s.growth_count(), 1);
  b.mutable_grad() = torch::tensor({1.0f, std::numeric_limits<float>::infinity(), 0.0f});
  EXPECT_FALSE(s.unscale_and_update({a, b}));
  EXPECT_EQ(s.scale(), 512.0);
  b.mutable_grad() = torch::tensor({1.0f, std::numeric_limits<float>::quiet_NaN(), 0.0f});
  EXPECT_FALSE(s.unscale_and_update({a, b}));
  EXPECT_EQ(s.scale(), 256.0);

  // Its state survives a checkpoint.
  torch::serialize::OutputArchive out;
  s.save_state(out);
  std::ostringstream bytes;
  out.save_to(bytes);
  std::istringstream in_bytes(bytes.str());
  torch::serialize::InputArchive in;
  in.load_from(in_bytes);
  LossScaler t;
  t.load_state(in);
  EXPECT_EQ(t.scale(), 256.0);
  EXPECT_EQ(t.overflow_steps(), 3);
}

// Records, inside the training step's forward, whether autocast is on and what a matmul yields.
class AutocastProbe : public TrainHook {
 public:
  std::string name() const override { return "probe"; }
  void on_step_begin(TrainState&) override {
    enabled = at::autocast::is_autocast_enabled(c10::DeviceType::CPU);
    matmul = torch::matmul(torch::ones({2, 2}), torch::ones({2, 2})).scalar_type();
  }
  bool enabled = false;
  torch::ScalarType matmul = torch::kFloat32;
};

// Mixed precision on CPU: autocast is on in the forward (16-bit matmuls), off outside it; the
// weights stay float32; the student learns about as well as in float32. bf16 on a convnet (conv,
// BatchNorm), fp16 on an MLP (LibTorch's CPU convolutions have no fp16 kernels: 25 samples/s).
TEST(Trainer, MixedPrecisionAutocastsTheForwardAndLearns) {
  auto config = [](const std::string& model, int64_t train) {
    ExperimentConfig c = parse_experiment_config("experiment: {name: t}\nmodel: " + model + "\n", "test.yaml");
    c.data.train_subset = train;
    c.data.test_subset = 500;
    c.trainer.epochs = 2;
    c.trainer.progress = false;
    c.trainer.threads = 2;
    return c;
  };
  auto fit = [&](ExperimentConfig cfg, Precision p, AutocastProbe* probe) {
    cfg.trainer.precision = p;
    set_threads(cfg.trainer.threads);
    const DataBundle& data = fmnist(cfg.data.train_subset, cfg.data.test_subset);
    auto model = build_model(cfg, data);
    Trainer t(cfg, model, data, "");
    if (probe) t.add_hook(std::shared_ptr<AutocastProbe>(probe, [](AutocastProbe*) {}));
    const TrainResult r = t.fit();
    for (auto& w : model->parameters()) EXPECT_EQ(w.scalar_type(), torch::kFloat32) << "master weights stay float32";
    return r.final_accuracy;
  };
  const ExperimentConfig cnn = config("{name: convnet, width: 16, depth: 4}", 2048);
  const ExperimentConfig mlp = config("{name: mlp, width: 32, depth: 1}", 1024);
  AutocastProbe bf16_probe, fp16_probe;
  const double cnn32 = fit(cnn, Precision::kFp32, nullptr), cnn16 = fit(cnn, Precision::kBf16, &bf16_probe);
  EXPECT_TRUE(bf16_probe.enabled);
  EXPECT_EQ(bf16_probe.matmul, torch::kBFloat16);
  EXPECT_FALSE(at::autocast::is_autocast_enabled(c10::DeviceType::CPU)) << "autocast ends with the forward";
  const double mlp32 = fit(mlp, Precision::kFp32, nullptr), mlp16 = fit(mlp, Precision::kFp16, &fp16_probe);
  EXPECT_EQ(fp16_probe.matmul, torch::kHalf);
  std::printf("test accuracy after 2 epochs: convnet fp32 %.1f%%, bf16 %.1f%%; mlp fp32 %.1f%%, fp16 %.1f%%\n", cnn32,
              cnn16, mlp32, mlp16);
  EXPECT_GT(cnn32, 30.0);
  EXPECT_GT(mlp32, 50.0);
  EXPECT_GT(cnn16, cnn32 - 8.0);
  EXPECT_GT(mlp16, mlp32 - 8.0);
}

// fp16's loss scale is part of the checkpoint: a killed and resumed run ends with the scale of the
// uninterrupted one (the weights alone could not tell: scaling by powers of 2 is exact) and with
// the same weights.
TEST(Trainer, Fp16LossScaleIsCheckpointedAndResumed) {
  test::TempDir dir;
  ExperimentConfig c = small_config(dir.path().string());
  c.trainer.precision = Precision::kFp16;
  c.trainer.loss_scale_growth_interval = 3;  // the scale moves within an epoch of 8 steps
  const auto straight = train_fresh(c, dir.file("straight"));
  const DataBundle& data = fmnist(c.data.train_subset, c.data.test_subset);
  train_until_killed(c, dir.file("resumed"));
  ExperimentConfig r = c;
  r.trainer.resume = true;
  auto model = build_model(r, data);
  Trainer t(r, model, data, dir.file("resumed"));
  t.fit();
  expect_bit_identical(straight, state_of(*model));
  auto epochs = [&](const std::string& run) {
    std::ifstream in(run + "/metrics.jsonl");
    std::vector<nlohmann::json> out;
    for (std::string line; std::getline(in, line);) {
      const auto j = nlohmann::json::parse(line);
      if (j["type"] == "epoch") out.push_back(j);
    }
    return out;
  };
  const auto a = epochs(dir.file("straight")), b = epochs(dir.file("resumed"));
  ASSERT_EQ(a.size(), 2u);
  ASSERT_EQ(b.size(), 2u);
  ASSERT_TRUE(a[0].contains("loss_scale")) << a[0].dump();
  EXPECT_NE(a[0]["loss_scale"].get<double>(), 65536.0) << "the scale moved in the first epoch";
  EXPECT_EQ(a[1]["loss_scale"], b[1]["loss_scale"]) << "the resumed run went on from the checkpoint's scale";
}

TEST(Checkpoint, InterruptedWriteLeavesPreviousLoadable) {
  test::TempDir dir;
  ExperimentConfig c = small_config(dir.path().string());
  const DataBundle& data = fmnist(c.data.train_subset, c.data.test_subset);
  auto a = build_model(c, data);
  const std::string path = dir.file("last.pt");
  CheckpointMeta meta;
  meta.epoch = 1;
  save_checkpoint(path, *a, nullptr, meta, {});
  const auto a_state = state_of(*a);

  ExperimentConfig c2 = c;
  c2.experiment.seed = 99;
  auto b = build_model(c2, data);  // different weights
  meta.epoch = 2;
  // In-process failure right before the rename: the temp file goes, last.pt stays.
  EXPECT_THROW(save_checkpoint(path, *b, nullptr, meta, {}, [] { throw std::runtime_error("disk gone"); }),
               std::runtime_error);
  // A process killed right before the rename: its temp file stays behind, last.pt stays.
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    save_checkpoint(path, *b, nullptr, meta, {}, [] { ::_exit(0); });
    ::_exit(1);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_TRUE(fs::exists(path + ".tmp." + std::to_string(pid))) << "the killed writer's temp file";

  auto loaded = build_model(c2, data);
  const CheckpointMeta m = load_checkpoint(path, *loaded, nullptr, {});
  EXPECT_EQ(m.epoch, 1);
  expect_bit_identical(a_state, state_of(*loaded));
}

TEST(Checkpoint, CorruptOrMismatchedIsAUserError) {
  test::TempDir dir;
  ExperimentConfig c = small_config(dir.path().string());
  const DataBundle& data = fmnist(c.data.train_subset, c.data.test_subset);
  auto m = build_model(c, data);
  save_checkpoint(dir.file("ok.pt"), *m, nullptr, CheckpointMeta{}, {});
  std::string bytes = read_file(dir.file("ok.pt"));
  write_file_atomic(dir.file("bad.pt"), bytes.substr(0, bytes.size() / 2));
  try {
    load_checkpoint(dir.file("bad.pt"), *m, nullptr, {});
    FAIL();
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("bad.pt: cannot load checkpoint"), std::string::npos) << e.what();
  }
  ExperimentConfig wide = c;
  wide.model.width = 8;
  auto other = build_model(wide, data);
  EXPECT_THROW(load_checkpoint(dir.file("ok.pt"), *other, nullptr, {}), UserError);
}

// A module that holds no tensors (a transformer's KV-cache QuantPoint with nothing attached) may
// be missing from an older checkpoint; one that holds tensors may not.
TEST(Checkpoint, ModulesWithoutTensorsMayBeNewerThanTheFile) {
  struct Old : torch::nn::Module {
    Old() { fc = register_module("fc", torch::nn::Linear(3, 2)); }
    torch::nn::Linear fc{nullptr};
  };
  struct New : Old {
    explicit New(bool with_tensors) {
      if (with_tensors) register_module("extra", torch::nn::Linear(2, 2));
      else register_module("point", QuantPoint());
    }
  };
  test::TempDir dir;
  torch::manual_seed(1);
  Old old;
  save_checkpoint(dir.file("old.pt"), old, nullptr, CheckpointMeta{}, {});
  New empty(false);
  load_checkpoint(dir.file("old.pt"), empty, nullptr, {});
  EXPECT_TRUE(torch::equal(empty.fc->weight, old.fc->weight)) << "the weights loaded";
  New more(true);
  try {
    load_checkpoint(dir.file("old.pt"), more, nullptr, {});
    FAIL() << "a module with tensors is missing from the file";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("extra"), std::string::npos) << e.what();
  }
}


// model.init_checkpoint from a QAT run: its weights load into a model without quantizers
// (weights_only sets the "qat" twins aside); a plain load refuses, and anything else missing or
// extra is still an error.
TEST(Checkpoint, WeightsOnlySetsAQatRunsQuantizersAside) {
  struct Twin : torch::nn::Module {
    Twin() { scale = register_buffer("scale", torch::ones({2})); }
    torch::Tensor scale;
  };
  struct Plain : torch::nn::Module {
    Plain() { fc = register_module("fc", torch::nn::Linear(3, 2)); }
    torch::nn::Linear fc{nullptr};
  };
  struct Quantized : Plain {
    explicit Quantized(const char* twin) { fc->register_module(twin, std::make_shared<Twin>()); }
  };
  test::TempDir dir;
  torch::manual_seed(2);
  Quantized qat("qat");
  save_checkpoint(dir.file("qat.pt"), qat, nullptr, CheckpointMeta{}, {});
  Plain plain;
  EXPECT_THROW(load_checkpoint(dir.file("qat.pt"), plain, nullptr, {}), UserError);
  load_checkpoint(dir.file("qat.pt"), plain, nullptr, {}, /*weights_only=*/true);
  EXPECT_TRUE(torch::equal(plain.fc->weight, qat.fc->weight)) << "the weights loaded";
  Quantized other("extra");
  save_checkpoint(dir.file("other.pt"), other, nullptr, CheckpointMeta{}, {});
  EXPECT_THROW(load_checkpoint(dir.file("other.pt"), plain, nullptr, {}, /*weights_only=*/true), UserError)
      << "only quantizer twins are set aside";
}

}  // namespace
}  // namespace qd
