// The model zoo: MLP, ConvNet (VGG-style conv-BN-ReLU blocks) and a small CIFAR-style ResNet.
#pragma once

#include <memory>

#include "models/model.h"
#include "models/model_config.h"

namespace qd {

// flatten -> [Linear -> BatchNorm1d -> ReLU] x depth -> dropout -> Linear
class Mlp : public Model {
 public:
  Mlp(const ModelConfig& cfg, const InputSpec& in);
  torch::Tensor forward(torch::Tensor x) override;
  std::string kind() const override { return "mlp"; }

 private:
  InputNorm norm_{nullptr};
  std::vector<torch::nn::Linear> fcs_;
  std::vector<BatchNorm> bns_;
  torch::nn::Dropout drop_{nullptr};
  torch::nn::Linear classifier_{nullptr};
};

// [ConvBnRelu x blocks_per_stage -> maxpool 2x2] ... (channels double per stage) -> head -> Linear
class ConvNet : public Model {
 public:
  ConvNet(const ModelConfig& cfg, const InputSpec& in);
  torch::Tensor forward(torch::Tensor x) override;
  std::string kind() const override { return "convnet"; }
  void attach_quantizers(QuantizerFactory& f) override;
  std::vector<PruneGroup> prune_groups() override;
  ModelConfig pruned_config(const ModelConfig& cfg, const std::vector<int64_t>& kept) override;
  ExportGraph export_graph() override;

 private:
  InputNorm norm_{nullptr};
  std::shared_ptr<TensorQuantizer> input_quant_, head_quant_, classifier_quant_;  // QAT only
  std::vector<ConvBnRelu> blocks_;
  std::vector<bool> pool_after_;  // per block
  int64_t final_hw_ = 1;          // spatial size feeding a flatten head
  HeadKind head_;
  torch::nn::Dropout drop_{nullptr};
  torch::nn::Linear classifier_{nullptr};
};

// conv3x3 -> BN -> ReLU -> x + F(x), F = conv3x3-BN-ReLU-conv3x3-BN; projection shortcut
// (1x1 conv + BN) where the shape changes.
class BasicBlockImpl : public torch::nn::Module {
 public:
  BasicBlockImpl(int64_t in, int64_t mid, int64_t out, int64_t stride);  // mid: conv1's channels
  torch::Tensor forward(const torch::Tensor& x);
  // Quantizes both branches and the (ReLU'd) sum; `input` quantizes the block's input. `name`:
  // the block's (its convs are name.conv1, name.conv2, name.shortcut).
  void attach_quantizers(QuantizerFactory& f, const std::string& name, const TensorQuantizer* input);
  ConvBnRelu conv1{nullptr}, conv2{nullptr};
  ConvBnRelu shortcut{nullptr};  // null for identity
  std::shared_ptr<TensorQuantizer> add_quant;  // QAT only: the quantized addition
};
TORCH_MODULE(BasicBlock);

// CIFAR-style ResNet-(6n+2) for 28x28: stem, 3 stages of n blocks at width w, 2w, 4w with
// strides 1, 2, 2 (28 -> 14 -> 7), global average pool, Linear.
class ResNet : public Model {
 public:
  ResNet(const ModelConfig& cfg, const InputSpec& in);
  torch::Tensor forward(torch::Tensor x) override;
  std::string kind() const override { return "resnet"; }
  void attach_quantizers(QuantizerFactory& f) override;
  std::vector<PruneGroup> prune_groups() override;
  ModelConfig pruned_config(const ModelConfig& cfg, const std::vector<int64_t>& kept) override;
  ExportGraph export_graph() override;

 private:
  InputNorm norm_{nullptr};
  std::shared_ptr<TensorQuantizer> input_quant_, head_quant_, fc_quant_;  // QAT only
  ConvBnRelu stem_{nullptr};
  std::vector<BasicBlock> blocks_;
  torch::nn::Dropout drop_{nullptr};
  torch::nn::Linear fc_{nullptr};
};

}  // namespace qd
