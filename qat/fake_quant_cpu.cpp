#include "qat/fake_quant_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>

namespace qd {

namespace {

// A dense layout (contiguous or channels-last) so that the kernel can walk memory linearly.
torch::Tensor dense(const torch::Tensor& x) {
  if (x.is_contiguous() || x.is_contiguous(torch::MemoryFormat::ChannelsLast)) return x;
  return x.contiguous();
}

// Round half to even for |t| < 2^22 under the default rounding mode: adding and subtracting
// 1.5 * 2^23 leaves no fraction bits. Vectorizes with plain SSE2, unlike nearbyint.
inline float round_even(float t) {
  constexpr float kMagic = 12582912.0f;
  return (t + kMagic) - kMagic;  // valid only without -ffast-math (which would fold it to t)
}

struct Chunk {
  float mn = std::numeric_limits<float>::infinity();
  float mx = -std::numeric_limits<float>::infinity();
};

void forward_kernel(const float* __restrict x, float* __restrict y, uint8_t* __restrict mask, int64_t n,
                    const FakeQuantParams& p, bool want_minmax, Chunk& c) {
  const float inv = 1.0f / p.scale, s = p.scale;
  const float lo = static_cast<float>(p.quant_min - p.zero_point), hi = static_cast<float>(p.quant_max - p.zero_point);
  // Clamping to [lo - 1, hi + 1] before rounding keeps the magic-number rounding in range and
  // leaves the mask unchanged (anything beyond rounds outside [lo, hi] either way).
  const float lo1 = lo - 1.0f, hi1 = hi + 1.0f;
  // Min/max per lane of a block (elementwise, so it vectorizes without -ffast-math), folded at
  // the end.
  constexpr int kLanes = 16;
  float mn[kLanes], mx[kLanes];
  for (int j = 0; j < kLanes; ++j) mn[j] = c.mn, mx[j] = c.mx;
  if (want_minmax) {
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes) {
      for (int j = 0; j < kLanes; ++j) {
        const float v = x[i + j];
        mn[j] = v < mn[j] ? v : mn[j];
        mx[j] = v > mx[j] ? v : mx[j];
      }
    }
    for (; i < n; ++i) mn[0] = x[i] < mn[0] ? x[i] : mn[0], mx[0] = x[i] > mx[0] ? x[i] : mx[0];
  }
  for (int64_t i = 0; i < n; ++i) {
    float t = x[i] * inv;
    t = t < lo1 ? lo1 : (t > hi1 ? hi1 : t);
    const float r = round_even(t);
    mask[i] = static_cast<uint8_t>((r >= lo) & (r <= hi));
    const float q = r < lo ? lo : (r > hi ? hi : r);
    y[i] = q * s;
  }
  for (int j = 0; j < kLanes; ++j) c.mn = std::min(c.mn, mn[j]), c.mx = std::max(c.mx, mx[j]);
}

class FakeQuantFunction : public torch::autograd::Function<FakeQuantFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& input,
                               FakeQuantParams p, float* minmax) {
    const torch::Tensor x = dense(input);
    torch::Tensor y = torch::empty_like(x);
    torch::Tensor mask = torch::empty_like(x, torch::kUInt8);
    const int64_t n = x.numel();
    constexpr int64_t kGrain = 1 << 15;
    const int64_t chunks = std::max<int64_t>(1, (n + kGrain - 1) / kGrain);
    std::vector<Chunk> parts(static_cast<size_t>(chunks));
    const float* xp = x.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    uint8_t* mp = mask.data_ptr<uint8_t>();
    at::parallel_for(0, chunks, 1, [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; ++k) {
        const int64_t lo = k * kGrain, len = std::min(n, lo + kGrain) - lo;
        forward_kernel(xp + lo, yp + lo, mp + lo, len, p, minmax != nullptr, parts[static_cast<size_t>(k)]);
      }
    });
    if (minmax) {
      Chunk all;
      for (const auto& c : parts) all.mn = std::min(all.mn, c.mn), all.mx = std::max(all.mx, c.mx);
      minmax[0] = all.mn;
      minmax[1] = all.mx;
    }
    ctx->save_for_backward({mask});
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const torch::Tensor mask = ctx->get_saved_variables()[0];
    torch::Tensor g = grads[0];
    if (g.strides() != mask.strides() || g.scalar_type() != torch::kFloat32) {
      torch::Tensor same = torch::empty_like(mask, torch::kFloat32);
      same.copy_(g);
      g = same;
    }
    torch::Tensor out = torch::empty_like(g);
    const float* gp = g.data_ptr<float>();
    const uint8_t* mp = mask.data_ptr<uint8_t>();
    float* op = out.data_ptr<float>();
    at::parallel_for(0, g.numel(), 1 << 15, [&](int64_t b, int64_t e) {
#pragma GCC ivdep
      for (int64_t i = b; i < e; ++i) op[i] = gp[i] * static_cast<float>(mp[i]);  // as LibTorch: grad * mask
    });
    return {out, torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor fake_quantize_per_tensor_cpu(const torch::Tensor& x, const FakeQuantParams& p, float* minmax) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == torch::kFloat32,
              "fake_quantize_per_tensor_cpu: expected a float32 CPU tensor");
  return FakeQuantFunction::apply(x, p, minmax);
}

}  // namespace qd
