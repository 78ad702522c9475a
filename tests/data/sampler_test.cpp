#include "data/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>

namespace qd {
namespace {

TEST(Sampler, SameSeedSameOrderOtherSeedOrEpochDiffers) {
  ShardedSampler a(1000, true, 7), b(1000, true, 7), c(1000, true, 8);
  EXPECT_EQ(a.indices(3), b.indices(3));
  EXPECT_NE(a.indices(3), c.indices(3));
  EXPECT_NE(a.indices(3), a.indices(4));
}

TEST(Sampler, IsAPermutation) {
  ShardedSampler s(997, true, 1);
  auto idx = s.indices(0);
  std::sort(idx.begin(), idx.end());
  for (int64_t i = 0; i < 997; ++i) ASSERT_EQ(idx[static_cast<size_t>(i)], i);
}

TEST(Sampler, NoShuffleIsIdentity) {
  ShardedSampler s(10, false, 1);
  EXPECT_EQ(s.indices(5), (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
}

TEST(Sampler, ShardsAreDisjointCoverAndEqualLength) {
  for (int world : {2, 3, 4}) {
    const int64_t n = 1001;  // not divisible by 2, 3 or 4... except where padding is needed
    std::multiset<int64_t> all;
    size_t len = 0;
    for (int r = 0; r < world; ++r) {
      ShardedSampler s(n, true, 42, r, world);
      const auto idx = s.indices(2);
      if (r == 0) len = idx.size();
      EXPECT_EQ(idx.size(), len) << "every rank takes the same number of steps";
      all.insert(idx.begin(), idx.end());
    }
    std::set<int64_t> distinct(all.begin(), all.end());
    EXPECT_EQ(distinct.size(), static_cast<size_t>(n)) << "covers the dataset, world " << world;
    const int64_t padded = (n + world - 1) / world * world;
    EXPECT_EQ(static_cast<int64_t>(all.size()), padded);
    EXPECT_EQ(static_cast<int64_t>(all.size() - distinct.size()), padded - n) << "only padding repeats";
  }
}

}  // namespace
}  // namespace qd
