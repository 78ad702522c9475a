#include "trainer/export_command.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "common/atomic_file.h"
#include "common/checkpoint.h"
#include "common/error.h"
#include "common/log.h"
#include "data/text_corpus.h"
#include "export/deploy_targets.h"
#include "export/exporter.h"
#include "export/gguf_export.h"
#include "export/onnx_text.h"
#include "export/onnx_writer.h"
#include "export/text_export.h"
#include "models/text_model.h"
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

// Which platforms compute the exported integers exactly (proved from them, export/deploy_targets.h),
// printed and as report.json's "deployment".
struct Deployment {
  std::vector<PlatformVerdict> verdicts;
  nlohmann::json json;
};

Deployment check_deployment(const rt::Model& m, const QatConfig& qat) {
  Deployment d;
  const QuantSpec w = qat.weight_spec();
  nlohmann::json platforms = nlohmann::json::array(), exact = nlohmann::json::array();
  for (const DeployPlatform& p : deploy_platforms()) {
    const PlatformVerdict v = check_platform(m, p);
    nlohmann::json j = {{"id", p.id}, {"name", p.name}, {"cpus", p.cpus}, {"kernel", p.kernel}, {"exact", v.exact}};
    if (!v.reason.empty()) j["reason"] = v.reason;
    if (p.dot != DotProduct::kExact)
      j.update({{"worst_pair_sum", v.worst_pair}, {"pair_limit", 32767}, {"worst_layer", v.worst_layer}});
    platforms.push_back(j);
    if (v.exact) exact.push_back(p.id);
    d.verdicts.push_back(v);
  }
  d.json = {{"target", target_name(qat.target)},
            {"weight_range", {w.quant_min(), w.quant_max()}},
            {"exact_on", exact},
            {"this_machine", this_cpu_platform()},
            {"platforms", platforms}};
  return d;
}

void print_deployment(const Deployment& d) {
  const nlohmann::json& j = d.json;
  std::printf("deployment target %s (weights in [%lld, %lld]); exact, as proved from the integers, on:\n",
              j["target"].get<std::string>().c_str(), static_cast<long long>(j["weight_range"][0].get<int64_t>()),
              static_cast<long long>(j["weight_range"][1].get<int64_t>()));
  const std::string here = j["this_machine"].get<std::string>();
  for (const PlatformVerdict& v : d.verdicts)
    if (v.exact) std::printf("  %-16s %s%s\n", v.platform->id, v.platform->name, here == v.platform->id ? " (this machine)" : "");
  for (const PlatformVerdict& v : d.verdicts)
    if (!v.exact)
      std::printf("NOT exact on %s (%s%s): %s\n", v.platform->id, v.platform->name,
                  here == v.platform->id ? ", this machine" : "", v.reason.c_str());
}

// The answers of the kernels that can clip (ONNX Runtime on x86 without VNNI), emulated on the
// verification images next to the simulation's: what a user of such a CPU would get.
nlohmann::json emulate_clipping_kernels(const rt::Model& m, const torch::Tensor& images, const torch::Tensor& labels,
                                        const std::vector<float>& sim_logits) {
  KernelEmulator e(m, DotProduct::kPairSaturate16);
  const int64_t n = images.size(0), classes = m.num_classes();
  const torch::Tensor x = images.to(torch::kFloat32).div(255.0f).contiguous();
  const int64_t per = x[0].numel();
  std::vector<float> logits(static_cast<size_t>(classes));
  int64_t agree = 0, correct = 0;
  for (int64_t i = 0; i < n; ++i) {
    e.run(x.data_ptr<float>() + i * per, logits.data());
    const int64_t a = std::max_element(logits.begin(), logits.end()) - logits.begin();
    const float* s = &sim_logits[static_cast<size_t>(i * classes)];
    agree += a == std::max_element(s, s + classes) - s;
    correct += a == labels[i].item<int64_t>();
  }
  int64_t pairs = 0, clipped = 0;
  for (size_t l = 0; l < m.layers.size(); ++l) pairs += e.pairs()[l], clipped += e.saturated()[l];
  const double d = static_cast<double>(std::max<int64_t>(1, n));
  return {{"samples", n}, {"argmax_agreement", agree / d}, {"accuracy", 100.0 * correct / d},
          {"clipped_pair_sums", clipped}, {"pair_sums", pairs}};
}

