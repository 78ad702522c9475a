// The interpreter against a plain double-precision reference of the semantics in runtime/model.h,
// on a hand-built model that uses every op (strided/padded conv, fused ReLU and clamps, padded
// max pool, residual add, global average pool, linear). No LibTorch.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "runtime/interpreter.h"
#include "runtime/qdm.h"
#include "tests/runtime/model_builders.h"

namespace qd::rt {
namespace {

double real(QuantizedMultiplier q) { return q.multiplier * std::pow(2.0, q.shift - 31); }
int32_t round_half_up(double v) { return static_cast<int32_t>(std::floor(v + 0.5)); }
int8_t clamp8(int64_t v, int32_t lo = -128, int32_t hi = 127) { return static_cast<int8_t>(std::clamp<int64_t>(v, lo, hi)); }

using namespace test_models;

Model model() { return every_op_model(); }

// The reference: every layer from its definition, in doubles, rounding once (half up).
std::vector<std::vector<int32_t>> reference(const Model& m, const std::vector<float>& x, std::vector<double>& logits) {
  std::vector<std::vector<int32_t>> t(m.tensors.size());
  const TensorInfo& t0 = m.tensors[0];
  for (float v : x) t[0].push_back(quantize_input(v, m.mean[0], m.inv_std[0], 1.0f / t0.scale, t0.zero_point));
  for (size_t i = 0; i < m.layers.size(); ++i) {
    const Layer& l = m.layers[i];
    const TensorInfo& ti = m.tensors[static_cast<size_t>(l.input)];
    const TensorInfo& to = m.tensors[i + 1];
    const std::vector<int32_t>& in = t[static_cast<size_t>(l.input)];
    std::vector<int32_t>& out = t[i + 1];
    out.assign(static_cast<size_t>(to.numel()), 0);
    for (int32_t c = 0; c < to.c; ++c)
      for (int32_t y = 0; y < to.h; ++y)
        for (int32_t xx = 0; xx < to.w; ++xx) {
          const size_t o = static_cast<size_t>((c * to.h + y) * to.w + xx);
          if (l.kind == OpKind::kConv2d) {
            int64_t acc = l.bias[static_cast<size_t>(c)];
            for (int32_t ic = 0; ic < l.in_c; ++ic)
              for (int32_t ky = 0; ky < l.kernel; ++ky)
                for (int32_t kx = 0; kx < l.kernel; ++kx) {
                  const int32_t iy = y * l.stride - l.pad + ky, ix = xx * l.stride - l.pad + kx;
                  if (iy < 0 || iy >= ti.h || ix < 0 || ix >= ti.w) continue;  // padding is real 0
                  acc += l.weight[static_cast<size_t>(((c * l.in_c + ic) * l.kernel + ky) * l.kernel + kx)] *
                         (in[static_cast<size_t>((ic * ti.h + iy) * ti.w + ix)] - ti.zero_point);
                }
            out[o] = clamp8(to.zero_point + round_half_up(static_cast<double>(acc) * real(l.multiplier[static_cast<size_t>(c)])),
                            l.act_min, l.act_max);
          } else if (l.kind == OpKind::kAdd) {
            const TensorInfo& t2 = m.tensors[static_cast<size_t>(l.input2)];
            const double v = (in[o] - ti.zero_point) * double{ti.scale} +
                             (t[static_cast<size_t>(l.input2)][o] - t2.zero_point) * double{t2.scale};
            out[o] = clamp8(to.zero_point + round_half_up(v / to.scale), l.act_min, l.act_max);
          } else if (l.kind == OpKind::kMaxPool2d) {
            int32_t best = -1000;
            for (int32_t ky = 0; ky < l.kernel; ++ky)
              for (int32_t kx = 0; kx < l.kernel; ++kx) {
                const int32_t iy = y * l.stride - l.pad + ky, ix = xx * l.stride - l.pad + kx;
                if (iy >= 0 && iy < ti.h && ix >= 0 && ix < ti.w)
                  best = std::max(best, in[static_cast<size_t>((c * ti.h + iy) * ti.w + ix)]);
              }
            out[o] = best;
          } else if (l.kind == OpKind::kGlobalAvgPool) {
            int64_t sum = 0;
            for (int32_t p = 0; p < ti.h * ti.w; ++p) sum += in[static_cast<size_t>(c * ti.h * ti.w + p)] - ti.zero_point;
            out[o] = clamp8(to.zero_point + round_half_up(static_cast<double>(sum) * real(l.multiplier[0])));
          }
        }
    if (l.kind == OpKind::kLinear) {
      logits.assign(static_cast<size_t>(l.out_c), 0.0);
      for (int32_t oc = 0; oc < l.out_c; ++oc) {
        int64_t acc = l.bias[static_cast<size_t>(oc)];
        for (int32_t k = 0; k < l.in_c; ++k)
          acc += l.weight[static_cast<size_t>(oc * l.in_c + k)] * (in[static_cast<size_t>(k)] - ti.zero_point);
        logits[static_cast<size_t>(oc)] = static_cast<double>(acc) * l.output_scale[static_cast<size_t>(oc)];
      }
    }
  }
  return t;
}

TEST(Interpreter, EveryOpMatchesTheReference) {
  const Model m = model();
  ASSERT_EQ(validate(m), "");
  Interpreter interp(m);
  std::mt19937 gen(5);
  std::uniform_real_distribution<float> px(0.0f, 1.0f);
  int add_off_by_one = 0, add_values = 0, nonzero_relu = 0;
  for (int img = 0; img < 200; ++img) {
    std::vector<float> x(36);
    for (float& v : x) v = px(gen);
    std::vector<float> logits(5);
    interp.run(x.data(), logits.data());
    std::vector<double> want_logits;
    const auto want = reference(m, x, want_logits);
    for (size_t id = 0; id + 1 < m.tensors.size(); ++id) {
      const std::vector<int8_t>& got = interp.tensor(static_cast<int>(id));
      ASSERT_EQ(got.size(), want[id].size());
      for (size_t e = 0; e < got.size(); ++e) {
        const int d = std::abs(got[e] - want[id][e]);
        if (id == 3) {  // the add: TFLite's three roundings may differ by one step from one exact rounding
          ASSERT_LE(d, 1) << "tensor " << id << " element " << e;
          add_off_by_one += d, ++add_values;
          nonzero_relu += got[e] > m.tensors[3].zero_point;
        } else {
          ASSERT_EQ(d, 0) << "tensor " << id << " element " << e << " image " << img;
        }
      }
    }
    for (size_t c = 0; c < 5; ++c) EXPECT_FLOAT_EQ(logits[c], static_cast<float>(want_logits[c])) << c;
  }
  EXPECT_LT(add_off_by_one, add_values / 100);
  EXPECT_GT(nonzero_relu, add_values / 10);  // the model is not saturated into a constant
}

TEST(Interpreter, InputQuantizationRoundsHalfToEvenAndClamps) {
  // (x - 0) * 1 * (1 / 0.5): x = 1.25 -> 2.5 -> 2, x = 1.75 -> 3.5 -> 4 (ties to even, as LibTorch).
  EXPECT_EQ(quantize_input(1.25f, 0.0f, 1.0f, 2.0f, 0), 2);
  EXPECT_EQ(quantize_input(1.75f, 0.0f, 1.0f, 2.0f, 0), 4);
  EXPECT_EQ(quantize_input(-1.25f, 0.0f, 1.0f, 2.0f, 0), -2);
  EXPECT_EQ(quantize_input(1.25f, 0.0f, 1.0f, 2.0f, 10), 12);
  EXPECT_EQ(quantize_input(1000.0f, 0.0f, 1.0f, 2.0f, 0), 127);
  EXPECT_EQ(quantize_input(-1000.0f, 0.0f, 1.0f, 2.0f, 0), -128);
  EXPECT_EQ(quantize_input(std::nanf(""), 0.0f, 1.0f, 2.0f, 7), 7);  // NaN pixels read as real 0
}

TEST(Interpreter, RefusesAnInvalidModel) {
  Model m = model();
  m.layers[0].weight.pop_back();
  EXPECT_THROW(Interpreter{m}, QdmError);
}

}  // namespace
}  // namespace qd::rt
