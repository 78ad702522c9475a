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
  if (record_inputs) {
    torch::NoGradGuard g;
    const torch::Tensor s = x.detach().abs().reshape({-1, x.size(-1)}).sum(0).to(torch::kCPU, torch::kFloat64);
    input_abs_sum = input_abs_sum.defined() ? input_abs_sum + s : s;
    input_rows += x.numel() / x.size(-1);
  }
  if (first) return second->forward(first->forward(x));
  if (!quant) return torch::nn::functional::linear(x, weight, bias);
  return torch::nn::functional::linear(quant->input(x), quant->weight(weight), bias);
}

torch::Tensor LinearImpl::effective_weight() {
  if (first) return second->effective_weight().matmul(first->effective_weight());
  return quant ? quant->weight(weight) : weight;
}

void LinearImpl::factorize(const torch::Tensor& a, const torch::Tensor& b) {
  TORCH_CHECK(!first, "factorize: the layer is already factored");
  if (quant) {  // a fresh twin (QAT attaches again, to the factors; attach_qat)
    unregister_module("qat");
    quant.reset();
  }
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(1) == weight.size(1) && b.size(0) == weight.size(0) &&
                  b.size(1) == a.size(0),
              "factorize: factors [", a.sizes(), "] and [", b.sizes(), "] do not make a [", weight.sizes(), "] weight");
  const bool with_bias = bias.defined();
  first = register_module("a", std::make_shared<LinearImpl>(a.size(1), a.size(0), false));
  second = register_module("b", std::make_shared<LinearImpl>(b.size(1), b.size(0), with_bias));
  torch::NoGradGuard g;
  first->weight.copy_(a);
  second->weight.copy_(b);
  if (with_bias) second->bias.copy_(bias);
  first->weight.set_requires_grad(weight.requires_grad());
  second->weight.set_requires_grad(weight.requires_grad());
  if (with_bias) second->bias.set_requires_grad(bias.requires_grad());
  parameters_.erase("weight");
  if (with_bias) parameters_.erase("bias");
  weight = torch::Tensor();
  bias = torch::Tensor();
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
