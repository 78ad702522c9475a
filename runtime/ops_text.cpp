// The transformer ops of the op table (issue 16): token embeddings, linear layers with int8
// weights (per row, or in groups such as llama.cpp's Q8_0 blocks of 32) and dynamically quantized
// activations (per token, or Q8_0 blocks), LayerNorm, RMSNorm, GELU, SiLU-gated products,
// residual addition, multi-head attention (grouped-query, rotary positions, causal, with a KV
// cache), mean pooling and L2 normalisation. Tensors are [tokens, features] (one sequence, batch 1).
//
// What each computes is what the training simulation computes (models/bert.cpp, models/llama.cpp,
// qat/module_qat.h): the integers of every quantized product are the simulation's, and only the
// float summation order differs (the accumulators here are exact int32 per block, scaled once).
// Compiled with -ffp-contract=off (CMakeLists.txt).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "runtime/ops.h"
#include "runtime/strings.h"
#include "runtime/text_kernels.h"

namespace qd::rt {

namespace {

using A = Attr::Kind;

constexpr int64_t kMaxFeatures = int64_t{1} << 20;
constexpr int64_t kMaxVocab = int64_t{1} << 22;

std::vector<DType> f32_out(const Node&, const std::vector<const ValueInfo*>&) { return {DType::kF32}; }
std::vector<Shape> same_shape(const Node&, const std::vector<Shape>& in) { return {in[0]}; }

// [tokens, features] with static features.
std::string expect_rows(const ValueInfo* v, const char* what, int64_t features = -1) {
  if (v->dtype != DType::kF32) return cat(what, " must be f32, is ", dtype_name(v->dtype));
  if (v->shape.size() != 2 || v->shape[1] < 1) return cat(what, " must be [tokens, features], is ", shape_text(v->shape));
  if (features >= 0 && v->shape[1] != features) return cat(what, " has ", v->shape[1], " features, expected ", features);
  return "";
}

std::string expect_f32_vector(const Node& n, const char* key, int64_t size) {
  const Attr& a = n.at(key);
  if (a.dtype != DType::kF32 || a.shape != Shape{size}) return cat(key, " must be f32 [", size, "], is ", dtype_name(a.dtype), " ", shape_text(a.shape));
  return "";
}

// A weight [rows, cols]: f32, or i8 (symmetric, in [-127, 127]) with `weight_scale` f32 [rows,
// groups], groups dividing cols (1: one scale per row; cols / 32: Q8_0 blocks). Scales are finite
// (validate checks every float attribute) and may be negative: Q4_0's d is the block's largest
// value over -8.
std::string check_weight(const Node& n, int64_t rows, int64_t cols) {
  const Attr& w = n.at("weight");
  if (w.shape != Shape{rows, cols}) return cat("weight is ", shape_text(w.shape), ", expected ", rows, "x", cols);
  const Attr* s = n.find("weight_scale");
  if (w.dtype == DType::kF32) return s ? "an f32 weight takes no weight_scale" : "";
  if (w.dtype != DType::kI8) return cat("weight must be f32 or i8, is ", dtype_name(w.dtype));
  if (!s) return "an i8 weight needs weight_scale";
  if (s->dtype != DType::kF32 || s->shape.size() != 2 || s->shape[0] != rows || s->shape[1] < 1 || cols % s->shape[1] != 0)
    return cat("weight_scale must be f32 [", rows, ", groups] with groups dividing ", cols, ", is ", dtype_name(s->dtype), " ",
               shape_text(s->shape));
  const int8_t* q = w.as<int8_t>();
  const int64_t count = w.numel();  // not in the loop condition: a shape walk per weight was 6 % of loading a BERT
  for (int64_t i = 0; i < count; ++i)
    if (q[i] == -128) return cat("weight[", i, "] is -128: weights are symmetric int8, in [-127, 127]");
  return "";
}

QuantWeight weight_view(const Node& n) {
  const Attr& w = n.at("weight");
  QuantWeight q;
  q.rows = w.shape[0], q.cols = w.shape[1];
  if (w.dtype == DType::kF32) {
    q.f32 = w.as<float>();
  } else {
    const Attr& s = n.at("weight_scale");
    q.i8 = w.as<int8_t>();
    q.scale = s.as<float>();
    q.group = q.cols / s.shape[1];
  }
  return q;
}

// ---- embedding ---------------------------------------------------------------------------------

class Embedding : public OpKernel {
 public:
  explicit Embedding(const Node& n) : w_(weight_view(n)) {}
  void run(const std::vector<const Buffer*>& in, const std::vector<Buffer*>& out) override {
    const Buffer& ids = *in[0];
    for (int64_t t = 0; t < ids.numel(); ++t) {
      const int32_t id = ids.data<int32_t>()[t];
      if (id < 0 || id >= w_.rows) throw QdmError(cat("embedding: token id ", id, " at position ", t, " is outside [0, ", w_.rows, ")"));
      dequantize_row(w_, id, out[0]->data<float>() + t * w_.cols);
    }
  }

