#include "formats/gguf.h"

#include <algorithm>
#include <cstring>
#include <utility>
#include <limits>

#include "formats/half.h"

namespace qd::fmt {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the GGUF reader assumes a little-endian host");

namespace {

struct TypeInfo {
  GgmlType type;
  const char* name;
  int64_t block;  // values per block
  size_t bytes;   // bytes per block
};
// ggml's type_traits (blck_size, type_size) for the types whose layout is known here.
constexpr TypeInfo kTypes[] = {
    {GgmlType::kF32, "F32", 1, 4},      {GgmlType::kF16, "F16", 1, 2},       {GgmlType::kQ4_0, "Q4_0", 32, 18},
    {GgmlType::kQ4_1, "Q4_1", 32, 20},  {GgmlType::kQ5_0, "Q5_0", 32, 22},   {GgmlType::kQ5_1, "Q5_1", 32, 24},
    {GgmlType::kQ8_0, "Q8_0", 32, 34},  {GgmlType::kQ8_1, "Q8_1", 32, 36},   {GgmlType::kQ2_K, "Q2_K", 256, 84},
    {GgmlType::kQ3_K, "Q3_K", 256, 110}, {GgmlType::kQ4_K, "Q4_K", 256, 144}, {GgmlType::kQ5_K, "Q5_K", 256, 176},
    {GgmlType::kQ6_K, "Q6_K", 256, 210}, {GgmlType::kQ8_K, "Q8_K", 256, 292}, {GgmlType::kI8, "I8", 1, 1},
    {GgmlType::kI16, "I16", 1, 2},      {GgmlType::kI32, "I32", 1, 4},       {GgmlType::kI64, "I64", 1, 8},
    {GgmlType::kF64, "F64", 1, 8},      {GgmlType::kBF16, "BF16", 1, 2},
};

const TypeInfo* type_info(uint32_t t) {
  for (const TypeInfo& i : kTypes)
    if (static_cast<uint32_t>(i.type) == t) return &i;
  return nullptr;
}

// Reads the header, bounded by the file; every failure names the file and what was being read.
class Cursor {
 public:
  Cursor(const uint8_t* data, size_t size, const std::string& path) : p_(data), size_(size), path_(path) {}
  size_t pos() const { return pos_; }
  size_t left() const { return size_ - pos_; }
  [[noreturn]] void fail(const std::string& what) const {
    throw FormatError(path_ + ": " + what + " (at byte " + std::to_string(pos_) + " of " + std::to_string(size_) + ")");
  }
  void need(size_t n, const std::string& what) const {
    if (n > left()) fail("truncated: " + what + " needs " + std::to_string(n) + " bytes, " + std::to_string(left()) + " left");
  }
  template <class T>
  T read(const std::string& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, p_ + pos_, sizeof v);
    pos_ += sizeof v;
    return v;
  }
  std::string string(const std::string& what) {
    const uint64_t n = read<uint64_t>(what + " length");
    if (n > left()) fail(what + ": a string of " + std::to_string(n) + " bytes, " + std::to_string(left()) + " left");
    std::string s(reinterpret_cast<const char*>(p_ + pos_), static_cast<size_t>(n));
    pos_ += static_cast<size_t>(n);
    return s;
  }

 private:
  const uint8_t* p_;
  size_t size_, pos_ = 0;
  const std::string& path_;
};

// Bytes a scalar of this type takes; 0 for string / array (variable).
size_t scalar_bytes(GgufValueType t) {
  switch (t) {
    case GgufValueType::kUint8: case GgufValueType::kInt8: case GgufValueType::kBool: return 1;
    case GgufValueType::kUint16: case GgufValueType::kInt16: return 2;
    case GgufValueType::kUint32: case GgufValueType::kInt32: case GgufValueType::kFloat32: return 4;
    case GgufValueType::kUint64: case GgufValueType::kInt64: case GgufValueType::kFloat64: return 8;
    default: return 0;
  }
}

bool known_value_type(uint32_t t) { return t <= static_cast<uint32_t>(GgufValueType::kFloat64); }

// One scalar into (i, f); strings handled by the caller.
void read_scalar(Cursor& c, GgufValueType t, const std::string& where, int64_t& i, double& f) {
  switch (t) {
    case GgufValueType::kUint8: i = c.read<uint8_t>(where); break;
    case GgufValueType::kInt8: i = c.read<int8_t>(where); break;
    case GgufValueType::kUint16: i = c.read<uint16_t>(where); break;
    case GgufValueType::kInt16: i = c.read<int16_t>(where); break;
    case GgufValueType::kUint32: i = c.read<uint32_t>(where); break;
    case GgufValueType::kInt32: i = c.read<int32_t>(where); break;
    case GgufValueType::kInt64: i = c.read<int64_t>(where); break;
    case GgufValueType::kUint64: {
      const uint64_t u = c.read<uint64_t>(where);
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) c.fail(where + ": uint64 value " + std::to_string(u) + " is too large");
      i = static_cast<int64_t>(u);
      break;
    }
    case GgufValueType::kBool: {
      const uint8_t b = c.read<uint8_t>(where);
      if (b > 1) c.fail(where + ": bool value " + std::to_string(b) + " is neither 0 nor 1");
      i = b;
      break;
    }
    case GgufValueType::kFloat32: f = c.read<float>(where); break;
    case GgufValueType::kFloat64: f = c.read<double>(where); break;
    default: c.fail(where + ": not a scalar type");
  }
}

