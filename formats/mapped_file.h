// A whole file mapped read-only into memory (POSIX mmap), the way llama.cpp and safetensors load
// weights: no copy, pages read on demand. The readers in formats/ validate every offset against
// size() before they touch a byte. No LibTorch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/error.h"

namespace qd::fmt {

// A file of a model format is missing, truncated, or lies about its contents. A qd::DataError, so
// the command line reports it in one line with exit code 2. Messages start with the file's path.
class FormatError : public DataError {
 public:
  using DataError::DataError;
};

class MappedFile {
 public:
  // Throws FormatError naming `path` when it cannot be opened, is not a regular file, or is empty.
  explicit MappedFile(const std::string& path);
  // Bytes already in memory (tests, the fuzzer), reported under `name`.
  static MappedFile from_memory(const std::string& name, std::vector<uint8_t> bytes);
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  void release();
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::vector<uint8_t> owned_;  // from_memory: the bytes (data_ points into them); else empty
};

}  // namespace qd::fmt
