// The ONNX writer: the graph's structure and initializers, ONNX's checker (run by the writer),
// the fp32 variant, clear errors, and ONNX Runtime running the int8 file against the integer
// interpreter on the same inputs.
#include "export/onnx_writer.h"

#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/fixed_point.h"
#include "runtime/interpreter.h"
#include "runtime/model.h"
#include "tests/export/ort_util.h"
#include "tests/test_util.h"

namespace qd {
namespace {

using rt::Layer;
using rt::Model;
using rt::OpKind;
using rt::quantize_multiplier;
using rt::TensorInfo;

TensorInfo tensor(int32_t c, int32_t h, int32_t w, float scale, int32_t zero_point) {
  TensorInfo t;
  t.c = c, t.h = h, t.w = w, t.scale = scale, t.zero_point = zero_point;
  return t;
}

// Random symmetric int8 weights [out_c][per_out] on the portable grid [-64, 64] (what
// qat.target: portable trains; exact in ONNX Runtime on every CPU) with per-channel scales around
// `w_range` / 64 (so the float weights span about +-w_range), a bias of about +-b_range in units of
// in_scale * weight_scale[o], and the float weights the fp32 model is built from.
void fill_weights(Layer& l, int64_t per_out, float in_scale, float w_range, float b_range, std::mt19937& rng) {
  std::uniform_int_distribution<int> w(-64, 64);
  std::uniform_real_distribution<float> u(0.8f, 1.2f), b(-b_range, b_range);
  l.weight.resize(static_cast<size_t>(l.out_c * per_out));
  for (int8_t& x : l.weight) x = static_cast<int8_t>(w(rng));
  for (int32_t o = 0; o < l.out_c; ++o) {
    const float ws = w_range / 64.0f * u(rng);
    l.weight_scale.push_back(ws);
    l.bias.push_back(static_cast<int32_t>(std::lround(b(rng) / (in_scale * ws))));
    l.float_bias.push_back(static_cast<float>(l.bias.back()) * in_scale * ws);
    for (int64_t k = 0; k < per_out; ++k) l.float_weight.push_back(l.weight[o * per_out + k] * ws);
  }
}

Layer conv(const Model& m, const std::string& name, int32_t input, int32_t out_c, int32_t kernel, int32_t pad,
           bool relu, float w_range, std::mt19937& rng) {
  const TensorInfo& in = m.tensors[static_cast<size_t>(input)];
  const TensorInfo& out = m.tensors[m.layers.size() + 1];
  Layer l;
  l.kind = OpKind::kConv2d, l.name = name, l.input = input;
  l.kernel = kernel, l.stride = 1, l.pad = pad, l.in_c = in.c, l.out_c = out_c;
  fill_weights(l, int64_t{in.c} * kernel * kernel, in.scale, w_range, 0.2f, rng);
  for (float ws : l.weight_scale) l.multiplier.push_back(quantize_multiplier(double{in.scale} * ws / out.scale));
  l.act_min = relu ? out.zero_point : -128;
  return l;
}

// 1x8x8 input; conv 3x3 pad 1 -> 4 (ReLU); maxpool 2; conv 1x1 4 -> 4; add(tensor 2, tensor 3)
// (ReLU); global average pool; linear 4 -> 10. The scales fit the value ranges of uniform random
// pixels (checked by Interpreter.UsesTheRange below), so the comparison sees real rounding, not
// saturation.
Model make_model(uint32_t seed = 1) {
  std::mt19937 rng(seed);
  Model m;
  m.mean = {0.2860f};
  m.inv_std = {1.0f / 0.3530f};
  m.tensors = {
      tensor(1, 8, 8, 0.01111f, -55),   // normalized pixels, [-0.81, 2.02]
      tensor(4, 8, 8, 0.0070f, -128),   // conv0 + ReLU, [0, 1.8]
      tensor(4, 4, 4, 0.0070f, -128),   // maxpool (same params as its input)
      tensor(4, 4, 4, 0.0105f, 3),      // conv1, [-1.38, 1.30]
      tensor(4, 4, 4, 0.0128f, -100),   // add + ReLU: the ReLU clamps to zero point -100, not -128
      tensor(4, 1, 1, 0.0035f, -128),   // global average pool, [0, 0.89]
      tensor(10, 1, 1, 1.0f, 0),        // logits
  };
  m.layers.push_back(conv(m, "conv0", 0, 4, 3, 1, true, 0.3f, rng));

  Layer pool;
  pool.kind = OpKind::kMaxPool2d, pool.name = "pool0", pool.input = 1, pool.kernel = 2, pool.stride = 2;
  m.layers.push_back(pool);

  m.layers.push_back(conv(m, "conv1", 2, 4, 1, 0, false, 0.5f, rng));

  // TFLite's addition parameters: both operands rescaled to twice the larger scale, 2^20 finer.
  Layer add;
  add.kind = OpKind::kAdd, add.name = "add0", add.input = 2, add.input2 = 3;
  const double sa = m.tensors[2].scale, sb = m.tensors[3].scale, so = m.tensors[4].scale;
  const double twice_max = 2.0 * std::max(sa, sb);
  add.left_shift = 20;
  add.input_multiplier = quantize_multiplier(sa / twice_max);
  add.input2_multiplier = quantize_multiplier(sb / twice_max);
  add.output_multiplier = quantize_multiplier(twice_max / ((1 << add.left_shift) * so));
  add.act_min = m.tensors[4].zero_point;
  m.layers.push_back(add);

  Layer gap;
  gap.kind = OpKind::kGlobalAvgPool, gap.name = "gap", gap.input = 4;
  gap.multiplier = {quantize_multiplier(double{m.tensors[4].scale} / (double{m.tensors[5].scale} * 4 * 4))};
  m.layers.push_back(gap);

  Layer fc;
  fc.kind = OpKind::kLinear, fc.name = "classifier", fc.input = 5, fc.in_c = 4, fc.out_c = 10;
  fill_weights(fc, 4, m.tensors[5].scale, 3.0f, 0.1f, rng);
  for (float ws : fc.weight_scale) fc.output_scale.push_back(m.tensors[5].scale * ws);
  m.layers.push_back(fc);
  return m;
}

onnx::ModelProto parse(const std::string& bytes) {
  onnx::ModelProto p;
  if (!p.ParseFromString(bytes)) throw std::runtime_error("the ONNX bytes do not parse as a ModelProto");
  return p;
}

std::map<std::string, int> op_counts(const onnx::ModelProto& p) {
  std::map<std::string, int> n;
  for (const onnx::NodeProto& node : p.graph().node()) ++n[node.op_type()];
  return n;
}

const onnx::TensorProto* find_init(const onnx::ModelProto& p, const std::string& name) {
  for (const onnx::TensorProto& t : p.graph().initializer())
    if (t.name() == name) return &t;
  return nullptr;
}

const onnx::NodeProto* find_node(const onnx::ModelProto& p, const std::string& name) {
  for (const onnx::NodeProto& n : p.graph().node())
    if (n.name() == name) return &n;
  return nullptr;
}

template <typename T>
std::vector<T> values(const onnx::TensorProto& t) {
  const std::string& raw = t.raw_data();
  std::vector<T> v(raw.size() / sizeof(T));
  std::copy(raw.begin(), raw.begin() + static_cast<std::ptrdiff_t>(v.size() * sizeof(T)),
            reinterpret_cast<char*>(v.data()));
  return v;
}

std::vector<int64_t> dims(const onnx::TensorProto& t) { return {t.dims().begin(), t.dims().end()}; }

std::string metadata(const onnx::ModelProto& p, const std::string& key) {
  for (const auto& e : p.metadata_props())
    if (e.key() == key) return e.value();
  return "<missing>";
}

// The value's shape with the symbolic dims as their names.
std::vector<std::string> shape_of(const onnx::ValueInfoProto& v) {
  std::vector<std::string> s;
  for (const auto& d : v.type().tensor_type().shape().dim())
    s.push_back(d.has_dim_param() ? d.dim_param() : std::to_string(d.dim_value()));
  return s;
}

// Every node input is a graph input, an initializer or an earlier node's output (topological
// order), and every value is produced once.
void expect_topological(const onnx::ModelProto& p) {
  std::set<std::string> known{""};  // "" = an omitted optional input
  for (const auto& i : p.graph().input()) known.insert(i.name());
  for (const auto& t : p.graph().initializer()) EXPECT_TRUE(known.insert(t.name()).second) << t.name();
  for (const onnx::NodeProto& n : p.graph().node()) {
    for (const std::string& in : n.input()) EXPECT_TRUE(known.count(in)) << n.name() << " reads " << in << " too early";
    for (const std::string& out : n.output()) EXPECT_TRUE(known.insert(out).second) << out << " produced twice";
  }
}

void expect_common_io(const onnx::ModelProto& p) {
  EXPECT_EQ(p.ir_version(), 7);
  EXPECT_EQ(p.producer_name(), "qdistill");
  ASSERT_EQ(p.opset_import_size(), 1);
  EXPECT_EQ(p.opset_import(0).domain(), "");
  EXPECT_EQ(p.opset_import(0).version(), 13);
  ASSERT_EQ(p.graph().input_size(), 1);
  ASSERT_EQ(p.graph().output_size(), 1);
  const onnx::ValueInfoProto& in = p.graph().input(0);
  const onnx::ValueInfoProto& out = p.graph().output(0);
  EXPECT_EQ(in.name(), "input");
  EXPECT_EQ(out.name(), "logits");
  EXPECT_EQ(in.type().tensor_type().elem_type(), onnx::TensorProto_DataType_FLOAT);
  EXPECT_EQ(out.type().tensor_type().elem_type(), onnx::TensorProto_DataType_FLOAT);
  EXPECT_EQ(shape_of(in), (std::vector<std::string>{"N", "1", "8", "8"}));
  EXPECT_EQ(shape_of(out), (std::vector<std::string>{"N", "10"}));
  expect_topological(p);
}

TEST(OnnxWriter, Int8GraphIsTheQdqFormOfTheModel) {
  const Model m = make_model();
  const onnx::ModelProto p = parse(onnx_model_bytes(m, OnnxPrecision::kInt8Qdq));  // passed the full check
  expect_common_io(p);
  EXPECT_EQ(metadata(p, "qdistill.format"), "qdq-int8");
  EXPECT_EQ(metadata(p, "qdistill.num_classes"), "10");

  // Q/DQ: one pair per reader of an int8 tensor (input, conv0, pool0 twice: conv1 and add0, conv1,
  // add0, gap), one for the flattened classifier input; one DQ per weight and per bias of conv0,
  // conv1, classifier.
  const std::map<std::string, int> want{{"Sub", 1},   {"Mul", 1},  {"QuantizeLinear", 8}, {"DequantizeLinear", 14},
                                        {"Conv", 2},  {"Relu", 2}, {"MaxPool", 1},        {"Add", 1},
                                        {"GlobalAveragePool", 1},  {"Flatten", 1},        {"Gemm", 1}};
  EXPECT_EQ(op_counts(p), want);

  // The int8 weights and int32 biases are the model's, symmetric per channel (zero point 0).
  for (size_t li : {size_t{0}, size_t{2}, size_t{5}}) {
    const Layer& l = m.layers[li];
    SCOPED_TRACE(l.name);
    const onnx::TensorProto* w = find_init(p, l.name + ".weight_q");
    const onnx::TensorProto* wz = find_init(p, l.name + ".weight_zero_point");
    const onnx::TensorProto* ws = find_init(p, l.name + ".weight_scale");
    const onnx::TensorProto* b = find_init(p, l.name + ".bias_q");
    const onnx::TensorProto* bs = find_init(p, l.name + ".bias_scale");
    ASSERT_TRUE(w && wz && ws && b && bs);
    EXPECT_EQ(w->data_type(), onnx::TensorProto_DataType_INT8);
    EXPECT_EQ(values<int8_t>(*w), l.weight);
    const std::vector<int64_t> wd = l.kind == OpKind::kLinear
                                        ? std::vector<int64_t>{l.out_c, l.in_c}
                                        : std::vector<int64_t>{l.out_c, l.in_c, l.kernel, l.kernel};
    EXPECT_EQ(dims(*w), wd);
    EXPECT_EQ(wz->data_type(), onnx::TensorProto_DataType_INT8);
    EXPECT_EQ(values<int8_t>(*wz), std::vector<int8_t>(l.out_c, 0));
    EXPECT_EQ(values<float>(*ws), l.weight_scale);
    EXPECT_EQ(b->data_type(), onnx::TensorProto_DataType_INT32);
    EXPECT_EQ(values<int32_t>(*b), l.bias);
    // Bias scale: in_scale * weight_scale[o] (= output_scale for the classifier).
    const float in_scale = m.tensors[static_cast<size_t>(l.input)].scale;
    const std::vector<float> got = values<float>(*bs);
    ASSERT_EQ(got.size(), static_cast<size_t>(l.out_c));
    for (int32_t o = 0; o < l.out_c; ++o) EXPECT_FLOAT_EQ(got[o], in_scale * l.weight_scale[o]) << o;
    // Per output channel: axis 0.
    const onnx::NodeProto* dq = find_node(p, l.name + ".weight_dq");
    ASSERT_TRUE(dq);
    ASSERT_EQ(dq->attribute_size(), 1);
    EXPECT_EQ(dq->attribute(0).name(), "axis");
    EXPECT_EQ(dq->attribute(0).i(), 0);
  }

  // Activation Q/DQ: each tensor's own scale and zero point.
  const char* prefixes[] = {"input", "conv0", "pool0", "conv1", "add0", "gap"};
  for (size_t t = 0; t < 6; ++t) {
    SCOPED_TRACE(prefixes[t]);
    const onnx::TensorProto* s = find_init(p, std::string(prefixes[t]) + ".scale");
    const onnx::TensorProto* z = find_init(p, std::string(prefixes[t]) + ".zero_point");
    ASSERT_TRUE(s && z);
    EXPECT_TRUE(dims(*s).empty() && dims(*z).empty()) << "per-tensor params are scalars";
    EXPECT_EQ(values<float>(*s), std::vector<float>{m.tensors[t].scale});
    EXPECT_EQ(values<int8_t>(*z), std::vector<int8_t>{static_cast<int8_t>(m.tensors[t].zero_point)});
  }

  // Conv attributes, and the graph's order: conv0 -> relu -> Q -> DQ -> pool0.
  const onnx::NodeProto* c0 = find_node(p, "conv0.conv");
  ASSERT_TRUE(c0);
  std::map<std::string, std::vector<int64_t>> attrs;
  for (const auto& a : c0->attribute()) attrs[a.name()] = {a.ints().begin(), a.ints().end()};
  EXPECT_EQ(attrs["kernel_shape"], (std::vector<int64_t>{3, 3}));
  EXPECT_EQ(attrs["pads"], (std::vector<int64_t>{1, 1, 1, 1}));
  EXPECT_EQ(attrs["strides"], (std::vector<int64_t>{1, 1}));
  EXPECT_EQ(c0->input(0), "input.dq");
  const onnx::NodeProto* mp = find_node(p, "pool0.maxpool");
  ASSERT_TRUE(mp);
  EXPECT_EQ(mp->input(0), "conv0.out");
  const onnx::NodeProto* relu = find_node(p, "add0.relu");
  ASSERT_TRUE(relu);
  EXPECT_EQ(relu->input(0), "add0.add_out");
  const onnx::NodeProto* gemm = find_node(p, "classifier.gemm");
  ASSERT_TRUE(gemm);
  EXPECT_EQ(gemm->output(0), "logits");
  EXPECT_EQ(gemm->input(0), "classifier.flat_dq");

  // pool0 is read twice: each reader has its own pair of pool0's float value, the second one's
  // QuantizeLinear with a (per-tensor: ignored) axis that keeps the two pairs distinct.
  EXPECT_EQ(find_node(p, "conv1.conv")->input(0), "pool0.out");
  EXPECT_EQ(find_node(p, "add0.add")->input(0), "pool0.out_1");
  EXPECT_EQ(find_node(p, "add0.add")->input(1), "conv1.out");
  const onnx::NodeProto* q0 = find_node(p, "pool0.quant");
  const onnx::NodeProto* q1 = find_node(p, "pool0.quant_1");
  ASSERT_TRUE(q0 && q1);
  EXPECT_EQ(q0->input(0), "pool0.maxpool_out");
  EXPECT_EQ(q1->input(0), "pool0.maxpool_out");
  EXPECT_EQ(q1->input(1), q0->input(1));
  EXPECT_EQ(q0->attribute_size(), 0);
  ASSERT_EQ(q1->attribute_size(), 1);
  EXPECT_EQ(q1->attribute(0).name(), "axis");
  EXPECT_NE(q1->attribute(0).i(), 1);
}

TEST(OnnxWriter, Fp32GraphHasNoQuantization) {
  const Model m = make_model();
  const onnx::ModelProto p = parse(onnx_model_bytes(m, OnnxPrecision::kFloat32));
  expect_common_io(p);
  EXPECT_EQ(metadata(p, "qdistill.format"), "fp32");
  const std::map<std::string, int> want{{"Sub", 1},  {"Mul", 1},     {"Conv", 2},
                                        {"Relu", 2}, {"MaxPool", 1}, {"Add", 1},
                                        {"GlobalAveragePool", 1},    {"Flatten", 1}, {"Gemm", 1}};
  EXPECT_EQ(op_counts(p), want);
  for (const onnx::TensorProto& t : p.graph().initializer())
    EXPECT_EQ(t.data_type(), onnx::TensorProto_DataType_FLOAT) << t.name();
  for (size_t li : {size_t{0}, size_t{2}, size_t{5}}) {
    const Layer& l = m.layers[li];
    const onnx::TensorProto* w = find_init(p, l.name + ".weight");
    const onnx::TensorProto* b = find_init(p, l.name + ".bias");
    ASSERT_TRUE(w && b) << l.name;
    EXPECT_EQ(values<float>(*w), l.float_weight) << l.name;
    EXPECT_EQ(values<float>(*b), l.float_bias) << l.name;
  }
  // The layer's activations keep their names without Q/DQ.
  const onnx::NodeProto* mp = find_node(p, "pool0.maxpool");
  ASSERT_TRUE(mp);
  EXPECT_EQ(mp->input(0), "conv0.out");
  EXPECT_EQ(find_node(p, "conv0.conv")->input(0), "input.normalized");
}

TEST(OnnxWriter, WriteOnnxWritesTheCheckedBytesAtomically) {
  const Model m = make_model();
  test::TempDir dir;
  for (OnnxPrecision prec : {OnnxPrecision::kInt8Qdq, OnnxPrecision::kFloat32}) {
    const std::string path = dir.file(prec == OnnxPrecision::kInt8Qdq ? "int8.onnx" : "fp32.onnx");
    write_onnx(m, prec, path);
    std::ifstream f(path, std::ios::binary);
    const std::string bytes{std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
    EXPECT_EQ(bytes, onnx_model_bytes(m, prec));
    EXPECT_NO_THROW(parse(bytes));
  }
  // Overwrites, leaves no temporary behind.
  write_onnx(m, OnnxPrecision::kInt8Qdq, dir.file("int8.onnx"));
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"fp32.onnx", "int8.onnx"}));

