// Hand-built integer models for the runtime's tests and the fuzzer's seed corpus: one place for
// the layer builders (weights from a fixed LCG, so models are the same on every run) and the
// format's CRC-32, written independently of runtime/qdm.cpp. Header-only, no LibTorch.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "runtime/graph.h"
#include "runtime/model.h"

namespace qd::rt::test_models {

// The standard CRC-32 (zlib, PNG), as docs/qdm.md specifies it.
inline uint32_t crc32(const uint8_t* p, size_t n) {
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) {
    c ^= p[i];
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
  }
  return ~c;
}

inline TensorInfo tensor(int32_t c, int32_t h, int32_t w, float scale, int32_t zero_point) {
  TensorInfo t;
  t.c = c, t.h = h, t.w = w, t.scale = scale, t.zero_point = zero_point;
  return t;
}

inline uint32_t& seed_state() {
  static uint32_t state = 1;
  return state;
}
inline int32_t next_int(int32_t lo, int32_t hi) {  // a fixed LCG: the seeds are the same on every run
  uint32_t& s = seed_state();
  s = s * 1664525u + 1013904223u;
  return lo + static_cast<int32_t>((s >> 8) % static_cast<uint32_t>(hi - lo + 1));
}

inline Layer conv(const std::string& name, const Model& m, int32_t input, int32_t out_c, int32_t kernel, int32_t stride,
           int32_t pad, float out_scale) {
  const TensorInfo& in = m.tensors[static_cast<size_t>(input)];
  Layer l;
  l.kind = OpKind::kConv2d;
  l.name = name;
  l.input = input;
  l.kernel = kernel, l.stride = stride, l.pad = pad;
  l.in_c = in.c, l.out_c = out_c;
  l.weight.resize(static_cast<size_t>(out_c * in.c * kernel * kernel));
  for (auto& w : l.weight) w = static_cast<int8_t>(next_int(-127, 127));
  for (int32_t o = 0; o < out_c; ++o) {
    l.bias.push_back(next_int(-2000, 2000));
    l.weight_scale.push_back(0.002f * static_cast<float>(o + 1));
    l.multiplier.push_back(quantize_multiplier(double{in.scale} * l.weight_scale.back() / out_scale));
  }
  return l;
}

inline Layer linear(const Model& m, int32_t input, int32_t classes) {
  const TensorInfo& in = m.tensors[static_cast<size_t>(input)];
  Layer l;
  l.kind = OpKind::kLinear;
  l.name = "classifier";
  l.input = input;
  l.in_c = static_cast<int32_t>(in.numel()), l.out_c = classes;
  l.weight.resize(static_cast<size_t>(l.in_c * classes));
  for (auto& w : l.weight) w = static_cast<int8_t>(next_int(-127, 127));
  for (int32_t o = 0; o < classes; ++o) {
    l.bias.push_back(next_int(-500, 500));
    l.weight_scale.push_back(0.01f);
    l.output_scale.push_back(in.scale * 0.01f);
  }
  return l;
}

inline Layer pool(const std::string& name, int32_t input, int32_t kernel, int32_t stride, int32_t pad) {
  Layer l;
  l.kind = OpKind::kMaxPool2d;
  l.name = name;
  l.input = input;
  l.kernel = kernel, l.stride = stride, l.pad = pad;
  return l;
}

inline Layer gap(const Model& m, int32_t input, float out_scale) {
  const TensorInfo& in = m.tensors[static_cast<size_t>(input)];
  Layer l;
  l.kind = OpKind::kGlobalAvgPool;
  l.name = "gap";
  l.input = input;
  l.multiplier = {quantize_multiplier(double{in.scale} / (double{out_scale} * in.h * in.w))};
  return l;
}

inline Layer add(const Model& m, int32_t a, int32_t b, float out_scale) {
  const float sa = m.tensors[static_cast<size_t>(a)].scale, sb = m.tensors[static_cast<size_t>(b)].scale;
  const double twice_max = 2.0 * std::max(sa, sb);
  Layer l;
  l.kind = OpKind::kAdd;
  l.name = "residual";
  l.input = a, l.input2 = b;
  l.left_shift = 20;
  l.input_multiplier = quantize_multiplier(sa / twice_max);
  l.input2_multiplier = quantize_multiplier(sb / twice_max);
  l.output_multiplier = quantize_multiplier(twice_max / (double{1 << 20} * out_scale));
  l.act_min = -128;
  return l;
}

// input 1x6x6 -> A: conv 3x3 s1 p1 (4x6x6, ReLU) -> B: conv 1x1 (4x6x6, clamp [-90, 100])
// -> add(A, B) (ReLU) -> maxpool 3 s2 p1 (4x3x3) -> gap (4x1x1) -> linear (5)
inline Model every_op_model() {
  Model m;
  m.mean = {0.3f};
  m.inv_std = {1.0f / 0.35f};
  m.tensors = {tensor(1, 6, 6, 0.0213f, -10), tensor(4, 6, 6, 0.031f, -128), tensor(4, 6, 6, 0.027f, 5),
               tensor(4, 6, 6, 0.045f, -128), tensor(4, 3, 3, 0.045f, -128), tensor(4, 1, 1, 0.02f, -120),
               tensor(5, 1, 1, 1.0f, 0)};
  m.layers.push_back(conv("A", m, 0, 4, 3, 1, 1, 0.031f));  // act_min -128 = the zero point: ReLU
  m.layers.push_back(conv("B", m, 1, 4, 1, 1, 0, 0.027f));
  m.layers.back().act_min = -90, m.layers.back().act_max = 100;
  m.layers.push_back(add(m, 1, 2, 0.045f));
  m.layers.push_back(pool("pool", 3, 3, 2, 1));
  m.layers.push_back(gap(m, 4, 0.02f));
  m.layers.push_back(linear(m, 5, 5));
  return m;
}


