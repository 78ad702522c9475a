#include "data/augment.h"

#include <gtest/gtest.h>

#include <set>

namespace qd {
namespace {

std::vector<uint64_t> seeds(int64_t n, uint64_t base) {
  std::vector<uint64_t> s;
  for (int64_t i = 0; i < n; ++i) s.push_back(base * 1000 + static_cast<uint64_t>(i));
  return s;
}

TEST(Augment, DisabledIsIdentity) {
  torch::Tensor x = torch::rand({4, 1, 28, 28});
  EXPECT_TRUE(torch::equal(augment_batch(x, AugmentConfig{}, {}), x));
}

TEST(Augment, DeterministicPerSampleSeedAndKeepsShape) {
  AugmentConfig cfg;
  cfg.random_crop = true;
  cfg.hflip = true;
  torch::Tensor x = torch::rand({16, 1, 28, 28});
  torch::Tensor a = augment_batch(x, cfg, seeds(16, 5)), b = augment_batch(x, cfg, seeds(16, 5));
  torch::Tensor c = augment_batch(x, cfg, seeds(16, 6));
  EXPECT_EQ(a.sizes(), x.sizes());
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_FALSE(torch::equal(a, c));
  // A sample's view depends on its own seed only, not on its batch neighbours.
  torch::Tensor alone = augment_batch(x.narrow(0, 3, 1), cfg, {seeds(16, 5)[3]});
  EXPECT_TRUE(torch::equal(alone[0], a[3]));
}

TEST(Augment, CropIsAShiftedWindowWithZeroFill) {
  AugmentConfig cfg;
  cfg.random_crop = true;
  cfg.crop_padding = 2;
  torch::Tensor x = torch::rand({32, 1, 8, 8}) + 1.0f;  // strictly positive so padding shows as 0
  torch::Tensor y = augment_batch(x, cfg, seeds(32, 3));
  torch::Tensor padded = torch::constant_pad_nd(x, {2, 2, 2, 2}, 0.0);
  int shifted = 0;
  for (int64_t i = 0; i < 32; ++i) {
    bool found = false;
    for (int dy = 0; dy <= 4 && !found; ++dy)
      for (int dx = 0; dx <= 4 && !found; ++dx)
        if (torch::equal(y[i], padded[i].narrow(1, dy, 8).narrow(2, dx, 8))) found = true, shifted += (dy != 2 || dx != 2);
    EXPECT_TRUE(found) << "sample " << i << " is not a crop of the padded image";
  }
  EXPECT_GT(shifted, 16) << "most samples should be shifted";
}

TEST(Augment, FlipMirrorsAboutHalfTheBatch) {
  AugmentConfig cfg;
  cfg.hflip = true;
  torch::Tensor x = torch::rand({200, 1, 6, 6});
  torch::Tensor y = augment_batch(x, cfg, seeds(200, 11));
  int flipped = 0;
  for (int64_t i = 0; i < 200; ++i) {
    const bool same = torch::equal(y[i], x[i]);
    const bool mirrored = torch::equal(y[i], x[i].flip({2}));
    EXPECT_TRUE(same || mirrored);
    flipped += mirrored;
  }
  EXPECT_GT(flipped, 70);
  EXPECT_LT(flipped, 130);
}

TEST(Augment, FixedViewsRepeatAcrossEpochs) {
  AugmentConfig cfg;
  cfg.random_crop = true;
  cfg.views = 3;
  std::set<uint64_t> distinct;
  std::set<int64_t> views;
  for (int64_t epoch = 0; epoch < 40; ++epoch) {
    distinct.insert(augment_seed(cfg, 7, epoch, 42));
    views.insert(augment_view(cfg, 7, epoch, 42));
    EXPECT_EQ(augment_seed(cfg, 7, epoch, 42), augment_view_seed(cfg.view_seed, 42, augment_view(cfg, 7, epoch, 42)));
  }
  EXPECT_EQ(distinct.size(), 3u);
  EXPECT_EQ(views, (std::set<int64_t>{0, 1, 2}));
  // Another experiment seed draws views in another order, but from the same K views.
  std::set<uint64_t> other_seed;
  for (int64_t epoch = 0; epoch < 40; ++epoch) other_seed.insert(augment_seed(cfg, 8, epoch, 42));
  EXPECT_EQ(other_seed, distinct);
  cfg.views = 0;  // fresh views: (practically) a new seed every epoch
  distinct.clear();
  for (int64_t epoch = 0; epoch < 40; ++epoch) distinct.insert(augment_seed(cfg, 7, epoch, 42));
  EXPECT_EQ(distinct.size(), 40u);
}

}  // namespace
}  // namespace qd
