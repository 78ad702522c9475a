#include "runtime/interpreter.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "runtime/qdm.h"

namespace qd::rt {

// Compiled with -ffp-contract=off (CMakeLists.txt): each float operation rounds on its own, as
// LibTorch's elementwise kernels do, so the input quantizes bit-identically to training.
int8_t quantize_input(float x, float mean, float inv_std, float inv_scale, int32_t zero_point) {
  const float normalized = (x - mean) * inv_std;
  float t = normalized * inv_scale;
  t = std::clamp(t, -1024.0f, 1024.0f);  // keeps the rounding in range (and NaN-free inputs sane)
  if (std::isnan(t)) t = 0.0f;
  const int32_t q = static_cast<int32_t>(std::nearbyint(t)) + zero_point;  // half to even
  return static_cast<int8_t>(std::clamp(q, -128, 127));
}

Interpreter::Interpreter(Model model) : model_(std::move(model)) {
  const std::string err = validate(model_);
  if (!err.empty()) throw QdmError("invalid model: " + err);
  acts_.resize(model_.tensors.size() - 1);
  for (size_t i = 0; i + 1 < model_.tensors.size(); ++i) acts_[i].resize(static_cast<size_t>(model_.tensors[i].numel()));
  int32_t widest = 0;
  packed_.resize(model_.layers.size());
  for (size_t i = 0; i < model_.layers.size(); ++i) {
    const Layer& l = model_.layers[i];
    widest = std::max(widest, l.out_c);
    if (l.kind != OpKind::kConv2d) continue;
    ConvShape s;
    s.in_c = l.in_c, s.out_c = l.out_c, s.kernel = l.kernel;
    packed_[i] = pack_conv_weights(l.weight.data(), s);
  }
  acc_.resize(static_cast<size_t>(widest));
}

namespace {

void max_pool(const int8_t* in, const TensorInfo& ti, const Layer& l, const TensorInfo& to, int8_t* out) {
  if (l.pad == 0) {  // the common case: every window lies inside the input, no bounds checks
    for (int32_t c = 0; c < to.c; ++c)
      for (int32_t y = 0; y < to.h; ++y) {
        int8_t* dst = out + (int64_t{c} * to.h + y) * to.w;
        const int8_t* top = in + (int64_t{c} * ti.h + int64_t{y} * l.stride) * ti.w;
        for (int32_t x = 0; x < to.w; ++x) {
          int8_t best = -128;
          for (int32_t ky = 0; ky < l.kernel; ++ky)
            for (int32_t kx = 0; kx < l.kernel; ++kx)
              best = std::max(best, top[int64_t{ky} * ti.w + int64_t{x} * l.stride + kx]);
          dst[x] = best;
        }
      }
    return;
  }
  for (int32_t c = 0; c < to.c; ++c)
    for (int32_t y = 0; y < to.h; ++y)
      for (int32_t x = 0; x < to.w; ++x) {
        int32_t best = std::numeric_limits<int32_t>::min();
        for (int32_t ky = 0; ky < l.kernel; ++ky) {
          const int32_t iy = y * l.stride - l.pad + ky;
          if (iy < 0 || iy >= ti.h) continue;  // padding never wins (ONNX pads MaxPool with -inf)
          for (int32_t kx = 0; kx < l.kernel; ++kx) {
            const int32_t ix = x * l.stride - l.pad + kx;
            if (ix < 0 || ix >= ti.w) continue;
            best = std::max<int32_t>(best, in[(int64_t{c} * ti.h + iy) * ti.w + ix]);
          }
        }
        // validate() guarantees each window overlaps the input (pad < kernel).
        out[(int64_t{c} * to.h + y) * to.w + x] = static_cast<int8_t>(best);
      }
}

// TFLite's quantized addition: both operands are scaled to a common scale, 2^left_shift finer
// than the coarser one, summed exactly in int32, and the sum requantized.
void add(const int8_t* a, const int8_t* b, int64_t n, const Layer& l, int32_t za, int32_t zb, int32_t zo, int8_t* out) {
  for (int64_t i = 0; i < n; ++i) {
    const int32_t sa = (static_cast<int32_t>(a[i]) - za) * (1 << l.left_shift);
    const int32_t sb = (static_cast<int32_t>(b[i]) - zb) * (1 << l.left_shift);
    const int64_t sum = int64_t{multiply_by_quantized_multiplier(sa, l.input_multiplier)} +
                        multiply_by_quantized_multiplier(sb, l.input2_multiplier);
    const int64_t v = zo + int64_t{multiply_by_quantized_multiplier(saturate_int32(sum), l.output_multiplier)};
    out[i] = static_cast<int8_t>(std::clamp<int64_t>(v, l.act_min, l.act_max));
  }
}

}  // namespace

void Interpreter::run(const float* pixels, float* logits) { run(pixels, logits, TensorHook{}); }

void Interpreter::run(const float* pixels, float* logits, const TensorHook& after) {
  const Model& m = model_;
  {  // the input quantization (the only float work besides the logits)
    const TensorInfo& t = m.tensors[0];
    const float inv_scale = 1.0f / t.scale;
    const int64_t plane = int64_t{t.h} * t.w;
    int8_t* q = acts_[0].data();
    for (int32_t c = 0; c < t.c; ++c) {
      const float mean = m.mean[static_cast<size_t>(c)], inv_std = m.inv_std[static_cast<size_t>(c)];
      for (int64_t p = c * plane; p < (c + 1) * plane; ++p)
        q[p] = quantize_input(pixels[p], mean, inv_std, inv_scale, t.zero_point);
    }
    if (after) after(0, acts_[0]);
  }
  for (size_t i = 0; i < m.layers.size(); ++i) {
    const Layer& l = m.layers[i];
    const TensorInfo& ti = m.tensors[static_cast<size_t>(l.input)];
    const TensorInfo& to = m.tensors[i + 1];
    const int8_t* in = acts_[static_cast<size_t>(l.input)].data();
    switch (l.kind) {
      case OpKind::kConv2d: {
        ConvShape s;
        s.in_c = ti.c, s.in_h = ti.h, s.in_w = ti.w;
        s.out_c = l.out_c, s.kernel = l.kernel, s.stride = l.stride, s.pad = l.pad;
        Requant r;
        r.in_zero = ti.zero_point, r.out_zero = to.zero_point;
        r.out_min = l.act_min, r.out_max = l.act_max;
        r.bias = l.bias.data();
        r.multiplier = l.multiplier.data();
        conv2d_s8(in, packed_[i], s, r, acts_[i + 1].data(), scratch_);
        break;
      }
      case OpKind::kMaxPool2d:
        max_pool(in, ti, l, to, acts_[i + 1].data());
        break;
      case OpKind::kAdd: {
        const TensorInfo& t2 = m.tensors[static_cast<size_t>(l.input2)];
        add(in, acts_[static_cast<size_t>(l.input2)].data(), to.numel(), l, ti.zero_point, t2.zero_point,
            to.zero_point, acts_[i + 1].data());
        break;
      }
      case OpKind::kGlobalAvgPool: {
        const int64_t plane = int64_t{ti.h} * ti.w;
        int8_t* out = acts_[i + 1].data();
        for (int32_t c = 0; c < ti.c; ++c) {
          int64_t sum = 0;
          for (int64_t p = c * plane; p < (c + 1) * plane; ++p) sum += static_cast<int32_t>(in[p]) - ti.zero_point;
          const int64_t v = to.zero_point + int64_t{multiply_by_quantized_multiplier(saturate_int32(sum), l.multiplier[0])};
          out[c] = static_cast<int8_t>(std::clamp<int64_t>(v, -128, 127));
        }
        break;
      }
      case OpKind::kLinear: {
        // One column: acc[o] = sum_i w[o, i] * (x[i] - zero_point).
        gemm_s8s8_s32(l.weight.data(), in, acc_.data(), l.out_c, 1, l.in_c, ti.zero_point);
        for (int32_t o = 0; o < l.out_c; ++o)
          logits[o] = static_cast<float>(int64_t{acc_[static_cast<size_t>(o)]} + l.bias[static_cast<size_t>(o)]) *
                      l.output_scale[static_cast<size_t>(o)];
        break;
      }
    }
    if (after && i + 1 < acts_.size()) after(static_cast<int>(i) + 1, acts_[i + 1]);
  }
}

void Interpreter::run_batch(const float* pixels, int64_t n, float* logits) {
  const int64_t in = model_.tensors[0].numel(), out = model_.num_classes();
  for (int64_t i = 0; i < n; ++i) run(pixels + i * in, logits + i * out);
}

}  // namespace qd::rt
