// Low-rank factorization (models/lowrank.h): the SVD factors reconstruct the weight exactly at
// full rank and with exactly the dropped singular values' error below it; energy picks the rank a
// hand count gives; activation-aware factors put less error where the inputs are large; a model is
// factored only where that saves parameters, both factors get QAT twins, and model.ranks rebuilds
// the shape that a checkpoint then fills.
#include <gtest/gtest.h>

#include "../pretrained_util.h"
#include "common/error.h"
#include "models/linear.h"
#include "models/lowrank.h"
#include "models/text_model.h"
#include "qat/module_qat.h"
#include "trainer/experiment_config.h"

namespace qd {
namespace {

torch::Tensor random_weight(int64_t out, int64_t in, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randn({out, in}, torch::kFloat64);
}

TEST(LowRank, FullRankSvdReconstructsTheWeightExactly) {
  for (const auto& [out, in] : std::vector<std::pair<int64_t, int64_t>>{{24, 40}, {40, 24}}) {
    const torch::Tensor w = random_weight(out, in, 1);
    const LowRankFactors f = svd_factors(w, std::min(out, in));
    EXPECT_EQ(f.a.sizes(), torch::IntArrayRef({std::min(out, in), in}));
    EXPECT_EQ(f.b.sizes(), torch::IntArrayRef({out, std::min(out, in)}));
    EXPECT_LT((f.b.matmul(f.a) - w).abs().max().item<double>(), 1e-10);
    // Activation-aware: the column scaling is undone in a, so the product is still w.
    const torch::Tensor s = torch::rand({in}, torch::kFloat64) * 10 + 0.1;
    const LowRankFactors g = svd_factors(w, std::min(out, in), s);
    EXPECT_LT((g.b.matmul(g.a) - w).abs().max().item<double>(), 1e-9);
  }
}

TEST(LowRank, TruncationErrorIsExactlyTheDroppedSingularValues) {
  const torch::Tensor w = random_weight(30, 20, 2);
  const torch::Tensor sigma = torch::linalg_svdvals(w);
  for (int64_t r : {1, 5, 12, 19}) {
    const LowRankFactors f = svd_factors(w, r);
    const double err = (w - f.b.matmul(f.a)).pow(2).sum().item<double>();
    const double dropped = sigma.narrow(0, r, sigma.numel() - r).pow(2).sum().item<double>();
    EXPECT_NEAR(err, dropped, 1e-9 * (1 + dropped)) << "rank " << r;  // Eckart-Young
    // The square roots of the singular values are split evenly between the factors.
    EXPECT_LT((f.a.pow(2).sum(1) - sigma.narrow(0, 0, r)).abs().max().item<double>(), 1e-9);
    EXPECT_LT((f.b.pow(2).sum(0) - sigma.narrow(0, 0, r)).abs().max().item<double>(), 1e-9);
  }
}

TEST(LowRank, EnergyRankIsTheSmallestThatKeepsTheShare) {
  const torch::Tensor sigma = torch::tensor({4.0, 3.0, 2.0, 1.0}, torch::kFloat64);  // squares 16, 9, 4, 1 of 30
  EXPECT_EQ(energy_rank(sigma, 0.5), 1);            // 16/30 = 0.53
  EXPECT_EQ(energy_rank(sigma, 0.6), 2);            // 25/30 = 0.83
  EXPECT_EQ(energy_rank(sigma, 25.0 / 30.0), 2);    // exactly reached
  EXPECT_EQ(energy_rank(sigma, 0.9), 3);            // 29/30 = 0.97
  EXPECT_EQ(energy_rank(sigma, 0.99), 4);
  EXPECT_EQ(energy_rank(sigma, 0.0), 1);
  EXPECT_TRUE(factoring_saves(64, 64, 31));   // 31 * 128 = 3968 < 4096
  EXPECT_FALSE(factoring_saves(64, 64, 32));  // 4096: no saving
}

// Inputs whose features differ in size by orders of magnitude: at the same rank, the factors of
// W·diag(mean|x|) lose less of the layer's output than W's own.
TEST(LowRank, ActivationAwareFactorsLoseLessOutputOnSkewedInputs) {
  const torch::Tensor w = random_weight(32, 48, 3);
  torch::manual_seed(4);
  const torch::Tensor col = torch::logspace(-2, 1, 48, 10, torch::kFloat64);
  const torch::Tensor x = torch::randn({512, 48}, torch::kFloat64) * col;
  const torch::Tensor y = x.matmul(w.t());
  const torch::Tensor s = x.abs().mean(0);
  for (int64_t r : {4, 8, 16}) {
    const LowRankFactors plain = svd_factors(w, r), aware = svd_factors(w, r, s);
    const double e_plain = (y - x.matmul(plain.a.t()).matmul(plain.b.t())).pow(2).sum().item<double>();
    const double e_aware = (y - x.matmul(aware.a.t()).matmul(aware.b.t())).pow(2).sum().item<double>();
    EXPECT_LT(e_aware, 0.5 * e_plain) << "rank " << r;
    // By hand: a·diag(s) and b are the truncated SVD factors of w·diag(s).
    const LowRankFactors scaled = svd_factors(w * s.unsqueeze(0), r);
    EXPECT_LT((aware.a * s.unsqueeze(0) - scaled.a).abs().max().item<double>(), 1e-9);
    EXPECT_LT((aware.b - scaled.b).abs().max().item<double>(), 1e-9);
  }
}

TEST(LowRank, FactoredLinearComputesWithItsFactorsAndHoldsOnlyThem) {
  torch::manual_seed(5);
  auto l = std::make_shared<LinearImpl>(40, 24, true);
  const torch::Tensor x = torch::randn({3, 7, 40});
  const torch::Tensor before = l->forward(x).detach();
  const LowRankFactors f = svd_factors(l->weight, 24);
  l->factorize(f.a, f.b);
  EXPECT_TRUE(l->factored());
  EXPECT_EQ(l->rank(), 24);
  EXPECT_EQ(l->in_features(), 40);
  EXPECT_EQ(l->out_features(), 24);
  EXPECT_LT((l->forward(x) - before).abs().max().item<double>(), 1e-5);
  std::vector<std::string> names;
  for (const auto& p : l->named_parameters()) names.push_back(p.key());
  EXPECT_EQ(names, (std::vector<std::string>{"a.weight", "b.weight", "b.bias"}));
  EXPECT_LT((l->effective_weight() - f.b.matmul(f.a)).abs().max().item<double>(), 1e-6);
}

const char* kTinyLlama =
    "{name: llama, tokenizer: smollm2-135m, hidden: 64, layers: 2, heads: 4, kv_heads: 2, ffn: 96, max_positions: 32}";

ExperimentConfig tiny_config(const std::string& extra = "") {
  return parse_experiment_config(std::string("experiment: {name: t}\ntask: {name: causal_lm}\ndata: {dataset: fortunes}\n"
                                             "model: ") + kTinyLlama + "\n" + extra,
                                 "t.yaml");
}

TEST(LowRank, ModelIsFactoredOnlyWhereItSavesAtRanksRoundedToTheMultiple) {
  const std::string skip = test::missing_teacher("smollm2-135m");
  if (!skip.empty()) GTEST_SKIP() << skip;
  ExperimentConfig c = tiny_config("lowrank: {enabled: true, rank: 13, multiple: 8, layers: [\"*layer0.*\"], "
                                   "exclude: [\"*.v\"], layer_ranks: [\"*.gate=40\"]}");
  torch::manual_seed(0);
  auto m = make_text_model(c.model);
  const std::vector<std::string> ranks = factorize_model(*m, c.lowrank);
  // Layer 0 only, v excluded; 13 rounds up to 16. gate [96, 64] at 40: 40 * 160 = 6400 > 6144, kept dense.
  // q [64, 64], k [32, 64], out [64, 64], up [96, 64], down [64, 96] at 16 all save.
  EXPECT_EQ(ranks, (std::vector<std::string>{"lm.layer0.q=16", "lm.layer0.k=16", "lm.layer0.out=16", "lm.layer0.up=16",
                                             "lm.layer0.down=16"}));
  std::map<std::string, std::shared_ptr<LinearImpl>> dense;
  for (auto& [n, l] : dense_linears(*m)) dense[n] = l;
  EXPECT_TRUE(dense.count("lm.layer0.v") && dense.count("lm.layer0.gate") && dense.count("lm.layer1.q"));
  EXPECT_FALSE(dense.count("lm.layer0.q"));
  ExperimentConfig bad = tiny_config("lowrank: {enabled: true, layers: [\"*.query\"]}");
  EXPECT_THROW(factorize_model(*make_text_model(bad.model), bad.lowrank), UserError);
}

// Both factors are quantized layers of their own; model.ranks rebuilds the shape, and the
// checkpoint's weights then give the same logits.
TEST(LowRank, QatQuantizesBothFactorsAndModelRanksRebuildsTheShape) {
  const std::string skip = test::missing_teacher("smollm2-135m");
  if (!skip.empty()) GTEST_SKIP() << skip;
  ExperimentConfig c = tiny_config("qat: {enabled: true, start_step: 0, weight: {bits: 8, group_size: 32, format: ggml}, "
                                   "activation: {dynamic: per_block}}\nlowrank: {enabled: true, energy: 0.5}");
  torch::manual_seed(0);
  auto m = make_text_model(c.model);
  const std::vector<std::string> ranks = factorize_model(*m, c.lowrank);
  ASSERT_FALSE(ranks.empty());
  attach_qat(*m, c.qat);
  std::vector<std::string> names;
  for (const auto& l : quantizable_layers(*m)) names.push_back(l.name);
  const std::string first = ranks.front().substr(0, ranks.front().find('='));
  EXPECT_NE(std::find(names.begin(), names.end(), first + ".a"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), first + ".b"), names.end());
  EXPECT_EQ(std::find(names.begin(), names.end(), first), names.end()) << "the factored layer itself has no twin";
  for (auto& q : layer_qats(*m)) q->set_enabled(true);
  const torch::Tensor ids = torch::randint(0, 1000, {2, 12});
  m->eval();
  torch::Tensor want;
  {
    torch::NoGradGuard g;
    want = m->forward_text(ids, torch::ones_like(ids));
  }
  torch::serialize::OutputArchive out;
  m->save(out);
  std::stringstream buf;
  out.save_to(buf);

  ExperimentConfig c2 = c;
  c2.model.ranks = ranks;
  torch::manual_seed(1);  // other initial weights: the checkpoint must supply them
  auto rebuilt = make_text_model(c2.model);
  attach_qat(*rebuilt, c.qat);
  torch::serialize::InputArchive in;
  in.load_from(buf);
  rebuilt->load(in);
  for (auto& q : layer_qats(*rebuilt)) q->load_flags();
  rebuilt->eval();
  torch::NoGradGuard g;
  EXPECT_TRUE(torch::equal(rebuilt->forward_text(ids, torch::ones_like(ids)), want));
  ExperimentConfig bad = c;
  bad.model.ranks = {"lm.layer0.q=65"};
  EXPECT_THROW(make_text_model(bad.model), UserError);
  bad.model.ranks = {"lm.layer9.q=8"};
  EXPECT_THROW(make_text_model(bad.model), UserError);
}

}  // namespace
}  // namespace qd
