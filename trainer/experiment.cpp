#include "trainer/experiment.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <filesystem>
#include <thread>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/log.h"
#include "common/progress.h"
#include "distill/distill_hook.h"
#include "distill/lm_distill_hook.h"
#include "distill/text_feature_kd.h"
#include "formats/mapped_file.h"
#include "models/lowrank.h"
#include "models/registry.h"
#include "models/text_model.h"
#include "parallel/communicator.h"
#include "parallel/launch.h"
#include "prune/pruner.h"
#include "prune/remove.h"
#include "qat/module_qat.h"
#include "qat/qat_hook.h"
#include "common/checkpoint.h"
#include "trainer/trainer.h"

namespace qd {

namespace fs = std::filesystem;

InputSpec input_spec(const DataBundle& data) {
  InputSpec s;
  s.channels = data.train.channels();
  s.height = data.train.height();
  s.width = data.train.width();
  s.num_classes = data.train.num_classes;
  s.mean = data.mean;
  s.std = data.std;
  return s;
}

std::shared_ptr<Model> build_model(const ExperimentConfig& cfg, const DataBundle& data) {
  torch::manual_seed(static_cast<uint64_t>(cfg.experiment.seed));
  std::shared_ptr<Model> model = make_model(cfg.model, input_spec(data));
  if (cfg.qat.enabled) {
    try {
      attach_qat(*model, cfg.qat);  // by module type: the twins of the CNN's quantization points
    } catch (const UserError& e) {
      cfg.fail(cfg.qat.layers.empty() ? "qat.enabled" : "qat.layers", e.what());
    }
  }
  return model;
}

void set_threads(int threads) {
  const int n = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  torch::set_num_threads(n);
}

namespace {

void check_layers(const ExperimentConfig& cfg, const std::string& key, const std::vector<std::string>& names,
                  const Model& model, const std::string& who) {
  const std::vector<std::string> valid = model.feature_names();
  for (const auto& n : names) {
    if (std::find(valid.begin(), valid.end(), n) != valid.end()) continue;
    std::string list;
    for (size_t i = 0; i < valid.size(); ++i) list += (i ? ", " : "") + valid[i];
    cfg.fail(key, concat("'", n, "' is not a layer of the ", who, " (", model.kind(), "); valid layers: ", list));
  }
}

std::shared_ptr<DistillHook> make_distill_hook(const ExperimentConfig& cfg, const Model& student, const DataBundle& data,
                                               torch::Device device) {
  check_layers(cfg, "distill.hint_student", cfg.distill.hint_student, student, "student");
  Teacher teacher;
  try {
    teacher = load_teacher(cfg.distill, input_spec(data), cfg.data.dataset, device, cfg.trainer.channels_last);
  } catch (const UserError& e) {
    cfg.fail("distill.teacher", e.what());
  }
  check_layers(cfg, "distill.hint_teacher", cfg.distill.hint_teacher, *teacher.model, "teacher");
  log_info("distill: teacher ", teacher.checkpoint, " (", teacher.model->kind(), ", ", count_params(*teacher.model),
           " parameters), alpha ", cfg.distill.alpha, ", T ", cfg.distill.temperature);
  DistillHookOptions o;
  o.cfg = cfg.distill;
  o.augment = cfg.data.augment;
  o.seed = static_cast<uint64_t>(cfg.experiment.seed);
  o.label_smoothing = cfg.trainer.label_smoothing;
  o.batch_size = cfg.data.eval_batch_size;
  o.cache_dir = cfg.distill.cache_dir.empty() ? (fs::path(cfg.experiment.output_dir) / "teacher_cache").string()
                                              : cfg.distill.cache_dir;
  o.channels_last = cfg.trainer.channels_last;
  return std::make_shared<DistillHook>(o, std::move(teacher), data.train);
}

// Refuses to clobber a run the user did not ask to continue or replace; never loses a checkpoint.
void prepare_run_dir(const ExperimentConfig& cfg) {
  const fs::path dir = cfg.run_dir();
  const fs::path last = dir / "checkpoints" / "last.pt";
  if (fs::exists(last) && !cfg.trainer.resume && !cfg.experiment.overwrite) {
    throw UserError(detail::concat(
        dir.string(), ": already holds a run (", last.string(), "); continue it with --resume, replace it with "
        "--set experiment.overwrite=true, or choose another --set experiment.name=..."));
  }
  // A resumed QAT run continues on the weight grid its checkpoints were trained on.
  const fs::path resolved = dir / "config.resolved.yaml";
  if (fs::exists(last) && cfg.trainer.resume && cfg.qat.enabled && fs::is_regular_file(resolved)) {
    const ExperimentConfig trained = load_run_config(resolved.string());
    if (trained.qat.enabled && trained.qat.target != cfg.qat.target)
      throw UserError(detail::concat(dir.string(), ": its checkpoints were trained with qat.target ",
                                     target_name(trained.qat.target), " (", resolved.string(),
                                     "), this config asks for ", target_name(cfg.qat.target),
                                     ": resume with --set qat.target=", target_name(trained.qat.target),
                                     ", or start over with --set experiment.overwrite=true"));
  }
  fs::create_directories(dir / "checkpoints");
  // summary.json marks a finished run; until this run finishes there must be none.
  fs::remove(dir / "summary.json");
  if (cfg.experiment.overwrite && !cfg.trainer.resume) {
    fs::remove(dir / "checkpoints" / "last.pt");
    fs::remove(dir / "checkpoints" / "best.pt");
  }
}

int64_t buffer_bytes(const torch::nn::Module& m) {
  int64_t n = 0;
  for (const auto& b : m.buffers()) n += b.numel() * static_cast<int64_t>(b.element_size());
  return n;
}

// Channel pruning: the best checkpoint with its pruned channels physically removed, written as a
// run directory of its own (<run>/pruned: config with model.channels, checkpoints/best.pt), so
// `qdistill eval` (and export) read it like any run. Returns its summary.
nlohmann::json write_pruned_model(const ExperimentConfig& cfg, const DataBundle& data) {
  const fs::path dir = fs::path(cfg.run_dir());
  std::shared_ptr<Model> masked = build_model(cfg, data);
  const CheckpointMeta meta = load_checkpoint((dir / "checkpoints" / "best.pt").string(), *masked, nullptr, {});
  load_qat_flags(*masked);
  masked->eval();
  RemovalResult r = remove_pruned_units(*masked, cfg.model, input_spec(data), cfg.qat.enabled ? &cfg.qat : nullptr);
  ExperimentConfig small = cfg;
  small.model = r.config;
  small.prune.enabled = false;  // a finished, smaller model
  small.experiment.output_dir = cfg.run_dir();
  small.experiment.name = "pruned";
  small.data.mean = data.mean;
  small.data.std = data.std;
  const fs::path out = dir / "pruned";
  fs::create_directories(out / "checkpoints");
  save_checkpoint((out / "checkpoints" / "best.pt").string(), *r.model, nullptr, meta, {});
  write_file_atomic((out / "config.resolved.yaml").string(), to_yaml(small));
  const EvalResult ev = evaluate(*r.model, data.test, cfg.data.eval_batch_size, torch::kCPU, false);
  const std::vector<int64_t>& channels = r.kept;
  log_info("prune: removed pruned units: ", count_params(*masked), " -> ", count_params(*r.model),
           " parameters, units per group ", nlohmann::json(r.total).dump(), " -> ", nlohmann::json(channels).dump(),
           "; ", data.test.name, " accuracy ", ev.accuracy, "% (", out.string(), ")");
  return {{"run_dir", out.string()},
          {"params", count_params(*r.model)},
          {"nonzero_params", count_nonzero_params(*r.model)},
          {"fp32_bytes", count_params(*r.model) * 4 + buffer_bytes(*r.model)},
          {"int8_bytes", int8_model_bytes(*r.model, cfg.qat.enabled ? cfg.qat.weight.bits : 8)},
          {"channels_before", r.total},
          {"channels", channels},
          {"test_accuracy", ev.accuracy}};
}

}  // namespace

static void add_qat_hook(Trainer& trainer, const ExperimentConfig& cfg) {
  const QatConfig& q = cfg.qat;
  if (q.start_step < 0 && q.start_epoch >= cfg.trainer.epochs)
    cfg.fail("qat.start_epoch", concat(q.start_epoch, " is not before trainer.epochs (", cfg.trainer.epochs,
                                       "): QAT would never run; epochs count from 0"));
  if (q.start_step < 0 && q.freeze_observers_epoch >= 0 && q.freeze_observers_epoch <= q.start_epoch)
    cfg.fail("qat.freeze_observers_epoch", concat(q.freeze_observers_epoch, " must come after qat.start_epoch (",
                                                  q.start_epoch, "): the observers need at least one epoch"));
  trainer.add_hook(std::make_shared<QatHook>(q));
}

void add_experiment_hooks(Trainer& trainer, const ExperimentConfig& cfg, Model& model, const DataBundle& data,
                          torch::Device device) {
  if (cfg.distill.enabled()) trainer.add_hook(make_distill_hook(cfg, model, data, device));
  if (cfg.prune.enabled) {
    if (cfg.prune.remove == PruneRemove::kStart)
      cfg.fail("prune.remove", "start (cut before training) is for transformers so far; CNN runs remove at the end");
    if (cfg.prune.start_epoch >= cfg.trainer.epochs)
      cfg.fail("prune.start_epoch", concat(cfg.prune.start_epoch, " is not before trainer.epochs (", cfg.trainer.epochs,
                                           "): pruning would never run; epochs count from 0"));
    if (cfg.prune.schedule == PruneSchedule::kGradual && cfg.prune.end_epoch >= cfg.trainer.epochs)
      cfg.fail("prune.end_epoch", concat(cfg.prune.end_epoch, " is not before trainer.epochs (", cfg.trainer.epochs,
                                         "): the target sparsity is reached at the start of epoch end_epoch "
                                         "(0-based), so at least one epoch must follow"));
    if (auto bad = check_prune_names(cfg.prune, model)) cfg.fail(bad->first, bad->second);
    trainer.add_hook(std::make_shared<PruneHook>(cfg.prune));
  }
  if (cfg.qat.enabled) add_qat_hook(trainer, cfg);
}

namespace {
// `initial_weights`: load model.init_checkpoint (not when a run's own checkpoint follows).
std::shared_ptr<TextModel> build_text_model(const ExperimentConfig& cfg, bool initial_weights = true) {
  torch::manual_seed(static_cast<uint64_t>(cfg.experiment.seed));
  std::shared_ptr<TextModel> model;
  try {
    model = make_text_model(cfg.model);
  } catch (const fmt::FormatError&) {
    throw;
  } catch (const UserError& e) {
    cfg.fail(cfg.model.pretrained.empty() ? "model.tokenizer" : "model.pretrained", e.what());
  }
  if (initial_weights && !cfg.model.init_checkpoint.empty()) {  // weights first: the quantizers' state starts fresh
    fs::path from = cfg.model.init_checkpoint;
    if (fs::is_directory(from)) from = from / "checkpoints" / "best.pt";
    try {
      load_checkpoint(from.string(), *model, nullptr, {}, /*weights_only=*/true);  // a QAT run's weights too
    } catch (const UserError& e) {
      cfg.fail("model.init_checkpoint", e.what());
    }
    torch::manual_seed(static_cast<uint64_t>(cfg.experiment.seed));  // the checkpoint's RNG state is not this run's
  }
  if (cfg.qat.enabled) {  // quantization attaches by module type: the twins of Linear and Embedding
    try {
      attach_qat(*model, cfg.qat);
    } catch (const UserError& e) {
      cfg.fail(cfg.qat.layers.empty() ? "qat.enabled" : "qat.layers", e.what());
    }
  }
  return model;
}

// A text run's summary: the best checkpoint on the held-out test split (never used for
// selection), next to the validation metrics that selected it.
void add_text_summary(nlohmann::json& summary, const ExperimentConfig& cfg, Model& model, Task& task) {
  const fs::path best = fs::path(cfg.run_dir()) / "checkpoints" / "best.pt";
  if (fs::is_regular_file(best)) load_checkpoint(best.string(), model, nullptr, {});
  model.to(torch::kCPU);
  // A QAT run reports its quantized simulation, and the same weights with the quantizers off.
  const bool quantized = cfg.qat.enabled && load_qat_flags(model);
  const TaskMetrics test = task.evaluate(model, torch::kCPU, nullptr, /*held_out_test=*/true);
  for (const auto& [k, v] : test.values) summary[k] = v;
  summary["eval_split"] = test.split;
  summary["quantized"] = quantized;
  const TaskMetrics valid = task.evaluate(model, torch::kCPU, nullptr, /*held_out_test=*/false);
  for (const auto& [k, v] : valid.values) summary["validation_" + k] = v;
  if (quantized) {
    set_fake_quant_enabled(model, false);
    const TaskMetrics fp32 = task.evaluate(model, torch::kCPU, nullptr, /*held_out_test=*/true);
    for (const auto& [k, v] : fp32.values) summary["fp32_" + k] = v;
    set_fake_quant_enabled(model, true);
  }
}
}  // namespace

std::shared_ptr<LmDistillHook> make_lm_distill_hook(const ExperimentConfig& cfg, const Task& task, const TextModel& student) {
  ModelConfig tc;
  tc.name = ModelKind::kLlama;
  tc.pretrained = cfg.distill.teacher;
  std::shared_ptr<TextModel> teacher;
  std::string path;
  try {
    path = resolve_pretrained(cfg.distill.teacher);
    teacher = make_text_model(tc);
  } catch (const UserError& e) {
    cfg.fail("distill.teacher", e.what());
  }
  const int64_t tv = dynamic_cast<const LlamaModel&>(*teacher).lm->options().vocab;
  const int64_t sv = dynamic_cast<const LlamaModel&>(student).lm->options().vocab;
  if (tv != sv)
    cfg.fail("distill.teacher", concat("the teacher's vocabulary has ", tv, " tokens, the student's ", sv,
                                       "; token KD needs the same tokenizer (model.tokenizer: the teacher's)"));
  LmDistillOptions o;
  o.cfg = cfg.distill;
  std::error_code ec;
  o.teacher_fingerprint = concat(fs::absolute(path).string(), ":", fs::file_size(path, ec));
  o.sequences = task.training_sequences();
  o.progress = cfg.trainer.progress;
  const fs::path dir = cfg.distill.cache_dir.empty() ? fs::path(cfg.experiment.output_dir) / "teacher_cache" : fs::path(cfg.distill.cache_dir);
  o.cache_path = (dir / concat("lm_topk", o.cfg.top_k, "_T", o.cfg.temperature, "_",
                               fnv1a64(o.teacher_fingerprint + concat(o.sequences.size(0), "x", o.sequences.size(1))) % 1000000007,
                               ".qdlc")).string();
  log_info("distill: teacher ", path, " (", count_params(*teacher), " parameters), alpha ", cfg.distill.alpha, ", T ",
           cfg.distill.temperature, o.cfg.top_k > 0 ? concat(", top-", o.cfg.top_k, " cache ", o.cache_path)
                                                     : std::string(", full vocabulary, teacher every step"));
  return std::make_shared<LmDistillHook>(o, teacher);
}

namespace {
// The text distillation hooks: logit KD (causal_lm) and hidden-state / attention-relation KD,
// sharing one teacher.
void add_text_distill_hooks(Trainer& trainer, const ExperimentConfig& cfg, const Task& task,
                            const std::shared_ptr<TextModel>& student) {
  std::shared_ptr<TextModel> teacher;
  if (cfg.task.name == TaskKind::kCausalLm) {
    auto lm = make_lm_distill_hook(cfg, task, *student);
    teacher = lm->teacher();
    trainer.add_hook(lm);
  }
  if (!cfg.distill.feature_kd()) return;
  if (!teacher) {
    ModelConfig tc;
    tc.name = cfg.model.name;
    tc.pretrained = cfg.distill.teacher;
    try {
      teacher = make_text_model(tc);
    } catch (const UserError& e) {
      cfg.fail("distill.teacher", e.what());
    }
  }
  try {
    trainer.add_hook(std::make_shared<TextFeatureKdHook>(cfg.distill, teacher, student));
  } catch (const UserError& e) {
    cfg.fail(!cfg.distill.hidden_student.empty() ? "distill.hidden_student" : "distill.attention_student", e.what());
  }
}
}  // namespace

namespace {
// The first n training examples of `task` forward through m (eval mode, no gradients);
// after_batch sees each batch.
void calibration_pass(Task& task, TextModel& m, int64_t n, int64_t batch, torch::Device device,
                      const std::function<void(const TrainState&)>& after_batch) {
  n = std::min<int64_t>(n, task.train_size());
  const bool was_training = m.is_training();
  m.eval();
  torch::NoGradGuard ng;
  std::vector<int64_t> indices(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) indices[static_cast<size_t>(i)] = i;
  TrainState st;
  st.device = device;
  for (int64_t first = 0; first < n; first += batch) {
    task.load_batch(st, indices, first, std::min(n, first + batch));
    m.forward_text(st.inputs, st.mask);
    if (after_batch) after_batch(st);
  }
  m.train(was_training);
}

std::vector<double> block_importance(Task& task, TextModel& m, int64_t n, int64_t batch, torch::Device device) {
  TransformerTrace trace;
  trace.want_hidden = trace.in_eval = true;
  TransformerTrace* saved = m.trace();
  m.set_trace(&trace);
  std::vector<double> sum;
  double tokens = 0;
  calibration_pass(task, m, n, batch, device, [&](const TrainState& st) {
    const torch::Tensor keep = st.mask.to(torch::kFloat64).reshape({-1}).cpu();
    if (sum.empty()) sum.assign(trace.hidden.size() - 1, 0.0);
    for (size_t i = 1; i < trace.hidden.size(); ++i) {
      const torch::Tensor a = trace.hidden[i - 1].to(torch::kFloat64), b = trace.hidden[i].to(torch::kFloat64);
      const torch::Tensor cos = torch::cosine_similarity(a, b, -1, 1e-12).reshape({-1}).cpu();
      sum[i - 1] += ((1.0 - cos) * keep).sum().item<double>();
    }
    tokens += keep.sum().item<double>();
    trace.clear();
  });
  m.set_trace(saved);
  for (auto& v : sum) v /= std::max(tokens, 1.0);
  return sum;
}

}  // namespace

UnitImportance calibration_importance(const ExperimentConfig& cfg, Task& task, torch::Device device) {
  const int64_t n = cfg.prune.calibration_samples;
  const int64_t batch = cfg.data.eval_batch_size;
  return [&task, n, batch, device](Model& m) {
    auto& tm = dynamic_cast<TextModel&>(m);
    TransformerTrace trace;
    trace.want_units = trace.in_eval = true;
    TransformerTrace* saved = tm.trace();
    tm.set_trace(&trace);
    calibration_pass(task, tm, n, batch, device, nullptr);
    tm.set_trace(saved);
    return trace.units;
  };
}

namespace {

// Structured pruning of a text run: the best checkpoint with its pruned units removed, written as
// a run directory of its own (<run>/pruned), evaluated on the held-out test split.
nlohmann::json write_pruned_text_model(const ExperimentConfig& cfg) {
  const fs::path dir = fs::path(cfg.run_dir());
  std::shared_ptr<TextModel> masked = build_text_model(cfg, /*initial_weights=*/false);
  const CheckpointMeta meta = load_checkpoint((dir / "checkpoints" / "best.pt").string(), *masked, nullptr, {});
  load_qat_flags(*masked);
  masked->eval();
  RemovalResult r = remove_pruned_units(*masked, cfg.model, InputSpec{}, cfg.qat.enabled ? &cfg.qat : nullptr);
  ExperimentConfig small = cfg;
  small.model = r.config;
  small.prune.enabled = false;  // a finished, smaller model
  small.experiment.output_dir = cfg.run_dir();
  small.experiment.name = "pruned";
  const fs::path out = dir / "pruned";
  fs::create_directories(out / "checkpoints");
  save_checkpoint((out / "checkpoints" / "best.pt").string(), *r.model, nullptr, meta, {});
  write_file_atomic((out / "config.resolved.yaml").string(), to_yaml(small));
  auto& tm = static_cast<TextModel&>(*r.model);
  std::shared_ptr<Task> task = make_text_task(small, tm, torch::kCPU, nullptr, /*for_training=*/false);
  const TaskMetrics test = task->evaluate(*r.model, torch::kCPU, nullptr, /*held_out_test=*/true);
  const int64_t params = count_params(*r.model);
  log_info("prune: removed pruned units: ", count_params(*masked), " -> ", params, " parameters, units per group ",
           nlohmann::json(r.total).dump(), " -> ", nlohmann::json(r.kept).dump(), "; ", test.line, " (", out.string(), ")");
  nlohmann::json j = {{"run_dir", out.string()},
                      {"params", params},
                      {"non_embedding_params", params - count_embedding_params(*r.model)},
                      {"nonzero_params", count_nonzero_params(*r.model)},
                      {"units_before", r.total},
                      {"units", r.kept},
                      {"hidden", r.config.hidden},
                      {"ffn", r.config.ffn},
                      {"heads", r.config.heads},
                      {"kv_heads", r.config.kv_heads}};
  for (const auto& [k, v] : test.values) j[k] = v;
  return j;
}

// The old ids of the tokens in the task's training examples (padding aside).
std::vector<int32_t> corpus_tokens(Task& task, int64_t vocab) {
  std::vector<char> seen(static_cast<size_t>(vocab), 0);
  const int64_t n = task.train_size(), batch = 512;
  std::vector<int64_t> indices(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) indices[static_cast<size_t>(i)] = i;
  TrainState st;
  st.device = torch::kCPU;
  for (int64_t first = 0; first < n; first += batch) {
    task.load_batch(st, indices, first, std::min(n, first + batch));
    const torch::Tensor ids = st.inputs.masked_select(st.mask.to(torch::kBool)).to(torch::kInt64).contiguous();
    for (int64_t i = 0; i < ids.numel(); ++i) seen.at(static_cast<size_t>(ids.data_ptr<int64_t>()[i])) = 1;
  }
  std::vector<int32_t> used;
  for (int64_t i = 0; i < vocab; ++i)
    if (seen[static_cast<size_t>(i)]) used.push_back(static_cast<int32_t>(i));
  return used;
}

// prune.remove: start. The units the criterion picks are cut before the first step, so the run
// trains, and its config.resolved.yaml describes, the smaller model (prune.enabled false there).
// The cut is written to <run>/prune_plan.json; a resumed run reads it instead of measuring again,
// so it rebuilds the same shape whatever the calibration pass would give now. `shape.prune`
// receives what summary.json reports; a vocabulary cut fills shape.vocabulary and tokenizer_json.
std::shared_ptr<TextModel> prune_at_start(ExperimentConfig& cfg, std::shared_ptr<TextModel> model, Task& task,
                                          torch::Device device, StartShape& shape) {
  nlohmann::json& record = shape.prune;
  const fs::path plan_path = fs::path(cfg.run_dir()) / "prune_plan.json";
  const bool from_plan = cfg.trainer.resume && fs::is_regular_file(plan_path);
  const auto bad_plan = [&](const std::string& why) {
    return UserError(concat(plan_path.string(), ": not the cut this run made (", why, "); delete it to measure "
                            "the cut again, or start over with --set experiment.overwrite=true"));
  };
  const int64_t params_before = count_params(*model);
  const int64_t non_embedding_before = params_before - count_embedding_params(*model);
  nlohmann::json plan;
  if (from_plan) {
    try {
      std::ifstream in(plan_path);
      plan = nlohmann::json::parse(in);
    } catch (const std::exception& e) {
      throw bad_plan(e.what());
    }
  }
  // out = plan[key], or the bad-plan error.
  const auto read_plan = [&](const char* key, auto& out) {
    try {
      out = plan.at(key).get<std::decay_t<decltype(out)>>();
    } catch (const std::exception& e) {
      throw bad_plan(e.what());
    }
  };
  // Depth first: whole layers by block importance, the model rebuilt from the pretrained file.
  nlohmann::json depth;
  if (cfg.prune.drop_layers > 0) {
    if (cfg.model.pretrained.empty())
      cfg.fail("prune.drop_layers", "whole layers are dropped from a pretrained model (model.pretrained), by "
                                    "model.keep_layers; a model from scratch can simply have fewer layers");
    std::vector<int> keep_layers;
    std::vector<double> bi;
    if (from_plan) {
      read_plan("keep_layers", keep_layers);
    } else {
      bi = block_importance(task, *model, cfg.prune.calibration_samples, cfg.data.eval_batch_size, device);
      const int64_t layers = static_cast<int64_t>(bi.size());
      if (cfg.prune.drop_layers >= layers)
        cfg.fail("prune.drop_layers", concat(cfg.prune.drop_layers, " of the model's ", layers, " layers: keep at least one"));
      std::vector<int> base = cfg.model.keep_layers;
      if (base.empty())
        for (int i = 0; i < layers; ++i) base.push_back(i);
      std::vector<int> order(static_cast<size_t>(layers));
      for (int i = 0; i < layers; ++i) order[static_cast<size_t>(i)] = i;
      // The most important first (ties by index: deterministic); keep the first layers - N, in order.
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return bi[static_cast<size_t>(a)] > bi[static_cast<size_t>(b)]; });
      order.resize(static_cast<size_t>(layers - cfg.prune.drop_layers));
      std::sort(order.begin(), order.end());
      for (int i : order) keep_layers.push_back(base[static_cast<size_t>(i)]);
    }
    cfg.model.keep_layers = keep_layers;
    try {
      model = build_text_model(cfg);
    } catch (const ConfigError& e) {
      if (!from_plan) throw;
      throw bad_plan(e.what());
    }
    depth = {{"drop_layers", cfg.prune.drop_layers}, {"keep_layers", keep_layers}, {"block_importance", bi}};
    log_info("prune: dropped ", cfg.prune.drop_layers, " layers by block importance", from_plan ? " (the plan)" : "",
             "; kept the teacher's layers ", nlohmann::json(keep_layers).dump());
  }
  const std::vector<PruneGroup> groups = model->prune_groups();
  std::vector<torch::Tensor> keep;
  if (from_plan) {
    try {
      for (const auto& g : groups) {
        const std::vector<int64_t> idx = plan.at("kept").at(g.name).get<std::vector<int64_t>>();
        QD_CHECK(!idx.empty() && std::is_sorted(idx.begin(), idx.end()) && idx.front() >= 0 && idx.back() < g.units,
                 UserError, "group ", g.name, ": kept units must be increasing indices below ", g.units);
        keep.push_back(torch::tensor(idx, torch::kInt64));
      }
    } catch (const std::exception& e) {
      throw bad_plan(e.what());
    }
  } else {
    PruneHook hook(cfg.prune, calibration_importance(cfg, task, device));
    TrainState st;
    st.model = model.get();
    st.device = device;
    st.steps_per_epoch = 1;
    hook.on_train_begin(st);
    hook.on_step_begin(st);
    keep = hook.kept_units();
  }
  RemovalResult r = remove_units(*model, cfg.model, InputSpec{}, cfg.qat.enabled ? &cfg.qat : nullptr, keep);
  nlohmann::json kept = nlohmann::json::object();
  for (size_t i = 0; i < groups.size(); ++i) {
    const torch::Tensor k = keep[i].contiguous();
    kept[groups[i].name] = std::vector<int64_t>(k.data_ptr<int64_t>(), k.data_ptr<int64_t>() + k.numel());
  }
  record = {{"remove", "start"},
            {"params_before", params_before},
            {"non_embedding_params_before", non_embedding_before},
            {"units_before", r.total},
            {"units", r.kept},
            {"plan", plan_path.string()},
            {"kept", kept}};
  if (!depth.empty()) record["depth"] = depth;
  log_info("prune: cut before training (prune.remove: start", from_plan ? ", the plan in " + plan_path.string() : "",
           "): ", params_before, " -> ", count_params(*r.model), " parameters, units per group ",
           nlohmann::json(r.total).dump(), " -> ", nlohmann::json(r.kept).dump());
  cfg.model = r.config;
  cfg.prune.enabled = false;  // a finished, smaller model from here on
  auto small = std::static_pointer_cast<TextModel>(r.model);
  if (!cfg.prune.vocabulary) return small;

