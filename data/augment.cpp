#include "data/augment.h"

#include <random>

#include "data/sampler.h"

namespace qd {

int64_t augment_view(const AugmentConfig& cfg, uint64_t seed, int64_t epoch, int64_t index) {
  if (cfg.views <= 0) return -1;
  return static_cast<int64_t>(mix_seed(mix_seed(seed ^ 0x5bd1e995ULL, static_cast<uint64_t>(epoch)),
                                       static_cast<uint64_t>(index)) %
                              static_cast<uint64_t>(cfg.views));
}

uint64_t augment_view_seed(uint64_t seed, int64_t index, int64_t view) {
  return mix_seed(mix_seed(seed, static_cast<uint64_t>(index)), static_cast<uint64_t>(view) + 0x9e37ULL);
}

uint64_t augment_seed(const AugmentConfig& cfg, uint64_t seed, int64_t epoch, int64_t index) {
  if (cfg.views > 0)
    return augment_view_seed(static_cast<uint64_t>(cfg.view_seed), index, augment_view(cfg, seed, epoch, index));
  return mix_seed(mix_seed(seed, static_cast<uint64_t>(epoch)), static_cast<uint64_t>(index));
}

torch::Tensor augment_batch(const torch::Tensor& x, const AugmentConfig& cfg, const std::vector<uint64_t>& seeds) {
  if (!cfg.any()) return x;
  const int64_t b = x.size(0), h = x.size(2), w = x.size(3);
  TORCH_CHECK(static_cast<int64_t>(seeds.size()) == b, "augment_batch: one seed per sample");
  const int64_t p = cfg.random_crop ? cfg.crop_padding : 0;
  const uint64_t span = static_cast<uint64_t>(2 * p + 1);
  // Per sample: the crop offset and the flip, drawn from that sample's own seed.
  std::vector<int64_t> rows(static_cast<size_t>(b * h)), cols(static_cast<size_t>(b * w));
  for (int64_t i = 0; i < b; ++i) {
    std::mt19937_64 rng(seeds[static_cast<size_t>(i)]);
    const int64_t dy = p > 0 ? static_cast<int64_t>(rng() % span) : 0;
    const int64_t dx = p > 0 ? static_cast<int64_t>(rng() % span) : 0;
    const bool flip = cfg.hflip && (rng() & 1);
    for (int64_t r = 0; r < h; ++r) rows[static_cast<size_t>(i * h + r)] = dy + r;
    for (int64_t c = 0; c < w; ++c) cols[static_cast<size_t>(i * w + c)] = dx + (flip ? w - 1 - c : c);
  }
  // One gather for the whole batch: out[i, :, r, c] = padded[i, :, rows[i, r], cols[i, c]].
  torch::Tensor padded = p > 0 ? torch::constant_pad_nd(x, {p, p, p, p}, 0.0) : x;  // [B, C, H+2p, W+2p]
  torch::Tensor bi = torch::arange(b, torch::kInt64).view({b, 1, 1});
  torch::Tensor ri = torch::from_blob(rows.data(), {b, h, 1}, torch::kInt64);
  torch::Tensor ci = torch::from_blob(cols.data(), {b, 1, w}, torch::kInt64);
  torch::Tensor nhwc = padded.permute({0, 2, 3, 1});  // [B, H+2p, W+2p, C]
  return nhwc.index({bi, ri, ci}).permute({0, 3, 1, 2}).contiguous();  // [B, C, H, W]
}

}  // namespace qd
