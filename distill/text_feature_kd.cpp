#include "distill/text_feature_kd.h"

#include <cmath>

#include "common/error.h"
#include "models/text_model.h"

namespace qd {

torch::Tensor masked_mse(const torch::Tensor& s, const torch::Tensor& t, const torch::Tensor& mask) {
  const torch::Tensor m = mask.to(torch::kFloat32);
  const torch::Tensor per_token = (s.to(torch::kFloat32) - t.to(torch::kFloat32)).pow(2).mean(-1);  // [B, T]
  return (per_token * m).sum() / m.sum().clamp_min(1.0);
}

namespace {
// log softmax(x_r x_r^T / sqrt(d_r)) over the allowed keys: [B, R, T, T].
torch::Tensor log_relations(const torch::Tensor& x, const torch::Tensor& allowed, int64_t heads) {
  const int64_t b = x.size(0), t = x.size(1), d = x.size(2) / heads;
  const torch::Tensor h = x.to(torch::kFloat32).view({b, t, heads, d}).transpose(1, 2);  // [B, R, T, d]
  const torch::Tensor scores = torch::matmul(h, h.transpose(-1, -2)) / std::sqrt(static_cast<double>(d));
  // A large negative, not -inf: the teacher's masked probabilities are exactly 0 and 0 * finite = 0.
  return torch::log_softmax(scores.masked_fill(allowed.logical_not(), -1e9), -1);
}
}  // namespace

torch::Tensor relation_kl(const torch::Tensor& s, const torch::Tensor& t, const torch::Tensor& mask, int64_t heads,
                          bool causal) {
  const int64_t b = s.size(0), len = s.size(1);
  QD_CHECK(s.size(2) % heads == 0 && t.size(2) % heads == 0, UserError, "distill.attention_heads: ", heads,
           " relation heads do not divide the widths of the projections (student ", s.size(2), ", teacher ", t.size(2),
           "; grouped-query keys and values are narrower than the queries): choose a common divisor");
  torch::Tensor allowed = mask.to(torch::kBool).view({b, 1, 1, len});
  if (causal) allowed = allowed & torch::ones({len, len}, allowed.options()).tril().view({1, 1, len, len});
  const torch::Tensor ls = log_relations(s, allowed, heads), lt = log_relations(t, allowed, heads);
  const torch::Tensor kl = (lt.exp() * (lt - ls)).sum(-1);  // [B, R, T]
  const torch::Tensor q = mask.to(torch::kFloat32).view({b, 1, len});
  return (kl * q).sum() / (q.sum() * static_cast<double>(heads)).clamp_min(1.0);
}

TextFeatureKdHook::TextFeatureKdHook(DistillConfig cfg, std::shared_ptr<TextModel> teacher,
                                     std::shared_ptr<TextModel> student)
    : cfg_(std::move(cfg)), teacher_(std::move(teacher)), student_(std::move(student)) {
  teacher_->eval();
  for (auto& p : teacher_->parameters()) p.set_requires_grad(false);
  const int64_t sl = student_->num_layers(), tl = teacher_->num_layers();
  for (size_t i = 0; i < cfg_.hidden_student.size(); ++i) {
    QD_CHECK(cfg_.hidden_student[i] <= sl, UserError, "distill.hidden_student: ", cfg_.hidden_student[i],
             " is not a hidden state of the student (0 = embeddings, 1..", sl, " = its layers)");
    QD_CHECK(cfg_.hidden_teacher[i] <= tl, UserError, "distill.hidden_teacher: ", cfg_.hidden_teacher[i],
             " is not a hidden state of the teacher (0 = embeddings, 1..", tl, " = its layers)");
    projections_->push_back(Linear(student_->hidden_size(), teacher_->hidden_size()));
  }
  if (cfg_.attention_student > 0) {
    QD_CHECK(cfg_.attention_student <= sl, UserError, "distill.attention_student: the student has layers 1..", sl);
    QD_CHECK(cfg_.attention_teacher <= tl, UserError, "distill.attention_teacher: the teacher has layers 1..", tl);
    relation_heads_ = cfg_.attention_heads > 0 ? cfg_.attention_heads : student_->num_heads();
    QD_CHECK(student_->hidden_size() % relation_heads_ == 0 && teacher_->hidden_size() % relation_heads_ == 0, UserError,
             "distill.attention_heads: ", relation_heads_, " relation heads must divide both hidden sizes (student ",
             student_->hidden_size(), ", teacher ", teacher_->hidden_size(), ")");
  }
  student_trace_.want_hidden = teacher_trace_.want_hidden = !cfg_.hidden_student.empty();
  student_trace_.want_qkv = teacher_trace_.want_qkv = cfg_.attention_student > 0;
  teacher_trace_.in_eval = true;
}

TextFeatureKdHook::~TextFeatureKdHook() {
  student_->set_trace(nullptr);
  teacher_->set_trace(nullptr);
}

void TextFeatureKdHook::on_train_begin(TrainState& state) {
  teacher_->to(state.device);
  projections_->to(state.device);
  student_->set_trace(&student_trace_);
  teacher_->set_trace(&teacher_trace_);
}

void TextFeatureKdHook::on_step_begin(TrainState&) { student_trace_.clear(); }

void TextFeatureKdHook::on_loss(TrainState& state) {
  teacher_trace_.clear();
  {
    torch::NoGradGuard g;
    teacher_->forward_text(state.inputs, state.mask);
  }
  if (!cfg_.hidden_student.empty()) {
    QD_CHECK(!student_trace_.hidden.empty(), UserError, "feature KD: the student recorded no hidden states");
    torch::Tensor sum = torch::zeros({}, state.loss.options());
    for (size_t i = 0; i < cfg_.hidden_student.size(); ++i) {
      const torch::Tensor s = student_trace_.hidden.at(static_cast<size_t>(cfg_.hidden_student[i]));
      const torch::Tensor t = teacher_trace_.hidden.at(static_cast<size_t>(cfg_.hidden_teacher[i]));
      sum = sum + masked_mse(projections_[i]->as<LinearImpl>()->forward(s), t, state.mask);
    }
    const torch::Tensor hidden = sum / static_cast<double>(cfg_.hidden_student.size());
    state.loss_terms["hidden"] = hidden.detach();
    state.loss = state.loss + cfg_.hidden_weight * hidden;
  }
  if (cfg_.attention_student > 0) {
    const size_t si = static_cast<size_t>(cfg_.attention_student - 1), ti = static_cast<size_t>(cfg_.attention_teacher - 1);
    const bool causal = student_->causal();
    const torch::Tensor attention =
        (relation_kl(student_trace_.q.at(si), teacher_trace_.q.at(ti), state.mask, relation_heads_, causal) +
         relation_kl(student_trace_.k.at(si), teacher_trace_.k.at(ti), state.mask, relation_heads_, causal) +
         relation_kl(student_trace_.v.at(si), teacher_trace_.v.at(ti), state.mask, relation_heads_, causal)) /
        3.0;
    state.loss_terms["attention"] = attention.detach();
    state.loss = state.loss + cfg_.attention_weight * attention;
  }
}

}  // namespace qd
