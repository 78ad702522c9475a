#include "qat/module_qat.h"

#include "common/error.h"
#include "models/model.h"
#include "qat/conv_bn.h"
#include "qat/ggml_quant.h"

namespace qd {

LayerQuantRule QatConfig::rule_for(const std::string& layer) const {
  for (const auto& [pattern, rule] : layers)
    if (layer_pattern_match(pattern, layer)) return rule;
  return LayerQuantRule{true, weight, activation};
}

torch::Tensor per_token_fake_quant(const torch::Tensor& x, int bits) {
  const double qmax = static_cast<double>((int64_t{1} << (bits - 1)) - 1);
  torch::Tensor y;
  {
    torch::NoGradGuard g;
    const torch::Tensor xf = x.to(torch::kFloat32);
    const torch::Tensor s = xf.abs().amax(-1, /*keepdim=*/true).div(qmax);
    const torch::Tensor safe = torch::where(s > 0, s, torch::ones_like(s));  // all-zero rows stay zero
    y = torch::round(xf / safe).clamp(-qmax, qmax).mul(safe).to(x.scalar_type());
  }
  return x + (y - x).detach();  // straight-through: d/dx = 1
}

LayerQatImpl::LayerQatImpl(const QatConfig& cfg, const LayerQuantRule& rule, int64_t out, int64_t in,
                           const std::string& layer, bool with_weight)
    : weight_spec_(cfg.weight_spec(rule.weight)), input_spec_(rule.activation), out_(out), in_(in) {
  flags = register_buffer("flags", torch::zeros({1}, torch::kUInt8));
  const QuantSpec& w = weight_spec_;
  const int64_t block = !with_weight ? 0 : w.format == WeightFormat::kGgml ? kGgmlBlock : w.group_size;
  QD_CHECK(block == 0 || in % block == 0, UserError, "qat: layer ", layer, " has rows of ", in, " values, not a multiple of ",
           "its weight groups of ", block, "; give it another group_size (qat.layers) or leave it float (enabled: false)");
  QD_CHECK(input_spec_.dynamic != DynamicQuant::kPerBlock || in % kGgmlBlock == 0, UserError, "qat: layer ", layer,
           " reads inputs of ", in, " values, not a multiple of 32: activation.dynamic per_block cannot apply; use per_token");
  QD_CHECK(input_spec_.dynamic != DynamicQuant::kNone || !input_spec_.per_channel, UserError, "qat: layer ", layer,
           ": a static input scale of a linear layer is per tensor; set activation.per_channel: false or a dynamic mode");
  if (with_weight && w.format == WeightFormat::kOnnx) {
    FakeQuantizeOptions o;
    o.spec = w;
    o.spec.per_channel = w.per_channel || w.group_size > 0;
    o.spec.axis = 0;
    o.channels = w.group_size > 0 ? out * (in / w.group_size) : out;
    o.weight = true;
    weight_quant = register_module("weight_quant", FakeQuantize(o));
  }
  if (input_spec_.dynamic == DynamicQuant::kNone) {
    FakeQuantizeOptions o;
    o.spec = input_spec_;
    o.channels = 1;
    input_quant = register_module("input_quant", FakeQuantize(o));
  }
}

void LayerQatImpl::set_enabled(bool on) {
  if (on == enabled_) return;
  enabled_ = on;
  torch::NoGradGuard g;
  flags.fill_(static_cast<int64_t>(on));
}

void LayerQatImpl::load_flags() { enabled_ = flags.cpu()[0].item<uint8_t>() != 0; }

torch::Tensor LayerQatImpl::weight(const torch::Tensor& w) {
  if (!enabled_) return w;
  QD_CHECK(weight_quant || weight_spec_.format == WeightFormat::kGgml, UserError, "qat: an activation point has no weight");
  if (weight_spec_.format == WeightFormat::kGgml)
    return ggml_fake_quant(w, weight_spec_.bits == 8 ? GgmlBlockType::kQ8_0 : GgmlBlockType::kQ4_0);
  if (weight_spec_.group_size == 0) return weight_quant(w);
  return weight_quant(w.reshape({-1, weight_spec_.group_size})).view(w.sizes());
}

torch::Tensor LayerQatImpl::input(const torch::Tensor& x_in) {
  if (!enabled_) return x_in;
  // Rounding to the grid in float32 whatever trainer.precision computed x in (trainer/precision.h).
  const torch::Tensor x = x_in.to(torch::kFloat32);  // no copy when it already is
  switch (input_spec_.dynamic) {
    case DynamicQuant::kNone:
      return input_quant(x);
    case DynamicQuant::kPerToken:
      return per_token_fake_quant(x, input_spec_.bits);
    case DynamicQuant::kPerBlock:
      QD_CHECK(x.size(-1) % kGgmlBlock == 0, UserError, "qat: per_block quantization needs rows that are a multiple of 32 "
               "values; these have ", x.size(-1), " (use per_token)");
      return ggml_fake_quant(x.reshape({-1, x.size(-1)}), GgmlBlockType::kQ8_0).view(x.sizes());
  }
  return x;
}

std::vector<QuantizableLayer> quantizable_layers(torch::nn::Module& model) {
  std::vector<QuantizableLayer> out;
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    if (auto l = std::dynamic_pointer_cast<LinearImpl>(item.value())) {
      if (!l->factored())  // its factors a and b are layers of their own
        out.push_back({item.key(), "linear", l->out_features(), l->in_features()});
    } else if (auto e = std::dynamic_pointer_cast<EmbeddingImpl>(item.value()))
      out.push_back({item.key(), "embedding", e->weight.size(0), e->weight.size(1)});
  }
  return out;
}

