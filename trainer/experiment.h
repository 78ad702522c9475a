// The `train` and `eval` commands: config -> data -> model -> run directory -> trainer -> summary.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/mnist.h"
#include "models/model.h"
#include "prune/pruner.h"
#include "trainer/experiment_config.h"
#include "trainer/trainer.h"

namespace qd {

struct TrainCommand {
  std::string config_path;
  std::vector<std::string> overrides;  // "key.path=value"
  bool resume = false;
};

struct EvalCommand {
  std::string run_dir;
  bool int8 = false;
  bool json = false;
  std::string checkpoint = "best";  // best | last
  std::string split = "test";       // text tasks: test | validation
  bool ptq = false;                 // a config file: quantize with its qat section, no training (round to nearest)
  std::vector<std::string> overrides;  // --set, for a config file
};

// `qdistill embed`: one L2-normalized sentence embedding per input line.
struct EmbedCommand {
  std::string source;  // a run directory, or a config with a pretrained bert
  std::string input;
  std::string output;  // empty: stdout
  std::string checkpoint = "best";
};
int run_embed(const EmbedCommand& cmd);

// Both return the process exit code; bad input throws qd::UserError (exit code 2).
int run_train(const TrainCommand& cmd);
int run_eval(const EvalCommand& cmd);

InputSpec input_spec(const DataBundle& data);
// Adds the hooks the config asks for (distillation, ...) to `trainer`; the one place that maps
// config sections to hooks, used by `train` and by the benchmarks.
void add_experiment_hooks(Trainer& trainer, const ExperimentConfig& cfg, Model& model, const DataBundle& data,
                          torch::Device device);
std::shared_ptr<Model> build_model(const ExperimentConfig& cfg, const DataBundle& data);
// Structured pruning's activation criterion for a text run: each call runs the first
// prune.calibration_samples training examples of `task` forward (eval mode, no gradients) and
// returns every prunable unit's summed activation magnitude (models/linear.h TransformerTrace).
UnitImportance calibration_importance(const ExperimentConfig& cfg, class Task& task, torch::Device device);

// A text student's shape before its first step: prune.remove: start's cut, then lowrank's
// factorization (each only when configured). cfg then describes the new model (model.*, with
// prune.enabled and lowrank.enabled false). `prune` and `lowrank` hold what summary.json reports
// and the plans that a resumed run reads instead of measuring again (<run>/prune_plan.json,
// <run>/lowrank_plan.json), which write_start_plans writes.
// With prune.vocabulary the tokenizer changed: `tokenizer_json` is written to <run>/tokenizer.json
// (cfg.model.tokenizer), and the task must tokenize its texts again with the new model's tokenizer.
struct StartShape {
  std::shared_ptr<class TextModel> model;
  nlohmann::json prune, lowrank;
  std::vector<int32_t> vocabulary;  // the kept tokens' old ids (the plan's "vocabulary")
  nlohmann::json tokenizer_json;    // null unless the vocabulary was cut
};
StartShape shape_text_student(ExperimentConfig& cfg, std::shared_ptr<class TextModel> model, class Task& task,
                              torch::Device device);
void write_start_plans(const StartShape& s);

// causal_lm distillation (distill section): the pretrained teacher, checked against the student's
// vocabulary, and the hook with its top-k cache file under distill.cache_dir.
std::shared_ptr<class LmDistillHook> make_lm_distill_hook(const ExperimentConfig& cfg, const class Task& task,
                                                          const class TextModel& student);
void set_threads(int threads);

class TextModel;
// A text model to evaluate, embed with or export (eval mode, CPU): a run directory's checkpoint
// (`where` a run directory, `checkpoint` best | last), or a config whose model is pretrained.
struct LoadedText {
  ExperimentConfig cfg;
  std::shared_ptr<TextModel> model;
  std::string source;  // the checkpoint, or the pretrained files
  int64_t epoch = 0;
};
LoadedText load_text_model(const ExperimentConfig& cfg, const std::string& where, const std::string& checkpoint);

}  // namespace qd
