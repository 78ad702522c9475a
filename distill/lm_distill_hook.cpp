#include "distill/lm_distill_hook.h"

#include "common/error.h"
#include "models/text_model.h"

namespace qd {

LmDistillHook::LmDistillHook(LmDistillOptions o, std::shared_ptr<TextModel> teacher)
    : o_(std::move(o)), teacher_(std::move(teacher)) {
  kd_.divergence = o_.cfg.divergence;
  kd_.temperature = o_.cfg.temperature;
  kd_.forward_weight = o_.cfg.forward_weight;
  teacher_->eval();
  for (auto& p : teacher_->parameters()) p.set_requires_grad(false);
}

void LmDistillHook::on_train_begin(TrainState& state) {
  teacher_->to(state.device);
  if (!uses_cache()) return;
  LmCacheSpec spec;
  spec.path = o_.cache_path;
  spec.top_k = o_.cfg.top_k;
  spec.temperature = o_.cfg.temperature;
  spec.key = lm_cache_key(o_.teacher_fingerprint, o_.sequences, spec.top_k, spec.temperature);
  spec.progress = o_.progress;
  cache_ = LmTeacherCache::load_or_build(spec, *teacher_, o_.sequences, state.device, state.comm);
}

void LmDistillHook::on_loss(TrainState& state) {
  const int64_t vocab = state.logits.size(-1);
  const torch::Tensor student = state.logits.reshape({-1, vocab});  // [B * T, V]
  const torch::Tensor valid = state.targets.reshape({-1}).ne(-100);
  torch::Tensor kd;
  if (uses_cache()) {
    kd = token_kd_loss(student, cache_.lookup(state.sample_indices, state.device), valid, kd_);
  } else {
    torch::Tensor teacher_logits;
    {
      torch::NoGradGuard g;
      teacher_logits = teacher_->forward_text(state.inputs, state.mask).reshape({-1, vocab});
    }
    kd = token_kd_loss(student, teacher_logits, valid, kd_);
  }
  state.loss_terms["kd"] = kd.detach();
  state.loss = o_.cfg.alpha * kd + (1.0 - o_.cfg.alpha) * state.loss;
}

}  // namespace qd