  // The vocabulary last: the tokens the training texts use (the task still holds them in the old ids).
  const int64_t tokens_before = small->tokenizer().vocab_size(), params_width = count_params(*small);
  std::vector<int32_t> used;
  if (from_plan) read_plan("vocabulary", used);
  else used = corpus_tokens(task, tokens_before);
  VocabularyCut vc;
  try {
    vc = cut_vocabulary(*small, used, [&](Model& m) {
      if (cfg.qat.enabled) attach_qat(m, cfg.qat);
    });
  } catch (const UserError& e) {
    if (from_plan) throw bad_plan(e.what());
    cfg.fail("prune.vocabulary", e.what());
  }
  load_qat_flags(*vc.model);
  cfg.model.tokenizer = (fs::path(cfg.run_dir()) / "tokenizer.json").string();
  record["vocabulary"] = {{"tokens_before", tokens_before},
                          {"tokens", vc.kept.size()},
                          {"corpus_tokens", from_plan ? nlohmann::json() : nlohmann::json(used.size())},
                          {"tokenizer", cfg.model.tokenizer}};
  log_info("prune: vocabulary cut to the ", vc.kept.size(), " tokens the training texts use (with every special token and "
           "single character)", from_plan ? " (the plan)" : "", ": ", tokens_before, " -> ", vc.kept.size(), " tokens, ",
           params_width, " -> ", count_params(*vc.model), " parameters; the tokenizer goes to ", cfg.model.tokenizer);
  shape.vocabulary = vc.kept;
  shape.tokenizer_json = std::move(vc.tokenizer_json);
  return vc.model;
}

