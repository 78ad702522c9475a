#include "export/onnx_text.h"

#include <onnx/onnx_pb.h>

#include <cmath>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "common/atomic_file.h"
#include "common/error.h"
#include "export/onnx_util.h"

namespace qd {
namespace {

using onnx_util::attr;
using onnx_util::fail;
using rt::Attr;
using rt::DType;
using rt::Node;

constexpr int64_t kOpset = 17;  // LayerNormalization; per-axis Q/DQ since 13
constexpr int64_t kIrVersion = 8;

// A weight attribute's values as the runtime computes with them: float(q) * scale[row][j / group]
// (runtime/text_kernels.cpp, dequantize_row), or the float weight itself.
std::vector<float> dequantized(const Node& n) {
  const Attr& w = n.at("weight");
  const int64_t rows = w.shape[0], cols = w.shape[1];
  std::vector<float> out(static_cast<size_t>(rows * cols));
  if (w.dtype == DType::kF32) {
    std::copy(w.as<float>(), w.as<float>() + rows * cols, out.begin());
    return out;
  }
  const Attr& s = n.at("weight_scale");
  const int64_t groups = s.shape[1], group = cols / groups;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j)
      out[static_cast<size_t>(r * cols + j)] = static_cast<float>(w.as<int8_t>()[r * cols + j]) * s.as<float>()[r * groups + j / group];
  return out;
}

template <typename T>
std::vector<T> transposed(const T* a, int64_t rows, int64_t cols) {
  std::vector<T> t(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) t[static_cast<size_t>(c * rows + r)] = a[r * cols + c];
  return t;
}

class TextBuilder {
 public:
  TextBuilder(const rt::Graph& g, bool qdq, onnx::GraphProto* og) : g_(g), qdq_(qdq), og_(og) {}

  void build() {
    const std::string err = rt::validate(g_);
    if (!err.empty()) fail("the graph is invalid: " + err);
    const auto task = g_.metadata.find("task");
    if (task == g_.metadata.end() || task->second != "sentence_embedding")
      throw UserError(concat("ONNX export covers encoders (task sentence_embedding); this graph's task is '",
                             task == g_.metadata.end() ? "" : task->second,
                             "'. A decoder goes to llama.cpp as export/student.gguf, and to qdistill-run as student.qdm"));
    if (g_.inputs.size() != 1 || g_.outputs.size() != 1 || g_.values[static_cast<size_t>(g_.inputs[0])].dtype != DType::kI32)
      fail("an encoder graph has one input (the token ids) and one output (the embedding)");
    name_.assign(g_.values.size(), "");
    name_[static_cast<size_t>(g_.inputs[0])] = "input_ids";
    used_ = {"input_ids", "attention_mask", "embedding"};
    for (const Node& n : g_.nodes) emit(n);
    const int32_t out = g_.outputs[0];
    const rt::ValueInfo& ov = g_.values[static_cast<size_t>(out)];
    if (ov.shape.size() != 1 || ov.shape[0] < 1) fail("the output must be an embedding vector [dim]");
    onnx_util::node(og_, "Identity", "embedding", {name_[static_cast<size_t>(out)]}, "embedding");
    io(og_->add_input(), "input_ids", onnx::TensorProto_DataType_INT64, {-1, -2});
    io(og_->add_input(), "attention_mask", onnx::TensorProto_DataType_INT64, {-1, -2});
    io(og_->add_output(), "embedding", onnx::TensorProto_DataType_FLOAT, {-1, ov.shape[0]});
  }

 private:
  // ---- names and constants ---------------------------------------------------------------------

