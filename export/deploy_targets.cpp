#include "export/deploy_targets.h"

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <stdexcept>

#include "runtime/interpreter.h"
#include "runtime/qdm.h"

#if defined(__aarch64__) && defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

namespace qd {

using rt::Layer;
using rt::Model;
using rt::OpKind;

namespace {

constexpr int64_t kInt16Max = 32767, kInt16Min = -32768;

// A conv layer's weights in the kernel's reduction order (ky, kx, c): [out_c][kernel^2 * in_c].
// (The model stores them OIHW: [out_c][c][ky][kx].)
std::vector<int8_t> weights_khwc(const Layer& l) {
  const int64_t k2 = int64_t{l.kernel} * l.kernel, per_out = k2 * l.in_c;
  std::vector<int8_t> w(l.weight.size());
  for (int64_t o = 0; o < l.out_c; ++o)
    for (int64_t c = 0; c < l.in_c; ++c)
      for (int64_t p = 0; p < k2; ++p) w[static_cast<size_t>(o * per_out + p * l.in_c + c)] = l.weight[static_cast<size_t>(o * per_out + c * k2 + p)];
  return w;
}

// The weights of a conv or linear layer as the kernel reads them: [out_c][K].
std::vector<int8_t> reduction_order(const Layer& l) { return l.kind == OpKind::kConv2d ? weights_khwc(l) : l.weight; }
int64_t reduction_length(const Layer& l) {
  return l.kind == OpKind::kConv2d ? int64_t{l.kernel} * l.kernel * l.in_c : int64_t{l.in_c};
}

// The values the layer's dot products can read: its input tensor's range, and a convolution's
// padding (the zero point).
ValueRange operand_range(const Model& m, const std::vector<ValueRange>& ranges, const Layer& l) {
  ValueRange r = ranges[static_cast<size_t>(l.input)];
  if (l.kind == OpKind::kConv2d && l.pad > 0) {
    const int32_t zp = m.tensors[static_cast<size_t>(l.input)].zero_point;
    r.lo = std::min(r.lo, zp), r.hi = std::max(r.hi, zp);
  }
  return r;
}

}  // namespace

const std::vector<DeployPlatform>& deploy_platforms() {
  static const std::vector<DeployPlatform> platforms{
      {"qdistill_run", "qdistill-run (this project's integer runtime), any CPU",
       "x86-64 (AVX-512 VNNI, AVX2 or none), ARM64 and others (portable C++)",
       "vpdpbusd / vpmaddwd on int16 / C++, all into int32", DotProduct::kExact, false},
      {"ort_x86_vnni", "ONNX Runtime CPU, x86-64 with VNNI",
       "Intel Cascade Lake, Ice Lake, Alder Lake and later (AVX512-VNNI, AVX-VNNI, AMX); AMD Zen 4 and later",
       "vpdpbusds: four u8 x s8 products into int32", DotProduct::kExact, false},
      {"ort_x86_avx512", "ONNX Runtime CPU, x86-64 AVX-512 without VNNI", "Intel Skylake-SP / Skylake-X",
       "vpmaddubsw: pairs of u8 x s8 products into int16, saturating", DotProduct::kPairSaturate16, false},
      {"ort_x86_avx2", "ONNX Runtime CPU, x86-64 AVX2 without VNNI",
       "Intel Haswell to Comet Lake, AMD Zen 1 to Zen 3", "vpmaddubsw: pairs of u8 x s8 products into int16, saturating",
       DotProduct::kPairSaturate16, false},
      {"ort_arm64_dot", "ONNX Runtime CPU, ARM64 with dot product or i8mm",
       "Cortex-A55, A76 and later, Neoverse, Apple M, AWS Graviton 2 and later", "udot / sdot / ummla / smmla into int32",
       DotProduct::kExact, false},
      {"ort_arm64_neon", "ONNX Runtime CPU, ARM64 without dot product", "Cortex-A53, A57, A72 (Raspberry Pi 3 and 4)",
       "smull + smlal: two s8 x s8 products in an int16 lane, wrapping", DotProduct::kPairWrap16, false},
      {"tensorrt", "TensorRT, NVIDIA GPU", "Turing and later (int8 tensor cores)",
       "int32 accumulation; int8 activations without zero points", DotProduct::kExact, true},
  };
  return platforms;
}

const DeployPlatform* find_platform(const std::string& id) {
  for (const DeployPlatform& p : deploy_platforms())
    if (id == p.id) return &p;
  return nullptr;
}

std::string this_cpu_platform() {
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx512vnni") || __builtin_cpu_supports("avxvnni")) return "ort_x86_vnni";
  // MLAS's AVX-512 "core" kernels need BW, DQ and VL.
  if (__builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    return "ort_x86_avx512";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "ort_x86_avx2";
  return "ort_x86_sse";
#elif defined(__aarch64__) && defined(__linux__)
  return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) ? "ort_arm64_dot" : "ort_arm64_neon";
#else
  return "other";
#endif
}

int32_t vpmaddubsw_pair(uint8_t a1, int8_t w1, uint8_t a2, int8_t w2) {
  const int32_t s = int32_t{a1} * w1 + int32_t{a2} * w2;
  return static_cast<int32_t>(std::clamp<int64_t>(s, kInt16Min, kInt16Max));
}

std::vector<ValueRange> tensor_ranges(const Model& m) {
  std::vector<ValueRange> r(m.tensors.size());
  for (size_t i = 0; i < m.layers.size(); ++i) {
    const Layer& l = m.layers[i];
    switch (l.kind) {
      case OpKind::kConv2d:
      case OpKind::kAdd: r[i + 1] = {l.act_min, l.act_max}; break;
      case OpKind::kMaxPool2d: r[i + 1] = r[static_cast<size_t>(l.input)]; break;
      default: break;  // global pool: any int8 value; linear: float logits
    }
  }
  return r;
}

PlatformVerdict check_platform(const Model& m, const DeployPlatform& p) {
  const std::string invalid = rt::validate(m);
  if (!invalid.empty()) throw std::invalid_argument("check_platform: invalid model: " + invalid);
  PlatformVerdict v;
  v.platform = &p;
  if (p.needs_symmetric_activations) {
    for (size_t t = 0; t + 1 < m.tensors.size(); ++t)
      if (m.tensors[t].zero_point != 0) {
        v.exact = false;
        v.reason = "activations have zero points (tensor " + std::to_string(t) + ": " +
                   std::to_string(m.tensors[t].zero_point) +
                   "); TensorRT takes int8 without zero points: train with qat.target: tensorrt";
        return v;
      }
  }
  if (p.dot == DotProduct::kExact) return v;

  const std::vector<ValueRange> ranges = tensor_ranges(m);
  for (const Layer& l : m.layers) {
    if (l.kind != OpKind::kConv2d && l.kind != OpKind::kLinear) continue;
    const ValueRange r = operand_range(m, ranges, l);
    const std::vector<int8_t> w = reduction_order(l);
    const int64_t k = reduction_length(l);
    int64_t worst = 0;
    if (p.dot == DotProduct::kPairSaturate16) {
      // x86: raw bytes u = q + 128 in [lo + 128, hi + 128]; pairs (2m, 2m + 1).
      const int64_t ulo = r.lo + 128, uhi = r.hi + 128;
      for (int64_t o = 0; o < l.out_c; ++o)
        for (int64_t j = 0; j < k; j += 2) {
          int64_t hi = 0, lo = 0;
          for (int64_t e = j; e < std::min(k, j + 2); ++e) {
            const int64_t x = w[static_cast<size_t>(o * k + e)];
            hi += std::max(ulo * x, uhi * x), lo += std::min(ulo * x, uhi * x);
          }
          worst = std::max({worst, hi, -lo});
          if (hi > kInt16Max || lo < kInt16Min) v.exact = false;
        }
    } else {
      // ARM64 NEON: signed operands q in [lo, hi]; any two products of one output may share a
      // lane, so bound by the two largest |w| of the channel.
      const int64_t amax = std::max(std::abs(int64_t{r.lo}), std::abs(int64_t{r.hi}));
      for (int64_t o = 0; o < l.out_c; ++o) {
        int64_t top1 = 0, top2 = 0;
        for (int64_t e = 0; e < k; ++e) {
          const int64_t x = std::abs(int64_t{w[static_cast<size_t>(o * k + e)]});
          if (x > top1) top2 = top1, top1 = x;
          else if (x > top2) top2 = x;
        }
        worst = std::max(worst, amax * (top1 + top2));
      }
      if (worst > kInt16Max) v.exact = false;
    }
    if (worst > v.worst_pair) v.worst_pair = worst, v.worst_layer = l.name;
  }
  if (!v.exact)
    v.reason = "a pair of products can reach " + std::to_string(v.worst_pair) + " (layer " + v.worst_layer +
               "), beyond the int16 lane's " + std::to_string(kInt16Max) +
               (p.dot == DotProduct::kPairSaturate16
                    ? ": weights need |q| <= 64 (train with qat.target: portable), or run ONNX Runtime with the "
                      "session option session.x64quantprecision=1 (slower u8 x u8 kernels)"
                    : "");
  return v;
}

// ---- the emulation -----------------------------------------------------------------------------

struct KernelEmulator::Impl {
  explicit Impl(Model model, DotProduct d) : interp(std::move(model)), dot(d) {
    if (dot == DotProduct::kPairWrap16) throw std::invalid_argument("KernelEmulator: kPairWrap16 is checked statically only");
    const Model& m = interp.model();
    // ONNX Runtime fuses a Conv into its integer kernel only when the conv's output goes straight
    // to one QuantizeLinear: not when several layers read it (a residual block's input gets one
    // Q/DQ pair per reader), nor when a Relu or Clip stays in between (the ONNX writer emits a
    // Relu for a clamp at the zero point, which ONNX Runtime folds into the Q only when that zero
    // point is the int8 minimum, and a Clip for any other clamp). Those convs run in float: exact
    // up to float rounding.
    std::vector<int> readers(m.tensors.size(), 0);
    for (const Layer& l : m.layers) {
      ++readers[static_cast<size_t>(l.input)];
      if (l.kind == OpKind::kAdd) ++readers[static_cast<size_t>(l.input2)];
    }
    for (size_t i = 0; i < m.layers.size(); ++i) {
      const Layer& l = m.layers[i];
      integer.push_back(l.kind == OpKind::kLinear ||
                        (readers[i + 1] == 1 && l.act_min == -128 && l.act_max == 127));
    }
    for (const Layer& l : m.layers) {
      weights.push_back(l.kind == OpKind::kConv2d || l.kind == OpKind::kLinear ? reduction_order(l) : std::vector<int8_t>{});
      std::vector<int32_t> sums;
      const int64_t k = reduction_length(l);
      for (int64_t o = 0; o < l.out_c && !weights.back().empty(); ++o) {
        int32_t s = 0;
        for (int64_t e = 0; e < k; ++e) s += weights.back()[static_cast<size_t>(o * k + e)];
        sums.push_back(s);
      }
      weight_sums.push_back(std::move(sums));
    }
  }

