// The training loop: data, forward, loss, backward, optimizer step, evaluation, checkpoints,
// metrics, with TrainHooks at fixed points so distillation / QAT / pruning plug in.
//
// Data parallel: every rank runs this loop on its shard of each epoch (ShardedSampler); a
// GradReducer all-reduces gradients in buckets during backward; evaluation is sharded and
// reduced; only rank 0 writes the run directory.
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/train_hook.h"
#include "data/mnist.h"
#include "models/model.h"
#include "trainer/divergence.h"
#include "trainer/precision.h"
#include "parallel/communicator.h"
#include "parallel/grad_reducer.h"
#include "parallel/launch.h"
#include "trainer/experiment_config.h"
#include "trainer/metrics.h"
#include "trainer/optim.h"
#include "trainer/task.h"

namespace qd {

struct EvalResult {
  double loss = 0.0;
  double accuracy = 0.0;  // percent
  int64_t samples = 0;
};

struct TrainResult {
  int64_t epochs_completed = 0;
  // The task's metrics of the last evaluation, and the best score (higher is better; image: accuracy).
  std::map<std::string, double> final_metrics;
  double best_score = 0.0;
  double final_accuracy = 0.0;      // test accuracy after the last epoch, percent
  double best_accuracy = 0.0;       // best test accuracy over epochs (best.pt), percent
  double samples_per_second = 0.0;  // training throughput of all ranks together, excluding evaluation
  double train_seconds = 0.0;
};

// Accuracy and mean loss on `ds`. With a communicator of world size N, each rank evaluates a
// contiguous 1/N of the set and the sums are all-reduced: every rank gets the global result.
EvalResult evaluate(Model& model, const ImageDataset& ds, int64_t batch_size, torch::Device device,
                    bool channels_last, Communicator* comm = nullptr);

// The device this rank trains on: cuda:<node-local rank> for CUDA (checked against the GPUs
// present), else CPU. Throws UserError for impossible requests.
torch::Device select_device(const TrainerConfig& cfg, const LaunchInfo& launch);

class Trainer {
 public:
  // `run_dir` empty: nothing is written (tests). Otherwise rank 0 writes checkpoints/ and
  // metrics.jsonl there. `comm` null: a LocalCommunicator (one process).
  // Image classification on `data` (borrowed: it must outlive the trainer).
  Trainer(ExperimentConfig cfg, std::shared_ptr<Model> model, const DataBundle& data, std::string run_dir,
          std::shared_ptr<Communicator> comm = nullptr);
  // Any task (trainer/task.h).
  Trainer(ExperimentConfig cfg, std::shared_ptr<Model> model, std::shared_ptr<Task> task, std::string run_dir,
          std::shared_ptr<Communicator> comm = nullptr);

  void add_hook(std::shared_ptr<TrainHook> hook) { hooks_.push_back(std::move(hook)); }
  const std::vector<std::shared_ptr<TrainHook>>& hooks() const { return hooks_; }
  Model& model() { return *model_; }
  torch::optim::Optimizer* optimizer() { return optimizer_.get(); }  // built by fit()
  Communicator& comm() { return *comm_; }
  torch::Device device() const { return device_; }
  Task& task() { return *task_; }
  // Test seam: runs after every optimizer step with the state (a test throws here to stop a run
  // mid-epoch as a crash would).
  std::function<void(const TrainState&)> after_step;

  // Trains for trainer.epochs (continuing from last.pt when resume is set and one exists).
  TrainResult fit();

  std::string last_checkpoint() const;
  std::string best_checkpoint() const;

 private:
  void train_epoch(TrainState& state, int64_t first_step, double& samples_seen, double& seconds);
  void checkpoint(const TrainState& state, double accuracy, bool best);
  // last.pt inside an epoch: `done` steps of it taken, `sums` this rank's epoch statistics.
  void checkpoint_mid_epoch(const TrainState& state, int64_t done, const torch::Tensor& sums);
  bool mid_epoch_checkpoint_due(const TrainState& state);
  bool resume_from_checkpoint(TrainState& state);
  void broadcast_parameters(const std::vector<torch::Tensor>& params, const std::vector<torch::Tensor>& buffers);
  void build_optimizer();
  bool is_writer() const { return !run_dir_.empty() && comm_->rank() == 0; }
  // The divergence guard's verdict on a step (trainer/divergence.h): true to take the optimizer
  // step, false to skip it; throws Error (exit code 1) when the run must stop.
  bool step_is_sound(const TrainState& state, double loss, double grad_norm, double lr);
  // The step's loss averaged over ranks (one small all-reduce when world_size > 1), on the device.
  torch::Tensor mean_over_ranks(const TrainState& state, const torch::Tensor& step_loss);

  ExperimentConfig cfg_;
  std::shared_ptr<Model> model_;
  std::shared_ptr<Task> task_;
  std::string run_dir_;
  std::shared_ptr<Communicator> comm_;
  torch::Device device_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  std::unique_ptr<GradReducer> reducer_;  // only when world_size > 1
  std::vector<std::shared_ptr<TrainHook>> hooks_;
  MetricsLog metrics_;
  double best_accuracy_ = -1.0;                     // the task's best score (image: accuracy)
  double last_accuracy_ = 0.0;                      // of the checkpoint resumed from
  std::map<std::string, double> last_epoch_train_;  // train_loss, train_accuracy of the last epoch
  int64_t resume_step_ = 0;                         // steps of the resumed epoch already taken
  std::vector<double> resume_sums_;                 // and their statistics (all ranks)
  DivergenceGuard guard_{0.0};
  int64_t skipped_steps_ = 0;      // steps the guard skipped this epoch (trainer.on_divergence: skip_step)
  int consecutive_skips_ = 0;
  std::shared_ptr<LossScaler> scaler_;  // trainer.precision: fp16 only (trainer/precision.h)
  int64_t amp_skipped_steps_ = 0;       // fp16 steps skipped for overflowing gradients, this epoch
  std::chrono::steady_clock::time_point last_save_ = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point fit_start_ = std::chrono::steady_clock::now();  // eval records' clock
};

}  // namespace qd
