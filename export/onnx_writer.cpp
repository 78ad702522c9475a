#include "export/onnx_writer.h"

#include <onnx/onnx_pb.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <set>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/atomic_file.h"
#include "common/error.h"
#include "export/onnx_util.h"

namespace qd {
namespace {

using rt::Layer;
using rt::Model;
using rt::OpKind;
using rt::TensorInfo;

// Opset 13 has per-axis DequantizeLinear (per-channel weights) and is what TensorRT's QDQ import
// and every ONNX Runtime since 1.8 support; IR version 7 is the one that goes with it.
constexpr int64_t kOpset = 13;
constexpr int64_t kIrVersion = 7;

using onnx_util::fail;

class Builder {
 public:
  Builder(const Model& m, OnnxPrecision p, onnx::GraphProto* g) : m_(m), qdq_(p == OnnxPrecision::kInt8Qdq), g_(g) {}

  void build() {
    check_model_shape();
    name_layers();
    value_.assign(m_.tensors.size(), "");
    uses_.assign(m_.tensors.size(), 0);
    value_[0] = emit_input();
    for (size_t i = 0; i < m_.layers.size(); ++i) {
      const Layer& l = m_.layers[i];
      check_layer(i);
      switch (l.kind) {
        case OpKind::kConv2d: value_[i + 1] = emit_conv(i, use(l.input)); break;
        case OpKind::kMaxPool2d: value_[i + 1] = emit_maxpool(i, use(l.input)); break;
        case OpKind::kAdd: {
          const std::string a = use(l.input), b = use(l.input2);
          value_[i + 1] = emit_add(i, a, b);
          break;
        }
        case OpKind::kGlobalAvgPool: value_[i + 1] = emit_global_avg_pool(i, use(l.input)); break;
        case OpKind::kLinear: value_[i + 1] = emit_linear(i, use(l.input)); break;
        default: fail(where(i) + ": unknown op kind " + std::to_string(static_cast<uint32_t>(l.kind)));
      }
    }
    const TensorInfo& in = m_.tensors.front();
    add_value_info(g_->add_input(), "input", {in.c, in.h, in.w});
    add_value_info(g_->add_output(), "logits", {m_.num_classes()});
  }

 private:
  // ---- validation: everything the graph below indexes or relies on, with clear messages -------

  std::string where(size_t i) const {
    const Layer& l = m_.layers[i];
    return "layer " + std::to_string(i) + " ('" + l.name + "', " + rt::op_name(l.kind) + ")";
  }

  static bool finite_positive(float x) { return std::isfinite(x) && x > 0.0f; }

  void check_model_shape() const {
    if (m_.layers.empty()) fail("the model has no layers");
    if (m_.tensors.size() != m_.layers.size() + 1)
      fail("the model has " + std::to_string(m_.layers.size()) + " layers but " + std::to_string(m_.tensors.size()) +
           " tensors (expected layers + 1)");
    for (size_t t = 0; t < m_.tensors.size(); ++t) {
      const TensorInfo& ti = m_.tensors[t];
      if (ti.c <= 0 || ti.h <= 0 || ti.w <= 0) fail("tensor " + std::to_string(t) + " has a non-positive dimension");
      // The last tensor is the float logits: its scale / zero point are unused.
      if (t + 1 < m_.tensors.size()) {
        if (!finite_positive(ti.scale)) fail("tensor " + std::to_string(t) + ": scale must be finite and > 0");
        if (ti.zero_point < -128 || ti.zero_point > 127)
          fail("tensor " + std::to_string(t) + ": zero point " + std::to_string(ti.zero_point) + " is not int8");
      }
    }
    const TensorInfo& in = m_.tensors.front();
    if (m_.mean.size() != static_cast<size_t>(in.c) || m_.inv_std.size() != static_cast<size_t>(in.c))
      fail("mean / inv_std must have one value per input channel (" + std::to_string(in.c) + ")");
    if (m_.layers.back().kind != OpKind::kLinear) fail("the last layer must be the linear classifier");
    const TensorInfo& out = m_.tensors.back();
    if (out.h != 1 || out.w != 1) fail("the logits tensor must be [classes, 1, 1]");
  }