  // sum_k u[k] * w[k] for raw bytes u = q + 128, as the kernel sums it; counts clipped pairs.
  int64_t dot_u8s8(const int32_t* u, const int8_t* w, int64_t k, bool integer_kernel, int64_t& pairs,
                   int64_t& clipped) const {
    int64_t acc = 0;
    if (dot == DotProduct::kExact || !integer_kernel) {  // vpdpbusds: quads of products, saturating at int32
      for (int64_t j = 0; j < k; j += 4) {
        int64_t quad = 0;
        for (int64_t e = j; e < std::min(k, j + 4); ++e) quad += int64_t{u[e]} * w[e];
        acc = std::clamp<int64_t>(acc + quad, std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max());
      }
      return acc;
    }
    for (int64_t j = 0; j < k; j += 2) {  // vpmaddubsw, then vpmaddwd with ones and vpaddd
      const bool two = j + 1 < k;
      const int32_t exact = u[j] * int32_t{w[j]} + (two ? u[j + 1] * int32_t{w[j + 1]} : 0);
      const int32_t s = vpmaddubsw_pair(static_cast<uint8_t>(u[j]), w[j], two ? static_cast<uint8_t>(u[j + 1]) : 0,
                                        two ? w[j + 1] : 0);
      ++pairs;
      clipped += s != exact;
      acc += s;
    }
    return acc;
  }

