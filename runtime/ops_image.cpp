// The image ops of the op table: the int8 CNN of `.qdm` version 1 (conv2d with folded BN and fused
// ReLU, max pooling, residual addition, global average pooling, the classifier), plus the input
// quantization. One image at a time, CHW. Integer-only between the input quantization and the
// classifier's float logits.
#include <algorithm>
#include <cmath>
#include <limits>

#include "runtime/fixed_point.h"
#include "runtime/kernels.h"
#include "runtime/ops.h"
#include "runtime/strings.h"

namespace qd::rt {

int8_t quantize_input(float x, float mean, float inv_std, float inv_scale, int32_t zero_point);  // interpreter.cpp

namespace {

constexpr int64_t kMaxDim = 65536;
constexpr int64_t kMaxWeights = int64_t{1} << 26;
constexpr int64_t kMaxIm2col = int64_t{1} << 28;
constexpr int64_t kMaxLeftShift = 20;

using A = Attr::Kind;

// ---- shared checks -----------------------------------------------------------------------------

bool valid_multiplier(int64_t m, int64_t shift) {
  // 0, or normalized to [2^30, 2^31), shift in [-31, 30]: every shift of
  // multiply_by_quantized_multiplier is then defined.
  return (m == 0 || (m >= (int64_t{1} << 30) && m < (int64_t{1} << 31))) && shift >= -31 && shift <= 30;
}
constexpr const char* kMultiplierRule = "must be 0 or in [2^30, 2^31) with shift in [-31, 30]";

// Fixed-point multipliers are an ints attribute of (multiplier, shift) pairs.
std::string check_multipliers(const Node& n, const char* key, int64_t count) {
  const std::vector<int64_t>& v = n.at(key).ints;
  if (static_cast<int64_t>(v.size()) != 2 * count) return cat(key, " has ", v.size(), " ints, expected ", 2 * count);
  for (int64_t o = 0; o < count; ++o)
    if (!valid_multiplier(v[2 * o], v[2 * o + 1]))
      return cat(key, "[", o, "] (multiplier ", v[2 * o], ", shift ", v[2 * o + 1], ") ", kMultiplierRule);
  return "";
}

std::vector<QuantizedMultiplier> multipliers(const Attr& a) {
  std::vector<QuantizedMultiplier> out;
  for (size_t k = 0; k + 1 < a.ints.size(); k += 2) out.push_back({static_cast<int32_t>(a.ints[k]), static_cast<int>(a.ints[k + 1])});
  return out;
}

std::string check_range(const Node& n, const char* key, int64_t lo, int64_t hi) {
  const int64_t v = n.at(key).i;
  if (v < lo || v > hi) return cat(key, " ", v, " must be in [", lo, ", ", hi, "]");
  return "";
}

std::string check_clamp(const Node& n) {
  const int64_t lo = n.at("act_min").i, hi = n.at("act_max").i;
  if (lo < -128 || hi > 127 || lo > hi) return cat("act_min/act_max [", lo, ", ", hi, "] must satisfy -128 <= act_min <= act_max <= 127");
  return "";
}

std::string expect_i8_chw(const ValueInfo* v, const char* what) {
  if (v->dtype != DType::kI8) return cat(what, " must be i8, is ", dtype_name(v->dtype));
  if (v->shape.size() != 3 || shape_numel(v->shape) < 0) return cat(what, " must be a static CxHxW image, is ", shape_text(v->shape));
  for (int64_t d : v->shape)
    if (d > kMaxDim) return cat(what, " ", shape_text(v->shape), " has a dimension over ", kMaxDim);
  return "";
}

// Symmetric int8 weights [out, row] with int32 biases and per-row float scales; the int32
// accumulator must not overflow: |x - zero point| <= 255, so |acc| <= 255 * sum |w| + |bias|.
std::string check_weights(const Node& n, int64_t out, int64_t row) {
  const Attr& w = n.at("weight");
  const Attr& b = n.at("bias");
  const Attr& s = n.at("weight_scale");
  if (w.dtype != DType::kI8 || w.numel() != out * row) return cat("weight must be i8 with ", out, " x ", row, " values, is ", dtype_name(w.dtype), " ", shape_text(w.shape));
  if (b.dtype != DType::kI32 || b.shape != Shape{out}) return cat("bias must be i32 [", out, "], is ", dtype_name(b.dtype), " ", shape_text(b.shape));
  if (static_cast<int64_t>(s.floats.size()) != out) return cat("weight_scale has ", s.floats.size(), " values, expected ", out);
  for (size_t o = 0; o < s.floats.size(); ++o)
    if (!(s.floats[o] > 0.0f)) return cat("weight_scale[", o, "] ", s.floats[o], " must be > 0");
  const int8_t* wv = w.as<int8_t>();
  for (int64_t k = 0; k < out * row; ++k)
    if (wv[k] == -128) return cat("weight[", k, "] is -128: weights are symmetric int8, in [-127, 127]");
  for (int64_t o = 0; o < out; ++o) {
    int64_t l1 = 0;
    for (int64_t k = 0; k < row; ++k) l1 += std::abs(int64_t{wv[o * row + k]});
    const int64_t bias = b.as<int32_t>()[o];
    if (255 * l1 + std::abs(bias) > std::numeric_limits<int32_t>::max())
      return cat("output channel ", o, ": bias ", bias, " with sum |weight| = ", l1,
                 " can overflow the int32 accumulator (255 * sum |weight| + |bias| must be < 2^31)");
  }
  return "";
}

int64_t out_hw(int64_t in, int64_t kernel, int64_t stride, int64_t pad) { return (in + 2 * pad - kernel) / stride + 1; }

std::string check_window(const Node& n, const ValueInfo* in) {
  std::string e;
  if (!(e = check_range(n, "kernel", 1, kMaxDim)).empty()) return e;
  if (!(e = check_range(n, "stride", 1, kMaxDim)).empty()) return e;
  if (!(e = check_range(n, "pad", 0, n.at("kernel").i - 1)).empty()) return e;
  const int64_t k = n.at("kernel").i, p = n.at("pad").i;
  if (in->shape[1] + 2 * p < k || in->shape[2] + 2 * p < k)
    return cat("kernel ", k, " is larger than the padded input ", shape_text(in->shape), " (pad ", p, ")");
  return "";
}

std::vector<Shape> window_shape(const Node& n, const std::vector<Shape>& in, int64_t channels) {
  const int64_t k = n.at("kernel").i, s = n.at("stride").i, p = n.at("pad").i;
  return {{channels, out_hw(in[0][1], k, s, p), out_hw(in[0][2], k, s, p)}};
}

std::vector<DType> i8_out(const Node&, const std::vector<const ValueInfo*>&) { return {DType::kI8}; }
std::vector<DType> f32_out(const Node&, const std::vector<const ValueInfo*>&) { return {DType::kF32}; }
std::vector<Shape> same_shape(const Node&, const std::vector<Shape>& in) { return {in[0]}; }

// ---- quantize_image ----------------------------------------------------------------------------

class QuantizeImage : public OpKernel {
 public:
  explicit QuantizeImage(const Node& n) : mean_(n.at("mean").floats), inv_std_(n.at("inv_std").floats) {}
  void run(const std::vector<const Buffer*>& in, const std::vector<Buffer*>& out) override {
    const Buffer& x = *in[0];
    Buffer& q = *out[0];
    const float inv_scale = 1.0f / q.scale;
    const int64_t plane = x.shape[1] * x.shape[2];
    for (int64_t c = 0; c < x.shape[0]; ++c)
      for (int64_t p = c * plane; p < (c + 1) * plane; ++p)
        q.data<int8_t>()[p] = quantize_input(x.data<float>()[p], mean_[static_cast<size_t>(c)], inv_std_[static_cast<size_t>(c)],
                                             inv_scale, q.zero_point);
  }

