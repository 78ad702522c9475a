// The ONNX writer: an integer model (runtime/model.h) as an ONNX file that any ONNX runtime can
// run (ONNX Runtime, TensorRT), built with ONNX's own protobuf schema and validated by ONNX's
// checker. No LibTorch: it works from the integer model alone, so the .qdm file and the ONNX file
// describe exactly the same integers.
//
// kInt8Qdq is the QDQ form (opset 13): every int8 tensor of the model is a QuantizeLinear /
// DequantizeLinear pair with its scale and zero point, weights are int8 initializers (symmetric,
// per output channel, zero point 0: what TensorRT requires) behind a per-axis DequantizeLinear,
// biases int32 in units of in_scale * weight_scale[o]. A runtime that fuses the QDQ patterns runs
// integer kernels; one that does not computes the same values in float.
// kFloat32 is the same graph without quantization, from the layers' float_weight / float_bias:
// the fp32 reference for accuracy and latency comparisons.
//
// Graph: input "input" float32 [N, C, H, W] (N symbolic) -> output "logits" float32 [N, classes].
// Node, initializer and activation names start with the layer's name ("block1.conv",
// "block1.weight_q", "block1.out"); the input's normalization and quantization are "input.*".
#pragma once

#include <map>
#include <string>

#include "runtime/model.h"

namespace qd {

enum class OnnxPrecision { kInt8Qdq, kFloat32 };

// Builds the ONNX model, runs ONNX's full check (onnx::checker::check_model, then strict shape
// and type inference, which also checks the declared output shape), and writes it atomically
// (path.tmp.<pid> + rename). Throws std::runtime_error with a clear message on failure (an
// inconsistent model, missing float weights for kFloat32, the checker's verdict, an I/O error).
// `metadata`: extra metadata_props (the exporter's "qdistill.target", "qdistill.exact_on").
using OnnxMetadata = std::map<std::string, std::string>;
void write_onnx(const rt::Model& m, OnnxPrecision p, const std::string& path, const OnnxMetadata& metadata = {});

// The serialized bytes of the same (checked) model, for tests.
std::string onnx_model_bytes(const rt::Model& m, OnnxPrecision p, const OnnxMetadata& metadata = {});

}  // namespace qd
