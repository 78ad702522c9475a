// The `qat` section: quantization-aware training (fake-quant with the straight-through
// estimator), its observers and its schedule.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "common/config.h"

namespace qd {

enum class ObserverKind {
  kMinMax,         // running min / max over everything observed
  kMovingAverage,  // exponential moving average of each step's min / max
  kPercentile,     // moving average of each step's low / high percentile: clips outliers
  kLsq,            // learned step size (Esser et al. 2020), initialised from the moving average
};

// Where the exported student will run. It picks the integer grid that QAT trains on, because
// what trains must be what deploys (docs/export.md, "Deployment targets").
enum class QatTarget {
  // Weights |q| <= 64 (kPortableWeightMax): no pair of u8 x s8 products can leave int16, so ONNX
  // Runtime's vpmaddubsw kernels (x86 AVX2, AVX-512 without VNNI) are exact too. Every CPU class.
  kPortable,
  // Weights on the full 8-bit grid [-127, 127]: exact on x86 with VNNI (AVX512-VNNI, AVX-VNNI,
  // AMX), ARM64 and qdistill-run; ONNX Runtime on AVX2-only x86 saturates.
  kX86Vnni,
  // As kX86Vnni, and activations must be symmetric (zero point 0): TensorRT's int8 takes no other.
  kTensorRt,
};

// The YAML names of the targets, in one place (config parsing, reports).
inline const std::vector<std::pair<std::string, QatTarget>>& qat_target_names() {
  static const std::vector<std::pair<std::string, QatTarget>> names{
      {"portable", QatTarget::kPortable}, {"x86_vnni", QatTarget::kX86Vnni}, {"tensorrt", QatTarget::kTensorRt}};
  return names;
}
inline const char* target_name(QatTarget t) {
  for (const auto& [name, value] : qat_target_names())
    if (value == t) return name.c_str();
  return "unknown";
}

// The largest |q| of symmetric weights under kPortable: 255 * (64 + 64) = 32640 <= 32767, so a
// vpmaddubsw pair sum of u8 activations (any value) and these weights never saturates.
inline constexpr int64_t kPortableWeightMax = 64;

// How one tensor is quantized (options as a plain struct, as in DESIGN.md).
struct QuantSpec {
  int bits = 8;
  bool symmetric = true;      // zero point 0; integer range [-(2^(b-1)-1), 2^(b-1)-1]
  bool per_channel = true;    // one scale per slice along `axis`
  int axis = 0;               // weights: 0 (output channels); activations: 1 (channels of NCHW)
  ObserverKind observer = ObserverKind::kMinMax;
  double momentum = 0.01;     // moving average / percentile: weight of each new step
  double percentile = 99.99;  // percentile observer: the high percentile (low is 100 - it)
  // Symmetric only: |q| is at most this when it is below 2^(bits-1) - 1 (0: no limit). Not a YAML
  // key: QatConfig::weight_spec() sets it from qat.target.
  int64_t max_abs = 0;

  // Integer range of the quantized values.
  int64_t quant_max() const {
    const int64_t full = (int64_t{1} << (bits - 1)) - 1;
    return symmetric && max_abs > 0 ? std::min(full, max_abs) : full;
  }
  int64_t quant_min() const { return symmetric ? -quant_max() : -(int64_t{1} << (bits - 1)); }