// The held-out examples of a transformer run, as token ids: bert, the test split's sentences
// (WordNet definitions and lemma lists, in turn); llama, the test split's fortunes packed and cut
// into sequences of data.seq_len tokens.
std::vector<std::vector<int32_t>> held_out_inputs(const ExperimentConfig& cfg, const TextModel& m, int64_t samples) {
  std::vector<std::vector<int32_t>> out;
  const size_t max_tokens = static_cast<size_t>(std::min<int64_t>(cfg.data.seq_len, m.max_positions()));
  if (!m.causal()) {
    const int64_t n = samples > 0 ? samples : 1000;
    for (const Synset& s : load_wordnet(cfg.data.text_folder(), TextSplit::kTest)) {
      for (const std::string* text : {&s.query, &s.document}) {
        if (static_cast<int64_t>(out.size()) >= n) return out;
        std::vector<int32_t> ids = m.tokenizer().encode(*text);
        if (ids.size() > max_tokens) ids.resize(max_tokens);  // as training embeds them
        out.push_back(std::move(ids));
      }
    }
    return out;
  }
  const int64_t n = samples > 0 ? samples : 16;
  const TokenStream s = pack_documents(load_fortunes(cfg.data.text_folder(), TextSplit::kTest),
                                       [&](std::string_view t) { return m.tokenizer().encode(t); }, m.tokenizer().eos_id());
  for (size_t at = 0; at + max_tokens <= s.ids.size() && static_cast<int64_t>(out.size()) < n; at += max_tokens)
    out.emplace_back(s.ids.begin() + static_cast<std::ptrdiff_t>(at), s.ids.begin() + static_cast<std::ptrdiff_t>(at + max_tokens));
  return out;
}

