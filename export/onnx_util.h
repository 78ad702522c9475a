// Small helpers over ONNX's protobuf schema shared by the two ONNX writers (export/onnx_writer.h
// for the CNN integer model, export/onnx_text.h for the transformer encoder): typed initializers
// from memory, nodes and attributes, and the checker's full verdict before anything is written.
#pragma once

#include <onnx/onnx_pb.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

// TensorProto.raw_data is little-endian by the ONNX spec; the initializers are copied from memory.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the ONNX writers assume a little-endian host");

namespace qd::onnx_util {

// Throws std::runtime_error("ONNX export: " + msg).
[[noreturn]] void fail(const std::string& msg);

template <typename T>
struct OnnxType;
template <>
struct OnnxType<float> {
  static constexpr int32_t value = onnx::TensorProto_DataType_FLOAT;
};
template <>
struct OnnxType<int8_t> {
  static constexpr int32_t value = onnx::TensorProto_DataType_INT8;
};
template <>
struct OnnxType<uint8_t> {
  static constexpr int32_t value = onnx::TensorProto_DataType_UINT8;
};
template <>
struct OnnxType<int32_t> {
  static constexpr int32_t value = onnx::TensorProto_DataType_INT32;
};
template <>
struct OnnxType<int64_t> {
  static constexpr int32_t value = onnx::TensorProto_DataType_INT64;
};

// `t` as the tensor `name` [dims] of `n` values of T at `data`.
template <typename T>
void fill_tensor(onnx::TensorProto* t, const std::string& name, const std::vector<int64_t>& dims, const T* data, size_t n) {
  static_assert(std::is_arithmetic_v<T>);
  t->set_name(name);
  t->set_data_type(OnnxType<T>::value);
  for (int64_t d : dims) t->add_dims(d);
  std::string raw(n * sizeof(T), '\0');
  if (n) std::memcpy(raw.data(), data, raw.size());
  t->set_raw_data(std::move(raw));
}

// An initializer of the graph; returns its name.
template <typename T>
std::string init(onnx::GraphProto* g, const std::string& name, const std::vector<int64_t>& dims, const std::vector<T>& v) {
  fill_tensor(g->add_initializer(), name, dims, v.data(), v.size());
  return name;
}

onnx::NodeProto* node(onnx::GraphProto* g, const std::string& op, const std::string& name, const std::vector<std::string>& inputs,
                      const std::string& output);
void attr(onnx::NodeProto* n, const std::string& name, int64_t v);
void attr(onnx::NodeProto* n, const std::string& name, const std::vector<int64_t>& v);
void attr(onnx::NodeProto* n, const std::string& name, float v);
// A tensor attribute (ConstantOfShape's value): one element of T.
template <typename T>
void attr_tensor(onnx::NodeProto* n, const std::string& name, T v) {
  onnx::AttributeProto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto_AttributeType_TENSOR);
  fill_tensor(a->mutable_t(), "", {1}, &v, 1);
}

// A model of `ir_version` importing the default domain at `opset`, produced by qdistill, with the
// metadata_props `metadata` (in order).
onnx::ModelProto new_model(int64_t ir_version, int64_t opset, const std::vector<std::pair<std::string, std::string>>& metadata);

// onnx::checker::check_model, then strict shape and type inference on a copy (so that the
// written file carries no inferred value_info); fail() with the checker's verdict.
void full_check(const onnx::ModelProto& model);

// The checked model's bytes.
std::string checked_bytes(const onnx::ModelProto& model);

}  // namespace qd::onnx_util
