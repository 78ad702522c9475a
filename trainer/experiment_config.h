// The whole experiment: every module's section, parsed from YAML + --set overrides.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/config.h"
#include "data/data_config.h"
#include "distill/distill_config.h"
#include "models/lowrank.h"
#include "models/model_config.h"
#include "parallel/parallel_config.h"
#include "prune/prune_config.h"
#include "qat/qat_config.h"

namespace qd {

enum class Role { kTeacher, kStudent };
enum class DeviceKind { kCpu, kCuda };
enum class OnDivergence { kStop, kSkipStep };
enum class Precision { kFp32, kBf16, kFp16 };
enum class OptimizerKind { kSgd, kAdamW };
enum class ScheduleKind { kConstant, kCosine, kStep };
enum class TaskKind { kImageClassification, kCausalLm, kSentenceEmbedding };
enum class EmbeddingLoss { kCosine, kMse, kContrastive };

// What is learned and measured (trainer/task.h): the batch, the loss, the metrics.
struct TaskConfig {
  TaskKind name = TaskKind::kImageClassification;
  std::string teacher;    // sentence_embedding: the model whose embeddings the student learns
  std::string cache_dir;  // sentence_embedding: where the teacher's embeddings are cached
  EmbeddingLoss loss = EmbeddingLoss::kCosine;  // sentence_embedding: what the student learns from

  template <class V>
  void visit(V& v) {
    v.field("name", name,
            "image_classification (images, cross-entropy, accuracy); causal_lm (next-token cross-entropy on packed "
            "text, perplexity, bits per byte); sentence_embedding (a bert student learns a teacher's sentence "
            "embeddings, retrieval recall@1/@10)",
            Choices<TaskKind>{{{"image_classification", TaskKind::kImageClassification},
                               {"causal_lm", TaskKind::kCausalLm},
                               {"sentence_embedding", TaskKind::kSentenceEmbedding}}});
    v.field("teacher", teacher,
            "sentence_embedding: the teacher whose embeddings are the targets: a pretrained name (minilm-l6) or "
            "path; empty for a model that is itself pretrained and only evaluated");
    v.field("cache_dir", cache_dir,
            "sentence_embedding: folder of the teacher-embedding cache (empty: <experiment.output_dir>/teacher_cache)");
    v.field("loss", loss,
            "sentence_embedding: cosine (1 - cosine to task.teacher's embedding: embedding KD); mse (the mean squared "
            "error to it, sentence-transformers' MSELoss); contrastive (no teacher: in-batch InfoNCE from each "
            "training definition to its lemma list, scale 20, sentence-transformers' MultipleNegativesRankingLoss)",
            Choices<EmbeddingLoss>{{{"cosine", EmbeddingLoss::kCosine},
                                    {"mse", EmbeddingLoss::kMse},
                                    {"contrastive", EmbeddingLoss::kContrastive}}});
  }
};

struct ExperimentSection {
  std::string name;
  std::string output_dir = "runs";
  int64_t seed = 0;
  Role role = Role::kTeacher;
  bool overwrite = false;  // allow a fresh run over an existing run directory

  template <class V>
  void visit(V& v) {
    v.field("name", name, "run name; the run directory is <output_dir>/<name>", kRequired);
    v.field("output_dir", output_dir, "parent folder of run directories");
    v.field("seed", seed, "seed for initialization, shuffling and augmentation", Range<int64_t>{0, int64_t{1} << 62});
    v.field("role", role, "what this run produces (recorded in summary.json)",
            Choices<Role>{{{"teacher", Role::kTeacher}, {"student", Role::kStudent}}});
    v.field("overwrite", overwrite, "start afresh even if the run directory holds checkpoints");
    v.check(!name.empty() && name.find('/') == std::string::npos && name != "." && name != "..", "name",
            "expected a non-empty name without '/'");
  }
};

struct OptimizerConfig {
  OptimizerKind name = OptimizerKind::kSgd;
  double lr = 0.1;  // peak learning rate (after warm-up)
  double momentum = 0.9;
  bool nesterov = true;
  double weight_decay = 5e-4;
  bool decay_norm_and_bias = false;  // apply weight decay to BatchNorm and bias parameters too
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  bool fused = true;  // adamw: ATen's fused kernel (FusedAdamW)