 private:
  std::vector<float> mean_, inv_std_;
};

OpSpec quantize_image_op() {
  OpSpec op;
  op.name = "quantize_image";
  op.doc = "float pixels in [0, 1], CHW -> int8: clamp(round_half_even(((x - mean[c]) * inv_std[c]) / scale) + zero_point)";
  op.attrs = {{"mean", A::kFloats}, {"inv_std", A::kFloats}};
  op.check = [](const Node& n, const std::vector<const ValueInfo*>& in) -> std::string {
    const ValueInfo* x = in[0];
    if (x->dtype != DType::kF32 || x->shape.size() != 3 || shape_numel(x->shape) < 0)
      return cat("the input must be a static f32 CxHxW image, is ", dtype_name(x->dtype), " ", shape_text(x->shape));
    if (x->shape[0] > kMaxDim || x->shape[1] > kMaxDim || x->shape[2] > kMaxDim) return cat("input ", shape_text(x->shape), " is too large");
    const size_t c = static_cast<size_t>(x->shape[0]);
    if (n.at("mean").floats.size() != c || n.at("inv_std").floats.size() != c)
      return cat("mean and inv_std need ", c, " values each, have ", n.at("mean").floats.size(), " and ", n.at("inv_std").floats.size());
    return "";
  };
  op.infer = same_shape;
  op.out_dtypes = i8_out;
  op.make = make_kernel<QuantizeImage>;
  return op;
}

// ---- conv2d ------------------------------------------------------------------------------------

class Conv2d : public OpKernel {
 public:
  Conv2d(const Node& n, const Graph& g)
      : bias_(n.at("bias").as<int32_t>()),
        act_min_(static_cast<int32_t>(n.at("act_min").i)),
        act_max_(static_cast<int32_t>(n.at("act_max").i)) {
    const ValueInfo& in = g.values[static_cast<size_t>(n.inputs[0])];
    shape_.in_c = static_cast<int>(in.shape[0]);
    shape_.out_c = static_cast<int>(n.at("weight").shape[0]);
    shape_.kernel = static_cast<int>(n.at("kernel").i);
    shape_.stride = static_cast<int>(n.at("stride").i);
    shape_.pad = static_cast<int>(n.at("pad").i);
    packed_ = pack_conv_weights(n.at("weight").as<int8_t>(), shape_);
    multiplier_ = multipliers(n.at("multiplier"));
  }
  void run(const std::vector<const Buffer*>& in, const std::vector<Buffer*>& out) override {
    const Buffer& x = *in[0];
    ConvShape s = shape_;
    s.in_h = static_cast<int>(x.shape[1]), s.in_w = static_cast<int>(x.shape[2]);
    Requant r;
    r.in_zero = x.zero_point, r.out_zero = out[0]->zero_point;
    r.out_min = act_min_, r.out_max = act_max_;
    r.bias = bias_;
    r.multiplier = multiplier_.data();
    conv2d_s8(x.data<int8_t>(), packed_, s, r, out[0]->data<int8_t>(), scratch_);
  }

