// Training-time augmentation on [0,1] float images (before normalization, so the crop's zero
// padding is black background, as in the raw data).
//
// Each sample is augmented by its own seed, so a sample's view depends only on (experiment
// seed, epoch, sample index) — not on the batch it lands in, the rank that draws it or the
// world size. With `views` = K > 0, a sample has only K distinct views and each epoch picks one
// of them; that is what lets the teacher-output cache store the teacher's logits for every view
// a student can ever see.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "data/data_config.h"

namespace qd {

// The seed of sample `index`'s view in `epoch`.
uint64_t augment_seed(const AugmentConfig& cfg, uint64_t seed, int64_t epoch, int64_t index);
// The seed of view `view` of sample `index` (the K-view scheme; view in [0, K)); `view_seed` is
// cfg.view_seed, so the K views do not change with the experiment seed.
uint64_t augment_view_seed(uint64_t view_seed, int64_t index, int64_t view);
// Which of the K views sample `index` shows in `epoch` (this does follow the experiment seed).
int64_t augment_view(const AugmentConfig& cfg, uint64_t seed, int64_t epoch, int64_t index);

// x: [B, C, H, W] float; seeds: one per sample. Returns x itself when nothing is enabled.
torch::Tensor augment_batch(const torch::Tensor& x, const AugmentConfig& cfg, const std::vector<uint64_t>& seeds);

}  // namespace qd
