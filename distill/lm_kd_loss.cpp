#include "distill/lm_kd_loss.h"

#include <limits>

#include "common/error.h"

namespace qd {

namespace {

// p (log p - log q) summed over the last dimension, 0 where p is 0 (whatever log q is), with
// gradients that stay finite there: the masked logs are replaced before they are multiplied.
torch::Tensor kl_terms(const torch::Tensor& log_p, const torch::Tensor& log_q) {
  const torch::Tensor present = log_p.isfinite();
  const torch::Tensor zero = torch::zeros({}, log_p.options());
  const torch::Tensor lp = torch::where(present, log_p, zero), lq = torch::where(present, log_q, zero);
  return torch::where(present, lp.exp() * (lp - lq), zero).sum(-1);
}

// Combines per-token forward / reverse KL on the counted tokens.
torch::Tensor combine(const torch::Tensor& log_p, const torch::Tensor& log_q, const torch::Tensor& valid,
                      const KdOptions& o) {
  torch::Tensor per_token;
  switch (o.divergence) {
    case KdDivergence::kForward: per_token = kl_terms(log_p, log_q); break;
    case KdDivergence::kReverse: per_token = kl_terms(log_q, log_p); break;
    case KdDivergence::kMix:
      per_token = o.forward_weight * kl_terms(log_p, log_q) + (1.0 - o.forward_weight) * kl_terms(log_q, log_p);
      break;
  }
  const torch::Tensor w = valid.to(per_token.dtype());
  return o.temperature * o.temperature * (per_token * w).sum() / w.sum().clamp_min(1.0);
}

void check_shapes(const torch::Tensor& student, const torch::Tensor& valid) {
  QD_CHECK(student.dim() == 2 && valid.dim() == 1 && valid.size(0) == student.size(0), Error,
           "token KD: student logits [N, V] and valid [N] expected");
}

// Forward KL against a top-k target, fused: the composed version below materializes half a dozen
// [N, V] tensors (divide, log-sum-exp, scatter, a second log-sum-exp, cat, and their backward); this
// one makes one, e = exp(z - max) with the k ids zeroed, in a few vectorized passes, keeps it for
// the backward and does the per-row bookkeeping on [N, k] in double. With q the student's and p the
// target's k + 1 classes, the gradient with respect to s = z / T is q_j - p_j on the k ids and
// q_j (1 - p_rest / q_rest) on every other id. The rest class is summed directly (never 1 - the
// top-k mass), so a student whose mass sits on the k ids keeps an exact q_rest.
struct TopKForwardKl : public torch::autograd::Function<TopKForwardKl> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& student, const torch::Tensor& ids,
                               const torch::Tensor& target_logits, const torch::Tensor& rest_lse, const torch::Tensor& valid,
                               double temperature) {
    torch::NoGradGuard g;
    const double inv_t = 1.0 / temperature;
    const torch::Tensor z = temperature == 1.0 ? student : student * inv_t;  // [N, V] float32
    const torch::Tensor id = ids.to(torch::kInt64);
    const torch::Tensor m = std::get<0>(z.max(-1, /*keepdim=*/true));        // [N, 1]
    torch::Tensor e = (z - m).exp_();
    const torch::Tensor z_k = (z.gather(1, id) - m).to(torch::kFloat64);   // [N, k]
    e.scatter_(1, id, 0.0);
    const torch::Tensor rest = e.sum(-1, /*keepdim=*/true, torch::kFloat64);        // [N, 1]
    const torch::Tensor all = rest + z_k.exp().sum(-1, /*keepdim=*/true);
    const torch::Tensor log_all = all.log();
    const torch::Tensor log_q_k = z_k - log_all, log_q_rest = rest.log() - log_all;
    // The target's k + 1 classes.
    const torch::Tensor zt = target_logits.to(torch::kFloat64) * inv_t, rl = rest_lse.to(torch::kFloat64).unsqueeze(-1);
    const torch::Tensor lse_t = torch::logaddexp(zt.logsumexp(-1, true), rl);
    const torch::Tensor log_p_k = zt - lse_t, log_p_rest = rl - lse_t;
    const torch::Tensor p_k = log_p_k.exp(), p_rest = log_p_rest.exp();
    const torch::Tensor zero = torch::zeros({}, p_k.options());
    const torch::Tensor w = valid.to(torch::kFloat64).unsqueeze(-1);
    const torch::Tensor rows = torch::where(p_k > 0, p_k * (log_p_k - log_q_k), zero).sum(-1, true) +
                               torch::where(p_rest > 0, p_rest * (log_p_rest - log_q_rest), zero);
    const double count = std::max(1.0, valid.sum().item<double>());
    ctx->save_for_backward({e, id, all, log_q_k.exp() - p_k, torch::where(p_rest > 0, p_rest / log_q_rest.exp(), zero), w});
    ctx->saved_data["scale"] = temperature / count;  // d(T^2 KL / count) / dz = (T / count) dKL / ds
    return ((rows * w).sum() * (temperature * temperature / count)).to(torch::kFloat32);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::variable_list grad) {
    torch::NoGradGuard g;
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &e = saved[0], &id = saved[1], &all = saved[2], &q_minus_p = saved[3], &ratio = saved[4], &w = saved[5];
    const torch::Tensor scale = grad[0].to(torch::kFloat64) * ctx->saved_data["scale"].toDouble() * w;  // [N, 1]
    torch::Tensor out = e * (scale * (1.0 - ratio) / all).to(e.scalar_type());  // q_j (1 - p_rest / q_rest) off the k ids
    out.scatter_(1, id, (scale * q_minus_p).to(e.scalar_type()));
    return {out, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

TopKTarget make_topk_target(const torch::Tensor& teacher_logits, int64_t k, double temperature) {
  torch::NoGradGuard g;
  const int64_t v = teacher_logits.size(-1);
  QD_CHECK(k >= 1 && k <= v, Error, "top-k target: k = ", k, " is not in [1, ", v, "]");
  const torch::Tensor z = teacher_logits.to(torch::kFloat32);
  auto [values, ids] = z.topk(k, -1);
  TopKTarget t;
  t.ids = ids;
  t.logits = values;
  t.temperature = temperature;
  if (k == v) {
    t.rest_lse = torch::full({z.size(0)}, -std::numeric_limits<float>::infinity(), z.options());
  } else {
    const torch::Tensor rest = (z / temperature).scatter(-1, ids, -std::numeric_limits<float>::infinity());
    t.rest_lse = rest.logsumexp(-1);
  }
  return t;
}

torch::Tensor token_kd_loss(const torch::Tensor& student, const torch::Tensor& teacher, const torch::Tensor& valid,
                            const KdOptions& o) {
  check_shapes(student, valid);
  QD_CHECK(teacher.sizes() == student.sizes(), Error, "token KD: teacher and student logits differ in shape");
  const torch::Tensor log_q = torch::log_softmax(student.to(torch::kFloat32) / o.temperature, -1);
  const torch::Tensor log_p = torch::log_softmax(teacher.detach().to(torch::kFloat32) / o.temperature, -1);
  return combine(log_p, log_q, valid, o);
}

torch::Tensor token_kd_loss(const torch::Tensor& student, const TopKTarget& t, const torch::Tensor& valid,
                            const KdOptions& o) {
  check_shapes(student, valid);
  QD_CHECK(t.temperature == o.temperature, Error, "token KD: the top-k target was made at temperature ", t.temperature,
           ", the loss asks for ", o.temperature);
  if (o.divergence == KdDivergence::kForward && student.scalar_type() == torch::kFloat32 && t.ids.size(-1) < student.size(-1))
    return TopKForwardKl::apply(student, t.ids, t.logits, t.rest_lse, valid, o.temperature);
  return token_kd_loss_composed(student, t, valid, o);
}

torch::Tensor token_kd_loss_composed(const torch::Tensor& student, const TopKTarget& t, const torch::Tensor& valid,
                                     const KdOptions& o) {
  check_shapes(student, valid);
  const torch::Tensor s = student.to(torch::kFloat32) / o.temperature;  // [N, V]
  const torch::Tensor lse_s = s.logsumexp(-1, /*keepdim=*/true);         // [N, 1]
  // Student: the k classes, and the rest lumped (its own log-sum-exp outside the k ids).
  const torch::Tensor log_q_k = s.gather(-1, t.ids) - lse_s;                                         // [N, k]
  const torch::Tensor zt = t.logits.to(torch::kFloat32) / o.temperature;                             // [N, k]
  if (t.ids.size(-1) == s.size(-1))  // k = V: no rest class (and no all -inf row to differentiate)
    return combine(torch::log_softmax(zt, -1), log_q_k, valid, o);
  const torch::Tensor s_rest = s.scatter(-1, t.ids, -std::numeric_limits<float>::infinity());
  const torch::Tensor log_q_rest = s_rest.logsumexp(-1, true) - lse_s;                               // [N, 1]
  // Teacher: the same k + 1 classes from the target.
  const torch::Tensor lse_t = torch::logaddexp(zt.logsumexp(-1, true), t.rest_lse.to(torch::kFloat32).unsqueeze(-1));
  const torch::Tensor log_p_k = zt - lse_t, log_p_rest = t.rest_lse.to(torch::kFloat32).unsqueeze(-1) - lse_t;
  return combine(torch::cat({log_p_k, log_p_rest}, -1), torch::cat({log_q_k, log_q_rest}, -1), valid, o);
}

}  // namespace qd
