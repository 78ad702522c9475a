// Export: the integer model reproduces the fake-quant simulation (every captured layer within one
// LSB, argmax), the .qdm round trip changes nothing, and `qdistill export` + `qdistill-run` (+ ONNX
// Runtime when installed) work end to end on a real trained run.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "common/atomic_file.h"
#include "export/exporter.h"
#include "models/registry.h"
#include "qat/qat_hook.h"
#include "runtime/interpreter.h"
#include "runtime/qdm.h"
#include "tests/test_util.h"
#include "trainer/experiment.h"

namespace qd {
namespace {

namespace fs = std::filesystem;

constexpr const char* kFmnist = "/usr/share/datasets/fashion-mnist";

ImageDataset test_images() {
  static ImageDataset ds = load_mnist_split(kFmnist, false);
  return ds;
}

// A QAT-prepared model with perturbed weights and BN statistics, its observers calibrated on real
// images (as QAT's first steps do), in eval mode.
std::shared_ptr<Model> calibrated(const std::string& model_yaml, const InputSpec& in, bool symmetric_act = false) {
  ExperimentConfig c = parse_experiment_config("experiment: {name: t}\nmodel: " + model_yaml + "\n", "t.yaml");
  torch::manual_seed(3);
  std::shared_ptr<Model> m = make_model(c.model, in);
  QatConfig q;
  q.enabled = true;
  q.activation.symmetric = symmetric_act;
  q.activation.per_channel = false;
  q.activation.observer = ObserverKind::kMinMax;
  m->prepare_qat(q);
  torch::NoGradGuard g;
  for (auto& p : m->named_parameters())
    if (p.key().find("bn.weight") != std::string::npos) p.value().uniform_(0.5, 1.5);  // no dead residual branches
    else p.value().add_(torch::randn_like(p.value()) * 0.05);
  for (auto& b : m->named_buffers()) {
    if (b.key().find("running_var") != std::string::npos) b.value().uniform_(0.5, 1.5);
    if (b.key().find("running_mean") != std::string::npos) b.value().uniform_(-0.2, 0.2);
  }
  auto fqs = fake_quantizers(*m);
  for (auto& f : fqs) f->set_enabled(true), f->set_observing(true);
  m->train();
  const ImageDataset ds = test_images();
  for (int b = 0; b < 4; ++b) {
    m->forward(ds.images.narrow(0, 5000 + 64 * b, 64).to(torch::kFloat32).div(255.0f));
    QatHook::sync_observers(fqs, nullptr, 1);
  }
  m->eval();
  return m;
}

InputSpec fmnist_spec() {
  InputSpec in;
  in.mean = {0.2860};
  in.std = {0.3530};
  return in;
}

void check_matches_simulation(const std::string& model_yaml, bool symmetric_act = false) {
  SCOPED_TRACE(model_yaml + (symmetric_act ? " (symmetric activations)" : ""));
  const InputSpec in = fmnist_spec();
  std::shared_ptr<Model> m = calibrated(model_yaml, in, symmetric_act);
  const rt::Model im = build_int_model(*m, in);
  const ImageDataset ds = test_images();
  const int64_t n = 300;
  std::vector<float> sim;
  const Agreement a = compare_with_simulation(*m, im, ds.images.narrow(0, 0, n), ds.labels.narrow(0, 0, n), false, &sim);
  EXPECT_EQ(a.samples, n);
  ASSERT_FALSE(a.layers.empty());
  for (const LayerAgreement& la : a.layers) {
    EXPECT_GT(la.local.elements, 0) << la.name;
    EXPECT_EQ(la.local.elements, la.end_to_end.elements) << la.name;
    // Given the simulation's input, a layer differs only where the simulation's float error
    // decides a rounding (a value within ~1e-6 of a rounding boundary): at most one step, rarely.
    // A residual block is captured only at its sum: a step inside it (conv1) can add one more.
    const bool block = la.name.find("_block") != std::string::npos;
    EXPECT_LE(la.local.max_diff, block ? 2 : 1) << la.name;
    EXPECT_GE(static_cast<double>(la.local.equal) / la.local.elements, 0.999) << la.name;
    EXPECT_GE(static_cast<double>(la.end_to_end.equal) / la.end_to_end.elements, 0.99) << la.name;
  }
  EXPECT_GE(a.argmax_agreement(), 0.99);
  EXPECT_EQ(static_cast<int64_t>(sim.size()), n * im.num_classes());

  // The .qdm round trip: the loaded model computes bit-identical logits.
  const std::vector<uint8_t> bytes = rt::serialize(im);
  rt::Interpreter direct(im), loaded(rt::parse_qdm(bytes.data(), bytes.size()));
  const torch::Tensor x = ds.images.narrow(0, 0, 8).to(torch::kFloat32).div(255.0f).contiguous();
  std::vector<float> l1(static_cast<size_t>(im.num_classes())), l2(l1.size());
  for (int i = 0; i < 8; ++i) {
    direct.run(x.data_ptr<float>() + i * 784, l1.data());
    loaded.run(x.data_ptr<float>() + i * 784, l2.data());
    EXPECT_EQ(l1, l2);
  }
}

TEST(ExportIntModel, ConvNetGapMatchesSimulation) { check_matches_simulation("{name: convnet, width: 8, depth: 4, head: gap}"); }
TEST(ExportIntModel, ConvNetFlattenHeadMatchesSimulation) {
  check_matches_simulation("{name: convnet, width: 8, depth: 3, blocks_per_stage: 1, head: flatten}");
}
TEST(ExportIntModel, ResNetWithProjectionsMatchesSimulation) { check_matches_simulation("{name: resnet, width: 8, depth: 8}"); }
TEST(ExportIntModel, SymmetricActivationsMatchSimulation) {
  check_matches_simulation("{name: convnet, width: 8, depth: 4, head: gap}", true);
}

TEST(ExportIntModel, RefusesWhatTheRuntimeCannotRun) {
  const InputSpec in = fmnist_spec();
  ExperimentConfig c = parse_experiment_config("experiment: {name: t}\nmodel: {name: convnet, width: 8, depth: 2}\n", "t.yaml");
  std::shared_ptr<Model> fresh = make_model(c.model, in);
  QatConfig q;
  q.enabled = true;
  fresh->prepare_qat(q);
  fresh->eval();
  try {  // quantizers that never observed anything have no scales
    build_int_model(*fresh, in);
    FAIL() << "expected a UserError";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("never ran"), std::string::npos) << e.what();
  }
  std::shared_ptr<Model> mlp = make_model(parse_experiment_config("experiment: {name: t}\nmodel: {name: mlp}\n", "t.yaml").model, in);
  EXPECT_THROW(build_int_model(*mlp, in), UserError);
}

// ---- end to end: train -> export -> qdistill-run (-> ONNX Runtime) ---------------------------

test::ProcResult tool(const std::string& exe, const std::string& args) {
  return test::run_command(std::string(QD_BINARY_DIR) + "/" + exe + " " + args + " 2>&1");
}

TEST(ExportCli, TrainedPrunedQatRunExportsVerifiesAndRuns) {
  test::TempDir dir;
  const std::string cfg = dir.file("exp.yaml");
  // 3 epochs on 4,000 images: channel pruning to 50% in epoch 0 -> 1, QAT from epoch 1.
  write_file_atomic(cfg, "experiment: {name: e2e, output_dir: " + dir.path().string() + "/runs, seed: 0, role: student}\n"
                         "data: {dataset: fashion_mnist, root: " + std::string(kFmnist) + ", batch_size: 64, "
                         "train_subset: 4000, test_subset: 1000}\n"
                         "model: {name: convnet, width: 8, depth: 4, blocks_per_stage: 2, head: gap}\n"
                         "optimizer: {name: sgd, lr: 0.05, momentum: 0.9}\n"
                         "trainer: {epochs: 3, device: cpu, threads: 2}\n"
                         "prune: {enabled: true, method: channel, criterion: bn_gamma, target_sparsity: 0.5, "
                         "start_epoch: 0, end_epoch: 1, exclude: [block0]}\n"
                         "qat: {enabled: true, start_epoch: 1}\n");
  test::ProcResult r = tool("qdistill", "train " + cfg);
  ASSERT_EQ(r.code, 0) << r.output;
  const fs::path run = dir.path() / "runs" / "e2e";
  ASSERT_TRUE(fs::exists(run / "pruned" / "checkpoints" / "best.pt")) << r.output;

  const std::string sim = dir.file("sim.f32");
  r = tool("qdistill", "export " + run.string() + " --simulation-logits " + sim);
  ASSERT_EQ(r.code, 0) << r.output;
  for (const char* f : {"student.qdm", "student.int8.onnx", "student.fp32.onnx", "report.json"})
    EXPECT_TRUE(fs::is_regular_file(run / "export" / f)) << f << "\n" << r.output;
  const nlohmann::json report = nlohmann::json::parse(read_file((run / "export" / "report.json").string()));
  EXPECT_TRUE(report["pruned"].get<bool>());
  const nlohmann::json& v = report["verify"];
  EXPECT_EQ(v["samples"].get<int64_t>(), 1000);
  EXPECT_GE(v["argmax_agreement"].get<double>(), 0.999) << v.dump();
  for (const auto& l : v["layers"]) EXPECT_LE(l["alone"]["max_lsb_diff"].get<int>(), 1) << l.dump();
  EXPECT_GT(v["runtime_accuracy"].get<double>(), 50.0);  // it learned something in 3 short epochs
  const nlohmann::json summary = nlohmann::json::parse(read_file((run / "summary.json").string()));
  EXPECT_DOUBLE_EQ(summary["int8_test_accuracy"].get<double>(), v["runtime_accuracy"].get<double>());

  // qdistill-run on the same images gives the same accuracy and the logits of the verification.
  const std::string logits = dir.file("rt.f32");
  r = tool("qdistill-run", (run / "export" / "student.qdm").string() + " --idx " + kFmnist +
                               "/t10k-images-idx3-ubyte.gz --labels " + kFmnist +
                               "/t10k-labels-idx1-ubyte.gz --limit 1000 --json --logits " + logits);
  ASSERT_EQ(r.code, 0) << r.output;
  const nlohmann::json run_json = nlohmann::json::parse(r.output);
  EXPECT_NEAR(run_json["accuracy"].get<double>(), v["runtime_accuracy"].get<double>(), 1e-3);
  EXPECT_EQ(fs::file_size(logits), 1000u * 10u * sizeof(float));

  // ONNX Runtime on the int8 QDQ file against the simulation's logits.
  const std::string py = test::setup_python(QD_SOURCE_DIR);
  if (std::system((py + " -c 'import onnxruntime' >/dev/null 2>&1").c_str()) != 0) {
    GTEST_SKIP() << "onnxruntime not installed for " << py << ": run scripts/setup.sh (ONNX Runtime check skipped)";
  }
  r = test::run_command(py + " " + std::string(QD_SOURCE_DIR) + "/tests/export/ort_run.py " +
                        (run / "export" / "student.int8.onnx").string() + " --images " + kFmnist +
                        "/t10k-images-idx3-ubyte.gz --limit 1000 --reference " + sim + " --min-agreement 0.995 2>&1");
  EXPECT_EQ(r.code, 0) << r.output;
}

TEST(ExportCli, BadInputGetsExitCode2AndOneMessage) {
  test::TempDir dir;
  test::ProcResult r = tool("qdistill", "export " + dir.path().string());
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("config.resolved.yaml"), std::string::npos) << r.output;

  // A corrupt .qdm: one clear line from qdistill-run, exit 2.
  const std::string bad = dir.file("bad.qdm");
  write_file_atomic(bad, "not a model at all");
  r = tool("qdistill-run", bad + " --idx " + std::string(kFmnist) + "/t10k-images-idx3-ubyte.gz");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("bad.qdm"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace qd
