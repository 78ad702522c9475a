#include "qat/fake_quantize.h"

#include <cmath>

namespace qd {

namespace {
// The smallest scale: float32 epsilon, as PyTorch's observers use.
constexpr double kMinScale = 1.1920928955078125e-07;
}  // namespace

std::pair<torch::Tensor, torch::Tensor> compute_qparams(const torch::Tensor& lo, const torch::Tensor& hi,
                                                         const QuantSpec& spec) {
  const double qmin = static_cast<double>(spec.quant_min()), qmax = static_cast<double>(spec.quant_max());
  const torch::Tensor lo0 = torch::clamp_max(lo, 0.0), hi0 = torch::clamp_min(hi, 0.0);
  torch::Tensor scale, zp;
  if (spec.symmetric) {
    scale = torch::maximum(-lo0, hi0).div((qmax - qmin) / 2.0).clamp_min(kMinScale);
    zp = torch::zeros_like(scale, torch::kInt32);
  } else {
    scale = (hi0 - lo0).div(qmax - qmin).clamp_min(kMinScale);
    zp = (qmin - torch::round(lo0 / scale)).clamp(qmin, qmax).to(torch::kInt32);
  }
  return {scale.to(torch::kFloat32), zp};
}

FakeQuantize make_activation_quant(const QatConfig& cfg, int64_t channels, bool relu) {
  FakeQuantizeOptions o;
  o.spec = cfg.activation;
  o.channels = channels;
  o.relu = relu;
  return FakeQuantize(o);
}

FakeQuantize make_weight_quant(const QatConfig& cfg, int64_t out_channels) {
  FakeQuantizeOptions o;
  o.spec = cfg.weight_spec();
  o.channels = out_channels;
  o.weight = true;
  return FakeQuantize(o);
}

std::vector<FakeQuantize> fake_quantizers(torch::nn::Module& m) {
  std::vector<FakeQuantize> out;
  for (const auto& sub : m.modules(/*include_self=*/true))
    if (auto fq = std::dynamic_pointer_cast<FakeQuantizeImpl>(sub)) out.emplace_back(fq);
  return out;
}

FakeQuantizeImpl::FakeQuantizeImpl(FakeQuantizeOptions o) : opts_(std::move(o)) {
  host_.quant_min = opts_.spec.quant_min();
  host_.quant_max = opts_.spec.quant_max();
  if (!opts_.spec.per_channel) opts_.channels = 1;
  const int64_t c = opts_.channels;
  scale = register_buffer("scale", torch::ones({c}));
  zero_point = register_buffer("zero_point", torch::zeros({c}, torch::kInt32));
  running_min = register_buffer("running_min", torch::zeros({c}));
  running_max = register_buffer("running_max", torch::zeros({c}));
  flags = register_buffer("flags", torch::zeros({3}, torch::kUInt8));
  if (opts_.spec.observer == ObserverKind::kLsq) lsq_scale = register_parameter("lsq_scale", torch::ones({c}));
}

void FakeQuantizeImpl::store_flags() {
  torch::NoGradGuard g;
  flags.copy_(torch::tensor({uint8_t(enabled_), uint8_t(observing_), uint8_t(initialized_)}, torch::kUInt8));
}

std::vector<std::string> FakeQuantizeImpl::per_channel_tensors() const {
  if (!opts_.weight || opts_.channels <= 1) return {};
  std::vector<std::string> names{"scale", "zero_point", "running_min", "running_max"};
  if (lsq_scale.defined()) names.push_back("lsq_scale");
  return names;
}

void FakeQuantizeImpl::load_flags() {
  torch::Tensor f = flags.cpu();
  enabled_ = f[0].item<uint8_t>() != 0;
  observing_ = f[1].item<uint8_t>() != 0;
  initialized_ = f[2].item<uint8_t>() != 0;
  host_.scale = scale[0].item<float>();  // once, after loading: a sync is fine here
  host_.zero_point = zero_point[0].item<int32_t>();
}

void FakeQuantizeImpl::set_enabled(bool on) {
  if (on == enabled_) return;
  enabled_ = on;
  store_flags();
}

void FakeQuantizeImpl::set_observing(bool on) {
  if (on == observing_) return;
  observing_ = on;
  if (!on) pending_ = torch::Tensor();
  store_flags();
}

std::vector<int64_t> FakeQuantizeImpl::reduce_dims(const torch::Tensor& x) const {
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < x.dim(); ++d)
    if (!opts_.spec.per_channel || d != opts_.spec.axis) dims.push_back(d);
  return dims;
}

torch::Tensor FakeQuantizeImpl::effective_scale() const {
  if (lsq_scale.defined()) return lsq_scale.detach().abs().clamp_min(kMinScale);
  return scale;
}