bool is_float_type(GgufValueType t) { return t == GgufValueType::kFloat32 || t == GgufValueType::kFloat64; }

}  // namespace

const char* gguf_type_name(GgufValueType t) {
  static const char* const names[] = {"uint8", "int8",  "uint16", "int16",  "uint32", "int32", "float32",
                                      "bool",  "string", "array", "uint64", "int64", "float64"};
  const uint32_t i = static_cast<uint32_t>(t);
  return i < sizeof names / sizeof names[0] ? names[i] : "unknown";
}

bool GgufValue::is_integer() const {
  return type != GgufValueType::kString && type != GgufValueType::kArray && !is_float_type(type);
}

const char* ggml_type_name(GgmlType t) {
  const TypeInfo* i = type_info(static_cast<uint32_t>(t));
  return i ? i->name : "unknown";
}

int64_t ggml_block_size(GgmlType t) {
  const TypeInfo* i = type_info(static_cast<uint32_t>(t));
  return i ? i->block : 0;
}

size_t ggml_block_bytes(GgmlType t) {
  const TypeInfo* i = type_info(static_cast<uint32_t>(t));
  return i ? i->bytes : 0;
}

bool can_dequantize(GgmlType t) {
  return t == GgmlType::kF32 || t == GgmlType::kF16 || t == GgmlType::kBF16 || t == GgmlType::kQ8_0 ||
         t == GgmlType::kQ4_0 || t == GgmlType::kQ4_1;
}

int64_t GgufTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

