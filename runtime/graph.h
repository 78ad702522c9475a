// The integer model as a graph of ops on n-d tensors (issue 16): what export writes into a `.qdm`
// (version 2) and what the edge runtime runs. Plain C++17, no LibTorch.
//
// A graph is a list of values (n-d tensors: float32, int8 with a static scale and zero point, or
// int32) and a list of nodes in execution order. Each node runs one op of the op table
// (runtime/ops.h), reads earlier values, writes new ones, and carries its constants (weights,
// multipliers, scales) as named attributes. The op table is the one place that knows an op: its
// attributes, how it checks them against its input and output values, its output shapes, and its
// kernel. Serialization, validation and the executor are generic over it.
//
// Dimensions may be dynamic (-1): a text model's token axis. The executor infers every shape from
// the actual inputs at each run, through the same op table.
#pragma once

#include <cstdint>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace qd::rt {

// Every error of an invalid model or `.qdm` file (runtime/qdm.h, the executor).
struct QdmError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class DType : uint32_t { kF32 = 1, kI8 = 2, kI32 = 3 };
const char* dtype_name(DType t);  // "f32", "i8", "i32"
size_t dtype_size(DType t);
bool known_dtype(uint32_t t);

using Shape = std::vector<int64_t>;  // -1: dynamic (known at run time only)
std::string shape_text(const Shape& s);  // "[3, -1]" -> "3x?"
// The element count of a shape without dynamic dimensions (-1 when there is one).
int64_t shape_numel(const Shape& s);

// A value: a tensor that one node (or the caller, for a graph input) writes and later nodes read.
struct ValueInfo {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;
  // int8 values with a static quantization: real = scale * (q - zero_point). Unused for f32/i32.
  float scale = 1.0f;
  int32_t zero_point = 0;
};

// A constant or parameter of a node: a number, a list, a string, or a tensor (weights).
struct Attr {
  enum class Kind : uint32_t { kInt = 1, kFloat = 2, kInts = 3, kFloats = 4, kString = 5, kTensor = 6 };
  Kind kind = Kind::kInt;
  int64_t i = 0;
  float f = 0.0f;
  std::vector<int64_t> ints;
  std::vector<float> floats;
  std::string s;
  // kTensor: `data` holds shape_numel(shape) elements of `dtype`, little-endian.
  DType dtype = DType::kI8;
  Shape shape;
  std::vector<uint8_t> data;

  static Attr of_int(int64_t v);
  static Attr of_float(float v);
  static Attr of_ints(std::vector<int64_t> v);
  static Attr of_floats(std::vector<float> v);
  static Attr of_string(std::string v);
  template <class T>
  static Attr of_tensor(DType t, Shape shape, const std::vector<T>& values);

  int64_t numel() const { return shape_numel(shape); }
  template <class T>
  const T* as() const { return reinterpret_cast<const T*>(data.data()); }
};
const char* attr_kind_name(Attr::Kind k);

struct Node {
  std::string op;    // an op table name ("conv2d", "linear", ...)
  std::string name;  // the training model's layer name, for messages and the verification report
  std::vector<int32_t> inputs, outputs;  // value ids; an optional input left out is -1
  std::map<std::string, Attr> attrs;     // by name (the map's order is the file's order)

  const Attr* find(const std::string& key) const;
  const Attr& at(const std::string& key) const;  // throws QdmError when missing (validated graphs have it)
};

struct Graph {
  std::vector<ValueInfo> values;
  std::vector<Node> nodes;
  std::vector<int32_t> inputs, outputs;  // value ids
  // What the deploying side needs besides the ops, by key: "task" ("image_classification",
  // "sentence_embedding", "causal_lm"), "tokenizer.json", the training run's name, ...
  std::map<std::string, std::string> metadata;

  int32_t add_value(ValueInfo v);  // returns its id
  Node& add_node(std::string op, std::string name, std::vector<int32_t> inputs, std::vector<int32_t> outputs);
};

// Every invariant the executor relies on: ids in range, each value written once and before it is
// read, every node's op known, its attributes present with the right kinds and sizes, its input
// and output values consistent with what the op infers. "" when valid, else one message naming
// the node and the field.
std::string validate(const Graph& g);

// For generation: `g` with its output computed for the last token only, where the output is a
// `linear` (the head) of a per-token norm: a `last_row` node goes in before the norm, so the head
// multiplies one row instead of every prompt token's (the output becomes [1, vocab]). Any other
// graph is returned unchanged.
Graph last_token_output(Graph g);

template <class T>
Attr Attr::of_tensor(DType t, Shape shape, const std::vector<T>& values) {
  Attr a;
  a.kind = Kind::kTensor;
  a.dtype = t;
  a.shape = std::move(shape);
  a.data.resize(values.size() * sizeof(T));
  if (!values.empty()) std::memcpy(a.data.data(), values.data(), a.data.size());
  return a;
}

}  // namespace qd::rt