  // A fresh value / node name "<stem>/<what>" (made unique).
  std::string fresh(const std::string& stem, const std::string& what) {
    std::string base = stem + "/" + what, n = base;
    for (int i = 1; !used_.insert(n).second; ++i) n = base + "_" + std::to_string(i);
    return n;
  }
  // One node with one output named fresh(stem, what); returns the output's name.
  std::string op(const std::string& type, const std::string& stem, const std::string& what, const std::vector<std::string>& in,
                 onnx::NodeProto** out_node = nullptr) {
    const std::string y = fresh(stem, what);
    onnx::NodeProto* n = onnx_util::node(og_, type, y, in, y);
    if (out_node) *out_node = n;
    return y;
  }
  template <typename T>
  std::string constant(const std::string& key, const std::vector<int64_t>& dims, const std::vector<T>& v) {
    auto it = consts_.find(key);
    if (it != consts_.end()) return it->second;
    const std::string name = "const/" + key;
    used_.insert(name);
    onnx_util::init<T>(og_, name, dims, v);
    return consts_[key] = name;
  }
  std::string f32(float v, const std::string& key) { return constant<float>(key, {}, {v}); }
  std::string i64s(const std::vector<int64_t>& v) {
    std::string key = "i64";
    for (int64_t x : v) key += "_" + std::to_string(x);
    return constant<int64_t>(key, {static_cast<int64_t>(v.size())}, v);
  }
  template <typename T>
  std::string weight_init(const Node& n, const std::string& what, const std::vector<int64_t>& dims, const std::vector<T>& v) {
    const std::string name = fresh(n.name, what);
    return onnx_util::init<T>(og_, name, dims, v);
  }

  static void io(onnx::ValueInfoProto* v, const std::string& name, int32_t type, const std::vector<int64_t>& dims) {
    v->set_name(name);
    onnx::TypeProto_Tensor* t = v->mutable_type()->mutable_tensor_type();
    t->set_elem_type(type);
    for (int64_t d : dims) {
      onnx::TensorShapeProto_Dimension* dim = t->mutable_shape()->add_dim();
      if (d == -1) dim->set_dim_param("batch");
      else if (d == -2) dim->set_dim_param("sequence");
      else dim->set_dim_value(d);
    }
  }

  const std::string& in(const Node& n, size_t i) const { return name_[static_cast<size_t>(n.inputs[i])]; }
  void set_out(const Node& n, const std::string& v) { name_[static_cast<size_t>(n.outputs[0])] = v; }
  int64_t rank_of(const Node& n, size_t i) const { return static_cast<int64_t>(g_.values[static_cast<size_t>(n.inputs[i])].shape.size()) + 1; }

  // The mask as float [batch, sequence] (1 token, 0 padding), and as the attention bias
  // [batch, 1, 1, sequence] (0 token, -1e9 padding), built once.
  std::string mask_f32() {
    if (mask_f_.empty()) {
      onnx::NodeProto* c;
      mask_f_ = op("Cast", "mask", "f32", {"attention_mask"}, &c);
      attr(c, "to", int64_t{onnx::TensorProto_DataType_FLOAT});
    }
    return mask_f_;
  }
  std::string mask_bias() {
    if (mask_bias_.empty()) {
      const std::string padding = op("Sub", "mask", "padding", {f32(1.0f, "one"), mask_f32()});
      const std::string bias = op("Mul", "mask", "bias", {padding, f32(-1e9f, "minus_1e9")});
      mask_bias_ = op("Unsqueeze", "mask", "bias4d", {bias, i64s({1, 2})});
    }
    return mask_bias_;
  }

  // ---- ops ---------------------------------------------------------------------------------

  void emit(const Node& n) {
    if (n.op == "embedding") return embedding(n);
    if (n.op == "add_positions") return add_positions(n);
    if (n.op == "linear") return linear(n);
    if (n.op == "layer_norm") return layer_norm(n);
    if (n.op == "add") return set_out(n, op("Add", n.name, "sum", {in(n, 0), in(n, 1)}));
    if (n.op == "gelu") return gelu(n);
    if (n.op == "attention") return attention(n);
    if (n.op == "mean_pool") return mean_pool(n);
    if (n.op == "l2_normalize") return l2_normalize(n);
    throw UserError(concat("ONNX export: node '", n.name, "' (", n.op, ") has no ONNX form in the encoder export"));
  }

