#include "distill/kd_loss.h"

namespace qd {

torch::Tensor kd_logit_loss(const torch::Tensor& student, const torch::Tensor& teacher, double temperature) {
  const torch::Tensor log_ps = torch::log_softmax(student.to(torch::kFloat32) / temperature, 1);  // [B, K]
  const torch::Tensor log_pt = torch::log_softmax(teacher.to(torch::kFloat32) / temperature, 1);
  return (log_pt.exp() * (log_pt - log_ps)).sum(1).mean() * (temperature * temperature);
}

DistillLoss distill_loss(const torch::Tensor& student, const torch::Tensor& teacher, const torch::Tensor& targets,
                         double alpha, double temperature, double label_smoothing) {
  namespace F = torch::nn::functional;
  DistillLoss l;
  l.kd = kd_logit_loss(student, teacher, temperature);
  l.ce = F::cross_entropy(student, targets, F::CrossEntropyFuncOptions().label_smoothing(label_smoothing));
  l.total = alpha * l.kd + (1.0 - alpha) * l.ce;
  return l;
}

}  // namespace qd
