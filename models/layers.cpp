#include "models/model.h"

#include "common/error.h"
#include "models/linear.h"

namespace qd {

InputNormImpl::InputNormImpl(const InputSpec& spec) {
  std::vector<float> m(spec.mean.begin(), spec.mean.end()), s;
  for (double v : spec.std) s.push_back(static_cast<float>(1.0 / v));
  mean = register_buffer("mean", torch::tensor(m).view({1, -1, 1, 1}));
  inv_std = register_buffer("inv_std", torch::tensor(s).view({1, -1, 1, 1}));
}

torch::Tensor InputNormImpl::forward(const torch::Tensor& x) { return (x - mean) * inv_std; }

ConvBnReluImpl::ConvBnReluImpl(int64_t in, int64_t out, int64_t kernel, int64_t stride, bool relu)
    : relu_(relu), stride_{stride, stride}, padding_{kernel / 2, kernel / 2} {
  conv = register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, kernel)
                                                       .stride(stride)
                                                       .padding(kernel / 2)
                                                       .bias(false)));
  bn = register_module("bn", BatchNorm(out));
  // He init for conv followed by ReLU.
  torch::nn::init::kaiming_normal_(conv->weight, 0.0, torch::kFanOut, torch::kReLU);
}

void Model::attach_quantizers(QuantizerFactory&) {
  throw UserError(concat("qat: the ", kind(), " model has no quantization-aware training; use convnet or resnet"));
}

std::vector<PruneGroup> Model::prune_groups() {
  throw UserError(concat("prune: the ", kind(), " model has no structured pruning; use convnet, resnet, llama, "
                         "or prune.method: magnitude"));
}

ModelConfig Model::pruned_config(const ModelConfig&, const std::vector<int64_t>&) {
  throw UserError(concat("prune: the ", kind(), " model has no physical removal of pruned units"));
}

bool Model::fill_added_tensor(const std::string&, torch::Tensor&, const std::vector<torch::Tensor>&) { return false; }

void append_conv_bn_slices(std::vector<DimSlice>& out, const std::string& name) {
  out.push_back({name + ".conv.weight", 0, 1, SliceRole::kWeight});
  out.push_back({name + ".bn.weight", 0, 1, SliceRole::kScale});
  out.push_back({name + ".bn.bias", 0, 1, SliceRole::kMasked});
  out.push_back({name + ".bn.running_mean", 0, 1, SliceRole::kState});
  out.push_back({name + ".bn.running_var", 0, 1, SliceRole::kState});
  out.push_back({name + ".qat.*", 0, 1, SliceRole::kState});
}

ExportGraph Model::export_graph() {
  throw UserError(concat("export: the ", kind(), " model cannot be exported to int8; use convnet or resnet"));
}

void ConvBnReluImpl::attach_quantizers(QuantizerFactory& f, const std::string& name, const TensorQuantizer* input) {
  qat = register_module("qat", f.conv_bn(name, *this, input));
  out_quant = register_module("out_quant", f.output(name, *this));
}

torch::Tensor ConvBnReluImpl::forward(const torch::Tensor& x) {
  if (!qat) {
    torch::Tensor y = bn(conv(x));
    return relu_ ? torch::relu(y) : y;
  }
  return out_quant->forward(qat->forward(x, *this));  // out_quant applies the ReLU whether or not it quantizes
}

int64_t count_params(const torch::nn::Module& m) {
  int64_t n = 0;
  for (const auto& p : m.parameters()) n += p.numel();
  return n;
}

int64_t count_nonzero_params(const torch::nn::Module& m) {
  int64_t n = 0;
  for (const auto& p : m.parameters()) n += p.count_nonzero().item<int64_t>();
  return n;
}

int64_t count_embedding_params(const torch::nn::Module& m) {
  int64_t n = 0;
  for (const auto& sub : m.modules(/*include_self=*/true))
    if (auto e = std::dynamic_pointer_cast<const EmbeddingImpl>(sub)) n += e->weight.numel();
  return n;
}

void to_channels_last(torch::nn::Module& m) {
  torch::NoGradGuard no_grad;
  for (auto& p : m.parameters())
    if (p.dim() == 4) p.set_data(p.contiguous(torch::MemoryFormat::ChannelsLast));
  for (auto& b : m.buffers())
    if (b.dim() == 4) b.set_data(b.contiguous(torch::MemoryFormat::ChannelsLast));
}

}  // namespace qd