  bool int8_weight(const Node& n) const { return qdq_ && n.at("weight").dtype == DType::kI8; }

  // Rows of the table [vocabulary, dim] by id. int8: the int8 rows and their scales are gathered,
  // then multiplied (what the runtime's dequantize_row computes), so the table stays int8.
  void embedding(const Node& n) {
    const Attr& w = n.at("weight");
    const int64_t vocab = w.shape[0], dim = w.shape[1];
    const std::string& ids = in(n, 0);
    if (!int8_weight(n)) {
      const std::string table = weight_init<float>(n, "weight", {vocab, dim}, dequantized(n));
      return set_out(n, op("Gather", n.name, "rows", {table, ids}));
    }
    const Attr& s = n.at("weight_scale");
    const int64_t groups = s.shape[1];
    const std::string table = weight_init<int8_t>(n, "weight_q", {vocab, dim}, std::vector<int8_t>(w.as<int8_t>(), w.as<int8_t>() + w.numel()));
    const std::string scales = weight_init<float>(n, "weight_scale", {vocab, groups}, std::vector<float>(s.as<float>(), s.as<float>() + s.numel()));
    onnx::NodeProto* cast;
    const std::string rows = op("Cast", n.name, "rows_f32", {op("Gather", n.name, "rows_q", {table, ids})}, &cast);
    attr(cast, "to", int64_t{onnx::TensorProto_DataType_FLOAT});
    const std::string sc = op("Gather", n.name, "row_scales", {scales, ids});  // [batch, sequence, groups]
    if (groups == 1) return set_out(n, op("Mul", n.name, "rows", {rows, sc}));
    const std::string grouped = op("Reshape", n.name, "grouped", {rows, i64s({0, 0, groups, dim / groups})});
    const std::string scaled = op("Mul", n.name, "scaled", {grouped, op("Unsqueeze", n.name, "scales4d", {sc, i64s({3})})});
    set_out(n, op("Reshape", n.name, "rows", {scaled, i64s({0, 0, dim})}));
  }

  // x + table[0 .. T) (+ bias). int8 with one scale per position: DequantizeLinear of the table.
  void add_positions(const Node& n) {
    const Attr& w = n.at("weight");
    const int64_t positions = w.shape[0], dim = w.shape[1];
    std::string table;
    if (int8_weight(n) && n.at("weight_scale").shape[1] == 1) {
      const Attr& s = n.at("weight_scale");
      const std::string q = weight_init<int8_t>(n, "weight_q", {positions, dim}, std::vector<int8_t>(w.as<int8_t>(), w.as<int8_t>() + w.numel()));
      const std::string sc = weight_init<float>(n, "weight_scale", {positions}, std::vector<float>(s.as<float>(), s.as<float>() + positions));
      const std::string zp = weight_init<int8_t>(n, "weight_zero_point", {positions}, std::vector<int8_t>(static_cast<size_t>(positions), 0));
      onnx::NodeProto* dq;
      table = op("DequantizeLinear", n.name, "table", {q, sc, zp}, &dq);
      attr(dq, "axis", int64_t{0});
    } else {
      table = weight_init<float>(n, "weight", {positions, dim}, dequantized(n));
    }
    onnx::NodeProto* shape;
    const std::string tokens = op("Shape", n.name, "tokens", {"attention_mask"}, &shape);
    attr(shape, "start", int64_t{1});
    attr(shape, "end", int64_t{2});
    const std::string rows = op("Slice", n.name, "rows", {table, i64s({0}), tokens, i64s({0})});
    std::string y = op("Add", n.name, "sum", {in(n, 0), rows});
    if (const Attr* b = n.find("bias"))
      y = op("Add", n.name, "biased", {y, weight_init<float>(n, "bias", {dim}, std::vector<float>(b->as<float>(), b->as<float>() + dim))});
    set_out(n, y);
  }