// lowrank.enabled: the chosen layers are factored before the first step (after prune.remove:
// start's cut), so the run trains, and its config.resolved.yaml describes (model.ranks), the factored
// model. The ranks are written to <run>/lowrank_plan.json; a resumed run reads them instead of
// measuring again. `record` receives what summary.json reports.
void lowrank_at_start(ExperimentConfig& cfg, TextModel& model, Task& task, torch::Device device, nlohmann::json& record) {
  const fs::path plan_path = fs::path(cfg.run_dir()) / "lowrank_plan.json";
  const int64_t before = count_params(model), dense_layers = static_cast<int64_t>(dense_linears(model).size());
  std::vector<std::string> ranks;
  const bool from_plan = cfg.trainer.resume && fs::is_regular_file(plan_path);
  if (from_plan) {
    try {
      std::ifstream in(plan_path);
      ranks = nlohmann::json::parse(in).at("ranks").get<std::vector<std::string>>();
      apply_ranks(model, ranks);
    } catch (const std::exception& e) {
      throw UserError(concat(plan_path.string(), ": not the factorization this run made (", e.what(), "); delete it to "
                             "factor again, or start over with --set experiment.overwrite=true"));
    }
  } else {
    std::map<std::string, torch::Tensor> input_abs_mean;
    if (cfg.lowrank.method == LowRankMethod::kAsvd) {
      const auto linears = dense_linears(model);
      for (const auto& [n, l] : linears) {
        l->record_inputs = true;
        l->input_abs_sum = torch::Tensor();
        l->input_rows = 0;
      }
      calibration_pass(task, model, cfg.lowrank.calibration_samples, cfg.data.eval_batch_size, device, nullptr);
      for (const auto& [n, l] : linears) {
        l->record_inputs = false;
        QD_CHECK(l->input_rows > 0, Error, "lowrank: the calibration pass never reached layer ", n);
        input_abs_mean[n] = l->input_abs_sum / static_cast<double>(l->input_rows);
        l->input_abs_sum = torch::Tensor();
      }
    }
    try {
      ranks = factorize_model(model, cfg.lowrank, input_abs_mean);
    } catch (const UserError& e) {
      cfg.fail("lowrank", e.what());
    }
  }
  if (cfg.qat.enabled) attach_qat(model, cfg.qat);  // the factors get quantizers of their own
  const int64_t after = count_params(model);
  log_info("lowrank: ", ranks.size(), " of ", dense_layers, " linear layers factored before training (",
           cfg.lowrank.method == LowRankMethod::kAsvd ? "activation-aware SVD" : "SVD",
           from_plan ? ", the plan in " + plan_path.string() : "", "): ", before, " -> ", after, " parameters");
  record = {{"method", cfg.lowrank.method == LowRankMethod::kAsvd ? "asvd" : "svd"},
            {"params_before", before},
            {"params", after},
            {"factored_layers", ranks.size()},
            {"plan", plan_path.string()},
            {"ranks", ranks}};
  cfg.model.ranks.insert(cfg.model.ranks.end(), ranks.begin(), ranks.end());
  cfg.lowrank.enabled = false;  // a finished, factored model from here on
}

}  // namespace

