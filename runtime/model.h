// The integer model: what export produces from a trained run and what the edge runtime runs.
// It is the in-memory form of a `.qdm` file (runtime/qdm.h reads and writes it; the format is in
// docs/qdm.md) and the source of the ONNX QDQ file (export/onnx_writer.h), so both exported files
// describe exactly the same integers. Plain C++17, no LibTorch.
//
// A model is a list of layers over numbered tensors. Tensor 0 is the quantized input; layer i
// reads earlier tensors and writes tensor i + 1. Every tensor but the last is int8 activations of
// one image in CHW order with one (per-tensor) scale and zero point:
//     real = scale * (q - zero_point)
// The last layer is kLinear and produces the float logits.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/fixed_point.h"

namespace qd::rt {

enum class OpKind : uint32_t {
  kConv2d = 1,         // int8 conv (folded BN), bias, per-channel requantization, optional fused ReLU
  kMaxPool2d = 2,      // on the int8 values (the output keeps the input's scale and zero point)
  kAdd = 3,            // residual addition of two int8 tensors, optional fused ReLU
  kGlobalAvgPool = 4,  // mean over H x W, requantized: [C, H, W] -> [C, 1, 1]
  kLinear = 5,         // the classifier: int8 x int8 -> int32 + bias, dequantized to float logits
};

const char* op_name(OpKind k);  // "conv2d", "maxpool2d", "add", "global_avg_pool", "linear"

struct TensorInfo {
  int32_t c = 0, h = 0, w = 0;
  float scale = 1.0f;      // > 0
  int32_t zero_point = 0;  // in [-128, 127]
  int64_t numel() const { return int64_t{c} * h * w; }
};

struct Layer {
  OpKind kind = OpKind::kConv2d;
  std::string name;  // the training model's layer name ("block3", "stage2_block0", "classifier")
  int32_t input = 0;         // tensor id (< this layer's output id)
  int32_t input2 = -1;       // kAdd: the second operand; -1 otherwise

  // kConv2d, kMaxPool2d: square kernel, stride and padding. A conv pads with the input's zero
  // point (real 0); max pooling ignores padded positions (ONNX pads it with -inf). Conv groups = 1.
  int32_t kernel = 1, stride = 1, pad = 0;

  // kConv2d, kLinear: weights int8, symmetric per output channel (zero point 0), row-major
  // [out_c][in_c * kernel * kernel] (conv: OIHW flattened; linear: [out][in], `in` in the CHW
  // order of the flattened input). Bias int32 in units of in_scale * weight_scale[o].
  int32_t out_c = 0, in_c = 0;
  std::vector<int8_t> weight;
  std::vector<int32_t> bias;          // [out_c]
  std::vector<float> weight_scale;    // [out_c] the trained scales (for ONNX and the record)

  // kConv2d: int32 accumulator -> output, per channel: in_scale * weight_scale[o] / out_scale.
  // kGlobalAvgPool: one multiplier, in_scale / (out_scale * H * W) (per-channel vector of size 1).
  std::vector<QuantizedMultiplier> multiplier;
  // kAdd: each operand rescaled to a common scale after a left shift, then the sum requantized
  // (the TFLite / gemmlowp scheme): out = zp + M_out * (M_1 * ((a - za) << left_shift) + M_2 * ...).
  int32_t left_shift = 0;
  QuantizedMultiplier input_multiplier, input2_multiplier, output_multiplier;

  // kConv2d, kAdd: clamp of the output (act_min = output zero point fuses a ReLU).
  int32_t act_min = -128, act_max = 127;

  // kLinear: logits[o] = float(acc[o] + bias[o]) * output_scale[o], output_scale[o] =
  // in_scale * weight_scale[o].
  std::vector<float> output_scale;

  // Export only, never in a .qdm: the unquantized folded float weights / bias ([out_c][...] like
  // `weight`), for the fp32 ONNX reference model. Empty when not known.
  std::vector<float> float_weight, float_bias;
};

struct Model {
  // The input: float pixels x in [0, 1], [c, h, w] per image. Quantization of the input, as in
  // training: q = clamp(round_half_even(((x - mean[c]) * inv_std[c]) * (1 / scale)) + zero_point).
  std::vector<float> mean, inv_std;  // [input c]
  std::vector<TensorInfo> tensors;   // [layers + 1]; tensors[0] is the quantized input, the last
                                     // one the logits [classes, 1, 1] (scale / zero point unused)
  std::vector<Layer> layers;
  int32_t num_classes() const { return tensors.empty() ? 0 : tensors.back().c; }
};

}  // namespace qd::rt
