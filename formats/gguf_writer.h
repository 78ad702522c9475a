// Writing GGUF version 3 files (llama.cpp's format; formats/gguf.h reads them): typed metadata,
// tensor infos, the data section aligned to `general.alignment` (32), tensors in F32 or in
// llama.cpp's Q8_0 / Q4_0 blocks. The layout follows ggml's gguf.c and the gguf Python package
// (gguf_writer.py); tests read the files back with both this project's reader and that package.
// Written atomically (common/atomic_file.h). No LibTorch.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "formats/gguf.h"

namespace qd::fmt {

class GgufWriter {
 public:
  // Metadata, in the order added (keys must be unique).
  void add_string(const std::string& key, const std::string& v);
  void add_u32(const std::string& key, uint32_t v);
  void add_i32(const std::string& key, int32_t v);
  void add_f32(const std::string& key, float v);
  void add_bool(const std::string& key, bool v);
  void add_strings(const std::string& key, const std::vector<std::string>& v);
  void add_i32s(const std::string& key, const std::vector<int32_t>& v);

  // A tensor of `shape` (row-major, PyTorch order: [rows, columns]; GGUF stores it as ne reversed)
  // and of `type` with its bytes already in that type's layout (pack_q8_0 / pack_q4_0 / floats).
  void add_tensor(const std::string& name, GgmlType type, const std::vector<int64_t>& shape, std::vector<uint8_t> data);
  void add_f32_tensor(const std::string& name, const std::vector<int64_t>& shape, const std::vector<float>& values);

  std::vector<uint8_t> serialize() const;
  // Atomically; qd::Error naming the path when it cannot.
  void write(const std::string& path) const;

 private:
  struct Kv {
    std::string key;
    GgufValueType type;
    std::vector<uint8_t> payload;  // the value as it follows the type in the file
  };
  struct Tensor {
    std::string name;
    GgmlType type;
    std::vector<int64_t> ne;
    std::vector<uint8_t> data;
  };
  void add(const std::string& key, GgufValueType type, std::vector<uint8_t> payload);
  template <class T>
  void add_scalar(const std::string& key, GgufValueType type, T v);
  std::vector<Kv> kv_;
  std::vector<Tensor> tensors_;
};

// llama.cpp's blocks of 32 from integers and their scales: Q8_0 34 bytes per block (fp16 d, 32
// int8), values in [-127, 127]; Q4_0 18 bytes (fp16 d, 16 bytes of nibbles q + 8: the low nibbles
// are the block's first 16 values, the high ones its last 16), values in [-8, 7]. `d` holds one
// scale per block, exactly representable in fp16 (the QAT grid rounds it so). `n` a multiple of 32.
// Error when a value or a scale is outside its format.
std::vector<uint8_t> pack_q8_0(const int8_t* q, const float* d, int64_t n);
std::vector<uint8_t> pack_q4_0(const int8_t* q, const float* d, int64_t n);

}  // namespace qd::fmt