 private:
  QuantWeight w_;
};

OpSpec embedding_op() {
  OpSpec op;
  op.name = "embedding";
  op.doc = "token ids i32 [T] -> rows of the table, dequantized: f32 [T, dim]";
  op.attrs = {{"weight", A::kTensor}, {"weight_scale", A::kTensor, false}};
  op.check = [](const Node& n, const std::vector<const ValueInfo*>& in) -> std::string {
    if (in[0]->dtype != DType::kI32 || in[0]->shape.size() != 1) return cat("the ids must be i32 [tokens], are ", dtype_name(in[0]->dtype), " ", shape_text(in[0]->shape));
    const Attr& w = n.at("weight");
    if (w.shape.size() != 2 || w.shape[0] < 1 || w.shape[0] > kMaxVocab || w.shape[1] < 1 || w.shape[1] > kMaxFeatures)
      return cat("weight must be [vocabulary, dim], is ", shape_text(w.shape));
    return check_weight(n, w.shape[0], w.shape[1]);
  };
  op.infer = [](const Node& n, const std::vector<Shape>& in) { return std::vector<Shape>{{in[0][0], n.at("weight").shape[1]}}; };
  op.out_dtypes = f32_out;
  op.make = make_kernel<Embedding>;
  return op;
}

// ---- absolute positions -----------------------------------------------------------------------

class AddPositions : public OpKernel {
 public:
  explicit AddPositions(const Node& n) : w_(weight_view(n)) {
    if (const Attr* b = n.find("bias")) bias_ = b->as<float>();
  }
  void run(const std::vector<const Buffer*>& in, const std::vector<Buffer*>& out) override {
    const int64_t t = in[0]->shape[0], d = w_.cols;
    if (t > w_.rows) throw QdmError(cat("add_positions: ", t, " tokens, but the model has ", w_.rows, " positions"));
    row_.resize(static_cast<size_t>(d));
    for (int64_t r = 0; r < t; ++r) {
      dequantize_row(w_, r, row_.data());
      const float* x = in[0]->data<float>() + r * d;
      float* y = out[0]->data<float>() + r * d;
      // (x + position) + bias: the simulation's order (word + position + token type).
      for (int64_t j = 0; j < d; ++j) y[j] = x[j] + row_[static_cast<size_t>(j)];
      if (bias_)
        for (int64_t j = 0; j < d; ++j) y[j] += bias_[j];
    }
  }