  template <class V>
  void visit(V& v) {
    v.field("bits", bits, "bit width of the integers", Range<int>{2, 8});
    v.field("symmetric", symmetric,
            "zero point 0 and range [-(2^(b-1)-1), 2^(b-1)-1] (TensorRT needs it); false: a zero point and "
            "the full range [-2^(b-1), 2^(b-1)-1]");
    v.field("per_channel", per_channel, "one scale per channel along `axis` (false: one per tensor)");
    v.field("axis", axis, "channel axis of per-channel quantization", Range<int>{0, 3});
    v.field("observer", observer, "how the range is found",
            Choices<ObserverKind>{{{"minmax", ObserverKind::kMinMax},
                                   {"moving_average", ObserverKind::kMovingAverage},
                                   {"percentile", ObserverKind::kPercentile},
                                   {"lsq", ObserverKind::kLsq}}});
    v.field("momentum", momentum, "moving_average / percentile: weight of each new step's statistics",
            Range<double>{0.0, 1.0, true, false});
    v.field("percentile", percentile, "percentile observer: high percentile kept (low: 100 - it)",
            Range<double>{50.0, 100.0, true, false});
  }
};

struct QatConfig {
  bool enabled = false;
  QatTarget target = QatTarget::kPortable;
  int start_epoch = 0;           // fake-quant starts at the beginning of this epoch ...
  int64_t start_step = -1;       // ... or, when >= 0, at this optimizer step
  int freeze_observers_epoch = -1;  // from this epoch on, scales stop changing (-1: never)
  int freeze_bn_epoch = -1;         // from this epoch on, BatchNorm uses and keeps its running statistics (-1: never)
  QuantSpec weight;                 // defaults: 8-bit, symmetric, per output channel, min-max
  QuantSpec activation = [] {
    QuantSpec s;
    s.symmetric = false;
    s.per_channel = false;
    s.axis = 1;
    s.observer = ObserverKind::kMovingAverage;
    return s;
  }();

  template <class V>
  void visit(V& v) {
    v.field("enabled", enabled, "quantization-aware training: int8 fake-quant of weights and activations");
    v.field("target", target,
            "where the exported student runs; picks the grid QAT trains on. portable: 8-bit weights limited to "
            "[-64, 64], exact on every CPU (ONNX Runtime on x86 AVX2 / AVX-512 / VNNI, ARM64, qdistill-run); "
            "x86_vnni: the full [-127, 127] grid, exact on x86 with VNNI, ARM64 and qdistill-run, but ONNX "
            "Runtime saturates on x86 without VNNI; tensorrt: the full grid with symmetric activations",
            Choices<QatTarget>{qat_target_names()});
    v.field("start_epoch", start_epoch, "epoch (0-based) at whose start fake-quant begins", Range<int>{0, 100000});
    v.field("start_step", start_step, "if >= 0: optimizer step at which fake-quant begins (overrides start_epoch)",
            Range<int64_t>{-1, int64_t{1} << 40});
    v.field("freeze_observers_epoch", freeze_observers_epoch,
            "epoch from which quantization scales are frozen (-1: never)", Range<int>{-1, 100000});
    v.field("freeze_bn_epoch", freeze_bn_epoch,
            "epoch from which BatchNorm statistics are frozen and folded with them (-1: never)", Range<int>{-1, 100000});
    v.section("weight", weight);
    v.section("activation", activation);
    v.check(weight.observer == ObserverKind::kMinMax || weight.observer == ObserverKind::kLsq, "weight.observer",
            "weights are observed exactly every step: use minmax or lsq");
    v.check(weight.symmetric, "weight.symmetric",
            "weights must be symmetric (zero point 0), which the int8 export and TensorRT need");
    v.check(!weight.per_channel || weight.axis == 0, "weight.axis",
            "per-channel weights are quantized along the output channels: axis 0");
    v.check(!activation.per_channel || activation.axis == 1, "activation.axis",
            "per-channel activations are quantized along the channels of NCHW: axis 1");
    v.check(!(activation.per_channel && activation.observer == ObserverKind::kPercentile), "activation.observer",
            "the percentile observer is per tensor; set activation.per_channel: false or another observer");
    v.check(target != QatTarget::kTensorRt || activation.symmetric, "activation.symmetric",
            "qat.target tensorrt needs symmetric activations (TensorRT's int8 has no zero points): set "
            "qat.activation.symmetric: true");
  }

  // The weights' quantization as trained and deployed: `weight` with the target's range.
  QuantSpec weight_spec() const {
    QuantSpec s = weight;
    s.max_abs = target == QatTarget::kPortable ? kPortableWeightMax : 0;
    return s;
  }
};


}  // namespace qd
