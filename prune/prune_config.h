// The `prune` section: which weights go, how fast, and what is never touched.
#pragma once

#include <string>
#include <vector>

#include "common/config.h"

namespace qd {

enum class PruneMethod { kMagnitude, kChannel };
enum class PruneCriterion { kL1, kL2, kBnGamma, kActivation };
enum class PruneScope { kLayer, kGlobal };
enum class PruneSchedule { kGradual, kOneShot };
enum class PruneRemove { kEnd, kStart };

struct PruneConfig {
  bool enabled = false;
  PruneMethod method = PruneMethod::kChannel;
  PruneCriterion criterion = PruneCriterion::kL1;  // channel: how a channel is scored
  PruneScope scope = PruneScope::kLayer;           // per layer (group), or one global ranking
  PruneSchedule schedule = PruneSchedule::kGradual;
  double initial_sparsity = 0.0;  // s_i
  double target_sparsity = 0.5;   // s_f: fraction of weights (magnitude) or channels (channel)
  int start_epoch = 0;            // t0 (0-based epoch at whose start pruning begins)
  int end_epoch = 1;              // t0 + n*dt: the target is reached at the start of this epoch
  int update_every_steps = 50;    // dt: masks are recomputed this often while the schedule runs
  int calibration_samples = 64;
  int drop_layers = 0;  // remove: start: whole layers dropped by block importance before the width cut
  bool vocabulary = false;  // remove: start, bert: keep only the tokens the training texts use
  PruneRemove remove = PruneRemove::kEnd;  // physical removal of the pruned units: after training, or before it   // criterion activation: training examples each mask update runs forward
  std::vector<std::string> exclude;       // layers (magnitude) or channel groups / their layers (channel) never pruned
  std::vector<std::string> layer_targets; // per-layer targets: "NAME=SPARSITY", e.g. "block4=0.3"

  template <class V>
  void visit(V& v) {
    v.field("enabled", enabled, "prune the student while it trains");
    v.field("method", method,
            "magnitude: individual weights (unstructured); channel: whole units (structured): CNN filters; "
            "transformer head groups, FFN neurons, hidden features (see qdistill layers)",
            Choices<PruneMethod>{{{"magnitude", PruneMethod::kMagnitude}, {"channel", PruneMethod::kChannel}}});
    v.field("criterion", criterion,
            "channel: score of a unit: L1 / L2 norm of its weights, |BN gamma| (CNN), or activation: its mean "
            "activation magnitude on prune.calibration_samples training examples, forward only (transformers; "
            "Minitron)",
            Choices<PruneCriterion>{{{"l1", PruneCriterion::kL1}, {"l2", PruneCriterion::kL2},
                                     {"bn_gamma", PruneCriterion::kBnGamma}, {"activation", PruneCriterion::kActivation}}});
    v.field("scope", scope, "rank weights (channels) within each layer (group), or across all of them",
            Choices<PruneScope>{{{"layer", PruneScope::kLayer}, {"global", PruneScope::kGlobal}}});
    v.field("schedule", schedule, "gradual (Zhu & Gupta 2017, cubic) or one_shot at start_epoch",
            Choices<PruneSchedule>{{{"gradual", PruneSchedule::kGradual}, {"one_shot", PruneSchedule::kOneShot}}});
    v.field("initial_sparsity", initial_sparsity, "sparsity when the gradual schedule starts (s_i)",
            Range<double>{0.0, 1.0, false, true});
    v.field("target_sparsity", target_sparsity, "final sparsity (s_f): fraction of weights or channels removed",
            Range<double>{0.0, 1.0, false, true});
    v.field("start_epoch", start_epoch, "epoch (0-based) at whose start pruning begins", Range<int>{0, 100000});
    v.field("end_epoch", end_epoch, "gradual: the target is reached at the start of this epoch", Range<int>{0, 100000});
    v.field("update_every_steps", update_every_steps, "gradual: optimizer steps between mask updates",
            Range<int>{1, 1000000});
    v.field("calibration_samples", calibration_samples,
            "criterion activation: training examples (sequences) run forward at each mask update", Range<int>{1, 1000000});
    v.field("remove", remove,
            "channel: end: masks while training, the best checkpoint is physically removed to <run>/pruned; start: "
            "score (prune.criterion), cut and physically remove before the first step, so the whole run trains the "
            "smaller model (prune, then heal by distillation; Minitron). start needs schedule one_shot at start_epoch 0",
            Choices<PruneRemove>{{{"end", PruneRemove::kEnd}, {"start", PruneRemove::kStart}}});
    v.field("drop_layers", drop_layers,
            "remove: start, pretrained bert/llama: first drop this many whole layers, those that change their input "
            "least on the prune.calibration_samples training examples (block importance: 1 - cos(input, output) "
            "averaged over tokens; ShortGPT, Minitron's depth axis), then cut the width",
            Range<int>{0, 4096});
    v.field("vocabulary", vocabulary,
            "remove: start, bert: keep only the word-embedding rows of the tokens the training texts use (with every "
            "special token and single character, so any text still tokenizes); <run>/tokenizer.json is the pruned "
            "tokenizer, which eval and export read");
    v.field("exclude", exclude, "layers / channel groups never pruned, e.g. [block0, classifier] or a glob: [\"layer*.heads\", hidden] (see qdistill layers)");
    v.field("layer_targets", layer_targets, "per-layer final sparsity overrides, \"NAME=SPARSITY\" (e.g. block4=0.3; NAME may be a glob, \"layer*.ffn=0.5\"; the first matching entry wins)");
    v.check(criterion != PruneCriterion::kActivation || method == PruneMethod::kChannel, "criterion",
            "the activation criterion scores whole units: use prune.method: channel, or criterion l1 for magnitude");
    v.check(remove == PruneRemove::kEnd || (method == PruneMethod::kChannel && schedule == PruneSchedule::kOneShot &&
                                            start_epoch == 0),
            "remove", "prune.remove: start cuts whole units once, before training: set method: channel, "
            "schedule: one_shot, start_epoch: 0");
    v.check(drop_layers == 0 || remove == PruneRemove::kStart, "drop_layers",
            "whole layers are dropped before training: set prune.remove: start (with method: channel, schedule: "
            "one_shot, start_epoch: 0)");
    v.check(!vocabulary || remove == PruneRemove::kStart, "vocabulary",
            "the vocabulary is cut before training: set prune.remove: start (with method: channel, schedule: one_shot, "
            "start_epoch: 0)");
    v.check(initial_sparsity <= target_sparsity, "initial_sparsity", "must not exceed prune.target_sparsity");
    v.check(schedule == PruneSchedule::kOneShot || end_epoch > start_epoch, "end_epoch",
            "the gradual schedule needs prune.end_epoch > prune.start_epoch");
  }
};

}  // namespace qd