// `src`: the run directory, or its pruned/ model.
int run_text_export(const ExportCommand& cmd, const ExperimentConfig& cfg, const fs::path& src) {
  const fs::path run = cmd.run_dir;
  set_threads(cfg.trainer.threads);
  const LoadedText t = load_text_model(cfg, src.string(), cmd.checkpoint);
  QD_CHECK(load_qat_flags(*t.model), UserError, "export: ", t.source, " was saved before QAT started (its quantizers "
           "never ran); export a checkpoint from a QAT step (qat.start_step)");
  QD_CHECK(cmd.format != "onnx" || !t.model->causal(), UserError, "--format onnx: a decoder (", t.model->kind(),
           ") is exported for llama.cpp (student.gguf) and qdistill-run (student.qdm), not as ONNX; use --format qdm or all");
  t.model->to(torch::kCPU);
  t.model->eval();
  const rt::Graph graph = build_text_graph(*t.model);
  const fs::path out = run / "export";
  fs::create_directories(out);
  nlohmann::json files = nlohmann::json::object();
  if (cmd.format != "onnx") {
    rt::save_graph(graph, (out / "student.qdm").string());
    files["student.qdm"] = file_bytes(out / "student.qdm");
  }
  int64_t weights = 0;
  for (const rt::Node& n : graph.nodes)
    if (const rt::Attr* w = n.find("weight")) weights += w->numel();
  std::printf("exported %s (epoch %lld): %zu nodes, %lld weights\n", t.source.c_str(), static_cast<long long>(t.epoch),
              graph.nodes.size(), static_cast<long long>(weights));
  nlohmann::json report = {{"run_dir", run.string()}, {"checkpoint", t.source}, {"model", t.model->kind()},
                           {"task", graph.metadata.at("task")}, {"nodes", graph.nodes.size()}, {"weights", weights}};
  if (!t.model->causal() && cmd.format != "qdm") {
    // ONNX Runtime's and TensorRT's files, from the same graph, and the tokenizer they need.
    try {
      write_text_onnx(graph, OnnxPrecision::kInt8Qdq, (out / "student.int8.onnx").string(), {{"qdistill.run", cfg.experiment.name}});
      write_text_onnx(graph, OnnxPrecision::kFloat32, (out / "student.fp32.onnx").string(), {{"qdistill.run", cfg.experiment.name}});
      files["student.int8.onnx"] = file_bytes(out / "student.int8.onnx");
      files["student.fp32.onnx"] = file_bytes(out / "student.fp32.onnx");
    } catch (const UserError& e) {
      fs::remove(out / "student.int8.onnx"), fs::remove(out / "student.fp32.onnx");
      report["onnx_skipped"] = e.what();
      std::printf("no student ONNX files: %s\n", e.what());
    }
    write_file_atomic((out / "tokenizer.json").string(), graph.metadata.at("tokenizer.json"));
    files["tokenizer.json"] = file_bytes(out / "tokenizer.json");
  }
  if (t.model->causal() && cmd.format != "onnx") {
    // llama.cpp's file, from the same graph: written when the grid is llama.cpp's, else said why not.
    try {
      gguf_from_graph(graph, cfg.experiment.name).write((out / "student.gguf").string());
      files["student.gguf"] = file_bytes(out / "student.gguf");
    } catch (const UserError& e) {
      fs::remove(out / "student.gguf");
      report["gguf_skipped"] = e.what();
      std::printf("no student.gguf: %s\n", e.what());
    }
  }
  for (const auto& [name, bytes] : files.items())
    std::printf("  %-50s %10lld bytes\n", (out / name).string().c_str(), static_cast<long long>(bytes.get<int64_t>()));
  report["files"] = files;
  if (cmd.verify) {
    const std::vector<std::vector<int32_t>> inputs = held_out_inputs(cfg, *t.model, cmd.verify_samples);
    std::vector<float> simulation;
    nlohmann::json v = verify_text_graph(*t.model, graph, inputs, stderr_is_tty(), &simulation);
    if (files.contains("student.int8.onnx")) {
      // What scripts/onnx_parity.py holds ONNX Runtime to: the same sentences, the simulation's embeddings.
      write_file_atomic((out / "verify_ids.json").string(), nlohmann::json{{"split", "test"}, {"ids", inputs}}.dump() + "\n");
      write_file_atomic((out / "verify_simulation.f32").string(),
                        std::string(reinterpret_cast<const char*>(simulation.data()), simulation.size() * sizeof(float)));
      std::printf("ONNX Runtime against the same simulation: python3 scripts/onnx_parity.py %s\n", run.string().c_str());
    }
    v["split"] = "test";
    if (t.model->causal())
      std::printf("verified on %lld held-out sequences (%lld tokens): next-token argmax agreement %.2f%%, perplexity "
                  "%.4f (runtime) vs %.4f (simulation), ratio %.5f; KV cache vs whole sequence: max |logit diff| %.3g\n",
                  static_cast<long long>(v["samples"].get<int64_t>()), static_cast<long long>(v["tokens"].get<int64_t>()),
                  100.0 * v["argmax_agreement"].get<double>(), v["runtime_perplexity"].get<double>(),
                  v["simulation_perplexity"].get<double>(), v["perplexity_ratio"].get<double>(),
                  v["kv_cache_max_logit_diff"].get<double>());
    else
      std::printf("verified on %lld held-out sentences (%lld tokens): embedding cosine min %.6f, mean %.6f; %lld below 0.999\n",
                  static_cast<long long>(v["samples"].get<int64_t>()), static_cast<long long>(v["tokens"].get<int64_t>()),
                  v["min_cosine"].get<double>(), v["mean_cosine"].get<double>(),
                  static_cast<long long>(v["sentences_below_0_999"].get<int64_t>()));
    report["verify"] = v;
  }
  write_file_atomic((out / "report.json").string(), report.dump(2) + "\n");
  return 0;
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
  if (cfg.model.is_text()) {
    QD_CHECK(cfg.qat.enabled, UserError, "export: ", run.string(), " was trained without quantization-aware training "
             "(qat.enabled is false): there are no trained grids to export. Train with a qat section, e.g. "
             "configs/minilm_student_kd_qat.yaml or configs/smollm2_student_kd_qat.yaml");
    return run_text_export(cmd, cfg, src);
  }
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
  const Deployment deployment = check_deployment(int_model, cfg.qat);
  std::string exact_on;  // comma-separated platform ids
  for (const auto& id : deployment.json["exact_on"]) exact_on += (exact_on.empty() ? "" : ",") + id.get<std::string>();
  const OnnxMetadata onnx_meta{{"qdistill.target", target_name(cfg.qat.target)}, {"qdistill.exact_on", exact_on}};
  nlohmann::json files = nlohmann::json::object();
  if (cmd.format != "onnx") {
    rt::save_qdm(int_model, (out / "student.qdm").string());
    files["student.qdm"] = file_bytes(out / "student.qdm");
  }
  if (cmd.format != "qdm") {
    write_onnx(int_model, OnnxPrecision::kInt8Qdq, (out / "student.int8.onnx").string(), onnx_meta);
    write_onnx(int_model, OnnxPrecision::kFloat32, (out / "student.fp32.onnx").string());
    files["student.int8.onnx"] = file_bytes(out / "student.int8.onnx");
    files["student.fp32.onnx"] = file_bytes(out / "student.fp32.onnx");
  }
  int64_t weights = 0;
  for (const rt::Layer& l : int_model.layers) weights += static_cast<int64_t>(l.weight.size());
  std::printf("exported %s (epoch %lld%s): %zu layers, %lld int8 weights\n", ckpt.string().c_str(),
              static_cast<long long>(meta.epoch), pruned ? ", channel-pruned" : "", int_model.layers.size(),
              static_cast<long long>(weights));
  for (const auto& [name, bytes] : files.items())
    std::printf("  %-40s %8lld bytes\n", (out / name).string().c_str(), static_cast<long long>(bytes.get<int64_t>()));
  print_deployment(deployment);

  nlohmann::json report = {{"run_dir", run.string()}, {"source", src.string()}, {"checkpoint", ckpt.string()},
                           {"epoch", meta.epoch}, {"pruned", pruned}, {"files", files}, {"layers", int_model.layers.size()},
                           {"int8_weights", weights}, {"deployment", deployment.json}};
  if (cmd.verify) {
    std::vector<float> sim_logits;
    const Agreement a =
        compare_with_simulation(*model, int_model, data.test.images, data.test.labels, stderr_is_tty(), &sim_logits);
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
    // Where the proof fails, what those CPUs would compute instead.
    const bool clipping = std::any_of(deployment.verdicts.begin(), deployment.verdicts.end(), [](const PlatformVerdict& v) {
      return !v.exact && v.platform->dot == DotProduct::kPairSaturate16;
    });
    if (clipping) {
      const nlohmann::json em = emulate_clipping_kernels(int_model, data.test.images, data.test.labels, sim_logits);
      std::printf("emulated ONNX Runtime on x86 without VNNI (vpmaddubsw): argmax agreement with the simulation "
                  "%.2f%%, accuracy %.2f%%, %lld of %lld pair sums clipped\n",
                  100.0 * em["argmax_agreement"].get<double>(), em["accuracy"].get<double>(),
                  static_cast<long long>(em["clipped_pair_sums"].get<int64_t>()),
                  static_cast<long long>(em["pair_sums"].get<int64_t>()));
      // The platforms' JSON entries are in the verdicts' order.
      for (size_t i = 0; i < deployment.verdicts.size(); ++i) {
        const PlatformVerdict& v = deployment.verdicts[i];
        if (!v.exact && v.platform->dot == DotProduct::kPairSaturate16) report["deployment"]["platforms"][i]["emulated"] = em;
      }
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
