#include "models/zoo.h"

namespace qd {

Mlp::Mlp(const ModelConfig& cfg, const InputSpec& in) {
  norm_ = register_module("norm", InputNorm(in));
  int64_t features = in.channels * in.height * in.width;
  for (int i = 0; i < cfg.depth; ++i) {
    fcs_.push_back(register_module("fc" + std::to_string(i), torch::nn::Linear(features, cfg.width)));
    bns_.push_back(register_module("bn" + std::to_string(i), torch::nn::BatchNorm1d(cfg.width)));
    features = cfg.width;
  }
  drop_ = register_module("dropout", torch::nn::Dropout(cfg.dropout));
  classifier_ = register_module("classifier", torch::nn::Linear(features, in.num_classes));
}

torch::Tensor Mlp::forward(torch::Tensor x) {
  x = norm_(x).flatten(1);  // [B, C*H*W]
  for (size_t i = 0; i < fcs_.size(); ++i) x = torch::relu(bns_[i](fcs_[i](x)));
  return classifier_(drop_(x));  // [B, classes]
}

}  // namespace qd