void FakeQuantizeImpl::set_range(const torch::Tensor& lo, const torch::Tensor& hi) {
  torch::NoGradGuard g;
  torch::Tensor l = opts_.relu ? torch::zeros_like(lo) : lo;
  running_min.copy_(l);
  running_max.copy_(hi);
  auto [s, z] = compute_qparams(l, hi, opts_.spec);
  scale.copy_(s);
  zero_point.copy_(z);
  // The CPU kernel's host copy (per-tensor only; reading a CUDA value would sync every step).
  if (!opts_.spec.per_channel && s.device().is_cpu()) {
    host_.scale = s[0].item<float>();
    host_.zero_point = z[0].item<int32_t>();
  }
  if (lsq_scale.defined() && !initialized_) lsq_scale.copy_(s);  // LSQ starts from the observed range
  if (!initialized_) {
    initialized_ = true;
    store_flags();
  }
}

void FakeQuantizeImpl::observe_weight(const torch::Tensor& w) {
  torch::NoGradGuard g;
  const std::vector<int64_t> dims = reduce_dims(w);
  torch::Tensor lo = opts_.spec.per_channel ? w.amin(dims) : w.min().reshape({1});
  torch::Tensor hi = opts_.spec.per_channel ? w.amax(dims) : w.max().reshape({1});
  set_range(lo, hi);
}

void FakeQuantizeImpl::record(const torch::Tensor& x) {
  torch::NoGradGuard g;
  torch::Tensor stats;  // [2, C]
  const ObserverKind kind = opts_.spec.observer;
  if (kind == ObserverKind::kPercentile) {
    // Percentiles of a strided sample of at most 2^16 values (a full sort would cost more than
    // the layer); the sample is deterministic, so every rank's choice is reproducible.
    torch::Tensor flat = x.reshape({-1});
    const int64_t n = flat.numel(), step = std::max<int64_t>(1, n / 65536);
    if (step > 1) flat = flat.slice(0, 0, n, step);
    const int64_t m = flat.numel();
    const double p = opts_.spec.percentile / 100.0;
    const int64_t k_hi = std::clamp<int64_t>(static_cast<int64_t>(std::ceil(p * m)), 1, m);
    const int64_t k_lo = std::clamp<int64_t>(static_cast<int64_t>(std::floor((1.0 - p) * m)) + 1, 1, m);
    torch::Tensor hi = std::get<0>(flat.kthvalue(k_hi)).reshape({1});
    torch::Tensor lo = opts_.relu ? torch::zeros({1}, x.options()) : std::get<0>(flat.kthvalue(k_lo)).reshape({1});
    stats = torch::stack({lo, hi}).to(torch::kFloat32);
    pending_ = pending_.defined() ? pending_ + stats : stats;
    ++pending_count_;
    return;
  }
  torch::Tensor lo, hi;
  if (opts_.spec.per_channel) {
    const std::vector<int64_t> dims = reduce_dims(x);
    hi = x.amax(dims);
    lo = opts_.relu ? torch::zeros_like(hi) : x.amin(dims);
  } else if (opts_.relu) {
    hi = x.max().reshape({1});
    lo = torch::zeros_like(hi);
  } else {
    auto mm = torch::aminmax(x);
    lo = std::get<0>(mm).reshape({1});
    hi = std::get<1>(mm).reshape({1});
  }
  stats = torch::stack({-lo, hi}).to(torch::kFloat32);  // both reduce with MAX
  pending_ = pending_.defined() ? torch::maximum(pending_, stats) : stats;
  pending_count_ = 1;
}

void FakeQuantizeImpl::record_minmax(float lo, float hi) {
  if (opts_.relu) lo = 0.0f;
  torch::Tensor stats = torch::tensor({-lo, hi}, torch::kFloat32).view({2, 1});
  pending_ = pending_.defined() ? torch::maximum(pending_, stats) : stats;
  pending_count_ = 1;
}

void FakeQuantizeImpl::update(const torch::Tensor& reduced, int world_size) {
  torch::NoGradGuard g;
  TORCH_CHECK(!opts_.weight, "FakeQuantize::update is for activations; weights observe themselves");
  torch::Tensor lo, hi;
  if (pending_reduces_with_sum()) {
    const double n = static_cast<double>(world_size) * static_cast<double>(std::max<int64_t>(1, pending_count_));
    lo = reduced[0] / n;
    hi = reduced[1] / n;
  } else {
    lo = -reduced[0];
    hi = reduced[1];
  }
  pending_ = torch::Tensor();
  pending_count_ = 0;
  if (initialized_) {
    switch (opts_.spec.observer) {
      case ObserverKind::kMinMax:
        lo = torch::minimum(running_min, lo);
        hi = torch::maximum(running_max, hi);
        break;
      case ObserverKind::kMovingAverage:
      case ObserverKind::kPercentile: {
        const double c = opts_.spec.momentum;
        lo = running_min + c * (lo - running_min);
        hi = running_max + c * (hi - running_max);
        break;
      }
      case ObserverKind::kLsq:
        return;  // learned from here on
    }
  }
  set_range(lo, hi);
}

