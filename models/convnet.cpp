#include "models/zoo.h"

namespace qd {

ConvNet::ConvNet(const ModelConfig& cfg, const InputSpec& in) : head_(cfg.head) {
  norm_ = register_module("norm", InputNorm(in));
  int64_t c_in = in.channels, c_out = cfg.width, h = in.height, w = in.width;
  for (int i = 0; i < cfg.depth; ++i) {
    feature_names_.push_back("block" + std::to_string(i));
    blocks_.push_back(register_module(feature_names_.back(), ConvBnRelu(c_in, c_out)));
    c_in = c_out;
    const bool stage_end = (i + 1) % cfg.blocks_per_stage == 0 && i + 1 < cfg.depth;
    // Pool only while the map stays at least 2x2.
    const bool pool = stage_end && h >= 4 && w >= 4;
    pool_after_.push_back(pool);
    if (pool) {
      h /= 2, w /= 2;
      c_out *= 2;
    }
  }
  feature_names_.push_back("features");
  drop_ = register_module("dropout", torch::nn::Dropout(cfg.dropout));
  const int64_t features = head_ == HeadKind::kGap ? c_in : c_in * h * w;
  classifier_ = register_module("classifier", torch::nn::Linear(features, in.num_classes));
}

torch::Tensor ConvNet::forward(torch::Tensor x) {
  begin_capture();
  x = norm_(x);
  for (size_t i = 0; i < blocks_.size(); ++i) {
    x = blocks_[i](x);
    capture(feature_names_[i], x);  // [B, C, H, W] before the pool
    if (pool_after_[i]) x = torch::max_pool2d(x, 2);
  }
  x = head_ == HeadKind::kGap ? x.mean({2, 3}) : x.flatten(1);  // [B, features]
  capture("features", x);
  return classifier_(drop_(x));
}

}  // namespace qd
