// The safetensors format (Hugging Face): an 8-byte little-endian header length N, a JSON header of
// N bytes mapping tensor names to {dtype, shape, data_offsets} (plus an optional "__metadata__"
// object of strings), then the tensors' bytes, row-major, little-endian, offsets relative to the
// end of the header. The file is treated as hostile: the header is capped and parsed with
// nlohmann-json, every dtype, shape and offset is checked (sizes overflow-checked; the tensors must
// tile the data exactly, as the format requires) before any tensor is read, and every failure is a
// FormatError naming the file and the tensor or key. No LibTorch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "formats/mapped_file.h"

namespace qd::fmt {

enum class DType { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU8, kBool };
const char* dtype_name(DType t);  // the safetensors spelling: "F32", "BF16", ...
size_t dtype_size(DType t);

struct SafetensorsTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;  // row-major; empty for a scalar
  size_t offset = 0;           // absolute, in the file
  size_t bytes = 0;
  int64_t numel() const;
};

class SafetensorsFile {
 public:
  // Maps and validates `path` (FormatError on anything wrong).
  explicit SafetensorsFile(const std::string& path) : SafetensorsFile(MappedFile(path)) {}
  explicit SafetensorsFile(MappedFile file);

  const std::string& path() const { return file_.path(); }
  const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }  // in file order
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const SafetensorsTensor* find(const std::string& name) const;
  // FormatError "PATH: no tensor NAME (it has N tensors, e.g. ...)" when absent.
  const SafetensorsTensor& at(const std::string& name) const;

  const uint8_t* data(const SafetensorsTensor& t) const { return file_.data() + t.offset; }
  // The values as float32, row-major: floats converted exactly (F64 rounded), integers and bool
  // converted by value.
  std::vector<float> to_float(const SafetensorsTensor& t) const;

  // The largest header the reader accepts (the safetensors library's own limit).
  static constexpr size_t kMaxHeaderBytes = size_t{100} << 20;

 private:
  MappedFile file_;
  std::vector<SafetensorsTensor> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace qd::fmt
