#include "trainer/precision.h"

#include <ATen/autocast_mode.h>

#include "common/error.h"

namespace qd {

AutocastScope::AutocastScope(Precision p, torch::Device device) {
  if (p == Precision::kFp32) return;
  type_ = device.type();
  was_enabled_ = at::autocast::is_autocast_enabled(type_);
  was_dtype_ = at::autocast::get_autocast_dtype(type_);
  at::autocast::set_autocast_dtype(type_, p == Precision::kBf16 ? at::kBFloat16 : at::kHalf);
  at::autocast::set_autocast_enabled(type_, true);
  at::autocast::increment_nesting();
  active_ = true;
}

AutocastScope::~AutocastScope() {
  if (!active_) return;
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  at::autocast::set_autocast_enabled(type_, was_enabled_);
  at::autocast::set_autocast_dtype(type_, was_dtype_);
}

LossScaler::LossScaler(int64_t growth_interval, double initial, double growth, double backoff)
    : interval_(growth_interval), scale_(initial), growth_(growth), backoff_(backoff) {
  QD_CHECK(growth_interval > 0 && initial > 0 && growth > 1 && backoff > 0 && backoff < 1, Error,
           "LossScaler: growth_interval > 0, initial > 0, growth > 1 and 0 < backoff < 1");
}

void LossScaler::update(bool overflow) {
  if (overflow) {
    scale_ *= backoff_;
    good_in_a_row_ = 0;
    ++overflows_;
    return;
  }
  if (++good_in_a_row_ == interval_) {
    scale_ *= growth_;
    good_in_a_row_ = 0;
  }
}

bool LossScaler::unscale_and_update(const std::vector<torch::Tensor>& params) {
  std::vector<torch::Tensor> grads;
  for (const auto& p : params)
    if (p.grad().defined()) grads.push_back(p.grad());
  bool overflow = false;
  if (!grads.empty()) {
    const torch::TensorOptions o = torch::TensorOptions().dtype(torch::kFloat32).device(grads[0].device());
    torch::Tensor found_inf = torch::zeros({1}, o);
    const torch::Tensor inv_scale = torch::full({1}, 1.0 / scale_, o);
    torch::NoGradGuard no_grad;
    at::_amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv_scale);
    overflow = found_inf.item<float>() != 0.0f;
  }
  update(overflow);
  return !overflow;
}

void LossScaler::save_state(torch::serialize::OutputArchive& a) const {
  a.write("scale", torch::tensor({scale_}, torch::kFloat64));
  a.write("good_in_a_row", torch::tensor({good_in_a_row_}, torch::kInt64));
  a.write("overflows", torch::tensor({overflows_}, torch::kInt64));
}

void LossScaler::load_state(torch::serialize::InputArchive& a) {
  torch::Tensor s, g, o;
  a.read("scale", s);
  a.read("good_in_a_row", g);
  a.read("overflows", o);
  QD_CHECK(s.numel() == 1 && g.numel() == 1 && o.numel() == 1 && s.item<double>() > 0, Error,
           "the loss scaler's state is damaged");
  scale_ = s.item<double>();
  good_in_a_row_ = g.item<int64_t>();
  overflows_ = o.item<int64_t>();
}

}  // namespace qd
