#include "data/augment.h"

#include <gtest/gtest.h>

namespace qd {
namespace {

TEST(Augment, DisabledIsIdentity) {
  torch::Tensor x = torch::rand({4, 1, 28, 28});
  EXPECT_TRUE(torch::equal(augment_batch(x, AugmentConfig{}, 1), x));
}

TEST(Augment, DeterministicForSeedAndKeepsShape) {
  AugmentConfig cfg;
  cfg.random_crop = true;
  cfg.hflip = true;
  torch::Tensor x = torch::rand({16, 1, 28, 28});
  torch::Tensor a = augment_batch(x, cfg, 5), b = augment_batch(x, cfg, 5), c = augment_batch(x, cfg, 6);
  EXPECT_EQ(a.sizes(), x.sizes());
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_FALSE(torch::equal(a, c));
}

TEST(Augment, CropIsAShiftedWindowWithZeroFill) {
  AugmentConfig cfg;
  cfg.random_crop = true;
  cfg.crop_padding = 2;
  torch::Tensor x = torch::rand({32, 1, 8, 8}) + 1.0f;  // strictly positive so padding shows as 0
  torch::Tensor y = augment_batch(x, cfg, 3);
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
  torch::Tensor y = augment_batch(x, cfg, 11);
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

}  // namespace
}  // namespace qd
