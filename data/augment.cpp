#include "data/augment.h"

#include <random>

namespace qd {

torch::Tensor augment_batch(const torch::Tensor& x, const AugmentConfig& cfg, uint64_t seed) {
  if (!cfg.any()) return x;
  const int64_t b = x.size(0), h = x.size(2), w = x.size(3);
  std::mt19937_64 rng(seed);
  torch::Tensor out = x;
  if (cfg.random_crop) {
    const int64_t p = cfg.crop_padding;
    torch::Tensor padded = torch::constant_pad_nd(x, {p, p, p, p}, 0.0);  // [B, C, H+2p, W+2p]
    out = torch::empty_like(x);
    const uint64_t span = static_cast<uint64_t>(2 * p + 1);
    for (int64_t i = 0; i < b; ++i) {
      const int64_t dy = static_cast<int64_t>(rng() % span);
      const int64_t dx = static_cast<int64_t>(rng() % span);
      out[i].copy_(padded[i].narrow(1, dy, h).narrow(2, dx, w));
    }
  }
  if (cfg.hflip) {
    std::vector<int64_t> flip;
    for (int64_t i = 0; i < b; ++i)
      if (rng() & 1) flip.push_back(i);
    if (!flip.empty()) {
      torch::Tensor idx = torch::tensor(flip, torch::kInt64);
      if (out.data_ptr() == x.data_ptr()) out = x.clone();
      out.index_copy_(0, idx, out.index_select(0, idx).flip({3}));
    }
  }
  return out;
}

}  // namespace qd