  // The runtime's per-token quantization of x (any rank, `k` features last): scale = max|x| / 127
  // per token (1 where the token is all zero), then QuantizeLinear (round half to even) on the
  // [tokens, k] view, per axis 0, with zero point 128: uint8 q + 128 for the runtime's int8 q in
  // [-127, 127]. Returns those values in x's shape and the scales with x's rank (last dimension 1).
  std::pair<std::string, std::string> per_token_quantize(const Node& n, const std::string& x, int64_t k) {
    onnx::NodeProto* rmax;
    const std::string amax = op("ReduceMax", n.name, "x_amax", {op("Abs", n.name, "x_abs", {x})}, &rmax);
    attr(rmax, "axes", std::vector<int64_t>{-1});
    attr(rmax, "keepdims", int64_t{1});
    const std::string s = op("Div", n.name, "x_scale_raw", {amax, f32(127.0f, "127")});
    const std::string scale =
        op("Where", n.name, "x_scale", {op("Greater", n.name, "x_nonzero", {s, f32(0.0f, "zero")}), s, f32(1.0f, "one")});
    const std::string per_row = op("Reshape", n.name, "x_scale_rows", {scale, i64s({-1})});
    onnx::NodeProto* zeros;
    const std::string zp = op("ConstantOfShape", n.name, "x_zero_point", {op("Shape", n.name, "x_rows", {per_row})}, &zeros);
    onnx_util::attr_tensor<uint8_t>(zeros, "value", 128);
    onnx::NodeProto* q;
    const std::string xq = op("QuantizeLinear", n.name, "x_q_rows", {op("Reshape", n.name, "x_tokens", {x, i64s({-1, k})}), per_row, zp}, &q);
    attr(q, "axis", int64_t{0});
    return {op("Reshape", n.name, "x_q", {xq, op("Shape", n.name, "x_shape", {x})}), scale};
  }

  // x W^T + b. int8 with per-token inputs: MatMulInteger of the input and the transposed weight,
  // both stored as uint8 (value + 128) with zero point 128, then * x_scale * w_scale + b. The sums
  // are the runtime's exact int32 sums. uint8 x uint8 because ONNX Runtime (MLAS) runs it exactly
  // on every CPU (x86 widens to 16 bits; its u8 x s8 kernel on AVX2 without VNNI saturates pairs of
  // products at 32767, docs/export.md) and fast (AMX / VNNI where present); int8 x int8 has no
  // fast kernel in ONNX Runtime 1.23 (35x slower, measured).
  // Otherwise MatMul with the float (dequantized) weight.
  void linear(const Node& n) {
    const Attr& w = n.at("weight");
    const int64_t out = w.shape[0], k = w.shape[1];
    const Attr* q = n.find("input_quant");
    const std::string mode = q ? q->s : "none";
    std::string y;
    if (int8_weight(n) && mode != "none") {
      const Attr& s = n.at("weight_scale");
      if (s.shape[1] != 1)
        throw UserError(concat("ONNX export: '", n.name, "' has int8 weights in ", s.shape[1], " groups per row; the ONNX form "
                               "has one scale per output channel. Train the encoder with qat.weight.per_channel: true and no "
                               "group_size, or deploy student.qdm with qdistill-run"));
      if (mode != "per_token")
        throw UserError(concat("ONNX export: '", n.name, "' quantizes its input in Q8_0 blocks (llama.cpp's rule); the encoder's "
                               "ONNX form quantizes per token (qat.activation.dynamic: per_token)"));
      std::vector<uint8_t> wu(static_cast<size_t>(k * out));
      const std::vector<int8_t> wt = transposed(w.as<int8_t>(), out, k);
      for (size_t i = 0; i < wu.size(); ++i) wu[i] = static_cast<uint8_t>(wt[i] + 128);
      const std::string wq = weight_init<uint8_t>(n, "weight_q", {k, out}, wu);
      const std::string ws = weight_init<float>(n, "weight_scale", {out}, std::vector<float>(s.as<float>(), s.as<float>() + out));
      const auto [xq, xs] = per_token_quantize(n, in(n, 0), k);
      const std::string zp = constant<uint8_t>("u8_128", {}, {uint8_t{128}});
      onnx::NodeProto* cast;
      const std::string acc = op("Cast", n.name, "acc_f32", {op("MatMulInteger", n.name, "acc", {xq, wq, zp, zp})}, &cast);
      attr(cast, "to", int64_t{onnx::TensorProto_DataType_FLOAT});
      y = op("Mul", n.name, "product", {op("Mul", n.name, "acc_x", {acc, xs}), ws});
    } else {
      // A float weight, the fp32 file, or an int8 weight with float inputs (dequantized: exact).
      const std::vector<float> wf = dequantized(n);
      y = op("MatMul", n.name, "product", {in(n, 0), weight_init<float>(n, "weight_t", {k, out}, transposed(wf.data(), out, k))});
    }
    if (const Attr* b = n.find("bias"))
      y = op("Add", n.name, "biased", {y, weight_init<float>(n, "bias", {out}, std::vector<float>(b->as<float>(), b->as<float>() + out))});
    set_out(n, y);
  }

