// The GGUF format (llama.cpp's model files, versions 2 and 3): a header (magic "GGUF", version,
// tensor and key-value counts), typed metadata (architecture hyper-parameters, the tokenizer),
// tensor infos (name, dimensions, ggml type, offset), padding to `general.alignment`, then the tensor
// data. Read-only, memory-mapped, and hostile-input safe: every count is bounded by the bytes that
// remain before anything is allocated, every string and array by the file, every tensor's extent by
// its type's block layout and the data section; any violation is a FormatError naming the file and
// the key or tensor. Dequantizes F32, F16, BF16, Q8_0, Q4_0 and Q4_1 to float32, bit for bit as
// ggml does. No LibTorch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "formats/mapped_file.h"

namespace qd::fmt {

// GGUF metadata value types (gguf_type).
enum class GgufValueType : uint32_t {
  kUint8 = 0, kInt8 = 1, kUint16 = 2, kInt16 = 3, kUint32 = 4, kInt32 = 5, kFloat32 = 6, kBool = 7,
  kString = 8, kArray = 9, kUint64 = 10, kInt64 = 11, kFloat64 = 12,
};
const char* gguf_type_name(GgufValueType t);

// One metadata value. Scalars: integers in `i` (unsigned 64-bit values above INT64_MAX are
// rejected), floats in `f`, bools in `i` (0/1), strings in `s`. Arrays (of scalars or strings; ggml
// has no nested arrays): `array_type` and `ints`, `floats` or `strings`.
struct GgufValue {
  GgufValueType type = GgufValueType::kUint32;
  GgufValueType array_type = GgufValueType::kUint32;
  int64_t i = 0;
  double f = 0.0;
  std::string s;
  std::vector<int64_t> ints;
  std::vector<double> floats;
  std::vector<std::string> strings;
  bool is_integer() const;  // an integer or bool scalar
  size_t array_size() const { return ints.size() + floats.size() + strings.size(); }
};

// ggml tensor types (ggml_type) the reader knows the layout of.
enum class GgmlType : uint32_t {
  kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ4_1 = 3, kQ5_0 = 6, kQ5_1 = 7, kQ8_0 = 8, kQ8_1 = 9, kQ2_K = 10,
  kQ3_K = 11, kQ4_K = 12, kQ5_K = 13, kQ6_K = 14, kQ8_K = 15, kI8 = 24, kI16 = 25, kI32 = 26, kI64 = 27,
  kF64 = 28, kBF16 = 30,
};
const char* ggml_type_name(GgmlType t);
bool can_dequantize(GgmlType t);  // F32, F16, BF16, Q8_0, Q4_0, Q4_1

struct GgufTensor {
  std::string name;
  GgmlType type = GgmlType::kF32;
  std::vector<int64_t> ne;  // ggml order: ne[0] is the fastest (contiguous) dimension
  size_t offset = 0;        // absolute, in the file
  size_t bytes = 0;
  int64_t numel() const;
  // Row-major shape, the PyTorch way: ne reversed ([rows, columns] for a matrix).
  std::vector<int64_t> shape() const { return {ne.rbegin(), ne.rend()}; }
};

class GgufFile {
 public:
  explicit GgufFile(const std::string& path) : GgufFile(MappedFile(path)) {}
  explicit GgufFile(MappedFile file);

  const std::string& path() const { return file_.path(); }
  uint32_t version() const { return version_; }
  size_t alignment() const { return alignment_; }
  const std::map<std::string, GgufValue>& metadata() const { return metadata_; }
  const GgufValue* find_meta(const std::string& key) const;
  // Typed access; FormatError "PATH: metadata KEY: ..." when absent or of another type.
  int64_t get_int(const std::string& key) const;
  double get_float(const std::string& key) const;  // float32/64, or an integer
  const std::string& get_string(const std::string& key) const;
  const std::vector<std::string>& get_strings(const std::string& key) const;

  const std::vector<GgufTensor>& tensors() const { return tensors_; }  // in file order
  const GgufTensor* find(const std::string& name) const;
  const GgufTensor& at(const std::string& name) const;
  const uint8_t* data(const GgufTensor& t) const { return file_.data() + t.offset; }
  // The tensor as float32, in memory order (ne[0] fastest, i.e. row-major in shape()). FormatError
  // for a type without dequantization here.
  std::vector<float> dequantize(const GgufTensor& t) const;

 private:
  const GgufValue& meta(const std::string& key, const char* want) const;
  MappedFile file_;
  uint32_t version_ = 0;
  size_t alignment_ = 32;
  std::map<std::string, GgufValue> metadata_;
  std::vector<GgufTensor> tensors_;
  std::map<std::string, size_t> index_;
};

// Dequantization of `n` values (a multiple of the type's block size) from `src`, as ggml does:
// Q8_0 d * q; Q4_0 d * (q - 8); Q4_1 d * q + m (d, m fp16; nibbles: low ones are the block's first
// 16 values, high ones the last 16). Exposed for tests and for writers that must match it.
void dequantize_row(GgmlType t, const uint8_t* src, float* dst, int64_t n);
// Block size (values) and bytes per block of a known type.
int64_t ggml_block_size(GgmlType t);
size_t ggml_block_bytes(GgmlType t);

}  // namespace qd::fmt
