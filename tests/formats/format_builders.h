// Hand-built safetensors and GGUF files for the readers' tests and the fuzzer's seeds: every field
// assembled explicitly, so that a test can break any one of them. Header-only, no LibTorch.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace qd::fmt::test_files {

template <class T>
void put(std::string& s, T v) {
  s.append(reinterpret_cast<const char*>(&v), sizeof v);
}

// A safetensors file: the JSON header (as given) padded with spaces to a multiple of 8, then `data`.
inline std::string safetensors_bytes(const std::string& header, const std::string& data) {
  std::string h = header;
  while ((h.size() + 8) % 8 != 0) h += ' ';
  std::string out;
  put<uint64_t>(out, h.size());
  return out + h + data;
}

struct TestTensor {
  std::string name;
  std::vector<uint64_t> ne;
  uint32_t type = 0;
  std::string data;
  int64_t offset = -1;  // -1: the next aligned position
};

// A GGUF file assembled field by field, so that tests can break any one of them.
struct GgufBuilder {
  std::string magic = "GGUF";
  uint32_t version = 3;
  int64_t n_tensors = -1, n_kv = -1;  // -1: the real counts
  uint32_t alignment = 32;
  std::vector<std::string> kvs;  // encoded entries
  std::vector<TestTensor> tensors;

  static std::string str(const std::string& s) {
    std::string out;
    put<uint64_t>(out, s.size());
    return out + s;
  }
  template <class T>
  void kv(const std::string& key, uint32_t type, T value) {
    std::string e = str(key);
    put<uint32_t>(e, type);
    put<T>(e, value);
    kvs.push_back(e);
  }
  void kv_string(const std::string& key, const std::string& value) {
    std::string e = str(key);
    put<uint32_t>(e, 8);
    kvs.push_back(e + str(value));
  }
  void kv_strings(const std::string& key, const std::vector<std::string>& values) {
    std::string e = str(key);
    put<uint32_t>(e, 9);
    put<uint32_t>(e, 8);
    put<uint64_t>(e, values.size());
    for (const std::string& v : values) e += str(v);
    kvs.push_back(e);
  }
  template <class T>
  void kv_array(const std::string& key, uint32_t elem_type, const std::vector<T>& values) {
    std::string e = str(key);
    put<uint32_t>(e, 9);
    put<uint32_t>(e, elem_type);
    put<uint64_t>(e, values.size());
    for (T v : values) put<T>(e, v);
    kvs.push_back(e);
  }

  std::string build() const {
    std::string out = magic;
    put<uint32_t>(out, version);
    put<uint64_t>(out, n_tensors >= 0 ? static_cast<uint64_t>(n_tensors) : tensors.size());
    put<uint64_t>(out, n_kv >= 0 ? static_cast<uint64_t>(n_kv) : kvs.size() + 1);
    std::string align = str("general.alignment");
    put<uint32_t>(align, 4);
    put<uint32_t>(align, alignment);
    out += align;
    for (const std::string& e : kvs) out += e;
    std::string data;
    for (const TestTensor& t : tensors) {
      out += str(t.name);
      put<uint32_t>(out, static_cast<uint32_t>(t.ne.size()));
      for (uint64_t d : t.ne) put<uint64_t>(out, d);
      put<uint32_t>(out, t.type);
      const size_t aligned = alignment ? (data.size() + alignment - 1) / alignment * alignment : data.size();
      put<uint64_t>(out, t.offset >= 0 ? static_cast<uint64_t>(t.offset) : aligned);
      data.resize(aligned, '\0');
      data += t.data;
    }
    if (alignment) out.resize((out.size() + alignment - 1) / alignment * alignment, '\0');
    return out + data;
  }
};

inline std::string f16(uint16_t h) {
  std::string s;
  put(s, h);
  return s;
}

// Every value type and the five dequantized tensor types, with values known by hand.
inline GgufBuilder valid_gguf() {
  GgufBuilder b;
  b.kv_string("general.architecture", "llama");
  b.kv<uint8_t>("t.u8", 0, 200);
  b.kv<int8_t>("t.i8", 1, -5);
  b.kv<uint16_t>("t.u16", 2, 60000);
  b.kv<int16_t>("t.i16", 3, -300);
  b.kv<uint32_t>("t.u32", 4, 4000000000u);
  b.kv<int32_t>("t.i32", 5, -70000);
  b.kv<float>("t.f32", 6, 1.5f);
  b.kv<uint8_t>("t.bool", 7, 1);
  b.kv<uint64_t>("t.u64", 10, uint64_t{1} << 40);
  b.kv<int64_t>("t.i64", 11, -(int64_t{1} << 40));
  b.kv<double>("t.f64", 12, 0.25);
  b.kv_array<int32_t>("t.ints", 5, {1, -2, 3});
  b.kv_array<float>("t.floats", 6, {0.5f, -1.0f});
  b.kv_strings("t.strings", {"a", "bc", ""});
  TestTensor a{"f32", {4, 2}, 0, ""};
  for (int i = 0; i < 8; ++i) put<float>(a.data, static_cast<float>(i) - 3.5f);
  TestTensor h{"f16", {2}, 1, f16(0x3C00) + f16(0xC000)};
  TestTensor q8{"q8_0", {32}, 8, f16(0x3800)};  // d = 0.5, q = -16 .. 15
  for (int j = 0; j < 32; ++j) q8.data += static_cast<char>(j - 16);
  TestTensor q40{"q4_0", {32}, 2, f16(0x3400)};  // d = 0.25; low nibbles j, high 15 - j
  for (int j = 0; j < 16; ++j) q40.data += static_cast<char>(j | ((15 - j) << 4));
  TestTensor q41{"q4_1", {32}, 3, f16(0x3800) + f16(0xBC00)};  // d = 0.5, m = -1; both nibbles j
  for (int j = 0; j < 16; ++j) q41.data += static_cast<char>(j | (j << 4));
  b.tensors = {a, h, q8, q40, q41};
  return b;
}

}  // namespace qd::fmt::test_files