  void layer_norm(const Node& n) {
    const Attr& w = n.at("weight");
    const int64_t d = w.shape[0];
    onnx::NodeProto* ln;
    const std::string y = op("LayerNormalization", n.name, "y",
                             {in(n, 0), weight_init<float>(n, "weight", {d}, std::vector<float>(w.as<float>(), w.as<float>() + d)),
                              weight_init<float>(n, "bias", {d}, std::vector<float>(n.at("bias").as<float>(), n.at("bias").as<float>() + d))},
                             &ln);
    attr(ln, "axis", int64_t{-1});
    attr(ln, "epsilon", n.at("eps").f);
    set_out(n, y);
  }

  // x * 0.5 * (1 + erf(x / sqrt 2)), in the runtime's order.
  void gelu(const Node& n) {
    const std::string& x = in(n, 0);
    const std::string e = op("Erf", n.name, "erf", {op("Mul", n.name, "scaled", {x, f32(0.70710678118654752440f, "rsqrt2")})});
    const std::string half = op("Mul", n.name, "half", {x, f32(0.5f, "half")});
    set_out(n, op("Mul", n.name, "y", {half, op("Add", n.name, "one_plus_erf", {e, f32(1.0f, "one")})}));
  }

  // softmax(q k^T / sqrt(hd) + mask bias) v per head, heads split from the features.
  void attention(const Node& n) {
    const int64_t heads = n.at("heads").i, kv = n.at("kv_heads").i, hd = n.at("head_dim").i;
    if (n.at("causal").i != 0 || n.find("rope_theta") || kv != heads || (n.find("kv_cache") && n.at("kv_cache").i != 0))
      throw UserError(concat("ONNX export: '", n.name, "' is a decoder's attention (causal, rotary or grouped-query); the ONNX "
                             "export covers the bidirectional encoder"));
    const auto split = [&](const std::string& x, const char* what, std::vector<int64_t> perm) {
      onnx::NodeProto* t;
      const std::string heads4d = op("Reshape", n.name, std::string(what) + "_heads", {x, i64s({0, 0, heads, hd})});
      const std::string y = op("Transpose", n.name, std::string(what) + "_t", {heads4d}, &t);
      attr(t, "perm", perm);
      return y;
    };
    const std::string q = split(in(n, 0), "q", {0, 2, 1, 3}), k = split(in(n, 1), "k", {0, 2, 3, 1}), v = split(in(n, 2), "v", {0, 2, 1, 3});
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));  // the runtime's factor
    const std::string scores = op("Mul", n.name, "scores", {op("MatMul", n.name, "qk", {q, k}), f32(scale, "attn_scale_" + std::to_string(hd))});
    onnx::NodeProto* sm;
    const std::string p = op("Softmax", n.name, "p", {op("Add", n.name, "masked", {scores, mask_bias()})}, &sm);
    attr(sm, "axis", int64_t{-1});
    onnx::NodeProto* t;
    const std::string o = op("Transpose", n.name, "o_t", {op("MatMul", n.name, "o", {p, v})}, &t);
    attr(t, "perm", std::vector<int64_t>{0, 2, 1, 3});
    set_out(n, op("Reshape", n.name, "y", {o, i64s({0, 0, heads * hd})}));
  }

  // The mean over the sentence's tokens (padding excluded): [batch, sequence, d] -> [batch, d].
  void mean_pool(const Node& n) {
    onnx::NodeProto* cast;
    const std::string keep = op("Cast", n.name, "keep", {op("Unsqueeze", n.name, "mask3d", {"attention_mask", i64s({2})})}, &cast);
    attr(cast, "to", int64_t{onnx::TensorProto_DataType_BOOL});
    const std::string kept = op("Where", n.name, "kept", {keep, in(n, 0), f32(0.0f, "zero")});
    onnx::NodeProto *sum, *count;
    const std::string s = op("ReduceSum", n.name, "sum", {kept, i64s({1})}, &sum);
    attr(sum, "keepdims", int64_t{0});
    const std::string c = op("ReduceSum", n.name, "count", {mask_f32(), i64s({1})}, &count);
    attr(count, "keepdims", int64_t{1});
    set_out(n, op("Div", n.name, "mean", {s, c}));
  }

  // x / max(||x||, 1e-12) per sentence.
  void l2_normalize(const Node& n) {
    if (rank_of(n, 0) != 2) fail("'" + n.name + "': l2_normalize of a vector expected");
    onnx::NodeProto* l2;
    const std::string norm = op("ReduceL2", n.name, "norm", {in(n, 0)}, &l2);
    attr(l2, "axes", std::vector<int64_t>{1});
    attr(l2, "keepdims", int64_t{1});
    set_out(n, op("Div", n.name, "y", {in(n, 0), op("Max", n.name, "norm_safe", {norm, f32(1e-12f, "1e-12")})}));
  }

  const rt::Graph& g_;
  const bool qdq_;
  onnx::GraphProto* og_;
  std::vector<std::string> name_;  // per graph value: its ONNX name
  std::set<std::string> used_;
  std::map<std::string, std::string> consts_;
  std::string mask_f_, mask_bias_;
};

}  // namespace

