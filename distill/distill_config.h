// The `distill` section: teacher, logit KD, feature (hint) KD and the teacher-output cache.
#pragma once

#include <string>
#include <vector>

#include "common/config.h"

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
    v.check(hint_student.size() == hint_teacher.size(), "hint_teacher",
            "distill.hint_teacher must name one teacher layer per distill.hint_student entry");
  }
};

}  // namespace qd