 private:
  QuantWeight w_;
  const float* bias_ = nullptr;
  std::vector<float> row_;
};

OpSpec add_positions_op() {
  OpSpec op;
  op.name = "add_positions";
  op.doc = "f32 [T, d] -> x[t] + weight[t] (+ bias): absolute position embeddings (a BERT's, with its token type row as bias)";
  op.attrs = {{"weight", A::kTensor}, {"weight_scale", A::kTensor, false}, {"bias", A::kTensor, false}};
  op.check = [](const Node& n, const std::vector<const ValueInfo*>& in) -> std::string {
    const Attr& w = n.at("weight");
    if (w.shape.size() != 2 || w.shape[0] < 1 || w.shape[0] > (int64_t{1} << 20) || w.shape[1] < 1 || w.shape[1] > kMaxFeatures)
      return cat("weight must be [positions, dim], is ", shape_text(w.shape));
    if (std::string e = expect_rows(in[0], "the input", w.shape[1]); !e.empty()) return e;
    if (in[0]->shape[0] > w.shape[0]) return cat("the input has ", in[0]->shape[0], " tokens, the table ", w.shape[0], " positions");
    if (n.find("bias")) {
      if (std::string e = expect_f32_vector(n, "bias", w.shape[1]); !e.empty()) return e;
    }
    return check_weight(n, w.shape[0], w.shape[1]);
  };
  op.infer = same_shape;
  op.out_dtypes = f32_out;
  op.make = make_kernel<AddPositions>;
  return op;
}

// ---- linear ------------------------------------------------------------------------------------

ActQuant act_quant(const Node& n) {
  const Attr* a = n.find("input_quant");
  if (!a || a->s == "none") return ActQuant::kNone;
  return a->s == "per_token" ? ActQuant::kPerToken : ActQuant::kQ8_0;
}

class Linear : public OpKernel {
 public:
  explicit Linear(const Node& n) : w_(weight_view(n)), quant_(act_quant(n)), packed_(pack_linear(w_, quant_)) {
    if (const Attr* b = n.find("bias")) bias_ = b->as<float>();
  }
  void run(const std::vector<const Buffer*>& in, const std::vector<Buffer*>& out) override {
    const int64_t tokens = in[0]->shape.size() == 1 ? 1 : in[0]->shape[0];
    linear_forward(in[0]->data<float>(), tokens, w_, bias_, quant_, out[0]->data<float>(), scratch_, &packed_);
  }