std::string text_onnx_bytes(const rt::Graph& g, OnnxPrecision p, const OnnxMetadata& metadata) {
  const bool q = p == OnnxPrecision::kInt8Qdq;
  std::vector<std::pair<std::string, std::string>> meta{{"qdistill.format", q ? "int8" : "fp32"},
                                                        {"qdistill.task", "sentence_embedding"}};
  if (auto it = g.metadata.find("max_positions"); it != g.metadata.end()) meta.emplace_back("qdistill.max_positions", it->second);
  for (const auto& kv : metadata) meta.push_back(kv);
  onnx::ModelProto model = onnx_util::new_model(kIrVersion, kOpset, meta);
  model.set_doc_string(std::string(q ? "qdistill int8 student encoder: int8 weights, per-token int8 activations (QuantizeLinear), "
                                       "exact int32 sums (MatMulInteger)"
                                     : "qdistill fp32 student encoder: the trained weights dequantized, float activations") +
                       "; inputs input_ids, attention_mask int64 [batch, sequence]; output embedding float32 [batch, dim], "
                       "L2-normalised");
  onnx::GraphProto* graph = model.mutable_graph();
  graph->set_name(q ? "qdistill_encoder_int8" : "qdistill_encoder_fp32");
  TextBuilder(g, q, graph).build();
  return onnx_util::checked_bytes(model);
}

void write_text_onnx(const rt::Graph& g, OnnxPrecision p, const std::string& path, const OnnxMetadata& metadata) {
  write_file_atomic(path, text_onnx_bytes(g, p, metadata));
}

}  // namespace qd
