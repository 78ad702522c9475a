// Export: the integer model reproduces the fake-quant simulation (every captured layer within one
// LSB, argmax), the .qdm round trip changes nothing, and `qdistill export` + `qdistill-run` (+ ONNX
// Runtime when installed) work end to end on a real trained run.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/atomic_file.h"
#include "export/deploy_targets.h"
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
  attach_qat(*m, q);
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
  attach_qat(*fresh, q);
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

// ort_run.py's "argmax agreement with ...: 0.9990 (999/1000), ..." line, and its fraction.
std::string agreement_line(const std::string& out) {
  const size_t at = out.find("argmax agreement");
  return at == std::string::npos ? "" : out.substr(at, out.find('\n', at) - at);
}
double agreement_of(const std::string& out) {
  const std::string line = agreement_line(out);
  const size_t colon = line.find(": ");
  return colon == std::string::npos ? -1.0 : std::stod(line.substr(colon + 2));
}

test::ProcResult tool(const std::string& exe, const std::string& args) {
  return test::run_command(std::string(QD_BINARY_DIR) + "/" + exe + " " + args + " 2>&1");
}

// ONNX Runtime (tests/export/ort_run.py) on `cpu` ("native" or an emulated class, test::ort_python)
// over the first 1,000 test images of `onnx`: its argmax agreement with the simulation's logits
// `sim`. Empty when it did not run: a failure (recorded) or a missing tool (appended to `skipped`,
// and printed; the test then ends as skipped).
std::optional<double> ort_agreement(const std::string& cpu, const fs::path& onnx, const std::string& sim,
                                    std::vector<std::string>& skipped, const std::string& extra = "") {
  const test::OrtPython py = test::ort_python(QD_SOURCE_DIR, cpu);
  if (!py.error.empty()) ADD_FAILURE() << py.error;
  if (!py.skip.empty()) {
    std::printf("[  SKIPPED ] ONNX Runtime on %s: %s\n", cpu.c_str(), py.skip.c_str());
    skipped.push_back(cpu + ": " + py.skip);
  }
  if (py.command.empty()) return std::nullopt;
  const test::ProcResult r = test::run_command(
      py.command + " " + test::quoted(std::string(QD_SOURCE_DIR) + "/tests/export/ort_run.py") + " " +
      test::quoted(onnx.string()) + " --images " + kFmnist + "/t10k-images-idx3-ubyte.gz --limit 1000 --reference " +
      test::quoted(sim) + " --min-agreement 0 " + extra + " 2>&1");
  EXPECT_EQ(r.code, 0) << cpu << ": " << r.output;
  const double a = agreement_of(r.output);
  EXPECT_GE(a, 0.0) << cpu << ": no argmax agreement in ort_run.py's output:\n" << r.output;
  std::printf("ONNX Runtime on %s%s: %s\n", cpu.c_str(), extra.empty() ? "" : (" (" + extra + ")").c_str(),
              agreement_line(r.output).c_str());
  if (r.code != 0 || a < 0.0) return std::nullopt;
  return a;
}

// Ends the test as skipped when some ONNX Runtime CPU could not run (after every check that could).
#define QD_SKIP_IF_ANY(skipped)                                                     \
  do {                                                                              \
    if (!(skipped).empty()) {                                                       \
      std::string why;                                                              \
      for (const std::string& s : (skipped)) why += (why.empty() ? "" : "; ") + s;  \
      GTEST_SKIP() << why;                                                          \
    }                                                                               \
  } while (0)

// Trains `name` under `dir` on the first `train_subset` Fashion-MNIST training images (and 1,000
// test images) with the config's remaining `sections`; returns the run directory, or an empty path
// after a failure that the test has recorded.
fs::path train_run(const test::TempDir& dir, const std::string& name, int train_subset, const std::string& sections) {
  const std::string cfg = dir.file(name + ".yaml");
  write_file_atomic(cfg, "experiment: {name: " + name + ", output_dir: " + dir.path().string() +
                             "/runs, seed: 0, role: student}\n"
                             "data: {dataset: fashion_mnist, root: " + std::string(kFmnist) +
                             ", batch_size: 64, train_subset: " + std::to_string(train_subset) + ", test_subset: 1000}\n" +
                             sections);
  const test::ProcResult r = tool("qdistill", "train " + cfg);
  EXPECT_EQ(r.code, 0) << r.output;
  return r.code == 0 ? dir.path() / "runs" / name : fs::path();
}

