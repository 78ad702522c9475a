// IDX files (the MNIST / Fashion-MNIST container), read directly from .gz through zlib.
//
// Layout: 4-byte magic {0, 0, type, ndims}, ndims big-endian uint32 sizes, then the payload.
// Only type 0x08 (unsigned byte) is used by these datasets and accepted here.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

namespace qd {

// Reads `path` (gzip or uncompressed: zlib detects which). Returns a uint8 tensor shaped by the
// header. Throws DataError naming the file for a missing, truncated, corrupt or oversized file,
// a bad magic number, or trailing bytes after the payload.
torch::Tensor read_idx(const std::string& path);

// Writes an uint8 tensor as IDX (gzip-compressed when path ends in .gz). Used by tests and tools.
void write_idx(const std::string& path, const torch::Tensor& data);

}  // namespace qd
