#include "trainer/export_command.h"

#include <chrono>
#include <cstdio>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "common/atomic_file.h"
#include "common/checkpoint.h"
#include "common/error.h"
#include "common/log.h"
#include "export/exporter.h"
#include "export/onnx_writer.h"
#include "qat/qat_hook.h"
#include "runtime/interpreter.h"
#include "runtime/qdm.h"
#include "trainer/experiment.h"

namespace qd {

namespace fs = std::filesystem;

namespace {

int64_t file_bytes(const fs::path& p) { return fs::is_regular_file(p) ? static_cast<int64_t>(fs::file_size(p)) : 0; }

// Median microseconds of one batch-1 inference through the integer runtime.
double runtime_latency_us(const rt::Model& m, const torch::Tensor& images) {
  rt::Interpreter interp(m);
  const torch::Tensor x = images.narrow(0, 0, std::min<int64_t>(64, images.size(0))).to(torch::kFloat32).div(255.0f);
  const int64_t per = x[0].numel();
  std::vector<float> logits(static_cast<size_t>(m.num_classes()));
  std::vector<double> us;
  for (int rep = 0; rep < 1200; ++rep) {
    const float* p = x.data_ptr<float>() + (rep % x.size(0)) * per;
    const auto t0 = std::chrono::steady_clock::now();
    interp.run(p, logits.data());
    const auto t1 = std::chrono::steady_clock::now();
    if (rep >= 200) us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  }
  std::nth_element(us.begin(), us.begin() + static_cast<long>(us.size() / 2), us.end());
  return us[us.size() / 2];
}

}  // namespace

int run_export(const ExportCommand& cmd) {
  const fs::path run = cmd.run_dir;
  QD_CHECK(fs::is_regular_file(run / "config.resolved.yaml"), UserError, (run / "config.resolved.yaml").string(),
           ": not found; expected a run directory made by `qdistill train`");
  QD_CHECK(cmd.format == "onnx" || cmd.format == "qdm" || cmd.format == "all", UserError, "--format ", cmd.format,
           ": expected onnx, qdm or all");
  // A channel-pruned run keeps its physically smaller model (best checkpoint) in pruned/.
  const bool pruned = fs::is_regular_file(run / "pruned" / "config.resolved.yaml");
  const fs::path src = pruned ? run / "pruned" : run;
  QD_CHECK(!pruned || cmd.checkpoint == "best", UserError, "--checkpoint ", cmd.checkpoint, ": ", run.string(),
           " is channel-pruned and its pruned model exists for the best checkpoint only; use --checkpoint best");
  ExperimentConfig cfg = load_run_config((src / "config.resolved.yaml").string());
  QD_CHECK(cfg.qat.enabled, UserError, "export: ", run.string(), " was trained without quantization-aware training "
           "(qat.enabled is false): there are no trained int8 scales to export. Train with a qat section, e.g. "
           "configs/fmnist_student_kd_qat.yaml");
  set_threads(cfg.trainer.threads);
  // Verify on the real test split even if training evaluated on a validation split.
  cfg.data.validation_size = 0;
  DataBundle data = load_data(cfg.data);
  std::shared_ptr<Model> model = build_model(cfg, data);
  const fs::path ckpt = src / "checkpoints" / (cmd.checkpoint + ".pt");
  const CheckpointMeta meta = load_checkpoint(ckpt.string(), *model, nullptr, {});
  QD_CHECK(load_qat_flags(*model), UserError, "export: ", ckpt.string(), " was saved before QAT started (its "
           "quantizers never ran); export a checkpoint from a QAT epoch");
  model->to(torch::kCPU);
  model->eval();

  const rt::Model int_model = build_int_model(*model, input_spec(data));
  const fs::path out = run / "export";
  fs::create_directories(out);
  nlohmann::json files = nlohmann::json::object();
  if (cmd.format != "onnx") {
    rt::save_qdm(int_model, (out / "student.qdm").string());
    files["student.qdm"] = file_bytes(out / "student.qdm");
  }
  if (cmd.format != "qdm") {
    write_onnx(int_model, OnnxPrecision::kInt8Qdq, (out / "student.int8.onnx").string());
    write_onnx(int_model, OnnxPrecision::kFloat32, (out / "student.fp32.onnx").string());
    files["student.int8.onnx"] = file_bytes(out / "student.int8.onnx");
    files["student.fp32.onnx"] = file_bytes(out / "student.fp32.onnx");
  }
  bool asymmetric = false;
  for (size_t t = 0; t + 1 < int_model.tensors.size(); ++t) asymmetric = asymmetric || int_model.tensors[t].zero_point != 0;
  int64_t weights = 0;
  for (const rt::Layer& l : int_model.layers) weights += static_cast<int64_t>(l.weight.size());
  std::printf("exported %s (epoch %lld%s): %zu layers, %lld int8 weights\n", ckpt.string().c_str(),
              static_cast<long long>(meta.epoch), pruned ? ", channel-pruned" : "", int_model.layers.size(),
              static_cast<long long>(weights));
  for (const auto& [name, bytes] : files.items())
    std::printf("  %-40s %8lld bytes\n", (out / name).string().c_str(), static_cast<long long>(bytes.get<int64_t>()));

  if (asymmetric && cmd.format != "qdm")
    std::printf("note: activations have zero points (qat.activation.symmetric: false). ONNX Runtime runs them; "
                "TensorRT accepts only zero-point-0 int8, so for TensorRT train with qat.activation.symmetric=true.\n");
  nlohmann::json report = {{"run_dir", run.string()}, {"source", src.string()}, {"checkpoint", ckpt.string()},
                           {"epoch", meta.epoch}, {"pruned", pruned}, {"files", files}, {"layers", int_model.layers.size()},
                           {"int8_weights", weights}};
  if (cmd.verify) {
    std::vector<float> sim_logits;
    const Agreement a = compare_with_simulation(*model, int_model, data.test.images, data.test.labels, stderr_is_tty(),
                                                cmd.simulation_logits.empty() ? nullptr : &sim_logits);
    if (!cmd.simulation_logits.empty())
      write_file_atomic(cmd.simulation_logits, std::string(reinterpret_cast<const char*>(sim_logits.data()),
                                                           sim_logits.size() * sizeof(float)));
    const double n = static_cast<double>(std::max<int64_t>(1, a.samples));
    const double rt_acc = 100.0 * a.runtime_correct / n, sim_acc = 100.0 * a.simulation_correct / n;
    const double latency = runtime_latency_us(int_model, data.test.images);
    std::printf("verified on %lld %s images: integer runtime %.2f%%, fake-quant simulation %.2f%%, argmax agreement "
                "%.2f%%, max |logit difference| %.4g; batch-1 latency %.1f us\n",
                static_cast<long long>(a.samples), data.test.name.c_str(), rt_acc, sim_acc,
                100.0 * a.argmax_agreement(), a.max_logit_diff, latency);
    nlohmann::json layers = nlohmann::json::array();
    std::printf("  %-24s %12s  %-36s  %s\n", "layer (int8 output)", "values", "end to end: identical / max",
                "alone (simulation's input): identical / max");
    auto pct = [](const Diff& d) { return 100.0 * static_cast<double>(d.equal) / static_cast<double>(std::max<int64_t>(1, d.elements)); };
    auto js = [](const Diff& d) {
      return nlohmann::json{{"elements", d.elements}, {"equal", d.equal}, {"off_by_one", d.off_by_one}, {"max_lsb_diff", d.max_diff}};
    };
    for (const LayerAgreement& la : a.layers) {
      std::printf("  %-24s %12lld  %9.4f%% / %d LSB %20s  %9.4f%% / %d LSB\n", la.name.c_str(),
                  static_cast<long long>(la.end_to_end.elements), pct(la.end_to_end), la.end_to_end.max_diff, "",
                  pct(la.local), la.local.max_diff);
      layers.push_back({{"name", la.name}, {"end_to_end", js(la.end_to_end)}, {"alone", js(la.local)}});
    }
    report["verify"] = {{"split", data.test.name},         {"samples", a.samples},
                        {"runtime_accuracy", rt_acc},       {"simulation_accuracy", sim_acc},
                        {"argmax_agreement", a.argmax_agreement()}, {"max_logit_diff", a.max_logit_diff},
                        {"runtime_latency_us", latency},     {"layers", layers}};
    // summary.json (a finished run's record) gets the runtime's accuracy.
    const fs::path summary_path = run / "summary.json";
    if (fs::is_regular_file(summary_path)) {
      nlohmann::json summary = nlohmann::json::parse(read_file(summary_path.string()), nullptr, false);
      if (!summary.is_discarded()) {
        summary["int8_test_accuracy"] = rt_acc;
        summary["export"] = {{"files", files}, {"argmax_agreement", a.argmax_agreement()},
                             {"runtime_latency_us", latency}};
        write_file_atomic(summary_path.string(), summary.dump(2) + "\n");
      }
    }
  }
  write_file_atomic((out / "report.json").string(), report.dump(2) + "\n");
  return 0;
}

}  // namespace qd
