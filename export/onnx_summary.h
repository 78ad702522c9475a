// What an ONNX file holds, read back with ONNX's protobuf schema: for tests (which cannot include
// the schema next to LibTorch's own protobuf headers) and for inspection.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace qd {

struct OnnxSummary {
  int64_t opset = 0;                         // of the default domain
  std::vector<std::string> inputs, outputs;  // graph input / output names
  std::vector<std::vector<int64_t>> output_dims;  // per output; a symbolic dimension is -1
  std::map<std::string, int64_t> ops;        // node count by op type
  // Weight matrices: initializers with at least two dimensions above 1, by element type
  // ("int8", "float", ...). Per-row scales [rows, 1] are not matrices.
  std::map<std::string, int64_t> matrices;
};

// Throws std::runtime_error when `bytes` is not an ONNX model.
OnnxSummary summarize_onnx(const std::string& bytes);

}  // namespace qd
