// The op table of the edge runtime (issue 16): one entry per op declares its attributes, checks a
// node against its input and output values, infers its output shapes, and builds its kernel.
// Validation (runtime/graph.h), the `.qdm` reader and the executor (runtime/executor.h) are generic
// over it; export/ emits each op's ONNX nodes from a table keyed by the same names.
// Plain C++17, no LibTorch.
#pragma once

#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "runtime/graph.h"

namespace qd::rt {

// A tensor while the graph runs: its dtype and static quantization come from the ValueInfo, its
// shape from the run (dynamic dimensions resolved). The buffer keeps its capacity between runs.
struct Buffer {
  DType dtype = DType::kF32;
  Shape shape;
  std::vector<uint8_t> bytes;
  float scale = 1.0f;
  int32_t zero_point = 0;

  int64_t numel() const { return shape_numel(shape); }
  void resize(const Shape& s) {
    shape = s;
    bytes.resize(static_cast<size_t>(numel()) * dtype_size(dtype));
  }
  template <class T>
  T* data() { return reinterpret_cast<T*>(bytes.data()); }
  template <class T>
  const T* data() const { return reinterpret_cast<const T*>(bytes.data()); }
};

// What a kernel sees besides its tensors: state that lives across runs belongs to the kernel itself
// (a KV cache), and `reset` starts a new sequence.
class OpKernel {
 public:
  virtual ~OpKernel() = default;
  virtual void run(const std::vector<const Buffer*>& in, const std::vector<Buffer*>& out) = 0;
  virtual void reset() {}
};

struct AttrRule {
  const char* name;
  Attr::Kind kind;
  bool required = true;
};

struct OpSpec {
  const char* name;
  const char* doc;  // one line: what it computes
  int min_inputs = 1, max_inputs = 1, outputs = 1;
  std::vector<AttrRule> attrs;
  // Checks the node's attribute values against its input values (static shapes, -1 where dynamic)
  // and returns "" or what is wrong. The generic checks (arity, attribute presence and kinds,
  // tensor attribute sizes, dtype of each output) have already passed.
  std::string (*check)(const Node& n, const std::vector<const ValueInfo*>& in);
  // The output dtypes and shapes for these input shapes (-1 propagates where dynamic).
  std::vector<Shape> (*infer)(const Node& n, const std::vector<Shape>& in);
  std::vector<DType> (*out_dtypes)(const Node& n, const std::vector<const ValueInfo*>& in);
  std::unique_ptr<OpKernel> (*make)(const Node& n, const Graph& g);
};

// An op's `make` for a kernel constructed from the node alone (or from the node and the graph).
template <class K>
std::unique_ptr<OpKernel> make_kernel(const Node& n, const Graph& g) {
  if constexpr (std::is_constructible_v<K, const Node&, const Graph&>)
    return std::make_unique<K>(n, g);
  else if constexpr (std::is_constructible_v<K, const Node&>)
    return std::make_unique<K>(n);
  else
    return std::make_unique<K>();
}

// nullptr when unknown.
const OpSpec* find_op(const std::string& name);
const std::vector<const OpSpec*>& all_ops();

// The entries, by family (runtime/ops_*.cpp); all_ops() joins them once. Explicit functions, not
// static registrars, which a static library's linker would drop.
std::vector<OpSpec> image_ops();
std::vector<OpSpec> text_ops();

}  // namespace qd::rt