  void check_tensor_id(size_t i, int32_t id, const char* field) const {
    if (id < 0 || static_cast<size_t>(id) > i)
      fail(where(i) + ": " + field + " = " + std::to_string(id) + " is not an earlier tensor");
  }

  void check_layer(size_t i) const {
    const Layer& l = m_.layers[i];
    check_tensor_id(i, l.input, "input");
    const TensorInfo& in = m_.tensors[static_cast<size_t>(l.input)];
    const TensorInfo& out = m_.tensors[i + 1];
    if (l.kind == OpKind::kLinear && i + 1 != m_.layers.size())
      fail(where(i) + ": linear is allowed only as the last layer");
    if (l.kind == OpKind::kConv2d || l.kind == OpKind::kMaxPool2d) {
      // pad < kernel: every window overlaps the input (a max pool window of padding alone has no value).
      if (l.kernel < 1 || l.stride < 1 || l.pad < 0 || l.pad >= l.kernel)
        fail(where(i) + ": kernel / stride must be >= 1 and pad in [0, kernel - 1]");
      const int32_t oh = (in.h + 2 * l.pad - l.kernel) / l.stride + 1;
      const int32_t ow = (in.w + 2 * l.pad - l.kernel) / l.stride + 1;
      if (in.h + 2 * l.pad < l.kernel || in.w + 2 * l.pad < l.kernel || out.h != oh || out.w != ow)
        fail(where(i) + ": output is " + std::to_string(out.h) + "x" + std::to_string(out.w) +
             " but the kernel gives " + std::to_string(oh) + "x" + std::to_string(ow));
    }
    switch (l.kind) {
      case OpKind::kConv2d:
        if (l.in_c != in.c || l.out_c != out.c)
          fail(where(i) + ": in_c / out_c (" + std::to_string(l.in_c) + ", " + std::to_string(l.out_c) +
               ") do not match the tensors' channels (" + std::to_string(in.c) + ", " + std::to_string(out.c) + ")");
        check_weights(i, int64_t{l.in_c} * l.kernel * l.kernel);
        break;
      case OpKind::kMaxPool2d:
        if (out.c != in.c || out.scale != in.scale || out.zero_point != in.zero_point)
          fail(where(i) + ": max pooling keeps the input's channels, scale and zero point");
        break;
      case OpKind::kAdd: {
        check_tensor_id(i, l.input2, "input2");
        const TensorInfo& in2 = m_.tensors[static_cast<size_t>(l.input2)];
        if (in2.c != in.c || in2.h != in.h || in2.w != in.w || out.c != in.c || out.h != in.h || out.w != in.w)
          fail(where(i) + ": both operands and the output must have the same shape");
        break;
      }
      case OpKind::kGlobalAvgPool:
        if (out.c != in.c || out.h != 1 || out.w != 1)
          fail(where(i) + ": the output must be [C, 1, 1] of the input's C");
        break;
      case OpKind::kLinear:
        if (l.in_c != in.numel() || l.out_c != out.c)
          fail(where(i) + ": in_c / out_c (" + std::to_string(l.in_c) + ", " + std::to_string(l.out_c) +
               ") do not match the flattened input (" + std::to_string(in.numel()) + ") and the classes (" +
               std::to_string(out.c) + ")");
        check_weights(i, l.in_c);
        if (qdq_ && l.output_scale.size() != static_cast<size_t>(l.out_c))
          fail(where(i) + ": output_scale must have out_c values");
        for (float s : l.output_scale)
          if (qdq_ && !finite_positive(s)) fail(where(i) + ": output_scale values must be finite and > 0");
        break;
    }
    if ((l.kind == OpKind::kConv2d || l.kind == OpKind::kAdd) &&
        (l.act_min < -128 || l.act_max > 127 || l.act_min > l.act_max))
      fail(where(i) + ": act_min / act_max must be an int8 range");
  }