 private:
  QuantWeight w_;
  ActQuant quant_;
  PackedLinear packed_;  // the weight rearranged for the tiled kernels (a second copy, in the kernels' order)
  const float* bias_ = nullptr;
  LinearScratch scratch_;
};

OpSpec linear_op() {
  OpSpec op;
  op.name = "linear";
  op.doc = "f32 [T, in] -> f32 [T, out] (or [in] -> [out]): x W^T + b, W int8 (per row or in groups) or f32; x quantized on the fly "
           "(input_quant per_token: one symmetric int8 scale per token; q8_0: llama.cpp's blocks of 32, fp16 scales)";
  op.attrs = {{"weight", A::kTensor}, {"weight_scale", A::kTensor, false}, {"bias", A::kTensor, false}, {"input_quant", A::kString, false}};
  op.check = [](const Node& n, const std::vector<const ValueInfo*>& in) -> std::string {
    const Attr& w = n.at("weight");
    if (w.shape.size() != 2 || w.shape[0] < 1 || w.shape[0] > kMaxVocab || w.shape[1] < 1 || w.shape[1] > kMaxFeatures)
      return cat("weight must be [out, in], is ", shape_text(w.shape));
    const int64_t out = w.shape[0], k = w.shape[1];
    const bool vector = in[0]->dtype == DType::kF32 && in[0]->shape.size() == 1;  // a pooled sentence, say
    if (vector && in[0]->shape[0] != k) return cat("the input has ", in[0]->shape[0], " features, expected ", k);
    if (!vector) {
      if (std::string e = expect_rows(in[0], "the input", k); !e.empty()) return e;
    }
    if (std::string e = check_weight(n, out, k); !e.empty()) return e;
    if (n.find("bias")) {
      if (std::string e = expect_f32_vector(n, "bias", out); !e.empty()) return e;
    }
    const Attr* q = n.find("input_quant");
    if (q && q->s != "none" && q->s != "per_token" && q->s != "q8_0") return cat("input_quant '", q->s, "': expected none, per_token or q8_0");
    const ActQuant aq = act_quant(n);
    if (aq != ActQuant::kNone && w.dtype != DType::kI8) return "a quantized input needs an i8 weight";
    if (aq == ActQuant::kQ8_0 && k % 32 != 0) return cat("q8_0 inputs need rows of a multiple of 32 values, not ", k);
    // A block's exact sum is an int32: at most 2^17 products of 127 x 127.
    if (aq == ActQuant::kPerToken && k > (int64_t{1} << 17) && n.at("weight_scale").shape[1] == 1)
      return cat("per_token inputs of ", k, " features against one scale per row overflow the int32 sums (at most 131072)");
    if (aq != ActQuant::kNone) {
      // The weight's groups and the input's blocks must nest (one divides the other).
      const int64_t wg = k / n.at("weight_scale").shape[1], xb = aq == ActQuant::kQ8_0 ? 32 : k;
      if (std::max(wg, xb) % std::min(wg, xb) != 0) return cat("weight groups of ", wg, " and input blocks of ", xb, " do not nest");
    }
    return "";
  };
  op.infer = [](const Node& n, const std::vector<Shape>& in) {
    const int64_t out = n.at("weight").shape[0];
    return std::vector<Shape>{in[0].size() == 1 ? Shape{out} : Shape{in[0][0], out}};
  };
  op.out_dtypes = f32_out;
  op.make = make_kernel<Linear>;
  return op;
}

// ---- norms -------------------------------------------------------------------------------------

template <bool kRms>
class Norm : public OpKernel {
 public:
  explicit Norm(const Node& n) : eps_(n.at("eps").f), weight_(n.at("weight").as<float>()) {
    if (!kRms) bias_ = n.at("bias").as<float>();
  }
  void run(const std::vector<const Buffer*>& in, const std::vector<Buffer*>& out) override {
    const int64_t t = in[0]->shape[0], d = in[0]->shape[1];
    for (int64_t r = 0; r < t; ++r) {
      const float* x = in[0]->data<float>() + r * d;
      float* y = out[0]->data<float>() + r * d;
      if (kRms)
        rms_norm_row(x, d, weight_, eps_, y);
      else
        layer_norm_row(x, d, weight_, bias_, eps_, y);
    }
  }

