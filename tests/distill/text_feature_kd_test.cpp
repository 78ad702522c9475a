// Feature KD for transformers (distill/text_feature_kd.h): the masked MSE and the attention-relation
// KL against hand computations, their invariance to padding, the causal mask, and their
// gradients against finite differences.
#include "distill/text_feature_kd.h"

#include <gtest/gtest.h>

#include <cmath>

#include "common/error.h"

namespace qd {
namespace {

TEST(TextFeatureKd, MaskedMseAveragesRealTokensOnly) {
  const torch::Tensor s = torch::tensor({{{1.0f, 2.0f}, {3.0f, 4.0f}, {100.0f, 100.0f}}});
  const torch::Tensor t = torch::tensor({{{0.0f, 2.0f}, {1.0f, 1.0f}, {0.0f, 0.0f}}});
  const torch::Tensor mask = torch::tensor({{1, 1, 0}});
  // token 0: ((1)^2 + 0) / 2 = 0.5; token 1: (4 + 9) / 2 = 6.5; mean 3.5; the padded token ignored.
  EXPECT_FLOAT_EQ(masked_mse(s, t, mask).item<float>(), 3.5f);
}

// KL(softmax(t t^T / sqrt(d)) || softmax(s s^T / sqrt(d))) for one head, by loops.
double hand_relation_kl(const std::vector<std::vector<double>>& s, const std::vector<std::vector<double>>& t, int len,
                        bool causal) {
  const auto rel = [&](const std::vector<std::vector<double>>& x, int i) {
    const double d = static_cast<double>(x[0].size());
    std::vector<double> row;
    for (int j = 0; j < len; ++j) {
      if (causal && j > i) break;
      double dot = 0;
      for (size_t c = 0; c < x[0].size(); ++c) dot += x[i][c] * x[j][c];
      row.push_back(dot / std::sqrt(d));
    }
    double mx = -1e300, z = 0;
    for (double v : row) mx = std::max(mx, v);
    for (double v : row) z += std::exp(v - mx);
    for (double& v : row) v = std::exp(v - mx) / z;
    return row;
  };
  double total = 0;
  for (int i = 0; i < len; ++i) {
    const auto ps = rel(s, i), pt = rel(t, i);
    for (size_t j = 0; j < ps.size(); ++j) total += pt[j] * (std::log(pt[j]) - std::log(ps[j]));
  }
  return total / len;
}

TEST(TextFeatureKd, RelationKlMatchesAHandComputationAndIgnoresPadding) {
  const std::vector<std::vector<double>> s = {{0.5, -1.0, 2.0}, {1.5, 0.3, -0.2}, {-0.7, 0.9, 0.1}};
  const std::vector<std::vector<double>> t = {{1.0, 0.2}, {-0.4, 0.8}, {0.6, -1.1}};  // another width
  const auto tensor = [](const std::vector<std::vector<double>>& x, int pad) {
    std::vector<float> flat;
    for (const auto& r : x) flat.insert(flat.end(), r.begin(), r.end());
    for (int p = 0; p < pad * static_cast<int>(x[0].size()); ++p) flat.push_back(37.0f);  // garbage in padding
    return torch::tensor(flat).view({1, static_cast<int64_t>(x.size()) + pad, static_cast<int64_t>(x[0].size())});
  };
  for (const bool causal : {false, true}) {
    const double want = hand_relation_kl(s, t, 3, causal);
    const double got = relation_kl(tensor(s, 0), tensor(t, 0), torch::ones({1, 3}, torch::kLong), 1, causal).item<double>();
    EXPECT_NEAR(got, want, 1e-6) << (causal ? "causal" : "bidirectional");
    const double padded =
        relation_kl(tensor(s, 2), tensor(t, 2), torch::tensor({{1, 1, 1, 0, 0}}), 1, causal).item<double>();
    EXPECT_NEAR(padded, got, 1e-6) << "padding changes nothing";
  }
  EXPECT_GT(hand_relation_kl(s, t, 3, false), 1e-3) << "the example is not trivially zero";
  EXPECT_NEAR(relation_kl(tensor(s, 0), tensor(s, 0), torch::ones({1, 3}, torch::kLong), 1, false).item<double>(), 0.0,
              1e-7);
  EXPECT_THROW(relation_kl(tensor(s, 0), tensor(t, 0), torch::ones({1, 3}, torch::kLong), 2, false), UserError)
      << "2 relation heads do not divide a width of 3";
}

TEST(TextFeatureKd, GradientsMatchFiniteDifferences) {
  torch::manual_seed(4);
  const torch::Tensor t = torch::randn({2, 5, 8});
  const torch::Tensor mask = torch::tensor({{1, 1, 1, 1, 1}, {1, 1, 1, 0, 0}});
  torch::Tensor s = torch::randn({2, 5, 4}, torch::kFloat64).requires_grad_(true);
  const auto f = [&](const torch::Tensor& x) { return relation_kl(x, t, mask, 2, false) + masked_mse(x.repeat({1, 1, 2}), t, mask); };
  f(s).backward();
  const torch::Tensor g = s.grad().clone();
  torch::NoGradGuard no;
  for (const int64_t idx : {0, 7, 13, 22, 31, 39}) {
    torch::Tensor a = s.detach().clone(), b = s.detach().clone();
    a.view(-1)[idx] += 1e-3;
    b.view(-1)[idx] -= 1e-3;
    const double fd = (f(a).item<double>() - f(b).item<double>()) / 2e-3;
    EXPECT_NEAR(g.view(-1)[idx].item<double>(), fd, 2e-3 + 2e-2 * std::fabs(fd)) << "element " << idx;
  }
  EXPECT_EQ(g[1].narrow(0, 3, 2).abs().sum().item<double>(), 0.0) << "padded tokens get no gradient";
}

}  // namespace
}  // namespace qd