 private:
  const int32_t* bias_;  // into the node's attribute, which the executor's graph keeps
  int32_t act_min_, act_max_;
  ConvShape shape_;
  PackedConvWeights packed_;
  std::vector<QuantizedMultiplier> multiplier_;
  ConvScratch scratch_;
};

OpSpec conv2d_op() {
  OpSpec op;
  op.name = "conv2d";
  op.doc = "int8 convolution (BN folded), int32 bias, per-channel fixed-point requantization, clamp (a fused ReLU)";
  op.attrs = {{"kernel", A::kInt},      {"stride", A::kInt},  {"pad", A::kInt},          {"weight", A::kTensor},
              {"bias", A::kTensor},     {"weight_scale", A::kFloats}, {"multiplier", A::kInts},
              {"act_min", A::kInt},     {"act_max", A::kInt}};
  op.check = [](const Node& n, const std::vector<const ValueInfo*>& in) -> std::string {
    std::string e;
    if (!(e = expect_i8_chw(in[0], "the input")).empty()) return e;
    if (!(e = check_window(n, in[0])).empty()) return e;
    const Attr& w = n.at("weight");
    const int64_t k = n.at("kernel").i;
    if (w.shape.size() != 4 || w.shape[1] != in[0]->shape[0] || w.shape[2] != k || w.shape[3] != k)
      return cat("weight ", shape_text(w.shape), " must be [out, ", in[0]->shape[0], ", ", k, ", ", k, "] for input ", shape_text(in[0]->shape));
    const int64_t out = w.shape[0], row = w.shape[1] * k * k;
    if (out < 1 || out > kMaxDim || out * row > kMaxWeights) return cat("weight ", shape_text(w.shape), " is over the limits");
    const int64_t oh = out_hw(in[0]->shape[1], k, n.at("stride").i, n.at("pad").i), ow = out_hw(in[0]->shape[2], k, n.at("stride").i, n.at("pad").i);
    if (row * oh * ow > kMaxIm2col) return cat("im2col matrix of ", row, " x ", oh * ow, " bytes is over the limit of 2^28");
    if (!(e = check_weights(n, out, row)).empty()) return e;
    if (!(e = check_multipliers(n, "multiplier", out)).empty()) return e;
    return check_clamp(n);
  };
  op.infer = [](const Node& n, const std::vector<Shape>& in) { return window_shape(n, in, n.at("weight").shape[0]); };
  op.out_dtypes = i8_out;
  op.make = make_kernel<Conv2d>;
  return op;
}

// ---- maxpool2d ---------------------------------------------------------------------------------

class MaxPool : public OpKernel {
 public:
  explicit MaxPool(const Node& n)
      : k_(static_cast<int32_t>(n.at("kernel").i)), s_(static_cast<int32_t>(n.at("stride").i)), p_(static_cast<int32_t>(n.at("pad").i)) {}
  void run(const std::vector<const Buffer*>& in, const std::vector<Buffer*>& out) override {
    const Buffer& x = *in[0];
    Buffer& y = *out[0];
    const int64_t ih = x.shape[1], iw = x.shape[2], oc = y.shape[0], oh = y.shape[1], ow = y.shape[2];
    const int8_t* src = x.data<int8_t>();
    int8_t* dst = y.data<int8_t>();
    for (int64_t c = 0; c < oc; ++c)
      for (int64_t yy = 0; yy < oh; ++yy)
        for (int64_t xx = 0; xx < ow; ++xx) {
          int32_t best = std::numeric_limits<int32_t>::min();
          for (int32_t ky = 0; ky < k_; ++ky) {
            const int64_t iy = yy * s_ - p_ + ky;
            if (iy < 0 || iy >= ih) continue;  // padding never wins (ONNX pads MaxPool with -inf)
            for (int32_t kx = 0; kx < k_; ++kx) {
              const int64_t ix = xx * s_ - p_ + kx;
              if (ix < 0 || ix >= iw) continue;
              best = std::max<int32_t>(best, src[(c * ih + iy) * iw + ix]);
            }
          }
          dst[(c * oh + yy) * ow + xx] = static_cast<int8_t>(best);  // each window overlaps the input (pad < kernel)
        }
  }

