// Batched training-time augmentation on [0,1] float images (before normalization, so the
// crop's zero padding is black background, as in the raw data).
#pragma once

#include <torch/torch.h>

#include <cstdint>

#include "data/data_config.h"

namespace qd {

// x: [B, C, H, W] float. Deterministic for a given seed. Returns a new tensor (or x unchanged
// when nothing is enabled).
torch::Tensor augment_batch(const torch::Tensor& x, const AugmentConfig& cfg, uint64_t seed);

}  // namespace qd
