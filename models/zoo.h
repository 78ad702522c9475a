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
  void prepare_qat(const QatConfig& cfg) override;
  std::vector<ChannelGroup> channel_groups() override;
  ExportGraph export_graph() override;

 private:
  InputNorm norm_{nullptr};
  FakeQuantize input_quant_{nullptr}, head_quant_{nullptr}, classifier_quant_{nullptr};  // QAT only
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
  // Quantizes both branches and the (ReLU'd) sum; `input_quant` quantizes the block's input.
  void prepare_qat(const QatConfig& cfg, const FakeQuantizeImpl* input_quant);
  ConvBnRelu conv1{nullptr}, conv2{nullptr};
  ConvBnRelu shortcut{nullptr};  // null for identity
  FakeQuantize add_quant{nullptr};  // QAT only: the quantized addition
};
TORCH_MODULE(BasicBlock);

// CIFAR-style ResNet-(6n+2) for 28x28: stem, 3 stages of n blocks at width w, 2w, 4w with
// strides 1, 2, 2 (28 -> 14 -> 7), global average pool, Linear.
class ResNet : public Model {
 public:
  ResNet(const ModelConfig& cfg, const InputSpec& in);
  torch::Tensor forward(torch::Tensor x) override;
  std::string kind() const override { return "resnet"; }
  void prepare_qat(const QatConfig& cfg) override;
  std::vector<ChannelGroup> channel_groups() override;
  ExportGraph export_graph() override;

 private:
  InputNorm norm_{nullptr};
  FakeQuantize input_quant_{nullptr}, head_quant_{nullptr}, fc_quant_{nullptr};  // QAT only
  ConvBnRelu stem_{nullptr};
  std::vector<BasicBlock> blocks_;
  torch::nn::Dropout drop_{nullptr};
  torch::nn::Linear fc_{nullptr};
};

}  // namespace qd