  // Weights of a conv / linear layer: [out_c][per_out]. The int8 form is always checked (the
  // layer's shape comes from it); the float form only for the fp32 model, which is built from it.
  void check_weights(size_t i, int64_t per_out) const {
    const Layer& l = m_.layers[i];
    const size_t n = static_cast<size_t>(int64_t{l.out_c} * per_out), oc = static_cast<size_t>(l.out_c);
    if (l.out_c <= 0 || per_out <= 0) fail(where(i) + ": empty weights");
    if (l.weight.size() != n || l.bias.size() != oc || l.weight_scale.size() != oc)
      fail(where(i) + ": weight / bias / weight_scale have " + std::to_string(l.weight.size()) + " / " +
           std::to_string(l.bias.size()) + " / " + std::to_string(l.weight_scale.size()) + " values, expected " +
           std::to_string(n) + " / " + std::to_string(oc) + " / " + std::to_string(oc));
    if (qdq_) {
      for (float s : l.weight_scale)
        if (!finite_positive(s)) fail(where(i) + ": weight_scale values must be finite and > 0");
      // Symmetric int8 (zero point 0, [-127, 127]) is what training produces and what TensorRT
      // requires of weights; -128 would mean the model did not come from a symmetric quantizer.
      for (int8_t w : l.weight)
        if (w == -128) fail(where(i) + ": weight value -128 (symmetric int8 weights are in [-127, 127])");
    } else {
      if (l.float_weight.size() != n || l.float_bias.size() != oc)
        fail(where(i) + ": the fp32 ONNX model needs the unquantized weights, but float_weight / float_bias have " +
             std::to_string(l.float_weight.size()) + " / " + std::to_string(l.float_bias.size()) +
             " values (expected " + std::to_string(n) + " / " + std::to_string(oc) +
             "); export from the trained run, not from a .qdm file");
      for (float w : l.float_weight)
        if (!std::isfinite(w)) fail(where(i) + ": float_weight has a non-finite value");
      for (float b : l.float_bias)
        if (!std::isfinite(b)) fail(where(i) + ": float_bias has a non-finite value");
    }
  }

  // ---- names ---------------------------------------------------------------------------------

  // Every node, initializer and activation of layer i starts with base_[i] + ".": the layer's
  // name when it is unique (else suffixed by its index), never "input" or "logits".
  void name_layers() {
    std::set<std::string> used{"input", "logits"};
    for (size_t i = 0; i < m_.layers.size(); ++i) {
      std::string b = m_.layers[i].name.empty() ? "layer" + std::to_string(i) : m_.layers[i].name;
      if (used.count(b)) b += "_" + std::to_string(i);
      used.insert(b);
      base_.push_back(b);
    }
  }

  // ---- graph pieces --------------------------------------------------------------------------

  template <typename T>
  std::string init(const std::string& name, const std::vector<int64_t>& dims, const std::vector<T>& v) {
    return onnx_util::init<T>(g_, name, dims, v);
  }
  template <typename T>
  std::string scalar(const std::string& name, T v) {
    return init<T>(name, {}, {v});
  }
  onnx::NodeProto* node(const std::string& op, const std::string& name, const std::vector<std::string>& inputs,
                        const std::string& output) {
    return onnx_util::node(g_, op, name, inputs, output);
  }
  static void attr(onnx::NodeProto* n, const std::string& name, int64_t v) { onnx_util::attr(n, name, v); }
  static void attr(onnx::NodeProto* n, const std::string& name, const std::vector<int64_t>& v) { onnx_util::attr(n, name, v); }

  void add_value_info(onnx::ValueInfoProto* v, const std::string& name, const std::vector<int64_t>& dims) {
    v->set_name(name);
    onnx::TypeProto_Tensor* t = v->mutable_type()->mutable_tensor_type();
    t->set_elem_type(onnx::TensorProto_DataType_FLOAT);
    onnx::TensorShapeProto* s = t->mutable_shape();
    s->add_dim()->set_dim_param("N");
    for (int64_t d : dims) s->add_dim()->set_dim_value(d);
  }

  // The name prefix of tensor t's values, initializers and Q/DQ nodes.
  std::string prefix(int32_t t) const { return t == 0 ? "input" : base_[static_cast<size_t>(t - 1)]; }

