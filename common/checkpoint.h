// Training checkpoints: model, optimizer, progress counters, RNG state and hook state in one
// LibTorch archive, written atomically (temporary file, fsync, rename).
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/train_hook.h"

namespace qd {

struct CheckpointMeta {
  int64_t epoch = 0;        // epochs completed
  int64_t global_step = 0;  // optimizer steps completed
  double test_accuracy = 0.0;  // the task's score (image: accuracy) of the last evaluation
  double best_accuracy = 0.0;  // the best score (picks best.pt)
  // A mid-epoch checkpoint (trainer.checkpoint_every_steps/minutes): optimizer steps done in the
  // epoch in progress (`epoch` is the number of whole epochs before it), and that epoch's training
  // statistics summed over all ranks so far. 0 and empty at epoch ends.
  int64_t step_in_epoch = 0;
  std::vector<double> epoch_sums;
};

// Serializes to bytes (for the atomic write) and writes `path` atomically.
void save_checkpoint(const std::string& path, const torch::nn::Module& model,
                     const torch::optim::Optimizer* optimizer, const CheckpointMeta& meta,
                     const std::vector<std::shared_ptr<TrainHook>>& hooks,
                     const std::function<void()>& before_commit = {});  // test seam: runs before the rename

// Loads what save_checkpoint wrote; the model (and optimizer, if given) must have the same
// structure. Restores the CPU RNG state. Throws UserError naming the file when it is missing,
// corrupt or from a different architecture.
// `weights_only`: the checkpoint's quantizer twins ("qat" children, a QAT run's state) that the
// model lacks are set aside (model.init_checkpoint: the weights of a QAT run, whose quantizers start
// fresh in the new run).
CheckpointMeta load_checkpoint(const std::string& path, torch::nn::Module& model,
                               torch::optim::Optimizer* optimizer,
                               const std::vector<std::shared_ptr<TrainHook>>& hooks, bool weights_only = false);
// The same from bytes already in memory (`name` is used in messages).
CheckpointMeta load_checkpoint_bytes(const char* data, size_t size, const std::string& name,
                                     torch::nn::Module& model, torch::optim::Optimizer* optimizer,
                                     const std::vector<std::shared_ptr<TrainHook>>& hooks, bool weights_only = false);

}  // namespace qd