namespace {

// The module-type mapping of the CNNs (models/quantizer.h): a Conv-BN unit -> ConvBnQat (folded,
// per-channel weights) plus a static output quantizer that fuses its ReLU; a plain layer's
// weights -> a per-channel FakeQuantize; an activation point -> a static FakeQuantize. Each point
// takes the rule of the first `qat.layers` pattern that matches its name, restricted to what the
// integer CNN runtime runs (every layer int8-stored, static activations, per-channel weights).
class CnnQuantizerFactory : public QuantizerFactory {
 public:
  explicit CnnQuantizerFactory(const QatConfig& cfg) : cfg_(cfg) {}

  std::shared_ptr<TensorQuantizer> activation(const std::string& point, int64_t channels, bool relu) override {
    return make_activation(rule(point).activation, channels, relu);
  }
  std::shared_ptr<TensorQuantizer> weight(const std::string& layer, int64_t out) override {
    FakeQuantizeOptions o;
    o.spec = cfg_.weight_spec(rule(layer).weight);
    o.channels = out;
    o.weight = true;
    return FakeQuantize(o).ptr();
  }
  std::shared_ptr<ConvBnQuantizer> conv_bn(const std::string& layer, ConvBnReluImpl& unit,
                                           const TensorQuantizer* input) override {
    const auto* in = dynamic_cast<const FakeQuantizeImpl*>(input);
    QD_CHECK(input == nullptr || in != nullptr, UserError, "qat: the input of ", layer, " is not quantized by qat/");
    return std::make_shared<ConvBnQatImpl>(cfg_.weight_spec(rule(layer).weight), unit.conv->options.out_channels(), in);
  }
  std::shared_ptr<TensorQuantizer> output(const std::string& layer, ConvBnReluImpl& unit) override {
    return make_activation(rule(layer).activation, unit.conv->options.out_channels(), unit.relu_);
  }

  const std::vector<std::string>& names() const { return names_; }
  int64_t made() const { return made_; }

 private:
  LayerQuantRule rule(const std::string& name) {
    if (names_.empty() || names_.back() != name) names_.push_back(name);
    ++made_;
    LayerQuantRule r = cfg_.rule_for(name);
    auto refuse = [&name](bool ok, const char* why) {
      QD_CHECK(ok, UserError, "qat.layers: ", name, " is a layer of a CNN, whose integer export runs every layer in "
               "int8 with static activations: ", why);
    };
    refuse(r.enabled, "it cannot stay float (enabled: false)");
    refuse(r.weight.group_size == 0 && r.weight.format == WeightFormat::kOnnx,
           "its weights are per output channel (no group_size, format onnx)");
    refuse(r.activation.dynamic == DynamicQuant::kNone, "its activations have static scales (activation.dynamic: none)");
    refuse(cfg_.target != QatTarget::kTensorRt || r.activation.symmetric,
           "qat.target tensorrt needs symmetric activations (activation.symmetric: true)");
    return r;
  }
  static std::shared_ptr<TensorQuantizer> make_activation(const QuantSpec& spec, int64_t channels, bool relu) {
    FakeQuantizeOptions o;
    o.spec = spec;
    o.channels = channels;
    o.relu = relu;
    return FakeQuantize(o).ptr();
  }