 private:
  float eps_;
  const float* weight_;
  const float* bias_ = nullptr;
};

OpSpec norm_op(bool rms) {
  OpSpec op;
  op.name = rms ? "rms_norm" : "layer_norm";
  op.doc = rms ? "x * rsqrt(mean(x^2) + eps) * weight, per token" : "(x - mean) * rsqrt(var + eps) * weight + bias, per token";
  op.attrs = {{"weight", A::kTensor}, {"eps", A::kFloat}};
  if (!rms) op.attrs.push_back({"bias", A::kTensor});
  using Check = std::string (*)(const Node&, const std::vector<const ValueInfo*>&);
  op.check = rms ? Check([](const Node& n, const std::vector<const ValueInfo*>& in) -> std::string {
    if (std::string e = expect_rows(in[0], "the input"); !e.empty()) return e;
    if (!(n.at("eps").f > 0.0f)) return cat("eps ", n.at("eps").f, " must be > 0");
    return expect_f32_vector(n, "weight", in[0]->shape[1]);
  })
                 : Check([](const Node& n, const std::vector<const ValueInfo*>& in) -> std::string {
    if (std::string e = expect_rows(in[0], "the input"); !e.empty()) return e;
    if (!(n.at("eps").f > 0.0f)) return cat("eps ", n.at("eps").f, " must be > 0");
    if (std::string e = expect_f32_vector(n, "weight", in[0]->shape[1]); !e.empty()) return e;
    return expect_f32_vector(n, "bias", in[0]->shape[1]);
  });
  op.infer = same_shape;
  op.out_dtypes = f32_out;
  op.make = rms ? make_kernel<Norm<true>> : make_kernel<Norm<false>>;
  return op;
}

// ---- elementwise -------------------------------------------------------------------------------

enum class Elementwise { kGelu, kSiluMul, kAdd };

template <Elementwise kKind>
class ElementwiseKernel : public OpKernel {
 public:
  void run(const std::vector<const Buffer*>& in, const std::vector<Buffer*>& out) override {
    // Static shapes were validated; dynamic token counts must agree at run time too.
    if (in.size() == 2 && in[0]->shape != in[1]->shape)
      throw QdmError(cat("operands of ", shape_text(in[0]->shape), " and ", shape_text(in[1]->shape), " at run time"));
    const int64_t n = out[0]->numel();
    const float* a = in[0]->data<float>();
    float* y = out[0]->data<float>();
    switch (kKind) {
      case Elementwise::kGelu:
        gelu_rows(a, n, y);
        break;
      case Elementwise::kSiluMul: {
        const float* b = in[1]->data<float>();
        for (int64_t i = 0; i < n; ++i) y[i] = silu(a[i]) * b[i];
        break;
      }
      case Elementwise::kAdd: {
        const float* b = in[1]->data<float>();
        for (int64_t i = 0; i < n; ++i) y[i] = a[i] + b[i];
        break;
      }
    }
  }
};

OpSpec elementwise_op(Elementwise k) {
  OpSpec op;
  op.name = k == Elementwise::kGelu ? "gelu" : k == Elementwise::kSiluMul ? "silu_mul" : "add";
  op.doc = k == Elementwise::kGelu ? "GELU, the erf form: x * (1 + erf(x / sqrt 2)) / 2 (erf to 4e-7)"
           : k == Elementwise::kSiluMul ? "silu(a) * b (the gated FFN of a llama)"
                                        : "a + b (a residual connection)";
  op.min_inputs = op.max_inputs = k == Elementwise::kGelu ? 1 : 2;
  op.check = [](const Node& n, const std::vector<const ValueInfo*>& in) -> std::string {
    (void)n;
    if (std::string e = expect_rows(in[0], "operand 0"); !e.empty()) return e;
    if (in.size() == 2) {
      if (std::string e = expect_rows(in[1], "operand 1", in[0]->shape[1]); !e.empty()) return e;
      if (in[0]->shape != in[1]->shape) return cat("operands differ in shape: ", shape_text(in[0]->shape), " and ", shape_text(in[1]->shape));
    }
    return "";
  };
  op.infer = same_shape;
  op.out_dtypes = f32_out;
  op.make = k == Elementwise::kGelu      ? make_kernel<ElementwiseKernel<Elementwise::kGelu>>
            : k == Elementwise::kSiluMul ? make_kernel<ElementwiseKernel<Elementwise::kSiluMul>>
                                         : make_kernel<ElementwiseKernel<Elementwise::kAdd>>;
  return op;
}

// ---- attention ---------------------------------------------------------------------------------

KvStore kv_store(const Node& n) {
  const Attr* a = n.find("kv_store");
  if (!a || a->s == "f32") return KvStore::kF32;
  return a->s == "f16" ? KvStore::kF16 : a->s == "per_token" ? KvStore::kPerToken : KvStore::kQ8_0;
}

class Attention : public OpKernel {
 public:
  explicit Attention(const Node& n) {
    cfg_.heads = n.at("heads").i;
    cfg_.kv_heads = n.at("kv_heads").i;
    cfg_.head_dim = n.at("head_dim").i;
    cfg_.causal = n.at("causal").i != 0;
    cfg_.rope_theta = n.find("rope_theta") ? n.at("rope_theta").f : 0.0f;
    cfg_.max_positions = n.at("max_positions").i;
    cfg_.kv = kv_store(n);
    cache_ = n.find("kv_cache") && n.at("kv_cache").i != 0;
  }
  void run(const std::vector<const Buffer*>& in, const std::vector<Buffer*>& out) override {
    if (in[1]->shape[0] != in[0]->shape[0] || in[2]->shape[0] != in[0]->shape[0])
      throw QdmError(cat("attention: q, k and v have ", in[0]->shape[0], ", ", in[1]->shape[0], " and ", in[2]->shape[0], " tokens"));
    if (!cache_) state_.clear();
    attention_forward(cfg_, in[0]->data<float>(), in[1]->data<float>(), in[2]->data<float>(), in[0]->shape[0], state_,
                      out[0]->data<float>());
  }
  void reset() override { state_.clear(); }