  const std::string bad = dir.file("no_such_dir/model.onnx");
  try {
    write_onnx(m, OnnxPrecision::kInt8Qdq, bad);
    FAIL() << "writing into a missing directory must throw";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
  }
}

// The message of the error `f` throws ("" if none).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

TEST(OnnxWriter, Fp32WithoutFloatWeightsIsAClearError) {
  Model m = make_model();
  m.layers[2].float_weight.clear();  // as in a model loaded from a .qdm file
  const std::string err = error_of([&] { onnx_model_bytes(m, OnnxPrecision::kFloat32); });
  EXPECT_NE(err.find("conv1"), std::string::npos) << err;
  EXPECT_NE(err.find("float_weight"), std::string::npos) << err;
  // The int8 model does not need them.
  EXPECT_NO_THROW(onnx_model_bytes(m, OnnxPrecision::kInt8Qdq));

  Model m2 = make_model();
  m2.layers[5].float_bias.resize(3);
  EXPECT_NE(error_of([&] { onnx_model_bytes(m2, OnnxPrecision::kFloat32); }).find("classifier"), std::string::npos);
}

TEST(OnnxWriter, InconsistentModelsAreClearErrors) {
  struct Case {
    const char* what;
    void (*edit)(Model&);
    const char* expect;
  };
  const Case cases[] = {
      {"weight size", [](Model& m) { m.layers[0].weight.pop_back(); }, "conv0"},
      {"weight -128", [](Model& m) { m.layers[2].weight[1] = -128; }, "-128"},
      {"bad zero point", [](Model& m) { m.tensors[3].zero_point = 200; }, "tensor 3"},
      {"linear not last", [](Model& m) { m.layers.back().kind = OpKind::kConv2d; }, "last layer"},
      {"input after output", [](Model& m) { m.layers[3].input2 = 5; }, "input2"},
      {"channels", [](Model& m) { m.layers[5].in_c = 5; }, "classifier"},
      {"no mean", [](Model& m) { m.mean.clear(); }, "mean"},
  };
  for (const Case& c : cases) {
    Model m = make_model();
    c.edit(m);
    const std::string err = error_of([&] { onnx_model_bytes(m, OnnxPrecision::kInt8Qdq); });
    EXPECT_NE(err.find(c.expect), std::string::npos) << c.what << ": got \"" << err << "\"";
  }
}