TEST(ExportCli, TrainedPrunedQatRunExportsVerifiesAndRuns) {
  test::TempDir dir;
  // 3 epochs on 4,000 images: channel pruning to 50% in epoch 0 -> 1, QAT from epoch 1.
  const fs::path run = train_run(dir, "e2e", 4000,
                                 "model: {name: convnet, width: 8, depth: 4, blocks_per_stage: 2, head: gap}\n"
                                 "optimizer: {name: sgd, lr: 0.05, momentum: 0.9}\n"
                                 "trainer: {epochs: 3, device: cpu, threads: 2}\n"
                                 "prune: {enabled: true, method: channel, criterion: bn_gamma, target_sparsity: 0.5, "
                                 "start_epoch: 0, end_epoch: 1, exclude: [block0]}\n"
                                 "qat: {enabled: true, start_epoch: 1}\n");
  ASSERT_FALSE(run.empty());
  ASSERT_TRUE(fs::exists(run / "pruned" / "checkpoints" / "best.pt"));

  const std::string sim = dir.file("sim.f32");
  test::ProcResult r = tool("qdistill", "export " + run.string() + " --simulation-logits " + sim);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("deployment target portable"), std::string::npos) << r.output;
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

  // The default target is portable: the proof covers every CPU class (TensorRT aside: this run's
  // activations have zero points), and the file says so.
  const nlohmann::json& d = report["deployment"];
  EXPECT_EQ(d["target"], "portable");
  EXPECT_EQ(d["weight_range"], nlohmann::json::array({-64, 64}));
  std::set<std::string> exact;
  for (const auto& id : d["exact_on"]) exact.insert(id.get<std::string>());
  EXPECT_EQ(exact, (std::set<std::string>{"qdistill_run", "ort_x86_vnni", "ort_x86_avx512", "ort_x86_avx2",
                                          "ort_arm64_dot", "ort_arm64_neon"}))
      << d.dump(2);
  for (const auto& p : d["platforms"]) {
    if (p["id"] == "ort_x86_avx2") {
      EXPECT_LE(p["worst_pair_sum"].get<int64_t>(), 32640) << p.dump();
    }
  }

  // ONNX Runtime on the int8 QDQ file against the simulation's logits, on this CPU and on emulated
  // ones of the other classes (QEMU): the same answers on all.
  std::vector<std::string> skipped;
  for (const char* cpu : {"native", "x86_avx2", "arm64_neon", "arm64_dot", "arm64_i8mm"}) {
    const std::optional<double> a = ort_agreement(cpu, run / "export" / "student.int8.onnx", sim, skipped);
    if (a) {
      EXPECT_GE(*a, 0.995) << cpu;
    }
  }
  QD_SKIP_IF_ANY(skipped);
}

// qat.target: x86_vnni trains on the full 8-bit grid. Export proves it exact where products
// accumulate in int32, refutes it for ONNX Runtime on x86 without VNNI, and emulates what such a
// CPU computes; ONNX Runtime itself, on an emulated AVX2-only CPU, agrees with that emulation
// (and with the simulation once its session option session.x64quantprecision=1 picks u8 x u8
// kernels, as export's message says).
TEST(ExportCli, FullGridTargetReportsWhereItClipsAndTheEmulationMatchesOnnxRuntime) {
  test::TempDir dir;
  const fs::path run = train_run(dir, "vnni", 3000,
                                 "model: {name: convnet, width: 8, depth: 4, head: gap}\n"
                                 "optimizer: {name: sgd, lr: 0.05, momentum: 0.9}\n"
                                 "trainer: {epochs: 2, device: cpu, threads: 2}\n"
                                 "qat: {enabled: true, start_epoch: 1, target: x86_vnni}\n");
  ASSERT_FALSE(run.empty());
  const std::string sim = dir.file("sim.f32");
  test::ProcResult r = tool("qdistill", "export " + run.string() + " --format onnx --simulation-logits " + sim);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("NOT exact on ort_x86_avx2"), std::string::npos) << r.output;
  const nlohmann::json d = nlohmann::json::parse(read_file((run / "export" / "report.json").string()))["deployment"];
  EXPECT_EQ(d["target"], "x86_vnni");
  EXPECT_EQ(d["weight_range"], nlohmann::json::array({-127, 127}));
  std::set<std::string> exact;
  for (const auto& id : d["exact_on"]) exact.insert(id.get<std::string>());
  EXPECT_EQ(exact, (std::set<std::string>{"qdistill_run", "ort_x86_vnni", "ort_arm64_dot", "ort_arm64_neon"})) << d.dump(2);
  double emulated = -1.0;
  for (const auto& p : d["platforms"]) {
    if (p["id"] != "ort_x86_avx2") continue;
    EXPECT_FALSE(p["exact"].get<bool>());
    EXPECT_GT(p["worst_pair_sum"].get<int64_t>(), 32767);
    ASSERT_TRUE(p.contains("emulated")) << p.dump(2);
    emulated = p["emulated"]["argmax_agreement"].get<double>();
    EXPECT_GT(p["emulated"]["clipped_pair_sums"].get<int64_t>(), 0);
  }
  std::printf("full grid: emulated ONNX Runtime on x86 without VNNI agrees with the simulation on %.4f\n", emulated);

  const fs::path onnx = run / "export" / "student.int8.onnx";
  // This CPU: the exact answers, or the emulated clipped ones where its kernels clip.
  const DeployPlatform* here_platform = find_platform(this_cpu_platform());
  const bool clips = here_platform && here_platform->dot == DotProduct::kPairSaturate16;
  std::vector<std::string> skipped;
  if (const std::optional<double> here = ort_agreement("native", onnx, sim, skipped)) {
    if (clips) {
      EXPECT_NEAR(*here, emulated, 0.005);
    } else {
      EXPECT_GE(*here, 0.995);
    }
  }
  if (const std::optional<double> avx2 = ort_agreement("x86_avx2", onnx, sim, skipped)) {
    EXPECT_NEAR(*avx2, emulated, 0.005);
  }
  const std::optional<double> u8u8 =
      ort_agreement("x86_avx2", onnx, sim, skipped, "--session-config session.x64quantprecision=1");
  if (u8u8) {
    EXPECT_GE(*u8u8, 0.995) << "u8 x u8 kernels should give the simulation's answers";
  }
  // ARM64 accumulates in int32 (or in int16 lanes that symmetric weights cannot overflow): exact.
  for (const char* cpu : {"arm64_neon", "arm64_dot", "arm64_i8mm"}) {
    const std::optional<double> a = ort_agreement(cpu, onnx, sim, skipped);
    if (a) {
      EXPECT_GE(*a, 0.995) << cpu;
    }
  }
  QD_SKIP_IF_ANY(skipped);
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
