#include "models/batchnorm.h"

namespace qd {

namespace {
// y = sum over ranks of x; backward: the gradient is summed over ranks too (each rank's x
// contributes to every rank's y).
class AllReduceSum : public torch::autograd::Function<AllReduceSum> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x, const AllReduceSumFn* fn) {
    ctx->saved_data["fn"] = reinterpret_cast<int64_t>(fn);
    torch::Tensor y = x.clone();
    (*fn)(y);
    return y;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto* fn = reinterpret_cast<const AllReduceSumFn*>(ctx->saved_data["fn"].toInt());
    torch::Tensor g = grads[0].contiguous().clone();
    (*fn)(g);
    return {g, torch::Tensor()};
  }
};
}  // namespace

BatchNormImpl::BatchNormImpl(int64_t c, double m, double e) : channels(c), momentum(m), eps(e) {
  weight = register_parameter("weight", torch::ones({c}));
  bias = register_parameter("bias", torch::zeros({c}));
  running_mean = register_buffer("running_mean", torch::zeros({c}));
  running_var = register_buffer("running_var", torch::ones({c}));
  num_batches_tracked = register_buffer("num_batches_tracked", torch::zeros({}, torch::kInt64));
}

torch::Tensor BatchNormImpl::forward(const torch::Tensor& x) {
  if (is_training()) {
    torch::NoGradGuard g;
    num_batches_tracked += 1;
  }
  if (is_training() && all_reduce_) return sync_forward(x);
  return torch::batch_norm(x, weight, bias, running_mean, running_var, is_training(), momentum, eps,
                           /*cudnn_enabled=*/true);
}

torch::Tensor BatchNormImpl::sync_forward(const torch::Tensor& x) {
  std::vector<int64_t> dims{0};
  std::vector<int64_t> shape{1, channels};
  for (int64_t d = 2; d < x.dim(); ++d) dims.push_back(d), shape.push_back(1);
  const double local_count = static_cast<double>(x.numel() / channels);
  // [2C + 1]: sum, sum of squares, count. Statistics in float32 even for low-precision input.
  torch::Tensor xf = x.to(torch::kFloat32);
  torch::Tensor stats = torch::cat({xf.sum(dims), (xf * xf).sum(dims),
                                    torch::full({1}, local_count, xf.options())});
  stats = AllReduceSum::apply(stats, &all_reduce_);
  torch::Tensor count = stats.narrow(0, 2 * channels, 1);
  torch::Tensor mean = stats.narrow(0, 0, channels) / count;                       // [C]
  torch::Tensor var = (stats.narrow(0, channels, channels) / count - mean * mean).clamp_min(0.0);  // biased
  {
    torch::NoGradGuard g;
    const double n = count.item<double>();
    running_mean.mul_(1.0 - momentum).add_(mean.detach(), momentum);
    running_var.mul_(1.0 - momentum).add_(var.detach() * (n / std::max(1.0, n - 1.0)), momentum);
  }
  torch::Tensor scale = weight * torch::rsqrt(var + eps);  // [C]
  torch::Tensor shift = bias - mean * scale;
  return (xf * scale.view(shape) + shift.view(shape)).to(x.scalar_type());
}

int set_batchnorm_all_reduce(torch::nn::Module& m, const AllReduceSumFn& fn) {
  int n = 0;
  for (auto& child : m.modules(/*include_self=*/true)) {
    if (auto* bn = dynamic_cast<BatchNormImpl*>(child.get())) {
      bn->set_all_reduce(fn);
      ++n;
    }
  }
  return n;
}

}  // namespace qd