TEST(OnnxWriter, ClampsAndPaddingOtherThanTheCommonCase) {
  Model m = make_model();
  m.layers[3].act_max = 100;      // a clamp that is not a plain ReLU: Clip with the real bounds
  m.layers[1].kernel = 3;         // max pool 3x3 stride 2 pad 1: still 8x8 -> 4x4
  m.layers[1].pad = 1;
  m.layers[0].name = "input";     // a layer name that would clash with the input's nodes
  const onnx::ModelProto p = parse(onnx_model_bytes(m, OnnxPrecision::kInt8Qdq));
  std::map<std::string, int> n = op_counts(p);
  EXPECT_EQ(n["Relu"], 1);
  EXPECT_EQ(n["Clip"], 1);
  const onnx::NodeProto* clip = find_node(p, "add0.clip");
  ASSERT_TRUE(clip);
  ASSERT_EQ(clip->input_size(), 3);
  const onnx::TensorProto* lo = find_init(p, clip->input(1));
  const onnx::TensorProto* hi = find_init(p, clip->input(2));
  ASSERT_TRUE(lo && hi);
  const TensorInfo& t = m.tensors[4];
  EXPECT_FLOAT_EQ(values<float>(*lo).at(0), 0.0f);
  EXPECT_FLOAT_EQ(values<float>(*hi).at(0), t.scale * (100 - t.zero_point));
  const onnx::NodeProto* mp = find_node(p, "pool0.maxpool");
  ASSERT_TRUE(mp);
  std::map<std::string, std::vector<int64_t>> attrs;
  for (const auto& a : mp->attribute()) attrs[a.name()] = {a.ints().begin(), a.ints().end()};
  EXPECT_EQ(attrs["pads"], (std::vector<int64_t>{1, 1, 1, 1}));
  EXPECT_EQ(attrs["kernel_shape"], (std::vector<int64_t>{3, 3}));
  EXPECT_TRUE(find_node(p, "input_0.conv")) << "the clashing layer name gets its index";
  expect_topological(p);
}