StartShape shape_text_student(ExperimentConfig& cfg, std::shared_ptr<TextModel> model, Task& task, torch::Device device) {
  StartShape s;
  if (cfg.prune.enabled && cfg.prune.remove == PruneRemove::kStart) model = prune_at_start(cfg, model, task, device, s);
  if (cfg.lowrank.enabled) lowrank_at_start(cfg, *model, task, device, s.lowrank);
  s.model = model;
  return s;
}

void write_start_plans(const StartShape& s) {
  if (!s.prune.empty()) {
    nlohmann::json plan = {{"kept", s.prune.at("kept")}};
    if (s.prune.contains("depth")) plan["keep_layers"] = s.prune.at("depth").at("keep_layers");
    if (!s.vocabulary.empty()) plan["vocabulary"] = s.vocabulary;
    if (!s.tokenizer_json.is_null())
      write_file_atomic(s.prune.at("vocabulary").at("tokenizer").get<std::string>(), s.tokenizer_json.dump(2) + "\n");
    write_file_atomic(s.prune.at("plan").get<std::string>(), plan.dump() + "\n");
  }
  if (!s.lowrank.empty())
    write_file_atomic(s.lowrank.at("plan").get<std::string>(), nlohmann::json({{"ranks", s.lowrank.at("ranks")}}).dump() + "\n");
}