  // Tensor t's per-tensor scale and zero point as scalar initializers (created once).
  std::pair<std::string, std::string> quant_params(int32_t t) {
    const std::string p = prefix(t);
    if (params_done_.insert(t).second) {
      const TensorInfo& ti = m_.tensors[static_cast<size_t>(t)];
      scalar<float>(p + ".scale", ti.scale);
      scalar<int8_t>(p + ".zero_point", static_cast<int8_t>(ti.zero_point));
    }
    return {p + ".scale", p + ".zero_point"};
  }

  // QuantizeLinear + DequantizeLinear of the float value x with tensor t's scale and zero point:
  // the int8 rounding and saturation of the integer model, in the standard QDQ form.
  // Nodes "<stem>quant<sfx>" and "<stem>dequant<sfx>".
  std::string qdq(int32_t t, const std::string& x, const std::string& stem, const std::string& sfx,
                  const std::string& q_out, const std::string& dq_out) {
    const auto [s, z] = quant_params(t);
    node("QuantizeLinear", stem + "quant" + sfx, {x, s, z}, q_out);
    node("DequantizeLinear", stem + "dequant" + sfx, {q_out, s, z}, dq_out);
    return dq_out;
  }

  // The value a layer reads from tensor t. fp32: the tensor's value. int8: a Q/DQ pair of it for
  // each reader ("<layer>.out", then "<layer>.out_1", ...), as ONNX Runtime's quantizer does with
  // DedicatedQDQPair: QDQ fusion matches a pair with one consumer only (on x86, ONNX Runtime's
  // s8 -> u8 conversion, without which it runs no int8 conv), so with one shared pair the first
  // conv of every residual block would stay a float Conv. The extra pairs' QuantizeLinear carry
  // an `axis` (0, 2, 3: not the default 1), which ONNX ignores for per-tensor quantization, so
  // that common-subexpression elimination does not merge them back into one shared pair.
  std::string use(int32_t t) {
    const std::string& x = value_[static_cast<size_t>(t)];
    if (!qdq_) return x;
    const int k = uses_[static_cast<size_t>(t)]++;
    const std::string sfx = k == 0 ? "" : "_" + std::to_string(k), p = prefix(t);
    const std::string dq = t == 0 ? qdq(t, x, "input.", sfx, "input.q" + sfx, "input.dq" + sfx)
                                  : qdq(t, x, p + ".", sfx, p + ".out_q" + sfx, p + ".out" + sfx);
    static constexpr int64_t kDistinctAxis[] = {0, 2, 3};  // activations are [N, C, H, W]: rank 4
    if (k >= 1 && k <= 3) attr(g_->mutable_node(g_->node_size() - 2), "axis", kDistinctAxis[k - 1]);
    return dq;
  }

  // Input normalization as training does it ((x - mean) * inv_std); quantized by its readers.
  std::string emit_input() {
    const TensorInfo& t = m_.tensors.front();
    const std::vector<int64_t> dims{1, t.c, 1, 1};
    node("Sub", "input.sub", {"input", init<float>("input.mean", dims, m_.mean)}, "input.centered");
    node("Mul", "input.mul", {"input.centered", init<float>("input.inv_std", dims, m_.inv_std)}, "input.normalized");
    return "input.normalized";
  }

  // The layer's clamp [act_min, act_max] in real terms. act_min == zero point with no upper clamp
  // is the fused ReLU (the common case). It is emitted even where the zero point is -128 and the
  // int8 saturation alone would do: the fp32 graph has no saturation, and QDQ runtimes drop a Relu
  // that the following QuantizeLinear makes redundant. Any other non-trivial clamp becomes a Clip
  // with the same real bounds, so the graph stays exact whatever the model says.
  std::string emit_clamp(size_t i, const std::string& x) {
    const Layer& l = m_.layers[i];
    const TensorInfo& out = m_.tensors[i + 1];
    const std::string& b = base_[i];
    if (l.act_min == out.zero_point && l.act_max == 127) {
      node("Relu", b + ".relu", {x}, b + ".relu_out");
      return b + ".relu_out";
    }
    if (l.act_min == -128 && l.act_max == 127) return x;
    const auto real = [&](int32_t q) { return static_cast<float>(double{out.scale} * (q - out.zero_point)); };
    const std::string lo = l.act_min > -128 ? scalar<float>(b + ".clip_min", real(l.act_min)) : "";
    const std::string hi = l.act_max < 127 ? scalar<float>(b + ".clip_max", real(l.act_max)) : "";
    node("Clip", b + ".clip", {x, lo, hi}, b + ".clip_out");
    return b + ".clip_out";
  }