GgufFile::GgufFile(MappedFile file) : file_(std::move(file)) {
  const std::string& p = file_.path();
  Cursor c(file_.data(), file_.size(), p);
  c.need(4, "the magic");
  if (std::memcmp(file_.data(), "GGUF", 4) != 0) c.fail("not a GGUF file (the magic is not \"GGUF\")");
  c.read<uint32_t>("the magic");
  version_ = c.read<uint32_t>("the version");
  if (version_ == 0x03000000u || version_ == 0x02000000u) c.fail("a big-endian GGUF file; only little-endian files are supported");
  if (version_ != 2 && version_ != 3)
    c.fail("GGUF version " + std::to_string(version_) + " is not supported (2 and 3 are)");
  const uint64_t n_tensors = c.read<uint64_t>("the tensor count");
  const uint64_t n_kv = c.read<uint64_t>("the metadata count");
  // Each key-value takes at least 8 + 1 + 4 + 1 bytes, each tensor info 8 + 1 + 4 + 8 + 4 + 8.
  if (n_kv > c.left() / 14) c.fail("the header claims " + std::to_string(n_kv) + " metadata entries, more than the file can hold");
  if (n_tensors > c.left() / 33) c.fail("the header claims " + std::to_string(n_tensors) + " tensors, more than the file can hold");

  for (uint64_t k = 0; k < n_kv; ++k) {
    const std::string key = c.string("metadata key " + std::to_string(k));
    const std::string where = "metadata " + key;
    if (metadata_.count(key)) c.fail(where + ": the key appears twice");
    const uint32_t type = c.read<uint32_t>(where + " type");
    if (!known_value_type(type)) c.fail(where + ": unknown value type " + std::to_string(type));
    GgufValue v;
    v.type = static_cast<GgufValueType>(type);
    if (v.type == GgufValueType::kString) {
      v.s = c.string(where);
    } else if (v.type == GgufValueType::kArray) {
      const uint32_t et = c.read<uint32_t>(where + " element type");
      if (!known_value_type(et)) c.fail(where + ": unknown array element type " + std::to_string(et));
      v.array_type = static_cast<GgufValueType>(et);
      if (v.array_type == GgufValueType::kArray) c.fail(where + ": nested arrays are not supported");
      const uint64_t n = c.read<uint64_t>(where + " length");
      const size_t min_bytes = v.array_type == GgufValueType::kString ? 8 : scalar_bytes(v.array_type);
      if (n > c.left() / min_bytes)
        c.fail(where + ": an array of " + std::to_string(n) + " " + gguf_type_name(v.array_type) + " values does not fit in the " +
               std::to_string(c.left()) + " bytes left");
      const size_t count = static_cast<size_t>(n);
      if (v.array_type == GgufValueType::kString) {
        v.strings.reserve(count);
        for (size_t i = 0; i < count; ++i) v.strings.push_back(c.string(where + "[" + std::to_string(i) + "]"));
      } else if (is_float_type(v.array_type)) {
        v.floats.resize(count);
        int64_t unused = 0;
        for (size_t i = 0; i < count; ++i) read_scalar(c, v.array_type, where, unused, v.floats[i]);
      } else {
        v.ints.resize(count);
        double unused = 0.0;
        for (size_t i = 0; i < count; ++i) read_scalar(c, v.array_type, where, v.ints[i], unused);
      }
    } else {
      read_scalar(c, v.type, where, v.i, v.f);
    }
    metadata_.emplace(key, std::move(v));
  }
  if (const GgufValue* a = find_meta("general.alignment")) {
    if (!a->is_integer() || a->i <= 0 || a->i > (1 << 20) || (a->i & (a->i - 1)) != 0)
      c.fail("metadata general.alignment must be a power of two up to 2^20, got " +
             (a->is_integer() ? std::to_string(a->i) : std::string("a ") + gguf_type_name(a->type)));
    alignment_ = static_cast<size_t>(a->i);
  }

  struct Raw {
    uint64_t offset;
  };
  std::vector<Raw> raw;
  for (uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensor t;
    t.name = c.string("tensor " + std::to_string(k) + " name");
    const std::string where = "tensor '" + t.name + "'";
    if (index_.count(t.name)) c.fail(where + ": the name appears twice");
    const uint32_t n_dims = c.read<uint32_t>(where + " dimension count");
    if (n_dims == 0 || n_dims > 4) c.fail(where + ": " + std::to_string(n_dims) + " dimensions (ggml allows 1 to 4)");
    uint64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t ne = c.read<uint64_t>(where + " dimension");
      if (ne == 0 || ne > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / numel)
        c.fail(where + ": dimension " + std::to_string(d) + " is " + std::to_string(ne));
      numel *= ne;
      t.ne.push_back(static_cast<int64_t>(ne));
    }
    const uint32_t type = c.read<uint32_t>(where + " type");
    const TypeInfo* info = type_info(type);
    if (!info) c.fail(where + ": ggml type " + std::to_string(type) + " is unknown");
    t.type = info->type;
    if (t.ne[0] % info->block != 0)
      c.fail(where + ": its rows of " + std::to_string(t.ne[0]) + " values are not whole " + info->name + " blocks of " +
             std::to_string(info->block));
    const uint64_t blocks = numel / static_cast<uint64_t>(info->block);
    if (blocks > file_.size() / info->bytes) c.fail(where + ": " + std::to_string(numel) + " values are larger than the file");
    t.bytes = static_cast<size_t>(blocks * info->bytes);
    raw.push_back({c.read<uint64_t>(where + " offset")});
    if (raw.back().offset % alignment_ != 0)
      c.fail(where + ": offset " + std::to_string(raw.back().offset) + " is not a multiple of the alignment " +
             std::to_string(alignment_));
    index_[t.name] = tensors_.size();
    tensors_.push_back(std::move(t));
  }
  // The data section starts at the next multiple of the alignment.
  const size_t data_start = (c.pos() + alignment_ - 1) / alignment_ * alignment_;
  if (data_start > file_.size()) c.fail("truncated before the tensor data");
  const size_t data_size = file_.size() - data_start;
  for (size_t k = 0; k < tensors_.size(); ++k) {
    GgufTensor& t = tensors_[k];
    if (raw[k].offset > data_size || t.bytes > data_size - raw[k].offset)
      throw FormatError(p + ": tensor '" + t.name + "': " + std::to_string(t.bytes) + " bytes at data offset " +
                        std::to_string(raw[k].offset) + " lie outside the " + std::to_string(data_size) +
                        " bytes of tensor data (truncated file?)");
    t.offset = data_start + static_cast<size_t>(raw[k].offset);
  }
  // No two tensors share bytes.
  std::vector<const GgufTensor*> by_offset;
  for (const GgufTensor& t : tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](const GgufTensor* a, const GgufTensor* b) { return a->offset < b->offset; });
  for (size_t k = 1; k < by_offset.size(); ++k)
    if (by_offset[k]->offset < by_offset[k - 1]->offset + by_offset[k - 1]->bytes)
      throw FormatError(p + ": tensors '" + by_offset[k - 1]->name + "' and '" + by_offset[k]->name + "' overlap");
}

