#include "models/zoo.h"

#include "common/error.h"

namespace qd {

BasicBlockImpl::BasicBlockImpl(int64_t in, int64_t mid, int64_t out, int64_t stride) {
  conv1 = register_module("conv1", ConvBnRelu(in, mid, 3, stride, true));
  conv2 = register_module("conv2", ConvBnRelu(mid, out, 3, 1, false));
  if (stride != 1 || in != out) shortcut = register_module("shortcut", ConvBnRelu(in, out, 1, stride, false));
  // Zero-init the last BN gamma: each block starts as identity, which helps deep nets train.
  torch::NoGradGuard g;
  conv2->bn->weight.zero_();
}

void BasicBlockImpl::attach_quantizers(QuantizerFactory& f, const std::string& name, const TensorQuantizer* input) {
  conv1->attach_quantizers(f, name + ".conv1", input);
  conv2->attach_quantizers(f, name + ".conv2", conv1->out_quant.get());
  if (shortcut) shortcut->attach_quantizers(f, name + ".shortcut", input);
  add_quant = register_module("add_quant", f.activation(name + ".add_quant", conv2->conv->options.out_channels(), true));
}

torch::Tensor BasicBlockImpl::forward(const torch::Tensor& x) {
  torch::Tensor identity = shortcut ? shortcut(x) : x;
  torch::Tensor sum = conv2(conv1(x)) + identity;
  return add_quant ? add_quant->forward(sum) : torch::relu(sum);  // add_quant fuses the ReLU
}

ResNet::ResNet(const ModelConfig& cfg, const InputSpec& in) {
  norm_ = register_module("norm", InputNorm(in));
  const int n = (cfg.depth - 2) / 6;
  // model.channels, in prune_groups() order: per stage its stream, then each block's inner.
  const size_t groups = static_cast<size_t>(3 * (n + 1));
  QD_CHECK(cfg.channels.empty() || cfg.channels.size() == groups, UserError, "model.channels: this resnet has ",
           groups, " channel groups (per stage: the residual stream, then one per block), so it needs ", groups,
           " channel counts; got ", cfg.channels.size());
  auto ch = [&](int stage, int slot) -> int64_t {  // slot 0: stream, 1 + i: block i's inner
    if (cfg.channels.empty()) return int64_t{cfg.width} << stage;
    return cfg.channels[static_cast<size_t>(stage * (n + 1) + slot)];
  };
  stem_ = register_module("stem", ConvBnRelu(in.channels, ch(0, 0)));
  feature_names_.push_back("stem");
  int64_t c = ch(0, 0);
  for (int stage = 0; stage < 3; ++stage) {
    const int64_t out = ch(stage, 0);
    for (int i = 0; i < n; ++i) {
      const int64_t stride = (stage > 0 && i == 0) ? 2 : 1;
      feature_names_.push_back("stage" + std::to_string(stage + 1) + "_block" + std::to_string(i));
      blocks_.push_back(register_module(feature_names_.back(), BasicBlock(c, ch(stage, 1 + i), out, stride)));
      c = out;
    }
  }
  feature_names_.push_back("features");
  drop_ = register_module("dropout", torch::nn::Dropout(cfg.dropout));
  fc_ = register_module("fc", torch::nn::Linear(c, in.num_classes));
}

std::vector<PruneGroup> ResNet::prune_groups() {
  // Walk the network tracking the group that owns the current residual stream's channels; the
  // result is ordered per stage: its stream, then each block's inner group (model.channels order).
  std::vector<PruneGroup> streams, inners;
  auto start_stream = [](const std::string& group, const std::string& layer, int64_t units) {
    PruneGroup g;
    g.name = group;
    g.axis = "channels";
    g.layers = {layer};
    g.units = units;
    append_conv_bn_slices(g.slices, layer);
    return g;
  };
  auto read = [](PruneGroup& g, const std::string& layer) {
    g.slices.push_back({layer + ".conv.weight", 1, 1, SliceRole::kConsumer});
    g.readers.push_back(layer);
  };
  PruneGroup stream = start_stream("stem", "stem", stem_->conv->options.out_channels());
  for (size_t i = 0; i < blocks_.size(); ++i) {
    BasicBlockImpl& b = *blocks_[i];
    const std::string name = feature_names_[i + 1];  // stageS_blockI
    if (b.shortcut) {  // a projection starts a new stream: the old one ends here
      read(stream, name + ".shortcut");
      read(stream, name + ".conv1");
      streams.push_back(std::move(stream));
      stream = start_stream(name.substr(0, name.find('_')), name + ".shortcut", b.shortcut->conv->options.out_channels());
    } else {
      read(stream, name + ".conv1");
    }
    // conv1's output feeds only conv2: a group of its own.
    PruneGroup inner = start_stream(name + ".conv1", name + ".conv1", b.conv1->conv->options.out_channels());
    read(inner, name + ".conv2");
    inners.push_back(std::move(inner));
    // conv2's output is added to the stream: same channels.
    stream.layers.push_back(name + ".conv2");
    append_conv_bn_slices(stream.slices, name + ".conv2");
  }
  stream.slices.push_back({"fc.weight", 1, 1, SliceRole::kConsumer});
  stream.readers.push_back("fc");
  streams.push_back(std::move(stream));
  std::vector<PruneGroup> ordered;
  const size_t per_stage = blocks_.size() / streams.size();
  for (size_t st = 0; st < streams.size(); ++st) {
    ordered.push_back(std::move(streams[st]));
    for (size_t i = 0; i < per_stage; ++i) ordered.push_back(std::move(inners[st * per_stage + i]));
  }
  return ordered;
}

ModelConfig ResNet::pruned_config(const ModelConfig& cfg, const std::vector<int64_t>& kept) {
  ModelConfig c = cfg;
  c.channels.assign(kept.begin(), kept.end());
  return c;
}

void ResNet::attach_quantizers(QuantizerFactory& f) {
  input_quant_ = register_module("input_quant", f.activation("input_quant", norm_->mean.size(1), false));
  stem_->attach_quantizers(f, "stem", input_quant_.get());
  const TensorQuantizer* in = stem_->out_quant.get();
  for (size_t i = 0; i < blocks_.size(); ++i) {
    blocks_[i]->attach_quantizers(f, feature_names_[i + 1], in);  // [0] is the stem
    in = blocks_[i]->add_quant.get();
  }
  head_quant_ = register_module("head_quant", f.activation("head_quant", fc_->options.in_features(), true));
  fc_quant_ = register_module("fc_quant", f.weight("fc", fc_->options.out_features()));
}

ExportGraph ResNet::export_graph() {
  ExportGraph g;
  g.norm = norm_.get();
  g.input_quant = input_quant_.get();
  // Returns the new node's output id.
  auto add = [&g](ExportNode n) {
    g.nodes.push_back(std::move(n));
    return static_cast<int>(g.nodes.size());
  };
  auto conv = [&](const std::string& name, ConvBnReluImpl* c, int input) {
    ExportNode n;
    n.kind = ExportNode::kConvBn;
    n.name = name;
    n.conv = c;
    n.input = input;
    return add(n);
  };
  int x = conv("stem", stem_.get(), 0);
  for (size_t i = 0; i < blocks_.size(); ++i) {
    BasicBlockImpl& b = *blocks_[i];
    const std::string& name = feature_names_[i + 1];
    const int mid = conv(name + ".conv1", b.conv1.get(), x);
    const int out = conv(name + ".conv2", b.conv2.get(), mid);
    const int identity = b.shortcut ? conv(name + ".shortcut", b.shortcut.get(), x) : x;
    ExportNode sum;
    sum.kind = ExportNode::kAdd;
    sum.name = name;
    sum.input = out;
    sum.input2 = identity;
    sum.out_quant = b.add_quant.get();
    x = add(sum);
  }
  ExportNode gap;
  gap.kind = ExportNode::kMeanPool;
  gap.name = "features";
  gap.input = x;
  gap.out_quant = head_quant_.get();
  x = add(gap);
  ExportNode fc;
  fc.kind = ExportNode::kLinear;
  fc.name = "fc";
  fc.input = x;
  fc.linear = fc_.get();
  fc.weight_quant = fc_quant_.get();
  add(fc);
  return g;
}

torch::Tensor ResNet::forward(torch::Tensor x) {
  begin_capture();
  x = norm_(x);
  if (input_quant_) x = input_quant_->forward(x);
  x = stem_(x);
  capture("stem", x);
  for (size_t i = 0; i < blocks_.size(); ++i) {
    x = blocks_[i](x);
    capture(feature_names_[i + 1], x);  // [0] is the stem
  }
  x = x.mean({2, 3});  // [B, 4w]
  if (head_quant_) x = head_quant_->forward(x);
  capture("features", x);
  x = drop_(x);
  if (fc_quant_) {  // [B, classes]
    const torch::Tensor w = fc_quant_->forward(fc_->weight);
    return torch::linear(x, w, fc_quant_->quantize_bias(fc_->bias, head_quant_.get()));
  }
  return fc_(x);  // [B, classes]
}

}  // namespace qd