// A small text graph with every transformer op (weights from the same LCG): ids -> embedding
// (int8 rows) -> add_positions -> rms_norm -> q, k, v (Q8_0 inputs, groups of 32) -> rotary causal attention with a
// KV cache -> add -> layer_norm -> linear (per-token int8) -> gelu, and silu_mul -> add ->
// mean_pool -> linear on the pooled vector -> l2_normalize. For the fuzzer's seed corpus: not a model anyone trains.
inline Graph every_text_op_graph() {
  const int64_t vocab = 40, d = 64, heads = 2, kv = 1, hd = 32;
  Graph g;
  g.metadata["task"] = "sentence_embedding";
  const int32_t ids = g.add_value({"ids", DType::kI32, {-1}});
  auto rows = [&](const std::string& name, int64_t w) { return g.add_value({name, DType::kF32, {-1, w}}); };
  auto i8 = [&](int64_t n) {
    std::vector<int8_t> v(static_cast<size_t>(n));
    for (int8_t& x : v) x = static_cast<int8_t>(next_int(-127, 127));
    return v;
  };
  auto f32 = [&](int64_t n, float lo, float hi) {
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = lo + (hi - lo) * static_cast<float>(next_int(0, 1000)) / 1000.0f;
    return v;
  };
  auto weight = [&](Node& n, int64_t out, int64_t in, int64_t groups) {
    n.attrs["weight"] = Attr::of_tensor(DType::kI8, {out, in}, i8(out * in));
    n.attrs["weight_scale"] = Attr::of_tensor(DType::kF32, {out, groups}, f32(out * groups, 0.001f, 0.01f));
  };
  const int32_t e0 = rows("word", d), e = rows("embed", d), n1 = rows("norm1", d), q = rows("q", heads * hd), k = rows("k", kv * hd),
                v = rows("v", kv * hd), a = rows("attn", d), r1 = rows("res1", d), n2 = rows("norm2", d), f1 = rows("ffn_in", d),
                f2 = rows("act", d), f3 = rows("gated", d), r2 = rows("res2", d), last = g.add_value({"last", DType::kF32, {1, d}});
  const int32_t pooled = g.add_value({"pooled", DType::kF32, {d}}), dense = g.add_value({"dense", DType::kF32, {d}}),
                out = g.add_value({"embedding", DType::kF32, {d}});
  g.inputs = {ids};
  g.outputs = {out};
  weight(g.add_node("embedding", "word", {ids}, {e0}), vocab, d, 1);
  Node& pos = g.add_node("add_positions", "position", {e0}, {e});
  weight(pos, 64, d, d / 32);
  pos.attrs["bias"] = Attr::of_tensor(DType::kF32, {d}, f32(d, -0.1f, 0.1f));
  Node& rn = g.add_node("rms_norm", "norm1", {e}, {n1});
  rn.attrs["weight"] = Attr::of_tensor(DType::kF32, {d}, f32(d, 0.5f, 1.5f));
  rn.attrs["eps"] = Attr::of_float(1e-5f);
  for (auto [id, w, name] : {std::tuple{q, heads * hd, "q"}, std::tuple{k, kv * hd, "k"}, std::tuple{v, kv * hd, "v"}}) {
    Node& l = g.add_node("linear", name, {n1}, {id});
    weight(l, w, d, d / 32);
    l.attrs["input_quant"] = Attr::of_string("q8_0");
  }
  Node& at = g.add_node("attention", "attn", {q, k, v}, {a});
  at.attrs["heads"] = Attr::of_int(heads), at.attrs["kv_heads"] = Attr::of_int(kv), at.attrs["head_dim"] = Attr::of_int(hd);
  at.attrs["causal"] = Attr::of_int(1), at.attrs["max_positions"] = Attr::of_int(64), at.attrs["kv_cache"] = Attr::of_int(1);
  at.attrs["rope_theta"] = Attr::of_float(10000.0f);
  at.attrs["kv_store"] = Attr::of_string("q8_0");
  g.add_node("add", "res1", {e, a}, {r1});
  Node& ln = g.add_node("layer_norm", "norm2", {r1}, {n2});
  ln.attrs["weight"] = Attr::of_tensor(DType::kF32, {d}, f32(d, 0.5f, 1.5f));
  ln.attrs["bias"] = Attr::of_tensor(DType::kF32, {d}, f32(d, -0.1f, 0.1f));
  ln.attrs["eps"] = Attr::of_float(1e-12f);
  Node& l1 = g.add_node("linear", "ffn_in", {n2}, {f1});
  weight(l1, d, d, 1);
  l1.attrs["bias"] = Attr::of_tensor(DType::kF32, {d}, f32(d, -0.1f, 0.1f));
  l1.attrs["input_quant"] = Attr::of_string("per_token");
  g.add_node("gelu", "act", {f1}, {f2});
  g.add_node("silu_mul", "gated", {f1, f2}, {f3});
  g.add_node("add", "res2", {r1, f3}, {r2});
  g.add_node("last_row", "last", {r2}, {last});
  g.add_node("mean_pool", "pool", {last}, {pooled});
  Node& dn = g.add_node("linear", "dense", {pooled}, {dense});
  weight(dn, d, d, 1);
  dn.attrs["input_quant"] = Attr::of_string("per_token");
  g.add_node("l2_normalize", "normalize", {dense}, {out});
  return g;
}

}  // namespace qd::rt::test_models