 private:
  int32_t k_, s_, p_;
};

OpSpec maxpool2d_op() {
  OpSpec op;
  op.name = "maxpool2d";
  op.doc = "max pooling of int8 values (the output keeps the input's scale and zero point)";
  op.attrs = {{"kernel", A::kInt}, {"stride", A::kInt}, {"pad", A::kInt}};
  op.check = [](const Node& n, const std::vector<const ValueInfo*>& in) -> std::string {
    std::string e;
    if (!(e = expect_i8_chw(in[0], "the input")).empty()) return e;
    return check_window(n, in[0]);
  };
  op.infer = [](const Node& n, const std::vector<Shape>& in) { return window_shape(n, in, in[0][0]); };
  op.out_dtypes = i8_out;
  op.make = make_kernel<MaxPool>;
  return op;
}

// ---- add_i8 ------------------------------------------------------------------------------------

// TFLite's quantized addition: both operands are scaled to a common scale, 2^left_shift finer than
// the coarser one, summed exactly in int32, and the sum requantized.
class AddI8 : public OpKernel {
 public:
  explicit AddI8(const Node& n)
      : shift_(static_cast<int32_t>(n.at("left_shift").i)),
        m1_(multipliers(n.at("input_multiplier"))[0]),
        m2_(multipliers(n.at("input2_multiplier"))[0]),
        mo_(multipliers(n.at("output_multiplier"))[0]),
        lo_(static_cast<int32_t>(n.at("act_min").i)),
        hi_(static_cast<int32_t>(n.at("act_max").i)) {}
  void run(const std::vector<const Buffer*>& in, const std::vector<Buffer*>& out) override {
    const Buffer &a = *in[0], &b = *in[1];
    Buffer& y = *out[0];
    const int8_t *pa = a.data<int8_t>(), *pb = b.data<int8_t>();
    int8_t* py = y.data<int8_t>();
    for (int64_t i = 0; i < y.numel(); ++i) {
      const int32_t sa = (static_cast<int32_t>(pa[i]) - a.zero_point) * (1 << shift_);
      const int32_t sb = (static_cast<int32_t>(pb[i]) - b.zero_point) * (1 << shift_);
      const int64_t sum = int64_t{multiply_by_quantized_multiplier(sa, m1_)} + multiply_by_quantized_multiplier(sb, m2_);
      const int64_t v = y.zero_point + int64_t{multiply_by_quantized_multiplier(saturate_int32(sum), mo_)};
      py[i] = static_cast<int8_t>(std::clamp<int64_t>(v, lo_, hi_));
    }
  }

