// The op-table runtime (runtime/graph.h, ops.h, executor.h) and the version-2 `.qdm`: a version-1
// image model converted to a graph computes exactly what the layer interpreter computes, value by
// value; the file round-trips byte for byte; validation names the node and the field; hostile
// bytes give a QdmError, never a crash. No LibTorch.
#include <gtest/gtest.h>

#include <cstdio>
#include <random>
#include <string>

#include "runtime/executor.h"
#include "runtime/interpreter.h"
#include "runtime/qdm.h"
#include "tests/runtime/model_builders.h"

namespace qd::rt {
namespace {

using namespace test_models;

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

std::string error_of(const std::vector<uint8_t>& b) {
  try {
    parse_graph(b.data(), b.size());
  } catch (const QdmError& e) {
    return e.what();
  }
  return "";
}

TEST(Graph, ConvertedImageModelMatchesTheLayerInterpreterValueByValue) {
  const Model m = every_op_model();
  Interpreter interp(m);
  const Graph g = to_graph(m);
  ASSERT_EQ(validate(g), "");
  // pixels, input, then one value per layer
  ASSERT_EQ(g.values.size(), m.tensors.size() + 1);
  ASSERT_EQ(g.nodes.size(), m.layers.size() + 1);
  Executor ex(g);
  std::mt19937 gen(11);
  std::uniform_real_distribution<float> px(0.0f, 1.0f);
  int nonconstant = 0;
  for (int img = 0; img < 100; ++img) {
    std::vector<float> x(36);
    for (float& v : x) v = px(gen);
    std::vector<float> logits(5);
    interp.run(x.data(), logits.data());
    Buffer& in = ex.input(0);
    in.resize({1, 6, 6});
    std::copy(x.begin(), x.end(), in.data<float>());
    ex.run();
    for (size_t t = 0; t + 1 < m.tensors.size(); ++t) {
      const Buffer& b = ex.value(static_cast<int32_t>(t + 1));
      const std::vector<int8_t>& want = interp.tensor(static_cast<int>(t));
      ASSERT_EQ(b.numel(), static_cast<int64_t>(want.size())) << t;
      for (size_t e = 0; e < want.size(); ++e) ASSERT_EQ(b.data<int8_t>()[e], want[e]) << "tensor " << t << " element " << e;
    }
    const Buffer& out = ex.output(0);
    ASSERT_EQ(out.shape, Shape{5});
    for (size_t c = 0; c < 5; ++c) ASSERT_EQ(out.data<float>()[c], logits[c]) << c;
    nonconstant += logits[0] != logits[1];
  }
  EXPECT_GT(nonconstant, 50);
}

TEST(Graph, FileRoundTripsByteForByteAndReadsVersionOne) {
  const Model m = every_op_model();
  const Graph g = to_graph(m);
  const std::vector<uint8_t> bytes = serialize_graph(g);
  EXPECT_EQ(bytes[8], kQdmGraphVersion);
  const Graph back = parse_graph(bytes.data(), bytes.size());
  EXPECT_EQ(serialize_graph(back), bytes);
  EXPECT_EQ(back.metadata.at("task"), "image_classification");
  // A version-1 file reads as the same graph.
  const std::vector<uint8_t> v1 = serialize(m);
  EXPECT_EQ(serialize_graph(parse_graph(v1.data(), v1.size())), bytes);
  // The version-1 reader says what a version-2 file is.
  try {
    parse_qdm(bytes.data(), bytes.size());
    FAIL() << "parse_qdm read a version-2 file";
  } catch (const QdmError& e) {
    EXPECT_TRUE(contains(e.what(), "graph of ops")) << e.what();
  }
  // And the file forms, atomically.
  const std::string path = ::testing::TempDir() + "graph_roundtrip.qdm";
  save_graph(g, path);
  EXPECT_EQ(serialize_graph(load_graph(path)), bytes);
  std::remove(path.c_str());
}

TEST(Graph, ValidationNamesTheNodeAndTheField) {
  const Graph good = to_graph(every_op_model());
  auto broken = [&](auto edit) {
    Graph g = good;
    edit(g);
    return validate(g);
  };
  EXPECT_EQ(broken([](Graph&) {}), "");
  std::string e = broken([](Graph& g) { g.nodes[1].op = "conv3d"; });
  EXPECT_TRUE(contains(e, "node 1 (conv3d 'A'): unknown op")) << e;
  e = broken([](Graph& g) { g.nodes[1].attrs.erase("bias"); });
  EXPECT_TRUE(contains(e, "node 1 (conv2d 'A'): attribute bias is missing")) << e;
  e = broken([](Graph& g) { g.nodes[1].attrs["kernel"] = Attr::of_float(3); });
  EXPECT_TRUE(contains(e, "attribute kernel is a float, not a int")) << e;
  e = broken([](Graph& g) { g.nodes[1].attrs["colour"] = Attr::of_int(3); });
  EXPECT_TRUE(contains(e, "unknown attribute 'colour'")) << e;
  e = broken([](Graph& g) { g.nodes[1].attrs["weight"].data.pop_back(); });
  EXPECT_TRUE(contains(e, "attribute weight: 35 bytes for 4x1x3x3 i8 (36)")) << e;
  e = broken([](Graph& g) { g.nodes[1].attrs["pad"] = Attr::of_int(3); });
  EXPECT_TRUE(contains(e, "pad 3 must be in [0, 2]")) << e;
  e = broken([](Graph& g) { g.nodes[1].attrs["weight"].data[0] = 0x80; });
  EXPECT_TRUE(contains(e, "weight[0] is -128")) << e;
  e = broken([](Graph& g) { g.values[2].shape = {4, 6, 5}; });
  EXPECT_TRUE(contains(e, "output 0 is declared 4x6x5, the op writes 4x6x6")) << e;
  e = broken([](Graph& g) { g.nodes[1].inputs[0] = 3; });
  EXPECT_TRUE(contains(e, "reads value 3 before any node writes it")) << e;
  e = broken([](Graph& g) { g.nodes[2].outputs[0] = 2; });
  EXPECT_TRUE(contains(e, "which is already written")) << e;
  e = broken([](Graph& g) { g.values[2].scale = 0.0f; });
  EXPECT_TRUE(contains(e, "value 2 ('A'): scale 0")) << e;
  e = broken([](Graph& g) { g.nodes[3].attrs["output_multiplier"] = Attr::of_ints({5, 0}); });
  EXPECT_TRUE(contains(e, "output_multiplier[0] (multiplier 5, shift 0) must be 0 or in [2^30, 2^31)")) << e;
  e = broken([](Graph& g) { g.nodes[1].name = "bad\x1b[31m"; g.nodes[1].op = "x"; });
  EXPECT_TRUE(contains(e, "bad\\x1b[31m")) << e;
  EXPECT_THROW(Executor{Graph{}}, QdmError);
}

TEST(Graph, ExecutorRefusesAnInputOfAnotherShape) {
  Executor ex(to_graph(every_op_model()));
  ex.input(0).resize({1, 6, 7});
  try {
    ex.run();
    FAIL() << "ran a 1x6x7 input";
  } catch (const QdmError& e) {
    EXPECT_TRUE(contains(e.what(), "input 'pixels' is 1x6x7")) << e.what();
    EXPECT_TRUE(contains(e.what(), "the model takes f32 1x6x6")) << e.what();
  }
}

TEST(Graph, EveryTruncationAndEveryCorruptByteIsAClearError) {
  const std::vector<uint8_t> bytes = serialize_graph(to_graph(every_op_model()));
  for (size_t n = 0; n < bytes.size(); ++n) {
    const std::vector<uint8_t> cut(bytes.begin(), bytes.begin() + static_cast<long>(n));
    EXPECT_NE(error_of(cut), "") << "a file cut to " << n << " bytes parsed";
  }
  // A flipped payload byte fails the CRC; header bytes fail their own checks.
  for (size_t i = 0; i < bytes.size(); ++i) {
    std::vector<uint8_t> b = bytes;
    b[i] ^= 0x5a;
    const std::string e = error_of(b);
    EXPECT_NE(e, "") << "byte " << i << " flipped parsed";
  }
  // Corrupt content with a recomputed CRC: validation (or the reader's bounds) catches it.
  std::mt19937 gen(3);
  int errors = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    std::vector<uint8_t> b = bytes;
    const size_t i = 40 + gen() % (b.size() - 40);
    b[i] = static_cast<uint8_t>(gen());
    const uint32_t crc = crc32(b.data() + 40, b.size() - 40);
    for (int k = 0; k < 4; ++k) b[32 + k] = static_cast<uint8_t>(crc >> (8 * k));
    const std::string e = error_of(b);
    if (e.empty()) {
      // Accepted: it must then be a valid model that runs and re-serializes to these bytes.
      const Graph g = parse_graph(b.data(), b.size());
      EXPECT_EQ(serialize_graph(g), b);
      Executor ex(g);
      ex.input(0).resize(g.values[static_cast<size_t>(g.inputs[0])].shape);
      ex.run();
    } else {
      ++errors;
    }
  }
  EXPECT_GT(errors, 500);
}

}  // namespace
}  // namespace qd::rt
