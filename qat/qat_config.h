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

// How a weight's integers are laid out and scaled where it deploys (issue 14).
enum class WeightFormat {
  kOnnx,  // float32 scales per channel, or per group of `group_size` inputs (ONNX blocked DequantizeLinear)
  kGgml,  // llama.cpp's blocks of 32 with fp16 scales: Q8_0 (bits 8) or Q4_0 (bits 4), rounded as its quantizer
};
// How a Linear layer's input is quantized.
enum class DynamicQuant {
  kNone,      // static: one observed scale per tensor (a `qat.activation` observer)
  kPerToken,  // dynamic, symmetric: one scale per token (row), max|x| / qmax, computed on the fly
  kPerBlock,  // dynamic, llama.cpp's CPU dot products: Q8_0 blocks of 32 of each row, fp16 scales
};

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
  // Weights of Linear / Embedding layers (transformers): one scale per group of this many
  // consecutive inputs of an output row (0: per_channel decides).
  int64_t group_size = 0;
  WeightFormat format = WeightFormat::kOnnx;
  DynamicQuant dynamic = DynamicQuant::kNone;  // activations of Linear layers

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
    v.field("group_size", group_size,
            "weights of linear/embedding layers: one scale per group of this many inputs of an output row "
            "(32, 64, 128; 0: per channel or per tensor)",
            Range<int64_t>{0, 1 << 20});
    v.field("format", format,
            "weights of linear/embedding layers: onnx (float32 scales, symmetric grid; blocked DequantizeLinear "
            "when grouped) or ggml (llama.cpp's Q8_0 / Q4_0: blocks of 32, fp16 scales, its quantizer's "
            "rounding; bits 8 or 4, group_size 32)",
            Choices<WeightFormat>{{{"onnx", WeightFormat::kOnnx}, {"ggml", WeightFormat::kGgml}}});
    v.field("dynamic", dynamic,
            "activations of linear layers: none (a static observed scale), per_token (one symmetric scale per "
            "token, computed on the fly) or per_block (llama.cpp's on-the-fly Q8_0 blocks of 32)",
            Choices<DynamicQuant>{{{"none", DynamicQuant::kNone}, {"per_token", DynamicQuant::kPerToken},
                                   {"per_block", DynamicQuant::kPerBlock}}});
    v.check(group_size == 0 || (group_size >= 8 && (group_size & (group_size - 1)) == 0), "group_size",
            "group_size is 0 or a power of two >= 8 (32, 64, 128)");
    v.check(format != WeightFormat::kGgml || (group_size == 32 && (bits == 8 || bits == 4)), "format",
            "format ggml is llama.cpp's Q8_0 / Q4_0: set bits 8 or 4 and group_size 32");
    v.check(format != WeightFormat::kGgml || observer == ObserverKind::kMinMax, "observer",
            "format ggml computes each block's scale as llama.cpp's quantizer does: use observer minmax");
    v.check(dynamic == DynamicQuant::kNone || bits == 8, "bits", "dynamic activation quantization is 8-bit");
  }
};

// What QAT does to the layers whose name matches a pattern of `qat.layers` (transformers).
struct LayerQuantRule {
  bool enabled = true;  // false: the layer stays float
  QuantSpec weight, activation;
  template <class V>
  void visit(V& v) {
    v.field("enabled", enabled, "false: leave the matching layers in float");
    v.section("weight", weight);
    v.section("activation", activation);
    v.check(weight.symmetric, "weight.symmetric", "weights must be symmetric (zero point 0)");
    v.check(weight.dynamic == DynamicQuant::kNone, "weight.dynamic", "dynamic quantization is for activations");
    v.check(weight.group_size == 0 || weight.observer == ObserverKind::kMinMax || weight.observer == ObserverKind::kLsq,
            "weight.observer", "weights are observed exactly every step: use minmax or lsq");
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
  std::vector<std::pair<std::string, LayerQuantRule>> layers;  // pattern -> rule, in file order
  DynamicQuant kv_cache = DynamicQuant::kNone;                  // llama: keys and values as the KV cache holds them

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
    v.named_sections("layers", layers,
                     "quantization per layer-name pattern (* matches any run of characters, e.g. "
                     "\"*.gate\", \"lm.embed\"); the first pattern in file order that matches a layer's name "
                     "(`qdistill layers CONFIG` lists them) decides; each starts from qat.weight / qat.activation. "
                     "Layers no pattern matches use qat.weight / qat.activation",
                     [this] { return LayerQuantRule{true, weight, activation}; });
    v.check(weight.dynamic == DynamicQuant::kNone, "weight.dynamic", "dynamic quantization is for activations");
    v.field("kv_cache", kv_cache,
            "llama: int8 keys (after rotary positions) and values as a KV cache would hold them: none (float), "
            "per_token (one symmetric scale per head row) or per_block (llama.cpp's q8_0 cache: blocks of 32, fp16 "
            "scales)",
            Choices<DynamicQuant>{{{"none", DynamicQuant::kNone}, {"per_token", DynamicQuant::kPerToken},
                                   {"per_block", DynamicQuant::kPerBlock}}});
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
  QuantSpec weight_spec() const { return weight_spec(weight); }
  // A layer rule's weights with the target's range: the portable limit concerns ONNX Runtime's
  // 8-bit integer kernels, so it applies to 8-bit onnx-format weights that are not grouped.
  QuantSpec weight_spec(QuantSpec s) const {
    s.max_abs = target == QatTarget::kPortable && s.format == WeightFormat::kOnnx && s.group_size == 0 && s.bits == 8
                    ? kPortableWeightMax
                    : 0;
    return s;
  }
  // The rule for a layer name: the first matching pattern's, else the section's defaults.
  LayerQuantRule rule_for(const std::string& layer) const;
};


}  // namespace qd
