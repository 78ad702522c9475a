// Teacher-output cache: the teacher's logits for every training sample (and every view of it,
// see data/augment.h) computed once, stored as fp16, reused by later epochs and later runs.
//
// When is it correct? The student must see exactly the input the teacher saw. Without random
// augmentation a sample has one view. With augmentation and data.augment.views = K, a sample
// has K fixed views and the cache holds the teacher's logits for all K. With augmentation and
// views = 0 (a fresh view every epoch) no cache can be right, so the teacher runs every step.
//
// The file is keyed by the teacher checkpoint's fingerprint, the training data's fingerprint
// and everything that determines the views; a stale, mismatched or corrupt file (wrong key,
// shape or CRC) is rebuilt, never used. Under mpirun every rank computes the logits of 1/N of
// the samples, an all-reduce assembles the table on every rank, and rank 0 writes the file:
// the teacher work is split N ways and no rank depends on a shared filesystem.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "data/data_config.h"
#include "data/mnist.h"
#include "models/model.h"

namespace qd {

class Communicator;

struct TeacherCacheSpec {
  std::string path;        // cache file
  std::string key;         // must match the file's
  int64_t views = 1;       // V
  AugmentConfig augment;   // how view v of sample i is made (seed: augment_view_seed)
  uint64_t seed = 0;       // data.augment.view_seed
  int64_t batch_size = 500;
  bool channels_last = true;
};

class TeacherCache {
 public:
  // Loads the file when valid for spec.key; else computes and (on rank 0) writes it.
  static TeacherCache load_or_build(const TeacherCacheSpec& spec, Model& teacher, const ImageDataset& train,
                                    torch::Device device, Communicator* comm);
  // Reads the file; on any mismatch or damage returns false and says why in `reason`.
  static bool try_load(const TeacherCacheSpec& spec, int64_t samples, int64_t classes, TeacherCache& out,
                       std::string& reason);
  void save(const std::string& path, const std::string& key) const;

  // [B, K] float32 logits of sample indices[i] in view views[i] (views empty: view 0).
  torch::Tensor lookup(const std::vector<int64_t>& indices, const std::vector<int64_t>& views, torch::Device device) const;

  torch::Tensor table;         // [N, V, K] float16
  bool built = false;          // computed in this process (false: read from the file)
  std::string rebuild_reason;  // why an existing file was not used
};

// The cache key of a teacher/data/augmentation combination.
std::string teacher_cache_key(const std::string& teacher_fingerprint, const ImageDataset& train, int64_t views,
                              const AugmentConfig& augment, uint64_t seed);

}  // namespace qd