 private:
  int32_t shift_;
  QuantizedMultiplier m1_, m2_, mo_;
  int32_t lo_, hi_;
};

OpSpec add_i8_op() {
  OpSpec op;
  op.name = "add_i8";
  op.doc = "residual addition of two int8 tensors, requantized (TFLite's scheme), clamp (a fused ReLU)";
  op.min_inputs = op.max_inputs = 2;
  op.attrs = {{"left_shift", A::kInt},        {"input_multiplier", A::kInts}, {"input2_multiplier", A::kInts},
              {"output_multiplier", A::kInts}, {"act_min", A::kInt},          {"act_max", A::kInt}};
  op.check = [](const Node& n, const std::vector<const ValueInfo*>& in) -> std::string {
    std::string e;
    if (!(e = expect_i8_chw(in[0], "operand 0")).empty()) return e;
    if (!(e = expect_i8_chw(in[1], "operand 1")).empty()) return e;
    if (in[0]->shape != in[1]->shape) return cat("operands differ in shape: ", shape_text(in[0]->shape), " and ", shape_text(in[1]->shape));
    if (!(e = check_range(n, "left_shift", 0, kMaxLeftShift)).empty()) return e;
    for (const char* key : {"input_multiplier", "input2_multiplier", "output_multiplier"})
      if (!(e = check_multipliers(n, key, 1)).empty()) return e;
    return check_clamp(n);
  };
  op.infer = same_shape;
  op.out_dtypes = i8_out;
  op.make = make_kernel<AddI8>;
  return op;
}

// ---- global_avg_pool ---------------------------------------------------------------------------

class GlobalAvgPool : public OpKernel {
 public:
  explicit GlobalAvgPool(const Node& n) : m_(multipliers(n.at("multiplier"))[0]) {}
  void run(const std::vector<const Buffer*>& in, const std::vector<Buffer*>& out) override {
    const Buffer& x = *in[0];
    const int64_t plane = x.shape[1] * x.shape[2];
    const int8_t* src = x.data<int8_t>();
    for (int64_t c = 0; c < x.shape[0]; ++c) {
      int64_t sum = 0;
      for (int64_t p = c * plane; p < (c + 1) * plane; ++p) sum += static_cast<int32_t>(src[p]) - x.zero_point;
      const int64_t v = out[0]->zero_point + int64_t{multiply_by_quantized_multiplier(saturate_int32(sum), m_)};
      out[0]->data<int8_t>()[c] = static_cast<int8_t>(std::clamp<int64_t>(v, -128, 127));
    }
  }

