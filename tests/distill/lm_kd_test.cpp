// Token-level KD losses for language models, checked by hand: forward and reverse KL on a
// 4-token vocabulary computed in double from their definitions, the top-k target equal to full KD
// (value and gradients) when k = V, the lumped "rest" class for k < V, padding not counted.
#include "distill/lm_kd_loss.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

namespace qd {
namespace {

std::vector<double> softmax(const std::vector<double>& z, double t) {
  double m = -1e300, s = 0;
  for (double v : z) m = std::max(m, v / t);
  std::vector<double> p;
  for (double v : z) p.push_back(std::exp(v / t - m)), s += p.back();
  for (double& v : p) v /= s;
  return p;
}
double kl(const std::vector<double>& p, const std::vector<double>& q) {
  double s = 0;
  for (size_t i = 0; i < p.size(); ++i) s += p[i] > 0 ? p[i] * std::log(p[i] / q[i]) : 0.0;
  return s;
}

TEST(TokenKd, ForwardReverseAndMixMatchTheDefinitions) {
  const std::vector<double> zs = {1.0, -0.5, 2.0, 0.3}, zt = {0.2, 1.5, 1.0, -1.0};
  const double t = 2.0;
  const auto ps = softmax(zs, t), pt = softmax(zt, t);
  const torch::Tensor s = torch::tensor({1.0f, -0.5f, 2.0f, 0.3f}).view({1, 4});
  const torch::Tensor te = torch::tensor({0.2f, 1.5f, 1.0f, -1.0f}).view({1, 4});
  const torch::Tensor valid = torch::ones({1}, torch::kBool);
  KdOptions o;
  o.temperature = t;
  EXPECT_NEAR(token_kd_loss(s, te, valid, o).item<double>(), t * t * kl(pt, ps), 1e-6);
  o.divergence = KdDivergence::kReverse;
  EXPECT_NEAR(token_kd_loss(s, te, valid, o).item<double>(), t * t * kl(ps, pt), 1e-6);
  o.divergence = KdDivergence::kMix;
  o.forward_weight = 0.25;
  EXPECT_NEAR(token_kd_loss(s, te, valid, o).item<double>(), t * t * (0.25 * kl(pt, ps) + 0.75 * kl(ps, pt)), 1e-6);
  EXPECT_NEAR(token_kd_loss(te, te, valid, o).item<double>(), 0.0, 1e-7) << "no divergence from itself";
}

TEST(TokenKd, TopKEqualsFullKdWhenKIsTheVocabulary) {
  torch::manual_seed(0);
  const torch::Tensor teacher = torch::randn({6, 9}) * 3;
  const torch::Tensor valid = torch::tensor({1, 1, 0, 1, 1, 1}, torch::kBool);
  for (auto div : {KdDivergence::kForward, KdDivergence::kReverse, KdDivergence::kMix}) {
    KdOptions o;
    o.divergence = div;
    o.temperature = 1.5;
    const torch::Tensor s1 = torch::randn({6, 9}).requires_grad_(true);
    const torch::Tensor s2 = s1.detach().clone().requires_grad_(true);
    const torch::Tensor full = token_kd_loss(s1, teacher, valid, o);
    const torch::Tensor topk = token_kd_loss(s2, make_topk_target(teacher, 9, 1.5), valid, o);
    EXPECT_NEAR(topk.item<double>(), full.item<double>(), 1e-5);
    full.backward();
    topk.backward();
    EXPECT_TRUE(torch::allclose(s1.grad(), s2.grad(), 1e-5, 1e-6));
    EXPECT_TRUE(torch::isfinite(s2.grad()).all().item<bool>());
    EXPECT_EQ(s1.grad()[2].abs().sum().item<double>(), 0.0) << "the padded token gets no gradient";
  }
}

TEST(TokenKd, TopKLumpsTheRestIntoOneClass) {
  // V = 4, k = 2: the teacher's top-2 are ids 1 and 2; ids 0 and 3 form the rest on both sides.
  const std::vector<double> zs = {1.0, -0.5, 2.0, 0.3}, zt = {0.2, 1.5, 1.0, -1.0};
  const auto ps = softmax(zs, 1.0), pt = softmax(zt, 1.0);
  const std::vector<double> p2 = {pt[1], pt[2], pt[0] + pt[3]}, q2 = {ps[1], ps[2], ps[0] + ps[3]};
  const torch::Tensor s = torch::tensor({1.0f, -0.5f, 2.0f, 0.3f}).view({1, 4});
  const torch::Tensor te = torch::tensor({0.2f, 1.5f, 1.0f, -1.0f}).view({1, 4});
  const TopKTarget tk = make_topk_target(te, 2, 1.0);
  EXPECT_EQ(tk.ids[0][0].item<int64_t>(), 1);
  EXPECT_EQ(tk.ids[0][1].item<int64_t>(), 2);
  EXPECT_NEAR(tk.rest_lse[0].item<double>(), std::log(std::exp(0.2) + std::exp(-1.0)), 1e-6);
  KdOptions o;
  EXPECT_NEAR(token_kd_loss(s, tk, torch::ones({1}, torch::kBool), o).item<double>(), kl(p2, q2), 1e-6);
  o.divergence = KdDivergence::kReverse;
  EXPECT_NEAR(token_kd_loss(s, tk, torch::ones({1}, torch::kBool), o).item<double>(), kl(q2, p2), 1e-6);
  // The coarsened KL never exceeds the full one (data processing inequality).
  o.divergence = KdDivergence::kForward;
  EXPECT_LE(token_kd_loss(s, tk, torch::ones({1}, torch::kBool), o).item<double>(),
            token_kd_loss(s, te, torch::ones({1}, torch::kBool), o).item<double>() + 1e-7);
}


// The fused forward-KL kernel (CPU, k < V) against the composed tensor operations: the loss and the
// gradient, at two temperatures, with padded rows, a row whose top-k holds nearly all of the
// student's mass (the rest class is tiny), and an upstream gradient that is not 1.
TEST(TokenKd, FusedTopKForwardKlMatchesTheComposedLossAndGradient) {
  torch::manual_seed(3);
  const int64_t n = 7, v = 300, k = 16;
  const torch::Tensor teacher = torch::randn({n, v}) * 4;
  torch::Tensor student = torch::randn({n, v}) * 3;
  const TopKTarget probe = make_topk_target(teacher, k, 1.0);
  student[4].index_fill_(0, probe.ids[4], 25.0f);  // the student's mass sits on the teacher's top-k
  const torch::Tensor valid = torch::tensor({1, 1, 0, 1, 1, 0, 1}, torch::kBool);
  for (const double t : {1.0, 2.5}) {
    KdOptions o;
    o.temperature = t;
    const TopKTarget tk = make_topk_target(teacher, k, t);
    const torch::Tensor s1 = student.clone().requires_grad_(true), s2 = student.clone().requires_grad_(true);
    const torch::Tensor fused = token_kd_loss(s1, tk, valid, o), composed = token_kd_loss_composed(s2, tk, valid, o);
    EXPECT_NEAR(fused.item<double>(), composed.item<double>(), 1e-5 * composed.item<double>()) << "T " << t;
    (fused * 3.0).backward();
    (composed * 3.0).backward();
    EXPECT_TRUE(torch::allclose(s1.grad(), s2.grad(), 1e-4, 1e-7))
        << "T " << t << ": max difference " << (s1.grad() - s2.grad()).abs().max().item<double>();
    EXPECT_EQ(s1.grad()[2].abs().sum().item<double>(), 0.0) << "the padded token gets no gradient";
    EXPECT_GT(s1.grad()[4].abs().sum().item<double>(), 0.0);
    // The gradient of a row sums to 0 (softmax), as a finite difference would need.
    EXPECT_NEAR(s1.grad()[0].sum().item<double>(), 0.0, 1e-6);
  }
}

}  // namespace
}  // namespace qd