namespace {
// (run_train checked prune.exclude / layer_targets against the model before building the task.)
void add_text_prune_hook(Trainer& trainer, const ExperimentConfig& cfg, Task& task, torch::Device device) {
  if (cfg.prune.start_epoch >= cfg.trainer.epochs)
    cfg.fail("prune.start_epoch", concat(cfg.prune.start_epoch, " is not before trainer.epochs (", cfg.trainer.epochs,
                                         "): pruning would never run; epochs count from 0"));
  trainer.add_hook(std::make_shared<PruneHook>(cfg.prune, calibration_importance(cfg, task, device)));
}

// The size the student is compared with: teacher_params and teacher_non_embedding_params of the
// pretrained teacher a text config names (distill.teacher or task.teacher); empty without one.
nlohmann::json teacher_sizes(const ExperimentConfig& cfg) {
  const std::string teacher = cfg.distill.enabled() ? cfg.distill.teacher : cfg.task.teacher;
  if (teacher.empty()) return nlohmann::json::object();
  ModelConfig tc;
  tc.name = cfg.model.name;
  tc.pretrained = teacher;
  const std::shared_ptr<TextModel> t = make_text_model(tc);
  return {{"teacher_params", count_params(*t)}, {"teacher_non_embedding_params", count_params(*t) - count_embedding_params(*t)}};
}
}  // namespace