 private:
  QuantizedMultiplier m_;
};

OpSpec global_avg_pool_op() {
  OpSpec op;
  op.name = "global_avg_pool";
  op.doc = "mean over H x W of int8 values, requantized: [C, H, W] -> [C, 1, 1]";
  op.attrs = {{"multiplier", A::kInts}};
  op.check = [](const Node& n, const std::vector<const ValueInfo*>& in) -> std::string {
    if (std::string e = expect_i8_chw(in[0], "the input"); !e.empty()) return e;
    return check_multipliers(n, "multiplier", 1);
  };
  op.infer = [](const Node&, const std::vector<Shape>& in) { return std::vector<Shape>{{in[0][0], 1, 1}}; };
  op.out_dtypes = i8_out;
  op.make = make_kernel<GlobalAvgPool>;
  return op;
}

// ---- linear_i8 ---------------------------------------------------------------------------------

// The classifier: logits[o] = float(sum_i w[o, i] * (x[i] - zero_point) + bias[o]) * output_scale[o].
class LinearI8 : public OpKernel {
 public:
  explicit LinearI8(const Node& n)
      : weight_(n.at("weight").as<int8_t>()),
        bias_(n.at("bias").as<int32_t>()),
        scale_(n.at("output_scale").floats.data()),
        out_c_(static_cast<int>(n.at("weight").shape[0])),
        in_c_(static_cast<int>(n.at("weight").shape[1])),
        acc_(static_cast<size_t>(out_c_)) {}
  void run(const std::vector<const Buffer*>& in, const std::vector<Buffer*>& out) override {
    gemm_s8s8_s32(weight_, in[0]->data<int8_t>(), acc_.data(), out_c_, 1, in_c_, in[0]->zero_point);
    for (int o = 0; o < out_c_; ++o)
      out[0]->data<float>()[o] = static_cast<float>(int64_t{acc_[static_cast<size_t>(o)]} + bias_[o]) * scale_[o];
  }

 private:
  // Into the node's attributes, which the executor's graph keeps.
  const int8_t* weight_;
  const int32_t* bias_;
  const float* scale_;
  int out_c_, in_c_;
  std::vector<int32_t> acc_;
};

OpSpec linear_i8_op() {
  OpSpec op;
  op.name = "linear_i8";
  op.doc = "the classifier: int8 x int8 -> int32 + bias, scaled to float logits (output_scale = in_scale * weight_scale)";
  op.attrs = {{"weight", A::kTensor}, {"bias", A::kTensor}, {"weight_scale", A::kFloats}, {"output_scale", A::kFloats}};
  op.check = [](const Node& n, const std::vector<const ValueInfo*>& in) -> std::string {
    std::string e;
    if (!(e = expect_i8_chw(in[0], "the input")).empty()) return e;
    const Attr& w = n.at("weight");
    const int64_t numel = shape_numel(in[0]->shape);
    if (w.shape.size() != 2 || w.shape[1] != numel)
      return cat("weight ", shape_text(w.shape), " must be [out, ", numel, "] for input ", shape_text(in[0]->shape));
    const int64_t out = w.shape[0];
    if (out < 1 || out > kMaxDim || out * numel > kMaxWeights) return cat("weight ", shape_text(w.shape), " is over the limits");
    if (!(e = check_weights(n, out, numel)).empty()) return e;
    if (static_cast<int64_t>(n.at("output_scale").floats.size()) != out)
      return cat("output_scale has ", n.at("output_scale").floats.size(), " values, expected ", out);
    return "";
  };
  op.infer = [](const Node& n, const std::vector<Shape>&) { return std::vector<Shape>{{n.at("weight").shape[0]}}; };
  op.out_dtypes = f32_out;
  op.make = make_kernel<LinearI8>;
  return op;
}

}  // namespace

std::vector<OpSpec> image_ops() {
  return {quantize_image_op(), conv2d_op(), maxpool2d_op(), add_i8_op(), global_avg_pool_op(), linear_i8_op()};
}

}  // namespace qd::rt
