// Low-rank factorization of linear layers: a weight W [out, in] becomes two thinner layers,
// A [r, in] then B [out, r], from W's truncated SVD (plain), or from the SVD of W·diag(s) where s
// measures how large each input feature runs on calibration data (activation-aware, ASVD: Yuan et
// al. 2023), so that the error lands on the inputs that matter least. Only layers where
// r·(in + out) < in·out are factored: elsewhere the dense layer is smaller.
//
// The `lowrank` section picks the ranks once, before the first step (after prune.remove: start's
// cut), and writes them to `model.ranks`, which is what rebuilds the shape (eval, export, resume).
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

#include "common/config.h"

namespace qd {

class LinearImpl;

enum class LowRankMethod { kSvd, kAsvd };

struct LowRankConfig {
  bool enabled = false;
  LowRankMethod method = LowRankMethod::kSvd;
  int rank = 0;           // every selected layer at this rank; 0: by energy
  double energy = 0.9;    // the smallest rank keeping this share of the squared singular values
  std::vector<std::string> layers{"*"};  // globs of the linear layers to consider (qdistill layers)
  std::vector<std::string> exclude;      // globs never factored
  std::vector<std::string> layer_ranks;  // "PATTERN=RANK" overrides, the first match wins
  int multiple = 32;       // ranks rounded up to a multiple (Q8_0 / Q4_0 blocks of 32 read b's rows)
  double alpha = 0.5;      // asvd: s = mean|x|^alpha
  int calibration_samples = 64;

  template <class V>
  void visit(V& v) {
    v.field("enabled", enabled,
            "factor linear layers (bert/llama) into two thinner ones before the first step, by truncated SVD; the "
            "ranks go to model.ranks");
    v.field("method", method,
            "svd: W's truncated SVD; asvd: activation-aware, the SVD of W scaled by each input feature's mean |x|^alpha "
            "on lowrank.calibration_samples training examples (ASVD)",
            Choices<LowRankMethod>{{{"svd", LowRankMethod::kSvd}, {"asvd", LowRankMethod::kAsvd}}});
    v.field("rank", rank, "the rank of every selected layer (0: chosen by lowrank.energy)", Range<int>{0, 1 << 20});
    v.field("energy", energy,
            "rank 0: the smallest rank that keeps this share of the (scaled) weight's squared singular values",
            Range<double>{0.0, 1.0, false, true});
    v.field("layers", layers, "globs of the linear layers to consider (see qdistill layers), e.g. [\"layer*.gate\", \"layer*.up\"]");
    v.field("exclude", exclude, "globs of linear layers never factored");
    v.field("layer_ranks", layer_ranks, "\"PATTERN=RANK\" per-layer ranks that override rank and energy (the first match wins)");
    v.field("multiple", multiple,
            "round every rank up to a multiple of this (32: llama.cpp's Q8_0/Q4_0 blocks and per_block activations "
            "read the second factor's rows in blocks of 32)",
            Range<int>{1, 4096});
    v.field("alpha", alpha, "asvd: each input feature's scale is its mean |x| to this power", Range<double>{0.0, 4.0});
    v.field("calibration_samples", calibration_samples, "asvd: training examples (sequences) run forward to measure the inputs",
            Range<int>{1, 1000000});
  }
};

// The truncated SVD of w [out, in] as factors a [rank, in], b [out, rank] with w ≈ b·a, the square
// roots of the singular values split between them. col_scale [in] (ASVD, positive): factor
// w·diag(s) and divide a's columns by s again. Float64 inside; returns w's dtype.
struct LowRankFactors {
  torch::Tensor a, b, sigma;  // sigma: every singular value of the (scaled) weight, descending
};
LowRankFactors svd_factors(const torch::Tensor& w, int64_t rank, const torch::Tensor& col_scale = {});

// The smallest r with sum(sigma[:r]^2) >= energy * sum(sigma^2) (at least 1).
int64_t energy_rank(const torch::Tensor& sigma, double energy);

// Whether [out, in] at rank r is smaller factored: r·(in + out) < in·out.
bool factoring_saves(int64_t out, int64_t in, int64_t rank);

// Every dense (not yet factored) qd::Linear of a model, by module path.
std::vector<std::pair<std::string, std::shared_ptr<LinearImpl>>> dense_linears(torch::nn::Module& model);

// Factors the model's layers as `cfg` says; input_abs_mean holds each layer's mean |x| per input
// feature (asvd; from LinearImpl's calibration record). Returns "NAME=RANK" for every factored
// layer, in module order (model.ranks). Throws UserError for patterns that match no layer.
std::vector<std::string> factorize_model(torch::nn::Module& model, const LowRankConfig& cfg,
                                         const std::map<std::string, torch::Tensor>& input_abs_mean = {});

// model.ranks: factors each named layer at its rank by plain truncated SVD of its current weights
// (the shape is what matters when a checkpoint is loaded next). UserError names the bad entry.
void apply_ranks(torch::nn::Module& model, const std::vector<std::string>& ranks);

}  // namespace qd