  // The float value of layer i's output tensor: int8, the value before quantization (its readers
  // quantize it, see use()); fp32, the layer's last node, whose output is renamed "<layer>.out".
  std::string finish(size_t i, const std::string& x) {
    if (qdq_) return x;
    onnx::NodeProto* last = g_->mutable_node(g_->node_size() - 1);
    if (last->output(0) != x) fail(where(i) + ": internal error: the layer's last node is not its output");
    last->set_output(0, base_[i] + ".out");
    return base_[i] + ".out";
  }

  // Weight and bias of a conv / linear layer as graph values. int8: DequantizeLinear of the int8
  // weights (per output channel, axis 0, zero point 0) and of the int32 bias with the scales
  // `bias_scale` [out_c]. fp32: the float weights directly.
  std::pair<std::string, std::string> weights(size_t i, const std::vector<int64_t>& wdims,
                                              const std::vector<float>& bias_scale) {
    const Layer& l = m_.layers[i];
    const std::string& b = base_[i];
    const int64_t oc = l.out_c;
    if (!qdq_) return {init<float>(b + ".weight", wdims, l.float_weight), init<float>(b + ".bias", {oc}, l.float_bias)};
    const std::string wq = init<int8_t>(b + ".weight_q", wdims, l.weight);
    const std::string ws = init<float>(b + ".weight_scale", {oc}, l.weight_scale);
    const std::string wz = init<int8_t>(b + ".weight_zero_point", {oc}, std::vector<int8_t>(l.out_c, 0));
    attr(node("DequantizeLinear", b + ".weight_dq", {wq, ws, wz}, b + ".weight"), "axis", 0);
    const std::string bq = init<int32_t>(b + ".bias_q", {oc}, l.bias);
    const std::string bs = init<float>(b + ".bias_scale", {oc}, bias_scale);
    const std::string bz = init<int32_t>(b + ".bias_zero_point", {oc}, std::vector<int32_t>(l.out_c, 0));
    attr(node("DequantizeLinear", b + ".bias_dq", {bq, bs, bz}, b + ".bias"), "axis", 0);
    return {b + ".weight", b + ".bias"};
  }

  std::string emit_conv(size_t i, const std::string& x) {
    const Layer& l = m_.layers[i];
    const std::string& b = base_[i];
    // The bias is in units of in_scale * weight_scale[o] (runtime/model.h); QDQ-fusing runtimes
    // (ONNX Runtime's QLinearConv, TensorRT) assume exactly that scale for an int32 bias.
    const float in_scale = m_.tensors[static_cast<size_t>(l.input)].scale;
    std::vector<float> bias_scale(l.out_c);
    for (int32_t o = 0; o < l.out_c; ++o) bias_scale[o] = in_scale * l.weight_scale[o];
    const auto [w, bias] = weights(i, {l.out_c, l.in_c, l.kernel, l.kernel}, qdq_ ? bias_scale : std::vector<float>{});
    onnx::NodeProto* conv = node("Conv", b + ".conv", {x, w, bias}, b + ".conv_out");
    attr(conv, "kernel_shape", std::vector<int64_t>{l.kernel, l.kernel});
    attr(conv, "strides", std::vector<int64_t>{l.stride, l.stride});
    attr(conv, "pads", std::vector<int64_t>{l.pad, l.pad, l.pad, l.pad});
    return finish(i, emit_clamp(i, b + ".conv_out"));
  }