int run_train(const TrainCommand& cmd) {
  const auto t0 = std::chrono::steady_clock::now();
  ExperimentConfig cfg = load_experiment_config(cmd.config_path, cmd.overrides);
  if (cmd.resume) cfg.trainer.resume = true;
  set_threads(cfg.trainer.threads);
  const bool text = cfg.task.name != TaskKind::kImageClassification;

  // Everything that can fail on bad input runs before the run directory is touched.
  const LaunchInfo launch = detect_launch();
  set_log_enabled(launch.rank == 0);
  DataBundle data;
  std::shared_ptr<Model> model;
  if (cfg.lowrank.enabled && !text)
    cfg.fail("lowrank.enabled", "low-rank factorization is for the linear layers of bert and llama so far; CNN "
                                "convolutions are not factored");
  if (text && cfg.prune.enabled && cfg.prune.remove == PruneRemove::kEnd && (cfg.lowrank.enabled || !cfg.model.ranks.empty()))
    cfg.fail("prune.remove", "structured pruning while training reads the dense weights that low-rank factorization "
                             "replaces; with lowrank (or model.ranks) prune before it: prune.remove: start cuts first, "
                             "then the smaller model is factored");
  if (text) {
    model = build_text_model(cfg);
    if (cfg.prune.enabled)
      if (auto bad = check_prune_names(cfg.prune, *model)) cfg.fail(bad->first, bad->second);
  } else {
    data = load_data(cfg.data);
    model = build_model(cfg, data);
  }
  const torch::Device device = select_device(cfg.trainer, launch);
  std::shared_ptr<Communicator> comm = make_communicator(cfg.parallel, device);
  std::shared_ptr<Task> task = text ? make_text_task(cfg, static_cast<TextModel&>(*model), device, comm.get())
                                    : make_image_task(cfg, data);
  StartShape start;  // prune.remove: start, lowrank
  if (text) {
    start = shape_text_student(cfg, std::static_pointer_cast<TextModel>(model), *task, device);
    model = start.model;
    if (!start.tokenizer_json.is_null())  // the texts again, in the pruned vocabulary's ids
      task = make_text_task(cfg, static_cast<TextModel&>(*model), device, comm.get());
  }
  const int64_t params = count_params(*model);
  log_info("experiment ", cfg.experiment.name, ": ", model->kind(), " with ", params, " parameters; ", task->describe(),
           "; ", comm->world_size(), " rank(s) (", comm->backend(), "), ", torch::get_num_threads(),
           " thread(s) each, on ", device.str());
  Trainer trainer(cfg, model, task, cfg.run_dir(), comm);
  if (!text) add_experiment_hooks(trainer, cfg, *model, data, device);
  if (text && cfg.distill.enabled()) add_text_distill_hooks(trainer, cfg, *task, std::static_pointer_cast<TextModel>(model));
  if (text && cfg.prune.enabled) add_text_prune_hook(trainer, cfg, *task, device);
  if (text && cfg.qat.enabled) add_qat_hook(trainer, cfg);

  const bool writer = comm->rank() == 0;
  if (writer) {
    prepare_run_dir(cfg);
    // Record the normalization actually used (measured when the config left it empty).
    if (!text) {
      cfg.data.mean = data.mean;
      cfg.data.std = data.std;
    }
    write_file_atomic((fs::path(cfg.run_dir()) / "config.resolved.yaml").string(), to_yaml(cfg));
    write_start_plans(start);
  }
  // No rank trains until rank 0 has checked the run directory (it may refuse to clobber it).
  comm->barrier();
  const TrainResult r = trainer.fit();
  if (!writer) return 0;

  // Report the best checkpoint (what eval and export use).
  nlohmann::json summary = {
      {"name", cfg.experiment.name},
      {"role", cfg.experiment.role == Role::kTeacher ? "teacher" : "student"},
      {"task", task->name()},
      {"model", model->kind()},
      {"world_size", comm->world_size()},
      {"backend", comm->backend()},
      {"epochs", r.epochs_completed},
      {"params", params},
      {"nonzero_params", count_nonzero_params(*model)},
      {"fp32_bytes", params * 4 + buffer_bytes(*model)},
      {"train_samples_per_second", r.samples_per_second},
      {"train_seconds", r.train_seconds},
      {"threads", torch::get_num_threads()},
  };
  if (text) {
    if (task->units_per_example() > 1)
      summary["train_tokens_per_second"] = r.samples_per_second * static_cast<double>(task->units_per_example());
    summary["non_embedding_params"] = params - count_embedding_params(*model);
    if (cfg.distill.enabled()) {
      summary["teacher"] = cfg.distill.teacher;
      summary["distill_top_k"] = cfg.distill.top_k;
    }
    summary.update(teacher_sizes(cfg));
    if (!start.prune.empty()) {
      start.prune.erase("kept");
      summary["prune"] = start.prune;
    }
    if (!start.lowrank.empty()) summary["lowrank"] = start.lowrank;
    add_text_summary(summary, cfg, *model, *task);
    if (cfg.prune.enabled && cfg.prune.method == PruneMethod::kChannel) summary["pruned"] = write_pruned_text_model(cfg);
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    summary["wall_seconds"] = wall;
    write_file_atomic((fs::path(cfg.run_dir()) / "summary.json").string(), summary.dump(2) + "\n");
    std::string line;
    for (const char* k : {"perplexity", "bits_per_byte", "recall_at_1", "recall_at_10"})
      if (summary.contains(k)) line += concat(line.empty() ? "" : ", ", k, " ", summary[k].get<double>());
    std::printf("%s: test %s (best checkpoint), %lld params, %.0f samples/s, wall %s\n  run directory: %s\n",
                cfg.experiment.name.c_str(), line.c_str(), static_cast<long long>(params), r.samples_per_second,
                format_duration(wall).c_str(), cfg.run_dir().c_str());
    return 0;
  }
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  summary["eval_split"] = data.test.name;
  summary["test_accuracy"] = r.best_accuracy;
  summary["accuracy"] = r.best_accuracy;
  summary["final_test_accuracy"] = r.final_accuracy;
  summary["int8_bytes"] = int8_model_bytes(*model, cfg.qat.enabled ? cfg.qat.weight.bits : 8);
  summary["wall_seconds"] = wall;
  for (const auto& h : trainer.hooks()) {
    if (const auto* d = dynamic_cast<const DistillHook*>(h.get())) {
      summary["teacher"] = cfg.distill.teacher;
      summary["teacher_cache"] = d->uses_cache();
    }
  }
  if (cfg.prune.enabled) {
    summary["prune"] = {{"method", cfg.prune.method == PruneMethod::kChannel ? "channel" : "magnitude"},
                        {"target_sparsity", cfg.prune.target_sparsity},
                        {"weight_sparsity", 1.0 - static_cast<double>(count_nonzero_params(*model)) /
                                                      static_cast<double>(std::max<int64_t>(1, params))},
                        {"note", "params, nonzero_params and int8_bytes count the masked model; "
                                 "pruned.* the model after physical channel removal"}};
    if (cfg.prune.method == PruneMethod::kChannel && r.best_accuracy > 0) summary["pruned"] = write_pruned_model(cfg, data);
  }
  if (cfg.qat.enabled) {
    summary["qat"] = {{"weight_bits", cfg.qat.weight.bits}, {"activation_bits", cfg.qat.activation.bits},
                      {"note", "test_accuracy is the int8 fake-quant simulation of best.pt"}};
  }
  write_file_atomic((fs::path(cfg.run_dir()) / "summary.json").string(), summary.dump(2) + "\n");
  std::printf("%s: %s accuracy %.2f%% (last epoch %.2f%%), %lld params, %.0f samples/s, wall %s\n  run directory: %s\n",
              cfg.experiment.name.c_str(), data.test.name.c_str(), r.best_accuracy, r.final_accuracy, static_cast<long long>(params),
              r.samples_per_second, format_duration(wall).c_str(), cfg.run_dir().c_str());
  return 0;
}

