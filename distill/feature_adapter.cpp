#include "distill/feature_adapter.h"

#include "common/error.h"

namespace qd {

FeatureAdapterImpl::FeatureAdapterImpl(std::vector<int64_t> s, std::vector<int64_t> t) : teacher_shape_(t) {
  QD_CHECK(s.size() == t.size() && (s.size() == 1 || s.size() == 3), UserError,
           "feature KD pairs a ", s.size() == 3 ? "feature map [C, H, W]" : "vector", " of the student with a ",
           t.size() == 3 ? "feature map [C, H, W]" : "vector",
           " of the teacher; pair maps with maps (conv layers) and vectors with vectors (\"features\")");
  if (s.size() == 3) {
    QD_CHECK(s[1] >= t[1] && s[2] >= t[2], UserError, "feature KD: the student map ", s[1], "x", s[2],
             " is smaller than the teacher map ", t[1], "x", t[2], "; pick an earlier student layer");
    conv_ = register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(s[0], t[0], 1).bias(false)));
  } else {
    linear_ = register_module("linear", torch::nn::Linear(s[0], t[0]));
  }
}

torch::Tensor FeatureAdapterImpl::forward(const torch::Tensor& x) {
  if (linear_) return linear_(x);
  torch::Tensor y = conv_(x);  // [B, Ct, H, W]
  if (y.size(2) != teacher_shape_[1] || y.size(3) != teacher_shape_[2])
    y = torch::adaptive_avg_pool2d(y, {teacher_shape_[1], teacher_shape_[2]});
  return y;
}

torch::Tensor FeatureAdapterImpl::loss(const torch::Tensor& s, const torch::Tensor& t) {
  return torch::mse_loss(forward(s), t.detach());
}

}  // namespace qd