  template <class V>
  void visit(V& v) {
    v.field("name", name, "optimizer",
            Choices<OptimizerKind>{{{"sgd", OptimizerKind::kSgd}, {"adamw", OptimizerKind::kAdamW}}});
    v.field("lr", lr, "peak learning rate (reached after warm-up)", Range<double>{0.0, 100.0, true, false});
    v.field("momentum", momentum, "sgd momentum", Range<double>{0.0, 1.0, false, true});
    v.field("nesterov", nesterov, "sgd Nesterov momentum (needs momentum > 0)");
    v.field("weight_decay", weight_decay, "L2 (sgd) or decoupled (adamw) weight decay", Range<double>{0.0, 1.0});
    v.field("decay_norm_and_bias", decay_norm_and_bias, "also decay BatchNorm weights and biases");
    v.field("beta1", beta1, "adamw beta1", Range<double>{0.0, 1.0, false, true});
    v.field("beta2", beta2, "adamw beta2", Range<double>{0.0, 1.0, false, true});
    v.field("eps", eps, "adamw epsilon", Range<double>{0.0, 1.0, true, false});
    v.field("fused", fused, "adamw: one fused pass per parameter (ATen's kernel) instead of seven; same update up to "
                            "float rounding");
    v.check(!(name == OptimizerKind::kSgd && nesterov && momentum <= 0.0), "nesterov",
            "Nesterov momentum needs optimizer.momentum > 0; set nesterov: false or give a momentum");
  }
};

struct ScheduleConfig {
  ScheduleKind name = ScheduleKind::kCosine;
  double warmup_epochs = 0.0;        // linear warm-up from warmup_start_factor * lr to lr
  double warmup_start_factor = 0.1;
  double min_lr = 0.0;               // cosine: the final learning rate
  std::vector<int> milestones;       // step: epochs at which lr is multiplied by gamma
  double gamma = 0.1;

  template <class V>
  void visit(V& v) {
    v.field("name", name, "learning-rate schedule after warm-up",
            Choices<ScheduleKind>{{{"constant", ScheduleKind::kConstant}, {"cosine", ScheduleKind::kCosine}, {"step", ScheduleKind::kStep}}});
    v.field("warmup_epochs", warmup_epochs, "linear warm-up length in epochs (fractions allowed)", Range<double>{0.0, 1e6});
    v.field("warmup_start_factor", warmup_start_factor, "warm-up starts at this fraction of lr", Range<double>{0.0, 1.0});
    v.field("min_lr", min_lr, "cosine: learning rate at the end", Range<double>{0.0, 100.0});
    v.field("milestones", milestones, "step: epochs at which lr is multiplied by gamma", Range<int>{1, 1000000});
    v.field("gamma", gamma, "step: multiplicative factor at each milestone", Range<double>{0.0, 1.0, true, false});
    v.check(name != ScheduleKind::kStep || !milestones.empty(), "milestones",
            "the step schedule needs milestones, for example [10, 20]");
  }
};

struct TrainerConfig {
  int epochs = 10;
  DeviceKind device = DeviceKind::kCpu;
  int threads = 0;  // intra-op threads; 0: all cores
  bool channels_last = true;
  double label_smoothing = 0.0;
  double grad_clip_norm = 0.0;  // 0: off
  int accumulate_steps = 1;     // micro-batches per optimizer step (gradient accumulation)
  int log_every = 50;           // steps between metrics.jsonl step records
  int64_t checkpoint_every_steps = 0;   // 0: checkpoints only at epoch ends
  int64_t eval_every_steps = 0;         // 0: evaluate at epoch ends only
  double checkpoint_every_minutes = 0;  // 0: off
  bool resume = false;
  bool progress = true;
  Precision precision = Precision::kFp32;            // trainer/precision.h
  int64_t loss_scale_growth_interval = 2000;         // fp16: good steps before the loss scale doubles
  OnDivergence on_divergence = OnDivergence::kStop;  // trainer/divergence.h
  double divergence_factor = 20.0;                   // 0: only non-finite losses and gradients

