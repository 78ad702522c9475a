// BatchNorm over the channel dimension (dim 1) of [N, C] or [N, C, H, W] inputs, with optional
// synchronisation of batch statistics across data-parallel ranks (sync BN).
//
// Parameter and buffer names match torch::nn::BatchNorm (weight, bias, running_mean,
// running_var, num_batches_tracked), so checkpoints read the same.
//
// Sync BN: per-channel sum, sum of squares and count are all-reduced through a differentiable
// sum, so autograd also all-reduces the gradient through the global statistics; the result
// equals BatchNorm over the union of all ranks' batches. The reducer is a plain function so
// models/ stays independent of parallel/.
#pragma once

#include <torch/torch.h>

#include <functional>

namespace qd {

using AllReduceSumFn = std::function<void(torch::Tensor&)>;  // in-place sum over ranks

class BatchNormImpl : public torch::nn::Module {
 public:
  explicit BatchNormImpl(int64_t channels, double momentum = 0.1, double eps = 1e-5);
  torch::Tensor forward(const torch::Tensor& x);

  // Non-empty: training-mode statistics are reduced across ranks with it.
  void set_all_reduce(AllReduceSumFn fn) { all_reduce_ = std::move(fn); }
  bool synced() const { return static_cast<bool>(all_reduce_); }

  int64_t channels;
  double momentum, eps;
  torch::Tensor weight, bias, running_mean, running_var, num_batches_tracked;

 private:
  torch::Tensor sync_forward(const torch::Tensor& x);
  AllReduceSumFn all_reduce_;
};
TORCH_MODULE(BatchNorm);

// Sets (or clears, with an empty function) the reducer on every BatchNorm in `m`; returns how
// many layers it set.
int set_batchnorm_all_reduce(torch::nn::Module& m, const AllReduceSumFn& fn);

}  // namespace qd
