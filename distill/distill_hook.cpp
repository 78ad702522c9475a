#include "distill/distill_hook.h"

#include <filesystem>

#include "common/error.h"
#include "common/log.h"
#include "data/augment.h"
#include "distill/kd_loss.h"

namespace qd {

DistillHook::DistillHook(DistillHookOptions opts, Teacher teacher, const ImageDataset& train)
    : opts_(std::move(opts)), teacher_(std::move(teacher)), train_(train) {}

std::vector<torch::Tensor> DistillHook::parameters() { return adapters_->parameters(); }

void DistillHook::on_train_begin(TrainState& state) {
  auto* student = dynamic_cast<Model*>(state.model);
  QD_CHECK(student != nullptr, Error, "DistillHook: the trained module is not a zoo Model");

  // Feature-KD adapters, shaped by one dry forward of both networks.
  if (!opts_.cfg.hint_student.empty() && adapters_->size() == 0) {
    torch::NoGradGuard g;
    const bool was_training = student->is_training();
    student->eval();
    torch::Tensor x = slice_batch(train_, 0, 1).inputs.to(state.device);
    student->set_capture(opts_.cfg.hint_student);
    teacher_.model->set_capture(opts_.cfg.hint_teacher);
    student->forward(x);
    teacher_.model->forward(x);
    for (size_t i = 0; i < opts_.cfg.hint_student.size(); ++i) {
      const auto s = student->captured().at(opts_.cfg.hint_student[i]).sizes().slice(1).vec();
      const auto t = teacher_.model->captured().at(opts_.cfg.hint_teacher[i]).sizes().slice(1).vec();
      adapters_->push_back(FeatureAdapter(s, t));
    }
    adapters_->to(state.device);
    student->train(was_training);
  }

  // Teacher logits from the cache only where the cached inputs are exactly the student's.
  cache_.reset();
  const bool augmented = opts_.augment.any();
  if (!opts_.cfg.cache) {
    cache_note_ = "distill.cache is false: the teacher runs every step";
  } else if (!opts_.cfg.hint_student.empty()) {
    cache_note_ = "feature KD needs the teacher's intermediate maps, which are not cached: the teacher runs every step";
  } else if (augmented && opts_.augment.views == 0) {
    cache_note_ = "random augmentation with data.augment.views = 0 makes a fresh view every epoch, so no cache "
                  "can be right: the teacher runs every step (set data.augment.views: K to cache K views)";
  } else {
    TeacherCacheSpec spec;
    spec.views = augmented ? opts_.augment.views : 1;
    spec.augment = opts_.augment;
    spec.seed = static_cast<uint64_t>(opts_.augment.view_seed);
    spec.batch_size = opts_.batch_size;
    spec.channels_last = opts_.channels_last;
    spec.key = teacher_cache_key(teacher_.fingerprint, train_, spec.views, opts_.augment, spec.seed);
    spec.path = (std::filesystem::path(opts_.cache_dir) /
                 ("teacher_" + fingerprint_bytes(spec.key.data(), spec.key.size()) + ".qdc"))
                    .string();
    cache_ = TeacherCache::load_or_build(spec, *teacher_.model, train_, state.device, state.comm);
    cache_note_ = cache_->built ? "teacher cache built: " + spec.path : "teacher cache reused: " + spec.path;
  }
  log_info("distill: ", cache_note_);
}

void DistillHook::on_step_begin(TrainState& state) {
  if (!opts_.cfg.hint_student.empty()) static_cast<Model*>(state.model)->set_capture(opts_.cfg.hint_student);
}

void DistillHook::on_loss(TrainState& state) {
  const bool hints = !opts_.cfg.hint_student.empty();
  torch::Tensor teacher_logits;  // [B, K]
  if (cache_ && !hints) {
    std::vector<int64_t> views;
    if (opts_.augment.any())
      for (int64_t idx : state.sample_indices) views.push_back(augment_view(opts_.augment, opts_.seed, state.epoch, idx));
    teacher_logits = cache_->lookup(state.sample_indices, views, state.device);
  } else {
    // Feature KD needs the teacher's intermediate maps, which the cache does not hold.
    torch::NoGradGuard g;
    teacher_.model->set_capture(hints ? opts_.cfg.hint_teacher : std::vector<std::string>{});
    teacher_logits = teacher_.model->forward(state.inputs);
  }
  DistillLoss l = distill_loss(state.logits, teacher_logits, state.targets, opts_.cfg.alpha, opts_.cfg.temperature,
                               opts_.label_smoothing);
  state.loss = l.total;
  state.loss_terms["ce"] = l.ce.detach();
  state.loss_terms["kd"] = l.kd.detach();
  if (hints) {
    auto* student = static_cast<Model*>(state.model);
    torch::Tensor hint = torch::zeros({}, state.logits.options());
    for (size_t i = 0; i < adapters_->size(); ++i) {
      hint = hint + adapters_[i]->as<FeatureAdapterImpl>()->loss(student->captured().at(opts_.cfg.hint_student[i]),
                                                             teacher_.model->captured().at(opts_.cfg.hint_teacher[i]));
    }
    state.loss = state.loss + opts_.cfg.hint_weight * hint;
    state.loss_terms["hint"] = hint.detach();
  }
}

void DistillHook::save_state(torch::serialize::OutputArchive& a) const { adapters_->save(a); }
void DistillHook::load_state(torch::serialize::InputArchive& a) { adapters_->load(a); }

}  // namespace qd
