#include "data/idx.h"

#include <zlib.h>

#include <array>
#include <filesystem>
#include <memory>

#include "common/atomic_file.h"
#include "common/error.h"

namespace qd {

namespace {

struct GzCloser {
  void operator()(gzFile f) const { gzclose(f); }
};
using GzHandle = std::unique_ptr<std::remove_pointer_t<gzFile>, GzCloser>;

// Reads exactly n bytes; returns how many were read, throws on a zlib data error.
size_t read_some(gzFile f, const std::string& path, void* dst, size_t n) {
  size_t got = 0;
  auto* p = static_cast<char*>(dst);
  while (got < n) {
    const unsigned chunk = static_cast<unsigned>(std::min<size_t>(n - got, 1u << 30));
    const int r = gzread(f, p + got, chunk);
    if (r < 0) {
      int err = 0;
      const char* msg = gzerror(f, &err);
      throw DataError(detail::concat(path, ": corrupt gzip data (", msg,
                                     "); re-download or reinstall the dataset"));
    }
    if (r == 0) break;
    got += static_cast<size_t>(r);
  }
  return got;
}

uint32_t big_endian(const unsigned char* b) {
  return (uint32_t(b[0]) << 24) | (uint32_t(b[1]) << 16) | (uint32_t(b[2]) << 8) | uint32_t(b[3]);
}

}  // namespace

torch::Tensor read_idx(const std::string& path) {
  QD_CHECK(std::filesystem::is_regular_file(path), DataError, path,
           ": no such file; set data.root to the folder holding the IDX files");
  GzHandle f(gzopen(path.c_str(), "rb"));
  QD_CHECK(f != nullptr, DataError, path, ": cannot open");

  unsigned char magic[4];
  QD_CHECK(read_some(f.get(), path, magic, 4) == 4, DataError, path,
           ": truncated: shorter than the 4-byte IDX magic number");
  QD_CHECK(magic[0] == 0 && magic[1] == 0, DataError, path,
           ": not an IDX file (magic number starts with ", int(magic[0]), " ", int(magic[1]),
           ", expected 0 0)");
  QD_CHECK(magic[2] == 0x08, DataError, path, ": IDX element type 0x", std::hex, int(magic[2]),
           std::dec, " is not supported; expected 0x08 (unsigned byte)");
  const int ndims = magic[3];
  QD_CHECK(ndims >= 1 && ndims <= 4, DataError, path, ": IDX header has ", ndims,
           " dimensions; expected 1 to 4");

  std::vector<int64_t> sizes(ndims);
  int64_t total = 1;
  for (int i = 0; i < ndims; ++i) {
    unsigned char b[4];
    QD_CHECK(read_some(f.get(), path, b, 4) == 4, DataError, path,
             ": truncated inside the IDX header");
    sizes[i] = big_endian(b);
    QD_CHECK(sizes[i] > 0, DataError, path, ": dimension ", i, " is 0 in the IDX header");
    total *= sizes[i];
    // Guard against a corrupt header asking for an absurd allocation (8 GiB is far above
    // any dataset this reads).
    QD_CHECK(total <= (int64_t{1} << 33), DataError, path, ": IDX header claims ", total,
             "+ bytes; the header is corrupt");
  }

  torch::Tensor data = torch::empty(sizes, torch::kUInt8);
  const size_t got = read_some(f.get(), path, data.data_ptr<uint8_t>(), static_cast<size_t>(total));
  QD_CHECK(got == static_cast<size_t>(total), DataError, path, ": truncated: header promises ",
           total, " bytes of data, file holds ", got, "; re-download or reinstall the dataset");
  unsigned char extra;
  QD_CHECK(read_some(f.get(), path, &extra, 1) == 0, DataError, path,
           ": has bytes after the ", total, "-byte payload the header describes; the file is corrupt");
  return data;
}

void write_idx(const std::string& path, const torch::Tensor& data) {
  QD_CHECK(data.scalar_type() == torch::kUInt8 && data.dim() >= 1 && data.dim() <= 4, Error,
           "write_idx: expected a uint8 tensor with 1-4 dims");
  const torch::Tensor t = data.contiguous();
  std::string bytes = {0, 0, 0x08, static_cast<char>(t.dim())};
  for (int64_t s : t.sizes())
    for (int shift : {24, 16, 8, 0}) bytes.push_back(static_cast<char>((s >> shift) & 0xff));
  bytes.append(reinterpret_cast<const char*>(t.data_ptr<uint8_t>()), static_cast<size_t>(t.numel()));
  const bool gz = path.size() > 3 && path.compare(path.size() - 3, 3, ".gz") == 0;
  if (!gz) {
    write_file_atomic(path, bytes);
    return;
  }
  GzHandle f(gzopen(path.c_str(), "wb"));
  QD_CHECK(f != nullptr, Error, path, ": cannot create");
  QD_CHECK(gzwrite(f.get(), bytes.data(), static_cast<unsigned>(bytes.size())) == static_cast<int>(bytes.size()),
           Error, path, ": write failed");
}

}  // namespace qd
