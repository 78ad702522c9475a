// Seeded shuffling sampler that shards an epoch across data-parallel ranks.
//
// Every rank computes the same permutation (seed, epoch), pads it by wrapping around so its
// length is a multiple of world_size, and takes positions rank, rank + world, ... . So shards
// are disjoint (up to the padding), cover the dataset, and every rank takes the same number of
// steps. With world_size 1 it is a plain seeded shuffle.
#pragma once

#include <cstdint>
#include <vector>

namespace qd {

uint64_t mix_seed(uint64_t a, uint64_t b);  // splitmix64-style combination, stable everywhere

class ShardedSampler {
 public:
  ShardedSampler(int64_t dataset_size, bool shuffle, uint64_t seed, int rank = 0, int world_size = 1);

  // This rank's sample indices for `epoch`, length per_rank().
  std::vector<int64_t> indices(int64_t epoch) const;
  int64_t per_rank() const { return per_rank_; }
  int64_t dataset_size() const { return size_; }

 private:
  int64_t size_;
  bool shuffle_;
  uint64_t seed_;
  int rank_;
  int world_;
  int64_t per_rank_;
};

}  // namespace qd
