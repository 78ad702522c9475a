// Logit distillation for causal_lm (issue 14): adds alpha * token KD to the task loss,
// (1 - alpha) * next-token cross-entropy, against a pretrained teacher's top-k target read from the
// language-model teacher cache by the micro-batch's sequence indices (distill.top_k > 0), or
// against the teacher's full logits computed every step (distill.top_k: 0). The teacher is frozen:
// it is not a module of the student, so it never enters the optimizer or the gradient reducer.
#pragma once

#include <memory>
#include <string>

#include "common/train_hook.h"
#include "distill/distill_config.h"
#include "distill/lm_kd_loss.h"
#include "distill/lm_teacher_cache.h"

namespace qd {

class TextModel;

struct LmDistillOptions {
  DistillConfig cfg;
  std::string cache_path;  // distill.top_k > 0
  std::string teacher_fingerprint;
  torch::Tensor sequences;  // [N, L] int64: the task's training sequences (cache rows)
  bool progress = false;
};

class LmDistillHook : public TrainHook {
 public:
  LmDistillHook(LmDistillOptions o, std::shared_ptr<TextModel> teacher);
  std::string name() const override { return "lm_distill"; }
  void on_train_begin(TrainState& state) override;  // builds or reads the cache
  void on_loss(TrainState& state) override;
  bool uses_cache() const { return o_.cfg.top_k > 0; }
  const LmTeacherCache& cache() const { return cache_; }
  std::shared_ptr<TextModel> teacher() const { return teacher_; }

 private:
  LmDistillOptions o_;
  std::shared_ptr<TextModel> teacher_;
  KdOptions kd_;
  LmTeacherCache cache_;
};

}  // namespace qd