  std::string emit_maxpool(size_t i, const std::string& x) {
    const Layer& l = m_.layers[i];
    const std::string& b = base_[i];
    // Padding never wins the max, in the interpreter as in ONNX (which pads MaxPool with -inf).
    onnx::NodeProto* pool = node("MaxPool", b + ".maxpool", {x}, b + ".maxpool_out");
    attr(pool, "kernel_shape", std::vector<int64_t>{l.kernel, l.kernel});
    attr(pool, "strides", std::vector<int64_t>{l.stride, l.stride});
    attr(pool, "pads", std::vector<int64_t>{l.pad, l.pad, l.pad, l.pad});
    return finish(i, b + ".maxpool_out");
  }

  std::string emit_add(size_t i, const std::string& a, const std::string& c) {
    const std::string& b = base_[i];
    node("Add", b + ".add", {a, c}, b + ".add_out");
    return finish(i, emit_clamp(i, b + ".add_out"));
  }

  std::string emit_global_avg_pool(size_t i, const std::string& x) {
    const std::string& b = base_[i];
    node("GlobalAveragePool", b + ".pool", {x}, b + ".pool_out");
    return finish(i, b + ".pool_out");
  }

  // The classifier: Flatten (CHW order, as the integer model's `in`) then Gemm with B = W^T; the
  // bias is in units of output_scale[o] = in_scale * weight_scale[o]. Its output is "logits".
  // int8: the flattened values get a Q/DQ pair of the input tensor's own parameters (exact:
  // they are already on its grid), so that runtimes see DQ -> Flatten -> Q, which they run on the
  // int8 values, and DQ -> Gemm, which they fuse into an integer GEMM.
  std::string emit_linear(size_t i, const std::string& x) {
    const Layer& l = m_.layers[i];
    const std::string& b = base_[i];
    attr(node("Flatten", b + ".flatten", {x}, b + ".flat"), "axis", 1);
    const std::string flat =
        qdq_ ? qdq(l.input, b + ".flat", b + ".flat_", "", b + ".flat_q", b + ".flat_dq") : b + ".flat";
    const auto [w, bias] = weights(i, {l.out_c, l.in_c}, l.output_scale);
    attr(node("Gemm", b + ".gemm", {flat, w, bias}, "logits"), "transB", 1);
    return "logits";
  }

  const Model& m_;
  const bool qdq_;
  onnx::GraphProto* g_;
  std::vector<std::string> base_;
  std::vector<std::string> value_;  // per tensor: its float value (int8: before quantization)
  std::vector<int> uses_;           // per tensor: Q/DQ pairs emitted for its readers so far
  std::set<int32_t> params_done_;   // tensors whose scale / zero point initializers exist
};

onnx::ModelProto build_model(const Model& m, OnnxPrecision p, const OnnxMetadata& extra) {
  const bool q = p == OnnxPrecision::kInt8Qdq;
  std::vector<std::pair<std::string, std::string>> meta{{"qdistill.format", q ? "qdq-int8" : "fp32"},
                                                        {"qdistill.num_classes", std::to_string(m.num_classes())}};
  for (const auto& kv : extra) meta.push_back(kv);
  onnx::ModelProto model = onnx_util::new_model(kIrVersion, kOpset, meta);
  model.set_doc_string(q ? "qdistill int8 student: QuantizeLinear/DequantizeLinear (QDQ) form of the integer model; "
                           "input float32 pixels in [0, 1], NCHW; output float32 logits"
                         : "qdistill fp32 reference: the student's float (BN-folded) weights, no quantization; "
                           "input float32 pixels in [0, 1], NCHW; output float32 logits");
  onnx::GraphProto* g = model.mutable_graph();
  g->set_name(q ? "qdistill_int8" : "qdistill_fp32");
  Builder(m, p, g).build();
  return model;
}

void write_atomic(const std::string& path, const std::string& bytes) {
  try {
    write_file_atomic(path, bytes);
  } catch (const qd::Error& e) {
    fail(e.what());
  }
}

}  // namespace

std::string onnx_model_bytes(const rt::Model& m, OnnxPrecision p, const OnnxMetadata& metadata) {
  return onnx_util::checked_bytes(build_model(m, p, metadata));
}

void write_onnx(const rt::Model& m, OnnxPrecision p, const std::string& path, const OnnxMetadata& metadata) {
  write_atomic(path, onnx_model_bytes(m, p, metadata));
}

}  // namespace qd
