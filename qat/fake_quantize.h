// FakeQuantize: quantize-then-dequantize with the straight-through estimator (STE), plus the
// observer that finds its range. One module per quantization point (a layer's weights, or an
// activation tensor).
//
//   forward:  q = clamp(round(x / scale) + zero_point, qmin, qmax);  y = (q - zero_point) * scale
//   backward: dy/dx = 1 where round(x / scale) + zero_point lies in [qmin, qmax], else 0 (STE)
//
// Both run in LibTorch's fused kernels (fake_quantize_per_{tensor,channel}_affine, and the
// learnable variants for LSQ), which save the clamp mask in forward instead of recomputing it.
//
// Weights are observed from the tensor itself, every forward, until frozen: every rank holds the
// same weights, so every rank computes the same scales without communication.
//
// Activations are observed per rank and synchronised: forward() only records this step's
// statistics (pending()); QatHook all-reduces the pending statistics of every activation
// quantizer of the model in ONE collective per optimizer step and calls update() with the
// result, so scales change identically on every rank between steps. The forward pass therefore
// uses the scales from the statistics of all previous steps: no collective sits inside
// forward(), and the first QAT step only observes (its outputs are not quantized yet).
#pragma once

#include <torch/torch.h>

#include "models/quantizer.h"
#include "models/structure.h"
#include "qat/fake_quant_cpu.h"
#include "qat/qat_config.h"

namespace qd {

struct FakeQuantizeOptions {
  QuantSpec spec;
  int64_t channels = 1;  // size along spec.axis (per-channel), else 1
  bool weight = false;   // weights: observed from the tensor itself; activations: synced statistics
  // The input is pre-ReLU and the ReLU is fused in: the range starts at 0, and with an
  // asymmetric scheme the zero point is qmin, so clamping to qmin IS the ReLU (values and STE
  // gradient). With a symmetric scheme the ReLU is applied first.
  bool relu = false;
};

// The twin of every CNN quantization point (models/quantizer.h): activations and weights.
class FakeQuantizeImpl : public TensorQuantizer, public PerChannelState {
 public:
  explicit FakeQuantizeImpl(FakeQuantizeOptions o);
  torch::Tensor forward(const torch::Tensor& x) override;
  // fake_quantize_bias below, with this quantizer's scale while it is enabled. `input` is a
  // FakeQuantizeImpl or null.
  torch::Tensor quantize_bias(const torch::Tensor& bias, const TensorQuantizer* input) const override;

  // Control, set by QatHook from the schedule. `enabled`: outputs are fake-quantized (once a
  // range is known). `observing`: statistics update the range; off = frozen scales.
  void set_enabled(bool on);
  void set_observing(bool on);
  bool enabled() const { return enabled_; }
  bool observing() const { return observing_; }
  bool initialized() const { return initialized_; }
  // Re-reads the cached flags from the `flags` buffer (after loading a checkpoint).
  void load_flags();
  // A per-channel weight quantizer's scale, zero point, observer range (and LSQ scale): what
  // physical removal cuts with the layer's output channels (models/structure.h).
  std::vector<std::string> per_channel_tensors() const override;

  // Activation statistics recorded since the last update(), for the cross-rank reduction:
  // [2, C] float32 rows (-min, max) to be reduced with MAX, or for the percentile observer rows
  // (low, high) summed over micro-batches, to be reduced with SUM. Undefined if nothing was seen.
  torch::Tensor pending() const { return pending_; }
  bool pending_reduces_with_sum() const { return opts_.spec.observer == ObserverKind::kPercentile; }
  // Applies the reduced statistics (same shape as pending()) and recomputes scale / zero point.
  // `world_size` divides summed percentiles back to a mean.
  void update(const torch::Tensor& reduced, int world_size);

  // The scale in use: the LSQ parameter (clamped positive) or the observed one. [C]
  torch::Tensor effective_scale() const;
  const FakeQuantizeOptions& options() const { return opts_; }
  int64_t quant_min() const { return opts_.spec.quant_min(); }
  int64_t quant_max() const { return opts_.spec.quant_max(); }

  // Buffers (saved in checkpoints; what export reads).
  torch::Tensor scale;        // [C] float32
  torch::Tensor zero_point;   // [C] int32
  torch::Tensor running_min;  // [C] float32, observer state
  torch::Tensor running_max;  // [C]
  torch::Tensor flags;        // [3] uint8: enabled, observing, initialized
  torch::Tensor lsq_scale;    // parameter [C] (observer lsq only), learned

 private:
  torch::Tensor quantize(const torch::Tensor& x);
  void observe_weight(const torch::Tensor& w);
  void record(const torch::Tensor& x);
  void record_minmax(float lo, float hi);  // from the CPU kernel's fused pass
  void set_range(const torch::Tensor& lo, const torch::Tensor& hi);  // running -> scale / zero point
  void store_flags();
  // Reduces `x` to [C] along every dimension except the channel axis (all of them per tensor).
  std::vector<int64_t> reduce_dims(const torch::Tensor& x) const;

  FakeQuantizeOptions opts_;
  bool enabled_ = false, observing_ = false, initialized_ = false;
  FakeQuantParams host_;  // per-tensor scale / zero point as host numbers, for the CPU kernel
  torch::Tensor pending_;
  int64_t pending_count_ = 0;  // micro-batches in pending_ (percentile mean)
};
TORCH_MODULE(FakeQuantize);

// Scale and zero point for the range [lo, hi] (per channel, [C]) under `spec`, the way
// PyTorch's observers compute them: the range always contains 0; symmetric uses max(|lo|, |hi|).
std::pair<torch::Tensor, torch::Tensor> compute_qparams(const torch::Tensor& lo, const torch::Tensor& hi,
                                                         const QuantSpec& spec);

// The int32 bias of a deployed int8 layer, as integers in float: round(bias / (in_scale * w_scale)),
// `in_scale` [1] the input activation's scale, `w_scale` [O] the weights'. One implementation for
// the simulation and the exporter, so both round identically.
torch::Tensor bias_integers(const torch::Tensor& bias, const torch::Tensor& in_scale, const torch::Tensor& w_scale);

// Fake-quantizes a layer's bias to what deploys: bias_integers * in_scale * w_scale, with the
// straight-through estimator (the gradient passes unchanged). Returns `bias` unchanged when the
// input quantizer `in` is absent or has no scale yet.
torch::Tensor fake_quantize_bias(const torch::Tensor& bias, const FakeQuantizeImpl* in, const torch::Tensor& w_scale);

// The activation quantizer of a [N, channels, ...] tensor; `relu`: the input is pre-ReLU and
// the ReLU is fused in (see FakeQuantizeOptions).
FakeQuantize make_activation_quant(const QatConfig& cfg, int64_t channels, bool relu);
// The per-output-channel quantizer of a [out, ...] weight, on the grid of cfg.target.
FakeQuantize make_weight_quant(const QatConfig& cfg, int64_t out_channels);

// Every FakeQuantize inside `m`, in registration order.
std::vector<FakeQuantize> fake_quantizers(torch::nn::Module& m);

}  // namespace qd