// ---- ONNX Runtime vs the integer interpreter ----------------------------------------------------

// `n` random 1x8x8 images in [0, 1]: a brightness, a contrast along a random direction and noise
// per image. Independent noise alone would average out in the global pool and give every image
// nearly the same logits (and the same class).
std::vector<float> random_images(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<float> px;
  for (int i = 0; i < n; ++i) {
    const float level = 0.1f + 0.8f * u(rng), contrast = 0.6f * u(rng), angle = 6.2831853f * u(rng);
    const float gx = std::cos(angle), gy = std::sin(angle);
    for (int y = 0; y < 8; ++y)
      for (int x = 0; x < 8; ++x) {
        const float v = level + contrast * (gx * (x - 3.5f) + gy * (y - 3.5f)) / 3.5f + 0.3f * (u(rng) - 0.5f);
        px.push_back(std::clamp(v, 0.0f, 1.0f));
      }
  }
  return px;
}

TEST(OnnxWriter, SyntheticModelUsesItsInt8Range) {
  // The comparison below means something only if the scales fit the values: few saturated int8
  // values, and logits that pick several classes.
  rt::Interpreter interp(make_model());
  constexpr int kN = 256;
  const std::vector<float> px = random_images(kN, 7);
  std::vector<int> saturated(6, 0), total(6, 0);
  std::set<int> classes;
  for (int img = 0; img < kN; ++img) {
    float logits[10];
    interp.run(&px[img * 64], logits);
    classes.insert(test::argmax(logits, 10));
    for (int t = 0; t < 6; ++t)
      for (int8_t q : interp.tensor(t)) {
        saturated[t] += q == 127;
        ++total[t];
      }
  }
  // Tensor 0 excluded: pixels of 1.0 are the top of the input's range, 127 by construction.
  for (int t = 1; t < 6; ++t) EXPECT_LT(saturated[t], total[t] / 50) << "tensor " << t << " saturates too often";
  EXPECT_GE(classes.size(), 3u);
}