torch::Tensor FakeQuantizeImpl::quantize(const torch::Tensor& x) {
  const QuantSpec& s = opts_.spec;
  const int64_t qmin = s.quant_min(), qmax = s.quant_max();
  if (lsq_scale.defined()) {
    {
      torch::NoGradGuard g;
      lsq_scale.clamp_(kMinScale);
    }
    // LSQ gradient scaling: 1 / sqrt(elements per scale * qmax).
    const double per_scale = static_cast<double>(x.numel()) / static_cast<double>(opts_.channels) /
                             (opts_.weight ? 1.0 : static_cast<double>(x.size(0)));
    const double grad_factor = 1.0 / std::sqrt(per_scale * static_cast<double>(qmax));
    const torch::Tensor zp = zero_point.to(torch::kFloat32);
    if (s.per_channel)
      return torch::_fake_quantize_learnable_per_channel_affine(x, lsq_scale, zp, s.axis, qmin, qmax, grad_factor);
    return torch::_fake_quantize_learnable_per_tensor_affine(x, lsq_scale, zp, qmin, qmax, grad_factor);
  }
  if (s.per_channel) return torch::fake_quantize_per_channel_affine(x, scale, zero_point, s.axis, qmin, qmax);
  if (x.device().is_cpu() && x.scalar_type() == torch::kFloat32) return fake_quantize_per_tensor_cpu(x, host_, nullptr);
  return torch::fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax);
}

torch::Tensor FakeQuantizeImpl::forward(const torch::Tensor& x) {
  // Observers and rounding in float32 whatever trainer.precision computed x in (trainer/precision.h).
  if (x.is_floating_point() && x.scalar_type() != torch::kFloat32) return forward(x.to(torch::kFloat32));
  // The ReLU is fused only where clamping to qmin reproduces it exactly.
  const bool fused_relu = opts_.relu && !opts_.spec.symmetric;
  if (opts_.weight) {
    if (!enabled_) return x;
    if (observing_ || !initialized_) observe_weight(x.detach());
    return quantize(x);
  }
  const ObserverKind kind = opts_.spec.observer;
  const bool observe = observing_ && is_training() && !(kind == ObserverKind::kLsq && initialized_);
  if (!enabled_ || !initialized_) {
    if (observe) record(x.detach());
    return opts_.relu ? torch::relu(x) : x;
  }
  const torch::Tensor in = fused_relu || !opts_.relu ? x : torch::relu(x);
  if (kind != ObserverKind::kLsq && !opts_.spec.per_channel && x.device().is_cpu() &&
      x.scalar_type() == torch::kFloat32) {
    // One pass: fake-quant, STE mask and (min-max observers) this step's range.
    const bool fused_observe = observe && kind != ObserverKind::kPercentile;
    float mm[2];
    torch::Tensor y = fake_quantize_per_tensor_cpu(in, host_, fused_observe ? mm : nullptr);
    if (fused_observe) record_minmax(mm[0], mm[1]);
    else if (observe) record(x.detach());
    return y;
  }
  if (observe) record(x.detach());
  return quantize(in);
}

torch::Tensor bias_integers(const torch::Tensor& bias, const torch::Tensor& in_scale, const torch::Tensor& w_scale) {
  const torch::Tensor s = in_scale.to(torch::kFloat32) * w_scale.to(torch::kFloat32);
  return torch::round(bias.detach().to(torch::kFloat32) / s).clamp(-2147483647.0, 2147483647.0);
}

torch::Tensor fake_quantize_bias(const torch::Tensor& bias, const FakeQuantizeImpl* in, const torch::Tensor& w_scale) {
  if (in == nullptr || !in->enabled() || !in->initialized() || !bias.defined()) return bias;
  const torch::Tensor in_scale = in->effective_scale().to(bias.device()).narrow(0, 0, 1);
  const torch::Tensor ws = w_scale.detach().to(bias.device());
  const torch::Tensor q = bias_integers(bias, in_scale, ws) * (in_scale * ws);
  return bias + (q - bias).detach();
}

torch::Tensor FakeQuantizeImpl::quantize_bias(const torch::Tensor& bias, const TensorQuantizer* input) const {
  return fake_quantize_bias(bias, enabled() ? dynamic_cast<const FakeQuantizeImpl*>(input) : nullptr, effective_scale());
}

}  // namespace qd