 private:
  AttentionConfig cfg_;
  bool cache_ = false;
  KvCache state_;
};

OpSpec attention_op() {
  OpSpec op;
  op.name = "attention";
  op.doc = "softmax(q k^T / sqrt(head_dim) [+ causal mask]) v per head; grouped-query (kv head j serves query heads "
           "j*r .. j*r+r-1); rotary positions on q and k (rope_theta > 0); kv_cache: keys and values of earlier runs kept; "
           "kv_store: how they are kept (f32, f16, per_token int8, q8_0 int8 blocks)";
  op.min_inputs = op.max_inputs = 3;
  op.attrs = {{"heads", A::kInt},         {"kv_heads", A::kInt},       {"head_dim", A::kInt},     {"causal", A::kInt},
              {"max_positions", A::kInt}, {"rope_theta", A::kFloat, false}, {"kv_cache", A::kInt, false},
              {"kv_store", A::kString, false}};
  op.check = [](const Node& n, const std::vector<const ValueInfo*>& in) -> std::string {
    const int64_t h = n.at("heads").i, kv = n.at("kv_heads").i, hd = n.at("head_dim").i, maxp = n.at("max_positions").i;
    if (h < 1 || h > 4096 || kv < 1 || h % kv != 0) return cat("heads ", h, " must be a multiple of kv_heads ", kv, " (both >= 1)");
    if (hd < 2 || hd > 4096 || hd % 2 != 0) return cat("head_dim ", hd, " must be even, in [2, 4096]");
    if (maxp < 1 || maxp > (int64_t{1} << 20)) return cat("max_positions ", maxp, " must be in [1, 2^20]");
    if (n.find("rope_theta") && !(n.at("rope_theta").f > 0.0f)) return "rope_theta must be > 0";
    if (n.find("kv_cache") && n.at("kv_cache").i != 0 && n.at("causal").i == 0) return "a KV cache needs causal attention";
    if (const Attr* kv = n.find("kv_store")) {
      if (kv->s != "f32" && kv->s != "f16" && kv->s != "per_token" && kv->s != "q8_0")
        return cat("kv_store '", kv->s, "': expected f32, f16, per_token or q8_0");
      if (kv->s == "q8_0" && hd % 32 != 0) return cat("a q8_0 KV cache needs head_dim a multiple of 32, not ", hd);
    }
    if (std::string e = expect_rows(in[0], "q", h * hd); !e.empty()) return e;
    if (std::string e = expect_rows(in[1], "k", kv * hd); !e.empty()) return e;
    if (std::string e = expect_rows(in[2], "v", kv * hd); !e.empty()) return e;
    if (in[0]->shape[0] != in[1]->shape[0] || in[0]->shape[0] != in[2]->shape[0]) return "q, k and v differ in tokens";
    return "";
  };
  op.infer = same_shape;
  op.out_dtypes = f32_out;
  op.make = make_kernel<Attention>;
  return op;
}

// ---- pooling -----------------------------------------------------------------------------------

class MeanPool : public OpKernel {
 public:
  void run(const std::vector<const Buffer*>& in, const std::vector<Buffer*>& out) override {
    const int64_t t = in[0]->shape[0], d = in[0]->shape[1];
    float* y = out[0]->data<float>();
    for (int64_t j = 0; j < d; ++j) {
      float s = 0.0f;
      for (int64_t r = 0; r < t; ++r) s += in[0]->data<float>()[r * d + j];
      y[j] = s / static_cast<float>(t);
    }
  }
};

class L2Normalize : public OpKernel {
 public:
  void run(const std::vector<const Buffer*>& in, const std::vector<Buffer*>& out) override {
    const int64_t d = in[0]->numel();
    const float* x = in[0]->data<float>();
    float s = 0.0f;
    for (int64_t j = 0; j < d; ++j) s += x[j] * x[j];
    const float norm = std::max(std::sqrt(s), 1e-12f);  // torch.nn.functional.normalize's eps
    for (int64_t j = 0; j < d; ++j) out[0]->data<float>()[j] = x[j] / norm;
  }
};

OpSpec mean_pool_op() {
  OpSpec op;
  op.name = "mean_pool";
  op.doc = "the mean over the tokens: f32 [T, d] -> [d] (sentence-transformers' mean pooling of one sentence)";
  op.check = [](const Node&, const std::vector<const ValueInfo*>& in) -> std::string { return expect_rows(in[0], "the input"); };
  op.infer = [](const Node&, const std::vector<Shape>& in) { return std::vector<Shape>{{in[0][1]}}; };
  op.out_dtypes = f32_out;
  op.make = make_kernel<MeanPool>;
  return op;
}

OpSpec l2_normalize_op() {
  OpSpec op;
  op.name = "l2_normalize";
  op.doc = "x / max(||x||, 1e-12) of a vector f32 [d]";
  op.check = [](const Node&, const std::vector<const ValueInfo*>& in) -> std::string {
    if (in[0]->dtype != DType::kF32 || in[0]->shape.size() != 1 || in[0]->shape[0] < 1)
      return cat("the input must be an f32 vector, is ", dtype_name(in[0]->dtype), " ", shape_text(in[0]->shape));
    return "";
  };
  op.infer = same_shape;
  op.out_dtypes = f32_out;
  op.make = make_kernel<L2Normalize>;
  return op;
}

// ---- last row ----------------------------------------------------------------------------------

class LastRow : public OpKernel {
 public:
  void run(const std::vector<const Buffer*>& in, const std::vector<Buffer*>& out) override {
    const int64_t t = in[0]->shape[0], d = in[0]->shape[1];
    if (t < 1) throw QdmError("last_row: no tokens");
    std::copy(in[0]->data<float>() + (t - 1) * d, in[0]->data<float>() + t * d, out[0]->data<float>());
  }
};

OpSpec last_row_op() {
  OpSpec op;
  op.name = "last_row";
  op.doc = "f32 [T, d] -> [1, d]: the last token's row (generation needs the head's logits for the last prompt token only)";
  op.check = [](const Node&, const std::vector<const ValueInfo*>& in) -> std::string { return expect_rows(in[0], "the input"); };
  op.infer = [](const Node&, const std::vector<Shape>& in) { return std::vector<Shape>{{1, in[0][1]}}; };
  op.out_dtypes = f32_out;
  op.make = make_kernel<LastRow>;
  return op;
}

}  // namespace

std::vector<OpSpec> text_ops() {
  return {embedding_op(),
          add_positions_op(),
          linear_op(),
          norm_op(false),
          norm_op(true),
          elementwise_op(Elementwise::kGelu),
          elementwise_op(Elementwise::kSiluMul),
          elementwise_op(Elementwise::kAdd),
          attention_op(),
          mean_pool_op(),
          l2_normalize_op(),
          last_row_op()};
}

}  // namespace qd::rt
