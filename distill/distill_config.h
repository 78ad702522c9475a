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

  // Transformers: hidden-state KD (learned projections, student layer i <- teacher layer j; Hugging
  // Face's hidden_states numbering: 0 the embeddings, i the output of layer i) and MiniLM-v2
  // attention-relation KD (the softmax relations of queries, keys and values of one layer each).
  std::vector<int> hidden_student, hidden_teacher;
  double hidden_weight = 1.0;
  int attention_student = 0, attention_teacher = 0;  // 1-based layers; 0: off
  double attention_weight = 1.0;
  int attention_heads = 0;  // relation heads; 0: the student's attention heads

  bool enabled() const { return !teacher.empty(); }
  bool feature_kd() const { return !hidden_student.empty() || attention_student > 0; }

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
    v.field("hidden_student", hidden_student,
            "bert/llama: student hidden states that learn the teacher's through a learned linear projection (MSE), "
            "numbered as Hugging Face's hidden_states: 0 the embeddings, i the output of layer i",
            Range<int>{0, 4096});
    v.field("hidden_teacher", hidden_teacher, "bert/llama: the teacher's hidden state for each hidden_student entry",
            Range<int>{0, 4096});
    v.field("hidden_weight", hidden_weight, "weight of the hidden-state KD term (mean over the pairs)",
            Range<double>{0.0, 1e6});
    v.field("attention_student", attention_student,
            "bert/llama: the student layer (1-based) whose query/key/value relations learn the teacher's "
            "(MiniLM-v2 attention-relation KD); 0: off",
            Range<int>{0, 4096});
    v.field("attention_teacher", attention_teacher, "bert/llama: the teacher layer (1-based) of attention-relation KD",
            Range<int>{0, 4096});
    v.field("attention_weight", attention_weight, "weight of the attention-relation KD term", Range<double>{0.0, 1e6});
    v.field("attention_heads", attention_heads,
            "relation heads of attention-relation KD (both hidden sizes must be multiples); 0: the student's heads",
            Range<int>{0, 4096});
    v.check(hidden_student.size() == hidden_teacher.size(), "hidden_teacher",
            "distill.hidden_teacher must name one teacher hidden state per distill.hidden_student entry");
    v.check((attention_student > 0) == (attention_teacher > 0), "attention_teacher",
            "set both distill.attention_student and distill.attention_teacher (1-based layers), or neither");
    v.check(hint_student.size() == hint_teacher.size(), "hint_teacher",
            "distill.hint_teacher must name one teacher layer per distill.hint_student entry");
  }
};

}  // namespace qd
