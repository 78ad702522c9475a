#include "models/zoo.h"

namespace qd {

Mlp::Mlp(const ModelConfig& cfg, const InputSpec& in) {
  norm_ = register_module("norm", InputNorm(in));
  int64_t features = in.channels * in.height * in.width;
  for (int i = 0; i < cfg.depth; ++i) {
    feature_names_.push_back("fc" + std::to_string(i));
    fcs_.push_back(register_module(feature_names_.back(), torch::nn::Linear(features, cfg.width)));
    bns_.push_back(register_module("bn" + std::to_string(i), BatchNorm(cfg.width)));
    features = cfg.width;
  }
  feature_names_.push_back("features");
  drop_ = register_module("dropout", torch::nn::Dropout(cfg.dropout));
  classifier_ = register_module("classifier", torch::nn::Linear(features, in.num_classes));
}

torch::Tensor Mlp::forward(torch::Tensor x) {
  begin_capture();
  x = norm_(x).flatten(1);  // [B, C*H*W]
  for (size_t i = 0; i < fcs_.size(); ++i) {
    x = torch::relu(bns_[i](fcs_[i](x)));
    capture(feature_names_[i], x);
  }
  capture("features", x);
  return classifier_(drop_(x));  // [B, classes]
}

}  // namespace qd