  template <class V>
  void visit(V& v) {
    v.field("epochs", epochs, "passes over the training set", Range<int>{1, 100000});
    v.field("device", device, "where to train",
            Choices<DeviceKind>{{{"cpu", DeviceKind::kCpu}, {"cuda", DeviceKind::kCuda}}});
    v.field("threads", threads, "intra-op CPU threads per process (0: all cores)", Range<int>{0, 1024});
    v.field("channels_last", channels_last, "NHWC activations for conv layers (faster on CPU)");
    v.field("label_smoothing", label_smoothing, "cross-entropy label smoothing", Range<double>{0.0, 1.0, false, true});
    v.field("grad_clip_norm", grad_clip_norm, "clip the global gradient norm to this (0: off)", Range<double>{0.0, 1e9});
    v.field("accumulate_steps", accumulate_steps,
            "micro-batches of data.batch_size per optimizer step (gradient accumulation)", Range<int>{1, 4096});
    v.field("log_every", log_every, "steps between step records in metrics.jsonl", Range<int>{1, 1000000});
    v.field("checkpoint_every_steps", checkpoint_every_steps,
            "also write checkpoints/last.pt every N optimizer steps inside an epoch (0: only at epoch ends); "
            "--resume continues mid-epoch with the same data order, bit for bit on CPU",
            Range<int64_t>{0, int64_t{1} << 40});
    v.field("eval_every_steps", eval_every_steps,
            "also evaluate on the validation split every N optimizer steps inside an epoch, recorded in "
            "metrics.jsonl as type eval with the seconds since training began (learning curves); 0: epoch ends only",
            Range<int64_t>{0, int64_t{1} << 40});
    v.field("checkpoint_every_minutes", checkpoint_every_minutes,
            "also write checkpoints/last.pt when this many minutes passed since the last one (0: off)",
            Range<double>{0.0, 1e6});
    v.field("resume", resume, "continue from checkpoints/last.pt if the run directory has one");
    v.field("progress", progress, "show a progress bar (plain lines when not a terminal)");
    v.field("precision", precision,
            "arithmetic of the forward passes (student and teacher): fp32, or bf16 / fp16 autocast (matmuls and "
            "convolutions in 16 bits, weights, optimizer state and losses in fp32; quantizers round in fp32); fp16 "
            "scales the loss dynamically (overflowing steps skipped: amp_skipped_steps in metrics)",
            Choices<Precision>{{{"fp32", Precision::kFp32}, {"bf16", Precision::kBf16}, {"fp16", Precision::kFp16}}});
    v.field("loss_scale_growth_interval", loss_scale_growth_interval,
            "precision fp16: steps without overflow after which the loss scale doubles (an overflow halves it)",
            Range<int64_t>{1, int64_t{1} << 40});
    v.field("on_divergence", on_divergence,
            "a step whose loss or gradient norm is not finite, or after which the loss's running average exceeds "
            "divergence_factor times its lowest so far: stop (exit code 1, the last checkpoint kept as it was) or "
            "skip_step (no optimizer step, counted as skipped_steps; stops after 25 in a row)",
            Choices<OnDivergence>{{{"stop", OnDivergence::kStop}, {"skip_step", OnDivergence::kSkipStep}}});
    v.field("divergence_factor", divergence_factor,
            "the loss has diverged when its running average (about 10 steps) rises above this many times the "
            "lowest running average of the run (at least 0.05); 0: only non-finite losses and gradients",
            Range<double>{0.0, 1e300});
  }
};

struct ExperimentConfig {
  ExperimentSection experiment;
  TaskConfig task;
  DataConfig data;
  ModelConfig model;
  OptimizerConfig optimizer;
  ScheduleConfig schedule;
  TrainerConfig trainer;
  ParallelConfig parallel;
  DistillConfig distill;
  QatConfig qat;
  PruneConfig prune;
  LowRankConfig lowrank;

  template <class V>
  void visit(V& v) {
    v.section("experiment", experiment, kRequired);
    v.section("task", task);
    v.section("data", data);
    v.section("model", model, kRequired);
    v.section("optimizer", optimizer);
    v.section("schedule", schedule);
    v.section("trainer", trainer);
    v.section("parallel", parallel);
    v.section("distill", distill);
    v.section("qat", qat);
    v.section("prune", prune);
    v.section("lowrank", lowrank);
  }

  std::string run_dir() const;  // <output_dir>/<name>

  // "FILE:LINE" (or "--set ...") of each key given explicitly; see ConfigDoc::locations().
  std::map<std::string, std::string> locations;
  // A ConfigError for a check made after parsing: "WHERE: key: message".
  [[noreturn]] void fail(const std::string& key, const std::string& message) const;
};

// Reads `path`, applies `overrides` ("key.path=value") and validates. Throws ConfigError.
ExperimentConfig load_experiment_config(const std::string& path, const std::vector<std::string>& overrides = {});
ExperimentConfig parse_experiment_config(const std::string& yaml, const std::string& name,
                                         const std::vector<std::string>& overrides = {});
// A run directory's config.resolved.yaml (written by `qdistill train`). Runs written before
// qat.target existed have no such key; they trained on the full 8-bit weight grid, so they read as
// qat.target: x86_vnni (the grid their checkpoints hold), not as today's default.
ExperimentConfig load_run_config(const std::string& path);
std::string to_yaml(ExperimentConfig cfg);
std::vector<ConfigKeyDoc> list_config_keys();

}  // namespace qd