  void conv(size_t li, std::vector<int8_t>& out, int64_t& pairs, int64_t& clipped) {
    const Model& m = interp.model();
    const Layer& l = m.layers[li];
    const rt::TensorInfo& ti = m.tensors[static_cast<size_t>(l.input)];
    const rt::TensorInfo& to = m.tensors[li + 1];
    const std::vector<int8_t>& in = interp.tensor(l.input);
    const int64_t k = reduction_length(l);
    column.resize(static_cast<size_t>(k));
    for (int32_t y = 0; y < to.h; ++y)
      for (int32_t x = 0; x < to.w; ++x) {
        // The receptive field in (ky, kx, c) order as raw bytes; padding is the zero point.
        int64_t e = 0;
        for (int32_t ky = 0; ky < l.kernel; ++ky)
          for (int32_t kx = 0; kx < l.kernel; ++kx) {
            const int32_t iy = y * l.stride - l.pad + ky, ix = x * l.stride - l.pad + kx;
            const bool inside = iy >= 0 && iy < ti.h && ix >= 0 && ix < ti.w;
            for (int32_t c = 0; c < ti.c; ++c)
              column[static_cast<size_t>(e++)] =
                  (inside ? in[(static_cast<size_t>(c) * ti.h + iy) * ti.w + ix] : ti.zero_point) + 128;
          }
        for (int32_t o = 0; o < l.out_c; ++o) {
          const int64_t raw =
              dot_u8s8(column.data(), &weights[li][static_cast<size_t>(o * k)], k, integer[li], pairs, clipped);
          const int64_t acc = raw - int64_t{ti.zero_point + 128} * weight_sums[li][static_cast<size_t>(o)];
          const int32_t with_bias = rt::saturate_int32(acc + l.bias[static_cast<size_t>(o)]);
          const int64_t v =
              to.zero_point + int64_t{rt::multiply_by_quantized_multiplier(with_bias, l.multiplier[static_cast<size_t>(o)])};
          out[(static_cast<size_t>(o) * to.h + y) * to.w + x] = static_cast<int8_t>(std::clamp<int64_t>(v, l.act_min, l.act_max));
        }
      }
  }

