// The `distill` section: teacher, logit KD, feature (hint) KD and the teacher-output cache.
#pragma once

#include <string>
#include <vector>

#include "common/config.h"

namespace qd {
// Token-level KD divergences (distill/lm_kd_loss.h).
enum class KdDivergence { kForward, kReverse, kMix };
}  // namespace qd

namespace qd {

struct DistillConfig {
  std::string teacher;              // teacher run directory, or a .pt checkpoint inside one; empty: off
  std::string teacher_checkpoint = "best";  // best | last, when `teacher` is a run directory
  double alpha = 0.9;               // weight of the KD term; (1 - alpha) on cross-entropy
  double temperature = 4.0;
  std::vector<std::string> hint_student;  // student layers for feature KD (see `qdistill layers`)
  std::vector<std::string> hint_teacher;  // teacher layers, pairwise with hint_student
  double hint_weight = 1.0;
  bool cache = true;                // cache teacher logits (once, fp16) where that stays correct
  std::string cache_dir;            // default: <experiment.output_dir>/teacher_cache

  // Language models (task causal_lm): the teacher is a pretrained llama (name or .gguf path).
  int64_t top_k = 64;           // cached teacher logits per token; 0: the full vocabulary, teacher every step
  KdDivergence divergence = KdDivergence::kForward;
  double forward_weight = 0.5;  // mix: weight of the forward KL

  bool enabled() const { return !teacher.empty(); }

  template <class V>
  void visit(V& v) {
    v.field("teacher", teacher, "teacher run directory (or checkpoint inside one); empty: no distillation");
    v.field("teacher_checkpoint", teacher_checkpoint, "which checkpoint of the teacher run directory",
            OneOf{{"best", "last"}});
    v.field("alpha", alpha, "weight of the KD term; 1 - alpha weighs cross-entropy", Range<double>{0.0, 1.0});
    v.field("temperature", temperature, "softmax temperature T of logit KD (loss scaled by T^2)",
            Range<double>{0.0, 100.0, true, false});
    v.field("hint_student", hint_student, "student layers whose features learn the teacher's (feature KD)");
    v.field("hint_teacher", hint_teacher, "teacher layers, one per hint_student entry");
    v.field("hint_weight", hint_weight, "weight of the feature-KD (MSE) term", Range<double>{0.0, 1e6});
    v.field("cache", cache, "compute teacher logits once and reuse them (when augmentation allows)");
    v.field("cache_dir", cache_dir, "where the teacher cache lives (default <output_dir>/teacher_cache)");
    v.field("top_k", top_k,
            "causal_lm: the teacher's k largest logits per token (plus the rest's log-sum-exp) are the KD target, "
            "cached once; 0: the full vocabulary, the teacher runs every step",
            Range<int64_t>{0, int64_t{1} << 24});
    v.field("divergence", divergence, "causal_lm: forward KL (Hinton), reverse KL (mode-seeking) or their mix",
            Choices<KdDivergence>{{{"forward", KdDivergence::kForward}, {"reverse", KdDivergence::kReverse},
                                   {"mix", KdDivergence::kMix}}});
    v.field("forward_weight", forward_weight, "causal_lm, divergence mix: weight of the forward KL",
            Range<double>{0.0, 1.0});
    v.check(hint_student.size() == hint_teacher.size(), "hint_teacher",
            "distill.hint_teacher must name one teacher layer per distill.hint_student entry");
  }
};

}  // namespace qd
