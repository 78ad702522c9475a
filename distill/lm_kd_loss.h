// Token-level logit distillation for language models (issue 14): forward KL, reverse KL and a
// weighted mix, against the teacher's full logits or against a top-k target (the k largest
// teacher logits plus the log-sum-exp of the rest), which is what a teacher-output cache can
// hold for a 49k vocabulary.
//
// With p the teacher's and q the student's distribution at temperature T (softmax(z / T)):
//   forward KL(p || q) = sum_i p_i (log p_i - log q_i)     (mean-seeking, Hinton's KD)
//   reverse KL(q || p) = sum_i q_i (log q_i - log p_i)     (mode-seeking, MiniLLM)
// each multiplied by T^2 (gradient magnitudes comparable across T) and averaged over the counted
// tokens. A top-k target keeps the k ids exactly and lumps the other V - k into one "rest" class
// on both sides, so for k = V it is exactly the full loss; for k < V it is the KL between the
// two distributions coarsened to k + 1 classes.
#pragma once

#include <torch/torch.h>

#include "distill/distill_config.h"

namespace qd {

struct KdOptions {
  KdDivergence divergence = KdDivergence::kForward;
  double temperature = 1.0;
  double forward_weight = 0.5;  // kMix: w * forward + (1 - w) * reverse
};

// The teacher's top-k at temperature T: ids [N, k] int64 (largest first), their raw logits
// [N, k] float32, and rest_lse [N] = logsumexp over the other ids of z / T (-inf when k = V).
struct TopKTarget {
  torch::Tensor ids, logits, rest_lse;
  double temperature = 1.0;
};
TopKTarget make_topk_target(const torch::Tensor& teacher_logits, int64_t k, double temperature);

// student [N, V] logits; teacher [N, V] logits; valid [N] bool (false: padding, not counted).
torch::Tensor token_kd_loss(const torch::Tensor& student, const torch::Tensor& teacher, const torch::Tensor& valid,
                            const KdOptions& o);
// The same against a top-k target (its temperature must equal o.temperature). Forward KL on a
// float32 student with k < V runs one fused autograd function (one [N, V] buffer, a few vectorized
// passes, the gradient in closed form); the rest composes tensor operations (token_kd_loss_composed),
// which the tests hold the fused one to.
torch::Tensor token_kd_loss(const torch::Tensor& student, const TopKTarget& teacher, const torch::Tensor& valid,
                            const KdOptions& o);
torch::Tensor token_kd_loss_composed(const torch::Tensor& student, const TopKTarget& teacher, const torch::Tensor& valid,
                                     const KdOptions& o);

}  // namespace qd
