// Knowledge distillation as a TrainHook: the loss becomes
//   alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * CE  [+ hint_weight * sum of hint MSEs]
// with teacher logits from the cache where it is correct (teacher_cache.h), else from the
// frozen teacher every step. Feature-KD adapters are the hook's own trainable parameters.
#pragma once

#include <memory>
#include <optional>

#include "common/train_hook.h"
#include "distill/distill_config.h"
#include "distill/feature_adapter.h"
#include "distill/teacher.h"
#include "distill/teacher_cache.h"

namespace qd {

struct DistillHookOptions {
  DistillConfig cfg;
  AugmentConfig augment;      // the student's training augmentation
  uint64_t seed = 0;          // experiment seed (determines augmentation views)
  double label_smoothing = 0.0;
  int64_t batch_size = 500;   // for building the cache
  std::string cache_dir;      // resolved (never empty)
  bool channels_last = true;
};

class DistillHook : public TrainHook {
 public:
  DistillHook(DistillHookOptions opts, Teacher teacher, const ImageDataset& train);
  std::string name() const override { return "distill"; }
  std::vector<torch::Tensor> parameters() override;
  void on_train_begin(TrainState& state) override;
  void on_step_begin(TrainState& state) override;
  void on_loss(TrainState& state) override;
  void save_state(torch::serialize::OutputArchive& a) const override;
  void load_state(torch::serialize::InputArchive& a) override;

  // Whether teacher logits come from the cache (decided in on_train_begin), and why not.
  bool uses_cache() const { return cache_.has_value(); }
  const std::string& cache_note() const { return cache_note_; }
  const TeacherCache* cache() const { return cache_ ? &*cache_ : nullptr; }
  Model& teacher() { return *teacher_.model; }

 private:
  DistillHookOptions opts_;
  Teacher teacher_;
  const ImageDataset& train_;
  std::optional<TeacherCache> cache_;
  std::string cache_note_;
  torch::nn::ModuleList adapters_;  // one per hint pair
};

}  // namespace qd
