// Feature (hint) KD: a learned adapter maps a student feature to the teacher feature's shape,
// and the loss is the MSE between them (FitNets, Romero et al. 2015).
#pragma once

#include <torch/torch.h>

namespace qd {

// 4-d features [B, Cs, H, W] -> [B, Ct, H', W'] through a 1x1 conv (then average-pooled to the
// teacher's H' x W' when they differ); 2-d features [B, Ds] -> [B, Dt] through a linear layer.
class FeatureAdapterImpl : public torch::nn::Module {
 public:
  // Shapes without the batch dimension: {Cs, H, W} / {Ds} and {Ct, H', W'} / {Dt}.
  FeatureAdapterImpl(std::vector<int64_t> student_shape, std::vector<int64_t> teacher_shape);
  torch::Tensor forward(const torch::Tensor& student_feature);
  torch::Tensor loss(const torch::Tensor& student_feature, const torch::Tensor& teacher_feature);

 private:
  std::vector<int64_t> teacher_shape_;
  torch::nn::Conv2d conv_{nullptr};
  torch::nn::Linear linear_{nullptr};
};
TORCH_MODULE(FeatureAdapter);

}  // namespace qd
