// The frozen teacher: loaded from a teacher run directory, in eval mode, without gradients, on
// the student's device. It is never given to the optimizer or the gradient reducer.
#pragma once

#include <memory>
#include <string>

#include "data/data_config.h"
#include "distill/distill_config.h"
#include "models/model.h"

namespace qd {

struct Teacher {
  std::shared_ptr<Model> model;
  std::string run_dir;
  std::string checkpoint;   // the .pt file loaded
  std::string fingerprint;  // of the checkpoint's bytes: the teacher cache's key
};

// Architecture from <run>/config.resolved.yaml (its `model` section), weights from the
// checkpoint. `in` is the student's input spec (channels, size, classes). Throws UserError (its
// message starts with the offending path) for a
// missing run, a teacher trained on another dataset, or a checkpoint that does not fit.
Teacher load_teacher(const DistillConfig& cfg, const InputSpec& in, DatasetKind student_dataset, torch::Device device,
                     bool channels_last);

// Hex digest (CRC-32 and Adler-32 of the bytes, and their length) used for cache keys.
std::string fingerprint_bytes(const void* data, size_t size);

}  // namespace qd
