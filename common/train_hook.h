// How distillation, QAT and pruning plug into the training loop without the trainer knowing
// them (and without them including trainer/): the trainer owns a list of hooks and calls them
// at fixed points of every step and epoch, in registration order.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace qd {

class Communicator;  // parallel/communicator.h; common/ only passes it along

// What a hook sees. The trainer fills it; hooks may read everything and write the fields
// marked as theirs.
struct TrainState {
  torch::nn::Module* model = nullptr;            // the network being trained (student)
  torch::optim::Optimizer* optimizer = nullptr;
  torch::Device device = torch::kCPU;
  Communicator* comm = nullptr;  // never null inside Trainer::fit (Local for one process)
  int rank = 0, world_size = 1;

  int64_t epoch = 0;            // 0-based epoch in progress
  int64_t epochs = 0;           // total planned
  int64_t step_in_epoch = 0;    // 0-based
  int64_t steps_per_epoch = 0;
  int64_t global_step = 0;      // optimizer steps taken before this one
  // Epochs before this one cannot give best.pt: a hook raises it in on_train_begin when earlier
  // epochs measure another model (fp32 before QAT starts, say).
  int64_t best_from_epoch = 0;

  // Current step (valid from on_step_begin to on_after_optimizer_step).
  std::vector<int64_t> sample_indices;  // [B] training-set indices of this micro-batch
  // Set by the task (trainer/task.h):
  //   image_classification  inputs [B, C, H, W] float in [0, 1], augmented; targets [B] int64;
  //                         logits [B, classes]; mask undefined
  //   causal_lm             inputs [B, T] int64 token ids; mask [B, T] int64 (1 token, 0 padding);
  //                         targets [B, T] next token ids (-100 where nothing is predicted);
  //                         logits [B, T, vocab]
  //   sentence_embedding    inputs, mask as causal_lm; targets [B, D] the teacher's embeddings;
  //                         logits [B, D] the student's L2-normalized embeddings
  torch::Tensor inputs;   // on `device`
  torch::Tensor mask;
  torch::Tensor targets;
  torch::Tensor logits;   // set after the forward pass
  torch::Tensor loss;     // scalar; hooks may add terms in on_loss
  // Named loss terms, logged separately in metrics.jsonl (hooks add theirs in on_loss).
  std::map<std::string, torch::Tensor> loss_terms;
  // Extra per-epoch metrics a hook wants in metrics.jsonl (set in on_epoch_end).
  std::map<std::string, double> epoch_metrics;
};

class TrainHook {
 public:
  virtual ~TrainHook() = default;
  // Stable name: the key of this hook's state in checkpoints.
  virtual std::string name() const = 0;
  // Trainable parameters the hook owns (e.g. feature-KD adapters). Asked after on_train_begin;
  // they join the optimizer and the gradient all-reduce.
  virtual std::vector<torch::Tensor> parameters() { return {}; }
  // Before the optimizer exists and before a checkpoint is resumed (which restores hook state).
  virtual void on_train_begin(TrainState&) {}
  virtual void on_epoch_begin(TrainState&) {}
  virtual void on_step_begin(TrainState&) {}
  // on_step_begin and on_loss run once per micro-batch (trainer.accumulate_steps), the others
  // once per optimizer step.
  // After the forward pass and the task loss: add distillation terms to state.loss here.
  virtual void on_loss(TrainState&) {}
  // After backward, before the optimizer step (gradient all-reduce, gradient masks).
  virtual void on_after_backward(TrainState&) {}
  virtual void on_after_optimizer_step(TrainState&) {}
  virtual void on_epoch_end(TrainState&) {}
  virtual void save_state(torch::serialize::OutputArchive&) const {}
  virtual void load_state(torch::serialize::InputArchive&) {}
};

}  // namespace qd
