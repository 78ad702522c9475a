// Distillation losses.
#pragma once

#include <torch/torch.h>

namespace qd {

// T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch.
// student, teacher: [B, K] logits. The T^2 keeps gradient magnitudes comparable across T
// (Hinton et al. 2015).
torch::Tensor kd_logit_loss(const torch::Tensor& student, const torch::Tensor& teacher, double temperature);

struct DistillLoss {
  torch::Tensor total;  // alpha * kd + (1 - alpha) * ce
  torch::Tensor kd;
  torch::Tensor ce;
};
DistillLoss distill_loss(const torch::Tensor& student, const torch::Tensor& teacher, const torch::Tensor& targets,
                         double alpha, double temperature, double label_smoothing = 0.0);

}  // namespace qd
