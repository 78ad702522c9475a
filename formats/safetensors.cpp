#include "formats/safetensors.h"

#include <algorithm>
#include <cstring>
#include <utility>
#include <limits>
#include <nlohmann/json.hpp>

#include "formats/half.h"

namespace qd::fmt {

namespace {

struct DTypeInfo {
  DType type;
  const char* name;
  size_t size;
};
constexpr DTypeInfo kDTypes[] = {{DType::kF64, "F64", 8},  {DType::kF32, "F32", 4}, {DType::kF16, "F16", 2},
                                 {DType::kBF16, "BF16", 2}, {DType::kI64, "I64", 8}, {DType::kI32, "I32", 4},
                                 {DType::kI16, "I16", 2},  {DType::kI8, "I8", 1},   {DType::kU8, "U8", 1},
                                 {DType::kBool, "BOOL", 1}};

template <class T>
T load(const uint8_t* p) {  // little-endian host (checked below)
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the safetensors reader assumes a little-endian host");

}  // namespace

const char* dtype_name(DType t) {
  for (const DTypeInfo& d : kDTypes)
    if (d.type == t) return d.name;
  return "?";
}

size_t dtype_size(DType t) {
  for (const DTypeInfo& d : kDTypes)
    if (d.type == t) return d.size;
  return 0;
}

int64_t SafetensorsTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

SafetensorsFile::SafetensorsFile(MappedFile file) : file_(std::move(file)) {
  const std::string& p = file_.path();
  const size_t size = file_.size();
  if (size < 8) throw FormatError(p + ": not a safetensors file: " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
  const uint64_t n = load<uint64_t>(file_.data());
  if (n > size - 8)
    throw FormatError(p + ": the header claims " + std::to_string(n) + " bytes but the file has " + std::to_string(size - 8) +
                      " after the length (truncated, or not a safetensors file)");
  if (n > kMaxHeaderBytes)
    throw FormatError(p + ": a header of " + std::to_string(n) + " bytes is over the " + std::to_string(kMaxHeaderBytes) +
                      "-byte limit");
  const char* begin = reinterpret_cast<const char*>(file_.data() + 8);
  if (n == 0 || begin[0] != '{') throw FormatError(p + ": the header is not a JSON object (not a safetensors file?)");
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(begin, begin + n);
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(p + ": the JSON header does not parse: " + e.what());
  }
  if (!header.is_object()) throw FormatError(p + ": the header is not a JSON object");
  const size_t data_start = 8 + static_cast<size_t>(n), data_size = size - data_start;

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    const std::string where = p + ": tensor '" + name + "'";
    if (name == "__metadata__") {
      if (!v.is_object()) throw FormatError(p + ": __metadata__ must be an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) throw FormatError(p + ": __metadata__." + m.key() + " is not a string");
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets") || v.size() != 3)
      throw FormatError(where + ": expected an object with exactly dtype, shape and data_offsets");
    SafetensorsTensor t;
    t.name = name;
    if (!v["dtype"].is_string()) throw FormatError(where + ": dtype is not a string");
    const std::string dtype = v["dtype"].get<std::string>();
    const DTypeInfo* info = nullptr;
    for (const DTypeInfo& d : kDTypes)
      if (dtype == d.name) info = &d;
    if (!info)
      throw FormatError(where + ": dtype '" + dtype + "' is not supported (F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)");
    t.dtype = info->type;
    if (!v["shape"].is_array()) throw FormatError(where + ": shape is not a list");
    uint64_t numel = 1;
    for (const nlohmann::json& d : v["shape"]) {
      if (!d.is_number_unsigned()) throw FormatError(where + ": shape " + v["shape"].dump() + " has a dimension that is not a non-negative integer");
      const uint64_t dim = d.get<uint64_t>();
      if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) || (dim != 0 && numel > size / dim))
        throw FormatError(where + ": shape " + v["shape"].dump() + " is larger than the file");
      numel *= dim;
      t.shape.push_back(static_cast<int64_t>(dim));
    }
    const nlohmann::json& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      throw FormatError(where + ": data_offsets must be [begin, end], two non-negative integers");
    const uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
    if (b > e || e > data_size)
      throw FormatError(where + ": data_offsets [" + std::to_string(b) + ", " + std::to_string(e) + "] lie outside the " +
                        std::to_string(data_size) + " bytes of data (truncated file?)");
    if (e - b != numel * info->size)
      throw FormatError(where + ": " + dtype + " " + v["shape"].dump() + " needs " + std::to_string(numel * info->size) +
                        " bytes, data_offsets give " + std::to_string(e - b));
    t.offset = data_start + static_cast<size_t>(b);
    t.bytes = static_cast<size_t>(e - b);
    index_[name] = tensors_.size();
    tensors_.push_back(std::move(t));
  }
  // The tensors tile the data: no gaps, no overlaps (the format's rule; a hole or an overlap means
  // a writer bug or a doctored file).
  std::vector<const SafetensorsTensor*> by_offset;
  for (const SafetensorsTensor& t : tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](const SafetensorsTensor* a, const SafetensorsTensor* b) {
    return a->offset != b->offset ? a->offset < b->offset : a->bytes < b->bytes;
  });
  size_t expect = data_start;
  for (const SafetensorsTensor* t : by_offset) {
    if (t->offset != expect)
      throw FormatError(p + ": tensor '" + t->name + "' starts at data byte " + std::to_string(t->offset - data_start) +
                        ", expected " + std::to_string(expect - data_start) +
                        (t->offset < expect ? " (it overlaps the previous tensor)" : " (a gap before it)"));
    expect += t->bytes;
  }
  if (expect != size)
    throw FormatError(p + ": the tensors cover " + std::to_string(expect - data_start) + " of the " +
                      std::to_string(data_size) + " data bytes (trailing bytes)");
}

const SafetensorsTensor* SafetensorsFile::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const SafetensorsTensor& SafetensorsFile::at(const std::string& name) const {
  if (const SafetensorsTensor* t = find(name)) return *t;
  std::string some;
  for (size_t i = 0; i < tensors_.size() && i < 3; ++i) some += (i ? ", " : "") + tensors_[i].name;
  throw FormatError(path() + ": no tensor '" + name + "' (it has " + std::to_string(tensors_.size()) + " tensors" +
                    (some.empty() ? "" : ", e.g. " + some) + ")");
}

std::vector<float> SafetensorsFile::to_float(const SafetensorsTensor& t) const {
  const uint8_t* p = data(t);
  const size_t n = static_cast<size_t>(t.numel()), es = dtype_size(t.dtype);
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i, p += es) {
    switch (t.dtype) {
      case DType::kF64: out[i] = static_cast<float>(load<double>(p)); break;
      case DType::kF32: out[i] = load<float>(p); break;
      case DType::kF16: out[i] = half_to_float(load<uint16_t>(p)); break;
      case DType::kBF16: out[i] = bf16_to_float(load<uint16_t>(p)); break;
      case DType::kI64: out[i] = static_cast<float>(load<int64_t>(p)); break;
      case DType::kI32: out[i] = static_cast<float>(load<int32_t>(p)); break;
      case DType::kI16: out[i] = static_cast<float>(load<int16_t>(p)); break;
      case DType::kI8: out[i] = static_cast<float>(load<int8_t>(p)); break;
      case DType::kU8: out[i] = static_cast<float>(load<uint8_t>(p)); break;
      case DType::kBool: out[i] = load<uint8_t>(p) != 0 ? 1.0f : 0.0f; break;
    }
  }
  return out;
}

}  // namespace qd::fmt
