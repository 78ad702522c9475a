// Little-endian field packing and the CRC-32 of the teacher-output cache files (one place for
// distill/teacher_cache and distill/lm_teacher_cache). Header-only.
#pragma once

#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>

namespace qd::cache_io {

template <class T>
void put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof(T));
}
template <class T>
bool get(const std::string& in, size_t& pos, T& v) {
  if (pos + sizeof(T) > in.size()) return false;
  std::memcpy(&v, in.data() + pos, sizeof(T));
  pos += sizeof(T);
  return true;
}
inline uint32_t crc_of(const void* p, size_t n) {
  uLong c = crc32(0L, Z_NULL, 0);
  const auto* b = static_cast<const Bytef*>(p);
  for (size_t off = 0; off < n; off += (1u << 30)) c = crc32(c, b + off, static_cast<uInt>(std::min<size_t>(n - off, 1u << 30)));
  return static_cast<uint32_t>(c);
}

}  // namespace qd::cache_io
