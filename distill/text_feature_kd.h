// Feature distillation for transformers (issue 14), next to the logit KD of lm_distill_hook.h:
//   hidden-state KD: for each pair (student hidden state i <- teacher hidden state j, Hugging
//     Face's hidden_states numbering), a learned linear projection maps the student's width to the
//     teacher's and the loss is the mean squared error over the real (unpadded) tokens, averaged
//     over the pairs (TinyBERT, Jiao et al. 2020);
//   attention-relation KD: for one student and one teacher layer, the scaled dot-product relations
//     of queries with queries, keys with keys and values with values, split into R relation heads
//     (so the two widths and head counts may differ), as softmax distributions over the keys the
//     model may attend to; the loss is KL(teacher || student), averaged over the real queries, the
//     heads and the three relations (MiniLM-v2, Wang et al. 2021).
// The teacher runs every step (its hidden states are too large to cache); it is frozen and holds
// no optimizer state. The projections are the hook's parameters: they join the optimizer and the
// gradient all-reduce, and live in checkpoints. Each term is logged (loss_hidden, loss_attention).
#pragma once

#include <memory>

#include "common/train_hook.h"
#include "distill/distill_config.h"
#include "models/linear.h"

namespace qd {

class TextModel;

// Mean over the tokens where mask [B, T] is 1 of the mean over features of (s - t)^2; s, t [B, T, H].
torch::Tensor masked_mse(const torch::Tensor& s, const torch::Tensor& t, const torch::Tensor& mask);
// KL(teacher || student) of the relations softmax(x_r x_r^T / sqrt(d_r)) of s [B, T, Hs] and
// t [B, T, Ht] split into `heads` relation heads, over the keys mask [B, T] allows (and, if
// `causal`, no later ones), averaged over heads and real queries.
torch::Tensor relation_kl(const torch::Tensor& s, const torch::Tensor& t, const torch::Tensor& mask, int64_t heads,
                          bool causal);

class TextFeatureKdHook : public TrainHook {
 public:
  // Checks the layer numbers against both models (UserError naming the key).
  TextFeatureKdHook(DistillConfig cfg, std::shared_ptr<TextModel> teacher, std::shared_ptr<TextModel> student);
  ~TextFeatureKdHook() override;
  std::string name() const override { return "text_feature_kd"; }
  std::vector<torch::Tensor> parameters() override { return projections_->parameters(); }
  void on_train_begin(TrainState& state) override;
  void on_step_begin(TrainState& state) override;
  void on_loss(TrainState& state) override;
  void save_state(torch::serialize::OutputArchive& a) const override { projections_->save(a); }
  void load_state(torch::serialize::InputArchive& a) override { projections_->load(a); }

 private:
  DistillConfig cfg_;
  std::shared_ptr<TextModel> teacher_, student_;
  torch::nn::ModuleList projections_;
  TransformerTrace student_trace_, teacher_trace_;
  int64_t relation_heads_ = 0;
};

}  // namespace qd