  void linear(size_t li, float* logits, int64_t& pairs, int64_t& clipped) {
    const Layer& l = interp.model().layers[li];
    const int32_t zp = interp.model().tensors[static_cast<size_t>(l.input)].zero_point;
    const std::vector<int8_t>& in = interp.tensor(l.input);
    column.resize(in.size());
    for (size_t e = 0; e < in.size(); ++e) column[e] = in[e] + 128;
    for (int32_t o = 0; o < l.out_c; ++o) {
      const int64_t raw = dot_u8s8(column.data(), &weights[li][static_cast<size_t>(o) * in.size()],
                                   static_cast<int64_t>(in.size()), integer[li], pairs, clipped);
      const int64_t acc = raw - int64_t{zp + 128} * weight_sums[li][static_cast<size_t>(o)];
      // As the interpreter: the int32 accumulator plus the bias, scaled to a float logit.
      logits[o] = static_cast<float>(int64_t{rt::saturate_int32(acc)} + l.bias[static_cast<size_t>(o)]) *
                  l.output_scale[static_cast<size_t>(o)];
    }
  }

  rt::Interpreter interp;
  DotProduct dot;
  std::vector<std::vector<int8_t>> weights;      // per layer, in reduction order (conv, linear)
  std::vector<std::vector<int32_t>> weight_sums;  // per layer and output channel
  std::vector<bool> integer;                      // per layer: run by an integer kernel
  std::vector<int32_t> column;
};

KernelEmulator::KernelEmulator(Model m, DotProduct dot)
    : impl_(std::make_unique<Impl>(std::move(m), dot)),
      pairs_(impl_->interp.model().layers.size(), 0),
      saturated_(impl_->interp.model().layers.size(), 0) {}

KernelEmulator::~KernelEmulator() = default;

void KernelEmulator::run(const float* pixels, float* logits) {
  const Model& m = impl_->interp.model();
  // The interpreter runs every other op; each conv output is replaced by the emulated one before
  // any later layer reads it.
  impl_->interp.run(pixels, logits, [&](int id, std::vector<int8_t>& values) {
    if (id == 0) return;
    const size_t li = static_cast<size_t>(id - 1);
    if (m.layers[li].kind == OpKind::kConv2d) impl_->conv(li, values, pairs_[li], saturated_[li]);
  });
  const size_t last = m.layers.size() - 1;
  impl_->linear(last, logits, pairs_[last], saturated_[last]);
}

}  // namespace qd
