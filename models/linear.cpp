#include "models/linear.h"

#include <cmath>

namespace qd {

LinearImpl::LinearImpl(int64_t in, int64_t out, bool with_bias) {
  weight = register_parameter("weight", torch::empty({out, in}));
  if (with_bias) bias = register_parameter("bias", torch::empty({out}));
  // torch::nn::Linear's reset_parameters(), draw for draw.
  torch::NoGradGuard g;
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
  if (with_bias) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(in));
    torch::nn::init::uniform_(bias, -bound, bound);
  }
}

torch::Tensor LinearImpl::forward(const torch::Tensor& x) {
  if (!quant) return torch::nn::functional::linear(x, weight, bias);
  return torch::nn::functional::linear(quant->input(x), quant->weight(weight), bias);
}

void LinearImpl::attach(std::shared_ptr<LayerQuantizer> q) {
  if (quant) replace_module("qat", q);
  else register_module("qat", q);
  quant = std::move(q);
}

EmbeddingImpl::EmbeddingImpl(int64_t count, int64_t dim) {
  weight = register_parameter("weight", torch::empty({count, dim}));
  torch::NoGradGuard g;
  torch::nn::init::normal_(weight);  // torch::nn::Embedding's reset_parameters()
}

torch::Tensor EmbeddingImpl::forward(const torch::Tensor& ids) {
  return torch::nn::functional::embedding(ids, effective_weight());
}

void EmbeddingImpl::attach(std::shared_ptr<LayerQuantizer> q) {
  if (quant) replace_module("qat", q);
  else register_module("qat", q);
  quant = std::move(q);
}

void QuantPointImpl::attach(std::shared_ptr<LayerQuantizer> q) {
  if (quant) replace_module("qat", q);
  else register_module("qat", q);
  quant = std::move(q);
}

}  // namespace qd