namespace {
bool is_config_file(const fs::path& p) { return fs::is_regular_file(p) && (p.extension() == ".yaml" || p.extension() == ".yml"); }

}  // namespace

LoadedText load_text_model(const ExperimentConfig& cfg, const std::string& where_text, const std::string& checkpoint) {
  const fs::path where = where_text;
  LoadedText t;
  t.cfg = cfg;
  t.model = build_text_model(cfg, /*initial_weights=*/is_config_file(where));
  if (is_config_file(where)) {
    t.source = resolve_pretrained(cfg.model.pretrained);
  } else {
    const fs::path ckpt = where / "checkpoints" / (checkpoint + ".pt");
    t.epoch = load_checkpoint(ckpt.string(), *t.model, nullptr, {}).epoch;
    t.source = ckpt.string();
  }
  t.model->eval();
  return t;
}

namespace {

// The config of a run directory, or a config file whose model needs no training.
ExperimentConfig config_of(const fs::path& where, const char* command, const std::vector<std::string>& overrides = {}) {
  if (is_config_file(where)) {
    ExperimentConfig cfg = load_experiment_config(where.string(), overrides);
    if (!cfg.model.is_text() || cfg.model.pretrained.empty())
      cfg.fail("model.pretrained", concat("`qdistill ", command, "` on a config needs a fully pretrained model "
                                         "(model.pretrained: minilm-l6 or smollm2-135m); to use a trained model, "
                                         "give its run directory"));
    return cfg;
  }
  const fs::path cfg_path = where / "config.resolved.yaml";
  QD_CHECK(fs::is_regular_file(cfg_path), UserError, where.string(), ": neither a run directory made by `qdistill train` "
           "(no config.resolved.yaml) nor a .yaml config");
  QD_CHECK(overrides.empty(), UserError, "--set applies to a config file; ", where.string(),
           " is a run directory, whose config is what it was trained with");
  return load_run_config(cfg_path.string());
}

int run_text_eval(const EvalCommand& cmd, const ExperimentConfig& cfg) {
  const LoadedText t = load_text_model(cfg, cmd.run_dir, cmd.checkpoint);
  if (cmd.ptq) {  // round-to-nearest weights, dynamic activations: nothing to calibrate
    QD_CHECK(is_config_file(cmd.run_dir) && cfg.qat.enabled, UserError, "--ptq quantizes a config's model with its qat "
             "section (qat.enabled: true) without training; ", cmd.run_dir, " is not such a config");
    for (const auto& l : layer_qats(*t.model))
      QD_CHECK(l->input_spec().dynamic != DynamicQuant::kNone, UserError, "--ptq: the layers' inputs have static scales, "
               "which need calibration; set qat.activation.dynamic: per_token or per_block");
    set_fake_quant_enabled(*t.model, true);
  }
  const bool quantized = cmd.ptq || (cfg.qat.enabled && load_qat_flags(*t.model));
  QD_CHECK(!cmd.int8 || quantized, UserError, "--int8: ", cmd.run_dir, " has no quantization-aware training ",
           cfg.qat.enabled ? "active in this checkpoint" : "(no qat section in its config)");
  std::shared_ptr<Task> task = make_text_task(cfg, *t.model, torch::kCPU, nullptr, /*for_training=*/false);
  const auto t0 = std::chrono::steady_clock::now();
  const TaskMetrics m = task->evaluate(*t.model, torch::kCPU, nullptr, /*held_out_test=*/cmd.split == "test");
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  TaskMetrics fp32;  // a QAT checkpoint: the simulation above, and the same weights in float
  if (quantized) {
    set_fake_quant_enabled(*t.model, false);
    fp32 = task->evaluate(*t.model, torch::kCPU, nullptr, /*held_out_test=*/cmd.split == "test");
  }
  nlohmann::json j = {{"source", t.source}, {"task", task->name()}, {"model", t.model->kind()},
                      {"params", count_params(*t.model)}, {"nonzero_params", count_nonzero_params(*t.model)},
                      {"non_embedding_params", count_params(*t.model) - count_embedding_params(*t.model)},
                      {"eval_split", m.split}, {"seconds", seconds}, {"threads", torch::get_num_threads()}};
  j.update(teacher_sizes(cfg));
  if (!is_config_file(cmd.run_dir)) j["run_dir"] = cmd.run_dir, j["epoch"] = t.epoch;
  for (const auto& [k, v] : m.values) j[k] = v;
  j["quantized"] = quantized;
  if (cmd.ptq) j["ptq"] = true;
  for (const auto& [k, v] : fp32.values) j["fp32_" + k] = v;
  if (m.values.count("tokens") && m.values.at("tokens") > 0) j["ms_per_1000_tokens"] = 1e6 * seconds / m.values.at("tokens");
  if (cmd.json) std::printf("%s\n", j.dump().c_str());
  else if (quantized)
    std::printf("%s: quantized simulation %s; with the quantizers off %s (%.1f s, %d threads)\n", t.source.c_str(),
                m.line.c_str(), fp32.line.c_str(), seconds, torch::get_num_threads());
  else std::printf("%s: %s (%.1f s, %d threads)\n", t.source.c_str(), m.line.c_str(), seconds, torch::get_num_threads());
  return 0;
}
}  // namespace