const GgufValue* GgufFile::find_meta(const std::string& key) const {
  const auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

const GgufValue& GgufFile::meta(const std::string& key, const char* want) const {
  const GgufValue* v = find_meta(key);
  if (!v) throw FormatError(path() + ": metadata " + key + " is missing (expected " + want + ")");
  return *v;
}

int64_t GgufFile::get_int(const std::string& key) const {
  const GgufValue& v = meta(key, "an integer");
  if (!v.is_integer()) throw FormatError(path() + ": metadata " + key + " is a " + gguf_type_name(v.type) + ", expected an integer");
  return v.i;
}

double GgufFile::get_float(const std::string& key) const {
  const GgufValue& v = meta(key, "a number");
  if (is_float_type(v.type)) return v.f;
  if (v.is_integer() && v.type != GgufValueType::kBool) return static_cast<double>(v.i);
  throw FormatError(path() + ": metadata " + key + " is a " + gguf_type_name(v.type) + ", expected a number");
}

const std::string& GgufFile::get_string(const std::string& key) const {
  const GgufValue& v = meta(key, "a string");
  if (v.type != GgufValueType::kString)
    throw FormatError(path() + ": metadata " + key + " is a " + gguf_type_name(v.type) + ", expected a string");
  return v.s;
}

const std::vector<std::string>& GgufFile::get_strings(const std::string& key) const {
  const GgufValue& v = meta(key, "an array of strings");
  if (v.type != GgufValueType::kArray || v.array_type != GgufValueType::kString)
    throw FormatError(path() + ": metadata " + key + " is not an array of strings");
  return v.strings;
}

const GgufTensor* GgufFile::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const GgufTensor& GgufFile::at(const std::string& name) const {
  if (const GgufTensor* t = find(name)) return *t;
  throw FormatError(path() + ": no tensor '" + name + "' (the file has " + std::to_string(tensors_.size()) + " tensors)");
}

void dequantize_row(GgmlType t, const uint8_t* src, float* dst, int64_t n) {
  auto u16 = [](const uint8_t* p) {
    uint16_t v;
    std::memcpy(&v, p, 2);
    return v;
  };
  switch (t) {
    case GgmlType::kF32: std::memcpy(dst, src, static_cast<size_t>(n) * 4); return;
    case GgmlType::kF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = half_to_float(u16(src + 2 * i));
      return;
    case GgmlType::kBF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_float(u16(src + 2 * i));
      return;
    case GgmlType::kQ8_0:  // {fp16 d; int8 q[32]}
      for (int64_t b = 0; b < n / 32; ++b, src += 34) {
        const float d = half_to_float(u16(src));
        for (int j = 0; j < 32; ++j) dst[b * 32 + j] = static_cast<float>(static_cast<int8_t>(src[2 + j])) * d;
      }
      return;
    case GgmlType::kQ4_0:  // {fp16 d; uint8 qs[16]}: value j is low nibble of qs[j], value j + 16 the high
      for (int64_t b = 0; b < n / 32; ++b, src += 18) {
        const float d = half_to_float(u16(src));
        for (int j = 0; j < 16; ++j) {
          dst[b * 32 + j] = static_cast<float>((src[2 + j] & 0x0F) - 8) * d;
          dst[b * 32 + j + 16] = static_cast<float>((src[2 + j] >> 4) - 8) * d;
        }
      }
      return;
    case GgmlType::kQ4_1:  // {fp16 d; fp16 m; uint8 qs[16]}
      for (int64_t b = 0; b < n / 32; ++b, src += 20) {
        const float d = half_to_float(u16(src)), m = half_to_float(u16(src + 2));
        for (int j = 0; j < 16; ++j) {
          dst[b * 32 + j] = static_cast<float>(src[4 + j] & 0x0F) * d + m;
          dst[b * 32 + j + 16] = static_cast<float>(src[4 + j] >> 4) * d + m;
        }
      }
      return;
    default: throw FormatError(std::string("dequantizing ggml type ") + ggml_type_name(t) + " is not supported");
  }
}

std::vector<float> GgufFile::dequantize(const GgufTensor& t) const {
  if (!can_dequantize(t.type))
    throw FormatError(path() + ": tensor '" + t.name + "' is " + ggml_type_name(t.type) +
                      ", which this reader cannot dequantize (F32, F16, BF16, Q8_0, Q4_0, Q4_1)");
  std::vector<float> out(static_cast<size_t>(t.numel()));
  dequantize_row(t.type, data(t), out.data(), t.numel());
  return out;
}

}  // namespace qd::fmt
