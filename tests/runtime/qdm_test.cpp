// The .qdm file (docs/qdm.md): exact round trips, a clear QdmError (never a crash) for every
// truncation, every corrupted payload byte, a newer version and each broken invariant that the
// interpreter relies on; atomic saves. No LibTorch: the runtime must stand alone.
#include "runtime/qdm.h"
#include "tests/runtime/model_builders.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "tests/test_util.h"

namespace qd::rt {
namespace {

using test_models::crc32;

constexpr size_t kHeader = 40;

uint32_t get_u32(const std::vector<uint8_t>& b, size_t at) {
  return uint32_t{b[at]} | uint32_t{b[at + 1]} << 8 | uint32_t{b[at + 2]} << 16 | uint32_t{b[at + 3]} << 24;
}
void put_u32(std::vector<uint8_t>& b, size_t at, uint32_t v) {
  for (int k = 0; k < 4; ++k) b[at + static_cast<size_t>(k)] = static_cast<uint8_t>(v >> (8 * k));
}
// After editing the payload of a file: the header's payload size and CRC-32 made consistent
// again, so that the parser's checks behind the checksum are reached.
void reseal(std::vector<uint8_t>& b) {
  const uint64_t payload = b.size() - kHeader;
  put_u32(b, 24, static_cast<uint32_t>(payload));
  put_u32(b, 28, static_cast<uint32_t>(payload >> 32));
  put_u32(b, 32, crc32(b.data() + kHeader, b.size() - kHeader));
}
// Where a layer's name starts in the file (names are unique in the test model).
size_t name_offset(const std::vector<uint8_t>& b, const std::string& name) {
  const std::string hay(b.begin(), b.end());
  const size_t at = hay.find(name);
  EXPECT_NE(at, std::string::npos) << name;
  return at;
}

std::string parse_error(const std::vector<uint8_t>& b) {
  try {
    parse_qdm(b.data(), b.size());
  } catch (const QdmError& e) {
    return e.what();
  }
  return "(parsed)";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// conv 3x3 pad 1 (1x8x8 -> 4x8x8, fused ReLU) -> maxpool 2 (4x4x4) -> conv 1x1 (4x4x4) -> add of
// the last two -> global average pool (4x1x1) -> linear to 10 classes.
Model tiny_model() {
  std::mt19937 gen(11);
  std::uniform_int_distribution<int> wv(-127, 127), bv(-500, 500);
  auto weights = [&](size_t n) {
    std::vector<int8_t> w(n);
    for (auto& x : w) x = static_cast<int8_t>(wv(gen));
    return w;
  };
  auto biases = [&](size_t n) {
    std::vector<int32_t> b(n);
    for (auto& x : b) x = bv(gen);
    return b;
  };
  Model m;
  m.mean = {0.2860f};
  m.inv_std = {1.0f / 0.3530f};
  using test_models::tensor;
  m.tensors = {tensor(1, 8, 8, 0.0215f, -17), tensor(4, 8, 8, 0.05f, -128), tensor(4, 4, 4, 0.05f, -128),
               tensor(4, 4, 4, 0.04f, 3),     tensor(4, 4, 4, 0.06f, -128), tensor(4, 1, 1, 0.03f, -100),
               tensor(10, 1, 1, 1.0f, 0)};

  auto conv = [&](const char* name, int input, int in_c, int out_c, int k, int pad, float in_s, float out_s) {
    Layer l;
    l.kind = OpKind::kConv2d;
    l.name = name;
    l.input = input;
    l.kernel = k, l.stride = 1, l.pad = pad;
    l.in_c = in_c, l.out_c = out_c;
    l.weight = weights(static_cast<size_t>(out_c * in_c * k * k));
    l.bias = biases(static_cast<size_t>(out_c));
    for (int o = 0; o < out_c; ++o) {
      l.weight_scale.push_back(0.004f + 0.001f * static_cast<float>(o));
      l.multiplier.push_back(quantize_multiplier(double{in_s} * l.weight_scale.back() / out_s));
    }
    return l;
  };
  Layer c1 = conv("conv1", 0, 1, 4, 3, 1, 0.0215f, 0.05f);
  c1.act_min = -128;                               // = the output zero point: the fused ReLU
  c1.float_weight.assign(c1.weight.size(), 0.5f);  // export-only: never written
  c1.float_bias.assign(4, 0.25f);

  Layer pool;
  pool.kind = OpKind::kMaxPool2d;
  pool.name = "pool1";
  pool.input = 1;
  pool.kernel = 2, pool.stride = 2, pool.pad = 0;

  Layer c2 = conv("conv2", 2, 4, 4, 1, 0, 0.05f, 0.04f);
  c2.act_min = -100, c2.act_max = 120;

  Layer add;
  add.kind = OpKind::kAdd;
  add.name = "res";
  add.input = 2, add.input2 = 3;
  add.left_shift = 20;
  add.input_multiplier = quantize_multiplier(0.05 / (2 * 0.05));
  add.input2_multiplier = quantize_multiplier(0.04 / (2 * 0.05));
  add.output_multiplier = quantize_multiplier(2 * 0.05 / (std::pow(2.0, 20) * 0.06));
  add.act_min = -128;

  Layer gap;
  gap.kind = OpKind::kGlobalAvgPool;
  gap.name = "gap";
  gap.input = 4;
  gap.multiplier = {quantize_multiplier(0.06 / (0.03 * 16))};

  Layer fc;
  fc.kind = OpKind::kLinear;
  fc.name = "classifier";
  fc.input = 5;
  fc.in_c = 4, fc.out_c = 10;
  fc.weight = weights(40);
  fc.bias = biases(10);
  for (int o = 0; o < 10; ++o) {
    fc.weight_scale.push_back(0.01f * static_cast<float>(o + 1));
    fc.output_scale.push_back(0.03f * fc.weight_scale.back());
  }
  m.layers = {c1, pool, c2, add, gap, fc};
  return m;
}

uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
void expect_same_floats(const std::vector<float>& a, const std::vector<float>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(float_bits(a[i]), float_bits(b[i])) << what << "[" << i << "]";
}
void expect_same_multiplier(const QuantizedMultiplier& a, const QuantizedMultiplier& b, const std::string& what) {
  EXPECT_EQ(a.multiplier, b.multiplier) << what;
  EXPECT_EQ(a.shift, b.shift) << what;
}

// Every field of the file (not float_weight / float_bias, which are export-only).
void expect_same(const Model& a, const Model& b) {
  expect_same_floats(a.mean, b.mean, "mean");
  expect_same_floats(a.inv_std, b.inv_std, "inv_std");
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (size_t t = 0; t < a.tensors.size(); ++t) {
    const std::string at = "tensor " + std::to_string(t);
    EXPECT_EQ(a.tensors[t].c, b.tensors[t].c) << at;
    EXPECT_EQ(a.tensors[t].h, b.tensors[t].h) << at;
    EXPECT_EQ(a.tensors[t].w, b.tensors[t].w) << at;
    EXPECT_EQ(float_bits(a.tensors[t].scale), float_bits(b.tensors[t].scale)) << at;
    EXPECT_EQ(a.tensors[t].zero_point, b.tensors[t].zero_point) << at;
  }
  ASSERT_EQ(a.layers.size(), b.layers.size());
  for (size_t i = 0; i < a.layers.size(); ++i) {
    const Layer &x = a.layers[i], &y = b.layers[i];
    const std::string at = "layer " + std::to_string(i) + " ";
    EXPECT_EQ(x.kind, y.kind) << at;
    EXPECT_EQ(x.name, y.name) << at;
    EXPECT_EQ(x.input, y.input) << at;
    EXPECT_EQ(x.input2, y.input2) << at;
    EXPECT_EQ(x.kernel, y.kernel) << at;
    EXPECT_EQ(x.stride, y.stride) << at;
    EXPECT_EQ(x.pad, y.pad) << at;
    EXPECT_EQ(x.out_c, y.out_c) << at;
    EXPECT_EQ(x.in_c, y.in_c) << at;
    EXPECT_EQ(x.weight, y.weight) << at;
    EXPECT_EQ(x.bias, y.bias) << at;
    expect_same_floats(x.weight_scale, y.weight_scale, at + "weight_scale");
    ASSERT_EQ(x.multiplier.size(), y.multiplier.size()) << at;
    for (size_t o = 0; o < x.multiplier.size(); ++o) expect_same_multiplier(x.multiplier[o], y.multiplier[o], at);
    EXPECT_EQ(x.left_shift, y.left_shift) << at;
    expect_same_multiplier(x.input_multiplier, y.input_multiplier, at + "input_multiplier");
    expect_same_multiplier(x.input2_multiplier, y.input2_multiplier, at + "input2_multiplier");
    expect_same_multiplier(x.output_multiplier, y.output_multiplier, at + "output_multiplier");
    EXPECT_EQ(x.act_min, y.act_min) << at;
    EXPECT_EQ(x.act_max, y.act_max) << at;
    expect_same_floats(x.output_scale, y.output_scale, at + "output_scale");
  }
}

TEST(Qdm, ReferenceCrcIsTheStandardOne) {
  EXPECT_EQ(crc32(reinterpret_cast<const uint8_t*>("123456789"), 9), 0xCBF43926u);
}

TEST(Qdm, TestModelIsValid) { EXPECT_EQ(validate(tiny_model()), ""); }

TEST(Qdm, RoundTripKeepsEveryField) {
  const Model m = tiny_model();
  const std::vector<uint8_t> bytes = serialize(m);
  const Model back = parse_qdm(bytes.data(), bytes.size());
  expect_same(m, back);
  for (const Layer& l : back.layers) {  // export-only fields are not in the file
    EXPECT_TRUE(l.float_weight.empty());
    EXPECT_TRUE(l.float_bias.empty());
  }
  EXPECT_EQ(serialize(back), bytes);  // one encoding per model: parse and serialize are inverses
}

TEST(Qdm, HeaderLayoutMatchesTheDocs) {
  const Model m = tiny_model();
  const std::vector<uint8_t> b = serialize(m);
  ASSERT_GT(b.size(), kHeader);
  EXPECT_EQ(std::memcmp(b.data(), "QDMODEL\0", 8), 0);
  EXPECT_EQ(get_u32(b, 8), kQdmVersion);
  EXPECT_EQ(get_u32(b, 12), m.tensors.size());
  EXPECT_EQ(get_u32(b, 16), m.layers.size());
  EXPECT_EQ(get_u32(b, 20), m.mean.size());
  EXPECT_EQ(get_u32(b, 24), b.size() - kHeader);  // payload size, u64
  EXPECT_EQ(get_u32(b, 28), 0u);
  EXPECT_EQ(get_u32(b, 32), crc32(b.data() + kHeader, b.size() - kHeader));
  EXPECT_EQ(get_u32(b, 36), 0u);
  EXPECT_EQ(b.size() % 4, 0u);  // every array stays 4-byte aligned
  // The payload starts with mean, then inv_std, then the tensor table.
  float mean;
  std::memcpy(&mean, b.data() + kHeader, 4);
  EXPECT_EQ(mean, m.mean[0]);
  EXPECT_EQ(static_cast<int32_t>(get_u32(b, kHeader + 8)), 1);         // tensors[0].c
  EXPECT_EQ(static_cast<int32_t>(get_u32(b, kHeader + 8 + 16)), -17);  // tensors[0].zero_point
}

TEST(Qdm, EveryTruncationIsAClearError) {
  const std::vector<uint8_t> bytes = serialize(tiny_model());
  for (size_t n = 0; n < bytes.size(); ++n) {
    // A copy of exactly n bytes, so that the address sanitizer would see any read past the end.
    const std::vector<uint8_t> cut(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(n));
    const std::string msg = parse_error(cut);
    EXPECT_TRUE(contains(msg, "truncated") || contains(msg, "magic") || contains(msg, "header"))
        << n << " bytes: " << msg;
  }
  EXPECT_EQ(parse_error(std::vector<uint8_t>(bytes.begin(), bytes.begin() + 100)),
            "truncated: the header declares " + std::to_string(bytes.size() - kHeader) +
                " payload bytes after the 40-byte header, the file has 60");
}

TEST(Qdm, EveryCorruptPayloadByteFailsTheChecksum) {
  const std::vector<uint8_t> bytes = serialize(tiny_model());
  for (size_t i = kHeader; i < bytes.size(); ++i) {
    std::vector<uint8_t> bad = bytes;
    bad[i] ^= static_cast<uint8_t>(1u << (i % 8));  // CRC-32 catches every single-bit error
    const std::string msg = parse_error(bad);
    EXPECT_TRUE(contains(msg, "checksum mismatch")) << "byte " << i << ": " << msg;
  }
  std::vector<uint8_t> bad = bytes;
  bad[kHeader + 7] = static_cast<uint8_t>(bad[kHeader + 7] + 0x55);
  bad[bad.size() - 1] ^= 0xFF;
  EXPECT_TRUE(contains(parse_error(bad), "checksum mismatch"));
}

TEST(Qdm, HeaderErrors) {
  const std::vector<uint8_t> good = serialize(tiny_model());
  auto with = [&](size_t at, uint32_t v) {
    std::vector<uint8_t> b = good;
    put_u32(b, at, v);
    return parse_error(b);
  };
  std::vector<uint8_t> b = good;
  b[0] = 'P';
  EXPECT_EQ(parse_error(b), "not a .qdm file (bad magic)");
  EXPECT_EQ(parse_error({'P', 'K', 3, 4}), "not a .qdm file (bad magic)");
  EXPECT_EQ(with(8, 7),
            "version 7 is newer than this runtime reads (2): re-export with this qdistill or update the runtime");
  EXPECT_TRUE(contains(with(8, 0), "version 0")) << with(8, 0);
  EXPECT_TRUE(contains(with(12, 6), "6 tensors for 6 layers")) << with(12, 6);
  EXPECT_TRUE(contains(with(16, 5000), "5000 layers")) << with(16, 5000);
  EXPECT_TRUE(contains(with(20, 0), "0 input channels")) << with(20, 0);
  EXPECT_TRUE(contains(with(24, 1u << 30), "truncated: the header declares 1073741824 payload bytes"));
  EXPECT_TRUE(contains(with(28, 1), "truncated: the header declares")) << with(28, 1);
  EXPECT_TRUE(contains(with(36, 1), "reserved")) << with(36, 1);
  b = good;
  b.push_back(0);
  EXPECT_TRUE(contains(parse_error(b), "1 unexpected bytes after the")) << parse_error(b);
  EXPECT_EQ(parse_error({}), "truncated: the file is empty (not a .qdm file)");
}

// Files whose checksum is right but whose content is not (a writer's bug, or a forged file).
TEST(Qdm, ContentErrorsBehindAValidChecksum) {
  const std::vector<uint8_t> good = serialize(tiny_model());

  {  // cut inside the classifier's weights (10 x 4 bytes): the message says where and what
    const size_t name = name_offset(good, "classifier");
    const size_t weights = name + 12 + 7 * 4 + 4;  // name (10 bytes, padded to 12), 7 int32, the count
    std::vector<uint8_t> b(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(weights + 5));
    reseal(b);
    EXPECT_EQ(parse_error(b), "truncated: layer 5 (classifier, linear): weights need 40 bytes at offset " +
                                  std::to_string(weights) + ", the file has 5 left");
  }
  {  // an unknown layer kind
    std::vector<uint8_t> b = good;
    put_u32(b, name_offset(good, "pool1") - 8, 9);
    reseal(b);
    EXPECT_TRUE(contains(parse_error(b), "layer 1: unknown kind 9 at offset")) << parse_error(b);
  }
  {  // a name longer than 255 bytes
    std::vector<uint8_t> b = good;
    put_u32(b, name_offset(good, "pool1") - 4, 300);
    reseal(b);
    EXPECT_TRUE(contains(parse_error(b), "layer 1 (maxpool2d): name length 300")) << parse_error(b);
  }
  {  // an array count beyond the bytes left: refused before anything is allocated
    std::vector<uint8_t> b = good;
    put_u32(b, name_offset(good, "res") + 4 + 7 * 4 + 4, 1u << 24);  // add's bias count
    reseal(b);
    EXPECT_TRUE(contains(parse_error(b), "truncated: layer 3 (res, add): bias needs 67108864 bytes at offset"))
        << parse_error(b);
    put_u32(b, name_offset(good, "res") + 4 + 7 * 4 + 4, 0xFFFFFFFFu);
    reseal(b);
    EXPECT_TRUE(contains(parse_error(b), "layer 3 (res, add): bias count 4294967295 at offset")) << parse_error(b);
  }
  {  // non-zero padding after a name
    std::vector<uint8_t> b = good;
    b[name_offset(good, "res") + 3] = 1;
    reseal(b);
    EXPECT_TRUE(contains(parse_error(b), "layer 3 (res, add): the padding after name")) << parse_error(b);
  }
  {  // a field out of range: the parsed model is validated
    std::vector<uint8_t> b = good;
    put_u32(b, name_offset(good, "res") + 4 + 7 * 4 + 5 * 4, 21);  // add's left_shift
    reseal(b);
    EXPECT_EQ(parse_error(b), "invalid model: layer 3 (res, add): left_shift 21 must be in [0, 20]");
  }
  {  // payload bytes after the last layer
    std::vector<uint8_t> b = good;
    b.insert(b.end(), {0, 0, 0, 0});
    reseal(b);
    EXPECT_TRUE(contains(parse_error(b), "4 unexpected bytes at offset")) << parse_error(b);
  }
}

struct Breakage {
  const char* what;
  std::function<void(Model&)> apply;
  std::vector<std::string> expect;  // parts of validate()'s message
};

TEST(Qdm, ValidateNamesTheLayerAndTheField) {
  const std::string conv1 = "layer 0 (conv1, conv2d): ", pool1 = "layer 1 (pool1, maxpool2d): ",
                    conv2 = "layer 2 (conv2, conv2d): ", res = "layer 3 (res, add): ",
                    gap = "layer 4 (gap, global_avg_pool): ", fc = "layer 5 (classifier, linear): ";
  const std::vector<Breakage> cases = {
      {"no layers", [](Model& m) { m.layers.clear(); }, {"no layers"}},
      {"tensor count", [](Model& m) { m.tensors.pop_back(); }, {"6 tensors for 6 layers"}},
      {"mean size", [](Model& m) { m.mean.push_back(0.5f); }, {"input normalization: mean has 2"}},
      {"inv_std zero", [](Model& m) { m.inv_std[0] = 0.0f; }, {"input normalization: inv_std[0]"}},
      {"mean nan", [](Model& m) { m.mean[0] = std::nanf(""); }, {"input normalization: mean[0]"}},
      {"tensor dim", [](Model& m) { m.tensors[2].h = 0; }, {"tensor 2 (output of layer 1 (pool1, maxpool2d)): h 0"}},
      {"tensor scale",
       [](Model& m) { m.tensors[3].scale = 0.0f; },
       {"tensor 3 (output of layer 2 (conv2, conv2d)): scale 0"}},
      {"tensor scale inf", [](Model& m) { m.tensors[0].scale = INFINITY; }, {"tensor 0 (the input): scale inf"}},
      {"zero point",
       [](Model& m) { m.tensors[4].zero_point = 128; },
       {"tensor 4 (output of layer 3 (res, add)): zero_point 128"}},
      {"huge tensor", [](Model& m) { m.tensors[5].c = 65536, m.tensors[5].h = 2048; }, {"over the limit of 2^26"}},
      {"kind",
       [](Model& m) { m.layers[1].kind = static_cast<OpKind>(42); },
       {"layer 1 (pool1, kind 42): unknown kind 42"}},
      {"name", [](Model& m) { m.layers[2].name = std::string(256, 'x'); }, {"name is 256 bytes"}},
      {"linear not last",
       [](Model& m) { m.layers.back().kind = OpKind::kConv2d; },
       {"layer 5 (classifier, conv2d)", "last layer must be linear"}},
      {"linear in the middle",
       [](Model& m) { m.layers[2].kind = OpKind::kLinear; },
       {"layer 2 (conv2, linear): only the last"}},
      {"input ahead", [](Model& m) { m.layers[2].input = 3; }, {conv2 + "input 3 must name an earlier tensor"}},
      {"input negative", [](Model& m) { m.layers[1].input = -1; }, {pool1 + "input -1"}},
      {"input2 on conv", [](Model& m) { m.layers[0].input2 = 0; }, {conv1 + "input2 0 must be -1"}},
      {"input2 ahead", [](Model& m) { m.layers[3].input2 = 4; }, {res + "input2 4 must name an earlier tensor"}},
      {"conv pad", [](Model& m) { m.layers[0].pad = 3; }, {conv1 + "pad 3 must be in [0, 2]"}},
      {"conv stride", [](Model& m) { m.layers[0].stride = 0; }, {conv1 + "stride 0"}},
      {"conv kernel too big",
       [](Model& m) { m.layers[2].kernel = 7, m.layers[2].pad = 1; },
       {conv2 + "kernel 7 is larger"}},
      {"conv in_c", [](Model& m) { m.layers[2].in_c = 3; }, {conv2 + "in_c 3 differs from input tensor 2"}},
      {"conv out shape", [](Model& m) { m.layers[0].pad = 0; }, {conv1 + "output tensor 1 is 4x8x8, expected 4x6x6"}},
      {"conv weight size",
       [](Model& m) { m.layers[0].weight.pop_back(); },
       {conv1 + "weight has 35 values, expected 36"}},
      {"conv weight -128", [](Model& m) { m.layers[2].weight[5] = -128; }, {conv2 + "weight[5] is -128"}},
      {"conv bias size", [](Model& m) { m.layers[2].bias.resize(3); }, {conv2 + "bias has 3 values"}},
      {"conv weight_scale", [](Model& m) { m.layers[0].weight_scale[1] = -0.5f; }, {conv1 + "weight_scale[1] -0.5"}},
      {"conv multiplier size",
       [](Model& m) { m.layers[0].multiplier.pop_back(); },
       {conv1 + "multiplier has 3 values"}},
      {"conv multiplier small",
       [](Model& m) { m.layers[0].multiplier[2].multiplier = 5; },
       {conv1 + "multiplier[2] (multiplier 5"}},
      {"conv multiplier shift",
       [](Model& m) { m.layers[2].multiplier[1].shift = 31; },
       {conv2 + "multiplier[1]", "shift 31"}},
      {"conv clamp order",
       [](Model& m) { m.layers[2].act_min = 10, m.layers[2].act_max = 9; },
       {conv2 + "act_min/act_max [10, 9]"}},
      {"conv clamp range", [](Model& m) { m.layers[0].act_max = 128; }, {conv1 + "act_min/act_max [-128, 128]"}},
      {"conv accumulator",
       [](Model& m) { m.layers[2].bias[3] = std::numeric_limits<int32_t>::max() - 10; },
       {conv2 + "output channel 3: bias", "overflow the int32 accumulator"}},
      {"conv output_scale",
       [](Model& m) { m.layers[0].output_scale = {1.0f}; },
       {conv1 + "output_scale must be empty"}},
      {"pool shape", [](Model& m) { m.layers[1].stride = 1; }, {pool1 + "output tensor 2 is 4x4x4, expected 4x7x7"}},
      {"pool pad", [](Model& m) { m.layers[1].pad = 2; }, {pool1 + "pad 2"}},
      {"pool scale", [](Model& m) { m.tensors[2].scale = 0.07f; }, {pool1 + "output tensor 2 scale/zero_point"}},
      {"pool zero point", [](Model& m) { m.tensors[2].zero_point = 0; }, {pool1 + "output tensor 2 scale/zero_point"}},
      {"pool out_c", [](Model& m) { m.layers[1].out_c = 1 << 30; }, {pool1 + "out_c 1073741824 must be in [0, 65536]"}},
      {"gap kernel", [](Model& m) { m.layers[4].kernel = 0; }, {gap + "kernel 0 must be in [1, 65536]"}},
      {"conv add multiplier",
       [](Model& m) { m.layers[0].output_multiplier.multiplier = 7; },
       {conv1 + "output_multiplier"}},
      {"pool weights", [](Model& m) { m.layers[1].weight = {1}; }, {pool1 + "weight must be empty"}},
      {"add shapes", [](Model& m) { m.layers[3].input2 = 1; }, {res + "operands differ in shape"}},
      {"add out shape",
       [](Model& m) { m.layers[3].input = 1, m.layers[3].input2 = 1; },
       {res + "output tensor 4 is 4x4x4"}},
      {"add left_shift", [](Model& m) { m.layers[3].left_shift = -1; }, {res + "left_shift -1"}},
      {"add input multiplier",
       [](Model& m) { m.layers[3].input_multiplier.multiplier = -7; },
       {res + "input_multiplier (multiplier -7"}},
      {"add input2 multiplier",
       [](Model& m) { m.layers[3].input2_multiplier.shift = -32; },
       {res + "input2_multiplier", "shift -32"}},
      {"add output multiplier",
       [](Model& m) { m.layers[3].output_multiplier.multiplier = 1 << 29; },
       {res + "output_multiplier"}},
      {"add clamp", [](Model& m) { m.layers[3].act_min = -129; }, {res + "act_min/act_max [-129, 127]"}},
      {"gap shape", [](Model& m) { m.tensors[5].h = 2; }, {gap + "output tensor 5 is 4x2x1, expected 4x1x1"}},
      {"gap multiplier",
       [](Model& m) { m.layers[4].multiplier.push_back(m.layers[4].multiplier[0]); },
       {gap + "multiplier has 2 values, expected 1"}},
      {"gap bias", [](Model& m) { m.layers[4].bias = {0}; }, {gap + "bias must be empty"}},
      {"linear in_c",
       [](Model& m) { m.layers[5].in_c = 5; },
       {fc + "in_c 5 differs from the 4 values of input tensor 5"}},
      {"linear out shape", [](Model& m) { m.tensors[6].c = 9; }, {fc + "output tensor 6 is 9x1x1, expected 10x1x1"}},
      {"linear weight", [](Model& m) { m.layers[5].weight.resize(39); }, {fc + "weight has 39 values, expected 40"}},
      {"linear weight -128", [](Model& m) { m.layers[5].weight[0] = -128; }, {fc + "weight[0] is -128"}},
      {"linear output_scale size",
       [](Model& m) { m.layers[5].output_scale.pop_back(); },
       {fc + "output_scale has 9 values"}},
      {"linear output_scale nan", [](Model& m) { m.layers[5].output_scale[4] = NAN; }, {fc + "output_scale[4] nan"}},
      {"linear multiplier",
       [](Model& m) { m.layers[5].multiplier = {QuantizedMultiplier{}}; },
       {fc + "multiplier must be empty"}},
      {"linear accumulator",
       [](Model& m) { m.layers[5].bias[0] = std::numeric_limits<int32_t>::min() + 1; },
       {fc + "output channel 0: bias -2147483647"}},
  };
  ASSERT_EQ(validate(tiny_model()), "");
  for (const Breakage& c : cases) {
    Model m = tiny_model();
    c.apply(m);
    const std::string msg = validate(m);
    EXPECT_FALSE(msg.empty()) << c.what;
    for (const std::string& part : c.expect) EXPECT_TRUE(contains(msg, part)) << c.what << ": " << msg;
    // The writer refuses what the reader would refuse.
    try {
      serialize(m);
      ADD_FAILURE() << c.what << ": serialize accepted an invalid model";
    } catch (const QdmError& e) {
      EXPECT_TRUE(contains(e.what(), "cannot write an invalid model: " + msg)) << c.what << ": " << e.what();
    }
  }
}

TEST(Qdm, LinearOnlyModelIsValid) {  // the smallest model: one classifier over the input
  Model m;
  m.mean = {0.0f, 0.5f};
  m.inv_std = {1.0f, 2.0f};
  m.tensors.resize(2);
  m.tensors[0].c = 2, m.tensors[0].h = 3, m.tensors[0].w = 1, m.tensors[0].scale = 0.1f;
  m.tensors[1].c = 2, m.tensors[1].h = 1, m.tensors[1].w = 1;
  Layer fc;
  fc.kind = OpKind::kLinear;
  fc.in_c = 6, fc.out_c = 2;
  fc.weight.assign(12, 1);
  fc.bias = {0, 1};
  fc.weight_scale = {0.5f, 0.25f};
  fc.output_scale = {0.05f, 0.025f};
  m.layers = {fc};
  ASSERT_EQ(validate(m), "");
  const std::vector<uint8_t> b = serialize(m);
  expect_same(m, parse_qdm(b.data(), b.size()));
}

TEST(Qdm, LoadAndSave) {
  test::TempDir dir;
  const Model m = tiny_model();
  const std::string path = dir.file("student.qdm");
  save_qdm(m, path);
  save_qdm(m, path);  // replacing an existing file
  expect_same(m, load_qdm(path));
  // Atomic: written to a temporary and renamed; nothing else is left in the directory.
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) names.push_back(e.path().filename().string());
  EXPECT_EQ(names, std::vector<std::string>{"student.qdm"});

  auto load_error = [](const std::string& p) {
    try {
      load_qdm(p);
    } catch (const QdmError& e) {
      return std::string(e.what());
    }
    return std::string("(loaded)");
  };
  const std::string missing = dir.file("missing.qdm");
  EXPECT_TRUE(contains(load_error(missing), missing + ": cannot open (No such file or directory)"))
      << load_error(missing);
  EXPECT_TRUE(contains(load_error(dir.path().string()), dir.path().string() + ": cannot read"))
      << load_error(dir.path().string());

  // Errors of the content name the path first.
  std::vector<uint8_t> b = serialize(m);
  b[kHeader + 3] ^= 1;
  const std::string corrupt = dir.file("corrupt.qdm");
  std::ofstream(corrupt, std::ios::binary)
      .write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  EXPECT_EQ(load_error(corrupt).rfind(corrupt + ": checksum mismatch", 0), 0u) << load_error(corrupt);
  const std::string text = dir.file("notes.txt");
  std::ofstream(text) << "hello";
  EXPECT_EQ(load_error(text), text + ": not a .qdm file (bad magic)");

  // Too large: refused from the size alone (a sparse file: nothing is read).
  const std::string huge = dir.file("huge.qdm");
  std::ofstream(huge).put('Q');
  std::filesystem::resize_file(huge, (size_t{256} << 20) + 1);
  EXPECT_TRUE(contains(load_error(huge), huge + ": file is over 256 MiB")) << load_error(huge);

  // A save that cannot happen names the path and the reason, and leaves nothing behind.
  const std::string nodir = dir.file("no/such/dir/student.qdm");
  try {
    save_qdm(m, nodir);
    ADD_FAILURE() << "saved into a missing directory";
  } catch (const QdmError& e) {
    EXPECT_TRUE(contains(e.what(), nodir + ": " + nodir + ".tmp.")) << e.what();
    EXPECT_TRUE(contains(e.what(), ": cannot create file")) << e.what();
    EXPECT_TRUE(contains(e.what(), "No such file or directory")) << e.what();
  }
  Model bad = m;
  bad.layers[0].pad = 5;
  EXPECT_THROW(save_qdm(bad, dir.file("bad.qdm")), QdmError);
  EXPECT_FALSE(std::filesystem::exists(dir.file("bad.qdm")));
}

}  // namespace
}  // namespace qd::rt
