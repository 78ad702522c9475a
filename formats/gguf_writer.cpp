#include "formats/gguf_writer.h"

#include <cmath>
#include <cstring>
#include <set>

#include "common/atomic_file.h"
#include "common/error.h"
#include "formats/half.h"

namespace qd::fmt {

namespace {

constexpr size_t kAlignment = 32;  // GGUF_DEFAULT_ALIGNMENT

template <class T>
void put(std::vector<uint8_t>& out, T v) {
  const size_t at = out.size();
  out.resize(at + sizeof(T));
  std::memcpy(out.data() + at, &v, sizeof(T));
}
void put_string(std::vector<uint8_t>& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out.insert(out.end(), s.begin(), s.end());
}
void pad(std::vector<uint8_t>& out) { out.resize((out.size() + kAlignment - 1) / kAlignment * kAlignment, 0); }

uint16_t exact_half(float d, const char* what, int64_t block) {
  const uint16_t h = float_to_half(d);
  if (!std::isfinite(d) || half_to_float(h) != d)
    throw Error(concat(what, ": block ", block, " has the scale ", d, ", which fp16 does not hold exactly"));
  return h;
}

}  // namespace

void GgufWriter::add(const std::string& key, GgufValueType type, std::vector<uint8_t> payload) {
  for (const Kv& k : kv_)
    if (k.key == key) throw Error("GGUF writer: metadata key " + key + " added twice");
  kv_.push_back({key, type, std::move(payload)});
}

void GgufWriter::add_string(const std::string& key, const std::string& v) {
  std::vector<uint8_t> p;
  put_string(p, v);
  add(key, GgufValueType::kString, std::move(p));
}
template <class T>
void GgufWriter::add_scalar(const std::string& key, GgufValueType type, T v) {
  std::vector<uint8_t> p;
  put(p, v);
  add(key, type, std::move(p));
}
void GgufWriter::add_u32(const std::string& key, uint32_t v) { add_scalar(key, GgufValueType::kUint32, v); }
void GgufWriter::add_i32(const std::string& key, int32_t v) { add_scalar(key, GgufValueType::kInt32, v); }
void GgufWriter::add_f32(const std::string& key, float v) { add_scalar(key, GgufValueType::kFloat32, v); }
void GgufWriter::add_bool(const std::string& key, bool v) { add_scalar<uint8_t>(key, GgufValueType::kBool, v ? 1 : 0); }
void GgufWriter::add_strings(const std::string& key, const std::vector<std::string>& v) {
  std::vector<uint8_t> p;
  put(p, static_cast<uint32_t>(GgufValueType::kString));
  put<uint64_t>(p, v.size());
  for (const std::string& s : v) put_string(p, s);
  add(key, GgufValueType::kArray, std::move(p));
}
void GgufWriter::add_i32s(const std::string& key, const std::vector<int32_t>& v) {
  std::vector<uint8_t> p;
  put(p, static_cast<uint32_t>(GgufValueType::kInt32));
  put<uint64_t>(p, v.size());
  for (int32_t x : v) put(p, x);
  add(key, GgufValueType::kArray, std::move(p));
}

void GgufWriter::add_tensor(const std::string& name, GgmlType type, const std::vector<int64_t>& shape, std::vector<uint8_t> data) {
  if (shape.empty() || shape.size() > 4) throw Error(concat("GGUF writer: tensor ", name, " has ", shape.size(), " dimensions (1-4)"));
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 1) throw Error(concat("GGUF writer: tensor ", name, " has a dimension of ", d));
    n *= d;
  }
  const int64_t block = ggml_block_size(type);
  if (shape.back() % block != 0)
    throw Error(concat("GGUF writer: tensor ", name, ": rows of ", shape.back(), " values are not whole ", ggml_type_name(type), " blocks of ", block));
  if (data.size() != static_cast<size_t>(n / block) * ggml_block_bytes(type))
    throw Error(concat("GGUF writer: tensor ", name, " has ", data.size(), " bytes; ", ggml_type_name(type), " ",
                       n, " values take ", static_cast<size_t>(n / block) * ggml_block_bytes(type)));
  for (const Tensor& t : tensors_)
    if (t.name == name) throw Error("GGUF writer: tensor " + name + " added twice");
  tensors_.push_back({name, type, std::vector<int64_t>(shape.rbegin(), shape.rend()), std::move(data)});
}

void GgufWriter::add_f32_tensor(const std::string& name, const std::vector<int64_t>& shape, const std::vector<float>& values) {
  std::vector<uint8_t> bytes(values.size() * sizeof(float));
  if (!values.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
  add_tensor(name, GgmlType::kF32, shape, std::move(bytes));
}

std::vector<uint8_t> GgufWriter::serialize() const {
  std::vector<uint8_t> out = {'G', 'G', 'U', 'F'};
  put<uint32_t>(out, 3);
  put<uint64_t>(out, tensors_.size());
  put<uint64_t>(out, kv_.size());
  for (const Kv& k : kv_) {
    put_string(out, k.key);
    put(out, static_cast<uint32_t>(k.type));
    out.insert(out.end(), k.payload.begin(), k.payload.end());
  }
  uint64_t offset = 0;  // relative to the data section, each tensor aligned
  for (const Tensor& t : tensors_) {
    put_string(out, t.name);
    put<uint32_t>(out, static_cast<uint32_t>(t.ne.size()));
    for (int64_t d : t.ne) put<uint64_t>(out, static_cast<uint64_t>(d));
    put(out, static_cast<uint32_t>(t.type));
    put<uint64_t>(out, offset);
    offset += (t.data.size() + kAlignment - 1) / kAlignment * kAlignment;
  }
  pad(out);
  for (const Tensor& t : tensors_) {
    out.insert(out.end(), t.data.begin(), t.data.end());
    pad(out);
  }
  return out;
}

void GgufWriter::write(const std::string& path) const {
  const std::vector<uint8_t> bytes = serialize();
  AtomicFile f(path);
  f.write(bytes.data(), bytes.size());
  f.commit();
}

std::vector<uint8_t> pack_q8_0(const int8_t* q, const float* d, int64_t n) {
  if (n % 32 != 0) throw Error(concat("Q8_0: ", n, " values are not whole blocks of 32"));
  std::vector<uint8_t> out;
  out.reserve(static_cast<size_t>(n / 32 * 34));
  for (int64_t b = 0; b < n / 32; ++b) {
    put(out, exact_half(d[b], "Q8_0", b));
    for (int j = 0; j < 32; ++j) {
      const int8_t v = q[b * 32 + j];
      if (v == -128) throw Error(concat("Q8_0: block ", b, " holds -128; values are in [-127, 127]"));
      out.push_back(static_cast<uint8_t>(v));
    }
  }
  return out;
}

std::vector<uint8_t> pack_q4_0(const int8_t* q, const float* d, int64_t n) {
  if (n % 32 != 0) throw Error(concat("Q4_0: ", n, " values are not whole blocks of 32"));
  std::vector<uint8_t> out;
  out.reserve(static_cast<size_t>(n / 32 * 18));
  for (int64_t b = 0; b < n / 32; ++b) {
    put(out, exact_half(d[b], "Q4_0", b));
    const int8_t* v = q + b * 32;
    for (int j = 0; j < 32; ++j)
      if (v[j] < -8 || v[j] > 7) throw Error(concat("Q4_0: block ", b, " holds ", int{v[j]}, "; values are in [-8, 7]"));
    for (int j = 0; j < 16; ++j) out.push_back(static_cast<uint8_t>((v[j] + 8) | ((v[j + 16] + 8) << 4)));
  }
  return out;
}

}  // namespace qd::fmt
