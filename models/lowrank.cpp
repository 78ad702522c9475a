#include "models/lowrank.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "models/linear.h"

namespace qd {

namespace {

// "PATTERN=RANK" entries in file order.
std::vector<std::pair<std::string, int64_t>> parse_ranks(const std::vector<std::string>& entries, const char* key) {
  std::vector<std::pair<std::string, int64_t>> out;
  for (const auto& e : entries) {
    const size_t eq = e.find('=');
    QD_CHECK(eq != std::string::npos && eq > 0, UserError, key, ": '", e, "': expected NAME=RANK, e.g. layer3.up=128");
    int64_t r = 0;
    try {
      size_t used = 0;
      r = std::stoll(e.substr(eq + 1), &used);
      QD_CHECK(used == e.size() - eq - 1, UserError, "");
    } catch (const std::exception&) {
      throw UserError(concat(key, ": '", e, "': the rank after '=' must be a positive integer"));
    }
    QD_CHECK(r >= 1, UserError, key, ": '", e, "': the rank must be at least 1");
    out.emplace_back(e.substr(0, eq), r);
  }
  return out;
}

bool any_match(const std::vector<std::string>& patterns, const std::string& name) {
  return std::any_of(patterns.begin(), patterns.end(), [&](const std::string& p) { return layer_pattern_match(p, name); });
}

void check_patterns(const std::vector<std::string>& patterns, const std::vector<std::string>& names, const char* key) {
  for (const auto& p : patterns)
    QD_CHECK(std::any_of(names.begin(), names.end(), [&](const std::string& n) { return layer_pattern_match(p, n); }),
             UserError, key, ": '", p, "' matches no linear layer of the model (see qdistill layers)");
}

}  // namespace

LowRankFactors svd_factors(const torch::Tensor& w, int64_t rank, const torch::Tensor& col_scale) {
  torch::NoGradGuard g;
  QD_CHECK(w.dim() == 2, Error, "svd_factors: a 2-d weight, not ", w.sizes());
  const int64_t full = std::min(w.size(0), w.size(1));
  QD_CHECK(rank >= 1 && rank <= full, Error, "svd_factors: rank ", rank, " outside [1, ", full, "]");
  torch::Tensor m = w.detach().to(torch::kCPU, torch::kFloat64);
  torch::Tensor s;
  if (col_scale.defined()) {
    QD_CHECK(col_scale.numel() == w.size(1), Error, "svd_factors: ", col_scale.numel(), " column scales for ", w.size(1), " columns");
    s = col_scale.detach().to(torch::kCPU, torch::kFloat64).reshape({1, -1});
    QD_CHECK(s.gt(0).all().item<bool>(), Error, "svd_factors: column scales must be positive");
    m = m * s;
  }
  auto [u, sigma, vh] = torch::linalg_svd(m, /*full_matrices=*/false);
  const torch::Tensor root = sigma.narrow(0, 0, rank).sqrt();
  torch::Tensor a = root.unsqueeze(1) * vh.narrow(0, 0, rank);   // [r, in]
  torch::Tensor b = u.narrow(1, 0, rank) * root.unsqueeze(0);     // [out, r]
  if (s.defined()) a = a / s;
  return {a.to(w.scalar_type()).contiguous(), b.to(w.scalar_type()).contiguous(), sigma};
}

int64_t energy_rank(const torch::Tensor& sigma, double energy) {
  const torch::Tensor e = sigma.to(torch::kFloat64).pow(2).cumsum(0);
  const double total = e[-1].item<double>();
  if (total <= 0) return 1;
  // The first index whose cumulative share reaches `energy` (a rounding margin keeps exact shares).
  const int64_t below = e.lt(energy * total * (1.0 - 1e-12)).sum().item<int64_t>();
  return std::min<int64_t>(below + 1, sigma.numel());
}

bool factoring_saves(int64_t out, int64_t in, int64_t rank) { return rank * (in + out) < in * out; }

std::vector<std::pair<std::string, std::shared_ptr<LinearImpl>>> dense_linears(torch::nn::Module& model) {
  std::vector<std::pair<std::string, std::shared_ptr<LinearImpl>>> out;
  for (const auto& item : model.named_modules("", /*include_self=*/false))
    if (auto l = std::dynamic_pointer_cast<LinearImpl>(item.value()))
      if (!l->factored() && l->weight.defined()) out.emplace_back(item.key(), l);
  return out;
}

std::vector<std::string> factorize_model(torch::nn::Module& model, const LowRankConfig& cfg,
                                         const std::map<std::string, torch::Tensor>& input_abs_mean) {
  const auto linears = dense_linears(model);
  std::vector<std::string> names;
  for (const auto& [n, l] : linears) names.push_back(n);
  QD_CHECK(!names.empty(), UserError, "lowrank: the model has no linear layers to factor (bert and llama only)");
  check_patterns(cfg.layers, names, "lowrank.layers");
  check_patterns(cfg.exclude, names, "lowrank.exclude");
  const auto overrides = parse_ranks(cfg.layer_ranks, "lowrank.layer_ranks");
  for (const auto& [p, r] : overrides) {
    (void)r;
    check_patterns({p}, names, "lowrank.layer_ranks");
  }
  std::vector<std::string> ranks;
  for (const auto& [name, layer] : linears) {
    if (!any_match(cfg.layers, name) || any_match(cfg.exclude, name)) continue;
    const int64_t out = layer->out_features(), in = layer->in_features(), full = std::min(out, in);
    torch::Tensor scale;
    if (cfg.method == LowRankMethod::kAsvd) {
      auto it = input_abs_mean.find(name);
      QD_CHECK(it != input_abs_mean.end(), Error, "lowrank: no calibration statistics for ", name);
      // A feature never seen non-zero still gets a small positive scale (its columns barely count).
      const torch::Tensor m = it->second.to(torch::kFloat64);
      scale = m.clamp_min(std::max(m.max().item<double>(), 1e-30) * 1e-6).pow(cfg.alpha);
    }
    int64_t rank = cfg.rank;
    for (const auto& [p, r] : overrides)
      if (layer_pattern_match(p, name)) {
        rank = r;
        break;
      }
    const LowRankFactors f = svd_factors(layer->weight, full, scale);
    if (rank == 0) rank = energy_rank(f.sigma, cfg.energy);
    rank = std::min<int64_t>((rank + cfg.multiple - 1) / cfg.multiple * cfg.multiple, full);
    if (!factoring_saves(out, in, rank)) continue;  // the dense layer is smaller
    layer->factorize(f.a.narrow(0, 0, rank), f.b.narrow(1, 0, rank));
    ranks.push_back(concat(name, "=", rank));
  }
  return ranks;
}

void apply_ranks(torch::nn::Module& model, const std::vector<std::string>& ranks) {
  const auto entries = parse_ranks(ranks, "model.ranks");
  std::map<std::string, std::shared_ptr<LinearImpl>> by_name;
  for (auto& [n, l] : dense_linears(model)) by_name[n] = l;
  for (const auto& [name, rank] : entries) {
    auto it = by_name.find(name);
    QD_CHECK(it != by_name.end(), UserError, "model.ranks: '", name, "' is not a dense linear layer of the model (see qdistill layers)");
    LinearImpl& l = *it->second;
    const int64_t full = std::min(l.out_features(), l.in_features());
    QD_CHECK(rank <= full, UserError, "model.ranks: '", name, "=", rank, "': a [", l.out_features(), ", ",
             l.in_features(), "] weight has rank at most ", full);
    const LowRankFactors f = svd_factors(l.weight, rank);
    l.factorize(f.a, f.b);
    by_name.erase(it);
  }
}

}  // namespace qd