int run_embed(const EmbedCommand& cmd) {
  const ExperimentConfig cfg = config_of(cmd.source, "embed");
  QD_CHECK(cfg.model.name == ModelKind::kBert, UserError, cmd.source, ": its model is ",
           cfg.model.is_text() ? "a llama decoder" : "an image classifier", "; `qdistill embed` needs a bert sentence encoder");
  set_threads(cfg.trainer.threads);
  std::ifstream in(cmd.input, std::ios::binary);
  QD_CHECK(in.good(), UserError, cmd.input, ": cannot read the input file (one text per line)");
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(std::move(line));
  }
  const LoadedText t = load_text_model(cfg, cmd.source, cmd.checkpoint);
  const torch::Tensor e = embed_texts(*t.model, lines, cfg.data.seq_len, 64, torch::kCPU, nullptr,
                                      cfg.trainer.progress && lines.size() > 2000).contiguous();
  std::FILE* out = cmd.output.empty() ? stdout : std::fopen(cmd.output.c_str(), "w");
  QD_CHECK(out != nullptr, UserError, cmd.output, ": cannot open for writing");
  const float* p = e.data_ptr<float>();
  std::string row;
  for (int64_t i = 0; i < e.size(0); ++i) {
    row.clear();
    char buf[32];
    for (int64_t j = 0; j < e.size(1); ++j) {
      std::snprintf(buf, sizeof buf, j ? " %.9g" : "%.9g", static_cast<double>(p[i * e.size(1) + j]));
      row += buf;
    }
    row += '\n';
    std::fwrite(row.data(), 1, row.size(), out);
  }
  if (out != stdout) std::fclose(out);
  return 0;
}

int run_eval(const EvalCommand& cmd) {
  const fs::path dir = cmd.run_dir;
  ExperimentConfig cfg = config_of(dir, "eval", cmd.overrides);
  if (cfg.task.name != TaskKind::kImageClassification) {
    set_threads(cfg.trainer.threads);
    return run_text_eval(cmd, cfg);
  }
  QD_CHECK(!cmd.ptq, UserError, "--ptq: post-training quantization applies to transformer configs; image runs quantize "
           "through QAT (qdistill eval RUN --int8)");
  QD_CHECK(cmd.split == "test", UserError, "--split ", cmd.split, ": image runs are evaluated on the test set; their "
           "validation split is data.validation_size, which training reports");
  QD_CHECK(!cmd.int8 || cfg.qat.enabled, UserError, "--int8: ", dir.string(), " has no quantization-aware training "
           "(no qat section in its config); int8 simulation needs a QAT run");
  set_threads(cfg.trainer.threads);
  DataBundle data = load_data(cfg.data);
  std::shared_ptr<Model> model = build_model(cfg, data);
  const fs::path ckpt = dir / "checkpoints" / (cmd.checkpoint + ".pt");
  const CheckpointMeta meta = load_checkpoint(ckpt.string(), *model, nullptr, {});
  torch::Device device = torch::kCPU;
  if (cfg.trainer.device == DeviceKind::kCuda && torch::cuda::is_available()) device = torch::Device(torch::kCUDA, 0);
  model->to(device);
  if (cfg.trainer.channels_last) to_channels_last(*model);
  // A QAT run is evaluated as int8 (its fake-quant simulation), and for comparison with the
  // quantizers switched off (the same weights in fp32, BN folded).
  const bool quantized = cfg.qat.enabled && load_qat_flags(*model);
  const EvalResult ev = evaluate(*model, data.test, cfg.data.eval_batch_size, device, cfg.trainer.channels_last);
  EvalResult fp32 = ev;
  if (quantized) {
    set_fake_quant_enabled(*model, false);
    fp32 = evaluate(*model, data.test, cfg.data.eval_batch_size, device, cfg.trainer.channels_last);
  }
  QD_CHECK(!cmd.int8 || quantized, UserError, "--int8: ", ckpt.string(), " was saved before QAT started "
           "(its quantizers never ran); evaluate a checkpoint from a QAT epoch");
  const char* split = data.test.name.c_str();
  if (cmd.json) {
    nlohmann::json j = {{"run_dir", dir.string()}, {"checkpoint", ckpt.string()}, {"epoch", meta.epoch},
                        {"task", "image_classification"}, {"eval_split", split}, {"accuracy", ev.accuracy},
                        {"test_accuracy", ev.accuracy}, {"test_loss", ev.loss},
                        {"samples", ev.samples}, {"quantized", quantized}};
    if (quantized) j["fp32_test_accuracy"] = fp32.accuracy;
    std::printf("%s\n", j.dump().c_str());
  } else if (quantized) {
    std::printf("%s (epoch %lld): int8-simulated %s accuracy %.2f%% (loss %.4f), same weights without fake-quant "
                "%.2f%%, on %lld samples\n",
                ckpt.string().c_str(), static_cast<long long>(meta.epoch), split, ev.accuracy, ev.loss, fp32.accuracy,
                static_cast<long long>(ev.samples));
  } else {
    std::printf("%s (epoch %lld): %s accuracy %.2f%%, loss %.4f on %lld samples\n", ckpt.string().c_str(),
                static_cast<long long>(meta.epoch), split, ev.accuracy, ev.loss, static_cast<long long>(ev.samples));
  }
  return 0;
}

}  // namespace qd
