#include "data/sampler.h"

#include <numeric>
#include <random>

#include "common/error.h"

namespace qd {

uint64_t mix_seed(uint64_t a, uint64_t b) {
  uint64_t z = a + 0x9e3779b97f4a7c15ULL * (b + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

ShardedSampler::ShardedSampler(int64_t dataset_size, bool shuffle, uint64_t seed, int rank, int world_size)
    : size_(dataset_size), shuffle_(shuffle), seed_(seed), rank_(rank), world_(world_size) {
  QD_CHECK(world_size >= 1 && rank >= 0 && rank < world_size, Error, "ShardedSampler: rank ", rank,
           " outside world of ", world_size);
  QD_CHECK(dataset_size > 0, UserError, "the dataset is empty; nothing to sample");
  per_rank_ = (size_ + world_ - 1) / world_;
}

std::vector<int64_t> ShardedSampler::indices(int64_t epoch) const {
  std::vector<int64_t> perm(static_cast<size_t>(size_));
  std::iota(perm.begin(), perm.end(), int64_t{0});
  if (shuffle_) {
    // Fisher-Yates with our own bounded draw: std::shuffle's distribution is
    // implementation-defined, and the order must not change with the standard library.
    std::mt19937_64 rng(mix_seed(seed_, static_cast<uint64_t>(epoch)));
    for (int64_t i = size_ - 1; i > 0; --i) {
      const uint64_t bound = static_cast<uint64_t>(i) + 1;
      const uint64_t limit = UINT64_MAX - UINT64_MAX % bound;
      uint64_t r;
      do r = rng(); while (r >= limit);
      std::swap(perm[static_cast<size_t>(i)], perm[static_cast<size_t>(r % bound)]);
    }
  }
  std::vector<int64_t> out;
  out.reserve(static_cast<size_t>(per_rank_));
  for (int64_t k = 0; k < per_rank_; ++k) {
    const int64_t pos = (k * world_ + rank_) % size_;  // wraps around: padding
    out.push_back(perm[static_cast<size_t>(pos)]);
  }
  return out;
}

}  // namespace qd
