#include "models/zoo.h"

#include "common/error.h"

namespace qd {

ConvNet::ConvNet(const ModelConfig& cfg, const InputSpec& in) : head_(cfg.head) {
  norm_ = register_module("norm", InputNorm(in));
  QD_CHECK(cfg.channels.empty() || static_cast<int>(cfg.channels.size()) == cfg.depth, UserError,
           "model.channels: the convnet has ", cfg.depth, " conv blocks, so it needs ", cfg.depth,
           " channel counts; got ", cfg.channels.size());
  int64_t c_in = in.channels, c_out = cfg.width, h = in.height, w = in.width;
  for (int i = 0; i < cfg.depth; ++i) {
    feature_names_.push_back("block" + std::to_string(i));
    const int64_t out = cfg.channels.empty() ? c_out : cfg.channels[static_cast<size_t>(i)];
    blocks_.push_back(register_module(feature_names_.back(), ConvBnRelu(c_in, out)));
    c_in = out;
    const bool stage_end = (i + 1) % cfg.blocks_per_stage == 0 && i + 1 < cfg.depth;
    // Pool only while the map stays at least 2x2.
    const bool pool = stage_end && h >= 4 && w >= 4;
    pool_after_.push_back(pool);
    if (pool) {
      h /= 2, w /= 2;
      c_out *= 2;
    }
  }
  feature_names_.push_back("features");
  drop_ = register_module("dropout", torch::nn::Dropout(cfg.dropout));
  final_hw_ = h * w;
  const int64_t features = head_ == HeadKind::kGap ? c_in : c_in * h * w;
  classifier_ = register_module("classifier", torch::nn::Linear(features, in.num_classes));
}

std::vector<PruneGroup> ConvNet::prune_groups() {
  std::vector<PruneGroup> groups;
  for (size_t i = 0; i < blocks_.size(); ++i) {
    PruneGroup g;
    g.name = feature_names_[i];
    g.axis = "channels";
    g.layers = {g.name};
    g.units = blocks_[i]->conv->options.out_channels();
    append_conv_bn_slices(g.slices, g.name);
    if (i + 1 < blocks_.size()) {
      g.slices.push_back({feature_names_[i + 1] + ".conv.weight", 1, 1, SliceRole::kConsumer});
      g.readers.push_back(feature_names_[i + 1]);
    } else {  // flatten: channel c feeds features [c*h*w, (c+1)*h*w)
      g.slices.push_back({"classifier.weight", 1, head_ == HeadKind::kGap ? 1 : final_hw_, SliceRole::kConsumer});
      g.readers.push_back("classifier");
    }
    groups.push_back(std::move(g));
  }
  return groups;
}

ModelConfig ConvNet::pruned_config(const ModelConfig& cfg, const std::vector<int64_t>& kept) {
  ModelConfig c = cfg;
  c.channels.assign(kept.begin(), kept.end());
  return c;
}

void ConvNet::attach_quantizers(QuantizerFactory& f) {
  input_quant_ = register_module("input_quant", f.activation("input_quant", norm_->mean.size(1), false));
  const TensorQuantizer* in = input_quant_.get();
  for (size_t i = 0; i < blocks_.size(); ++i) {
    blocks_[i]->attach_quantizers(f, feature_names_[i], in);  // max pooling keeps the scale
    in = blocks_[i]->out_quant.get();
  }
  // The pooled features are non-negative (means of ReLU outputs): their range starts at 0.
  if (head_ == HeadKind::kGap)
    head_quant_ = register_module("head_quant", f.activation("head_quant", classifier_->options.in_features(), true));
  classifier_quant_ = register_module("classifier_quant", f.weight("classifier", classifier_->options.out_features()));
}

ExportGraph ConvNet::export_graph() {
  ExportGraph g;
  g.norm = norm_.get();
  g.input_quant = input_quant_.get();
  auto add = [&g](ExportNode n) {
    n.input = static_cast<int>(g.nodes.size());  // a chain: each node reads the previous output
    g.nodes.push_back(std::move(n));
  };
  for (size_t i = 0; i < blocks_.size(); ++i) {
    ExportNode conv;
    conv.kind = ExportNode::kConvBn;
    conv.name = feature_names_[i];
    conv.conv = blocks_[i].get();
    add(conv);
    if (pool_after_[i]) {
      ExportNode pool;
      pool.kind = ExportNode::kMaxPool;
      pool.name = feature_names_[i] + ".pool";
      pool.kernel = pool.stride = 2;
      add(pool);
    }
  }
  if (head_ == HeadKind::kGap) {
    ExportNode gap;
    gap.kind = ExportNode::kMeanPool;
    gap.name = "features";
    gap.out_quant = head_quant_.get();
    add(gap);
  }
  ExportNode fc;
  fc.kind = ExportNode::kLinear;
  fc.name = "classifier";
  fc.linear = classifier_.get();
  fc.weight_quant = classifier_quant_.get();
  add(fc);
  return g;
}

torch::Tensor ConvNet::forward(torch::Tensor x) {
  begin_capture();
  x = norm_(x);
  if (input_quant_) x = input_quant_->forward(x);
  for (size_t i = 0; i < blocks_.size(); ++i) {
    x = blocks_[i](x);
    capture(feature_names_[i], x);  // [B, C, H, W] before the pool
    if (pool_after_[i]) x = torch::max_pool2d(x, 2);
  }
  x = head_ == HeadKind::kGap ? x.mean({2, 3}) : x.flatten(1);  // [B, features]
  if (head_quant_) x = head_quant_->forward(x);
  capture("features", x);
  x = drop_(x);
  if (classifier_quant_) {
    const torch::Tensor w = classifier_quant_->forward(classifier_->weight);
    const TensorQuantizer* in = head_quant_ ? head_quant_.get() : blocks_.back()->out_quant.get();
    return torch::linear(x, w, classifier_quant_->quantize_bias(classifier_->bias, in));
  }
  return classifier_(x);
}

}  // namespace qd