// ONNX Runtime (on `cpu`: this one, or an emulated one) runs the int8 file with the
// interpreter's answers. Both compute the same integers except near a half: ORT requantizes in
// float (x * scale, round half to even), the interpreter with a fixed-point multiplier (round half
// up), so a value can be 1 LSB off where the two roundings differ: ~0.2% of the conv outputs and a
// few percent of the pooled values here. An int8 flip upstream of the pool moves its input by one
// of 16 values (0.0128 / (16 * 0.0035) = 0.23 LSB of the pooled value), so each pooled value is at
// most 1 LSB away, and each logit within test::one_lsb_tolerance (about 0.02 here, against logits
// spread over about +-3). A real graph error (a wrong scale, a missing ReLU, transposed weights), or
// int16 saturation (the weights' grid is the portable one so that none can happen), moves logits by
// far more.
void expect_ort_agrees_with_the_interpreter(const std::string& cpu) {
  const test::OrtPython py = test::ort_python(QD_SOURCE_DIR, cpu);
  QD_REQUIRE_ORT(py);
  const Model m = make_model();
  constexpr int kN = 64, kClasses = 10;
  const std::vector<float> pixels = random_images(kN, 2024);
  const std::vector<float> ort = test::ort_logits(py, m, pixels, kN);
  rt::Interpreter interp(m);
  std::vector<float> ref(kN * kClasses);
  interp.run_batch(pixels.data(), kN, ref.data());
  const test::LogitAgreement a = test::compare_logits(ort, ref, kClasses, test::one_lsb_tolerance(m));
  std::printf("ORT (%s) vs interpreter: %s\n", cpu.c_str(), test::describe(a).c_str());
  EXPECT_EQ(a.within_tolerance, kN);
  EXPECT_GE(a.argmax_equal, 62);
}

TEST(OnnxWriter, OnnxRuntimeAgreesWithTheInterpreter) { expect_ort_agrees_with_the_interpreter("native"); }

// The same file on an x86-64 with AVX2 but no VNNI, where ONNX Runtime multiplies with vpmaddubsw.
TEST(OnnxWriter, OnnxRuntimeOnAnAvx2CpuAgreesWithTheInterpreter) {
  expect_ort_agrees_with_the_interpreter("x86_avx2");
}

}  // namespace
}  // namespace qd