  QatConfig cfg_;
  std::vector<std::string> names_;
  int64_t made_ = 0;
};

void check_patterns_used(const QatConfig& cfg, const std::vector<std::string>& names) {
  for (const auto& [pattern, rule] : cfg.layers) {
    bool used = false;
    for (const auto& n : names) used = used || layer_pattern_match(pattern, n);
    QD_CHECK(used, UserError, "qat.layers: the pattern \"", pattern, "\" matches no layer of this model (its layers are named "
             "like \"", names.front(), "\" and \"", names.back(), "\"; `qdistill layers CONFIG` lists them all)");
  }
}

}  // namespace

std::vector<std::string> cnn_quantization_points(Model& model) {
  QatConfig cfg;
  cfg.enabled = true;
  CnnQuantizerFactory f(cfg);
  model.attach_quantizers(f);
  return f.names();
}

std::unique_ptr<QuantizerFactory> cnn_quantizer_factory(const QatConfig& cfg) {
  return std::make_unique<CnnQuantizerFactory>(cfg);
}

int64_t attach_qat(torch::nn::Module& model, const QatConfig& cfg) {
  const std::vector<QuantizableLayer> layers = quantizable_layers(model);
  if (layers.empty()) {  // a CNN: it declares its quantization points itself
    auto* cnn = dynamic_cast<Model*>(&model);
    QD_CHECK(cnn != nullptr, UserError, "qat: the model has no layers to quantize");
    CnnQuantizerFactory f(cfg);
    cnn->attach_quantizers(f);
    check_patterns_used(cfg, f.names());
    return f.made();
  }
  {
    std::vector<std::string> names;
    for (const auto& l : layers) names.push_back(l.name);
    check_patterns_used(cfg, names);
  }
  int64_t attached = 0;
  const auto modules = model.named_modules("", /*include_self=*/false);
  for (const auto& l : layers) {
    const LayerQuantRule rule = cfg.rule_for(l.name);
    if (!rule.enabled) continue;
    auto twin = std::make_shared<LayerQatImpl>(cfg, rule, l.out, l.in, l.name);
    const auto& m = modules[l.name];
    if (auto lin = std::dynamic_pointer_cast<LinearImpl>(m)) lin->attach(twin);
    else std::dynamic_pointer_cast<EmbeddingImpl>(m)->attach(twin);
    ++attached;
  }
  if (cfg.kv_cache != DynamicQuant::kNone) {
    int64_t points = 0;
    for (const auto& item : modules) {
      auto p = std::dynamic_pointer_cast<QuantPointImpl>(item.value());
      const std::string& name = item.key();
      if (!p || !(layer_pattern_match("*k_cache", name) || layer_pattern_match("*v_cache", name))) continue;
      LayerQuantRule rule{true, cfg.weight, cfg.activation};
      rule.activation.dynamic = cfg.kv_cache;
      rule.activation.bits = 8;
      // Rows of head_dim: the width is checked when the first tensor arrives (per_block needs 32 | head_dim).
      p->attach(std::make_shared<LayerQatImpl>(cfg, rule, 0, kGgmlBlock, name, /*with_weight=*/false));
      ++points, ++attached;
    }
    QD_CHECK(points > 0, UserError, "qat.kv_cache: this model has no KV cache (a llama decoder has one)");
  }
  return attached;
}

std::vector<LayerQat> layer_qats(torch::nn::Module& m) {
  std::vector<LayerQat> out;
  for (const auto& sub : m.modules(/*include_self=*/true))
    if (auto q = std::dynamic_pointer_cast<LayerQatImpl>(sub)) out.emplace_back(q);
  return out;
}

}  // namespace qd
