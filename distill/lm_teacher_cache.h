// The teacher-output cache for language models (issue 14). A teacher's logits over a 49k
// vocabulary for every training token cannot be stored whole (4,878 sequences x 128 tokens x
// 49,152 x 2 bytes = 61 GB for SmolLM2 on fortunes), so the cache keeps per token the top-k
// logits (fp16) with their ids and the log-sum-exp of the rest at the distillation temperature
// (distill/lm_kd_loss.h's TopKTarget): 64 + 64 + 1 numbers, 0.8 GB there at k = 64.
//
// As the image cache (distill/teacher_cache.h): the file carries a key (teacher, sequences, k,
// temperature) and a CRC; a stale, mismatched, truncated or corrupt file is rebuilt, never used;
// under mpirun each rank computes 1/N of the sequences, an all-reduce assembles the tables on
// every rank, and rank 0 writes the file.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "distill/lm_kd_loss.h"

namespace qd {

class Communicator;
class TextModel;

struct LmCacheSpec {
  std::string path;
  std::string key;  // lm_cache_key(...); must match the file's
  int64_t top_k = 64;
  double temperature = 1.0;
  int64_t batch_size = 8;  // sequences per teacher forward
  bool progress = false;
};

class LmTeacherCache {
 public:
  // sequences [N, L] int64: the training sequences (causal_lm's packed chunks).
  static LmTeacherCache load_or_build(const LmCacheSpec& spec, TextModel& teacher, const torch::Tensor& sequences,
                                      torch::Device device, Communicator* comm);
  // Reads the file; on any mismatch or damage returns false and says why in `reason`.
  static bool try_load(const LmCacheSpec& spec, int64_t sequences, int64_t length, LmTeacherCache& out,
                       std::string& reason);
  void save(const std::string& path, const std::string& key) const;

  // The target of sequences `indices`, rows in [B * L] order (sequence-major), on `device`.
  TopKTarget lookup(const std::vector<int64_t>& indices, torch::Device device) const;

  torch::Tensor ids;       // [N, L, k] int32
  torch::Tensor logits;    // [N, L, k] float16, raw (not divided by the temperature)
  torch::Tensor rest_lse;  // [N, L] float32, at the temperature
  double temperature = 1.0;
  bool built = false;
  std::string rebuild_reason;
};

// The key of a teacher / sequences / k / temperature combination.
std::string lm_cache_key(const std::string& teacher_fingerprint, const torch::Tensor& sequences, int64_t top_k,
                         double temperature);

}  // namespace qd
