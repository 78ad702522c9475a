// The training loop: data, forward, loss, backward, optimizer step, evaluation, checkpoints,
// metrics, with TrainHooks at fixed points so distillation / QAT / pruning plug in.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/train_hook.h"
#include "data/mnist.h"
#include "models/model.h"
#include "trainer/experiment_config.h"
#include "trainer/metrics.h"
#include "trainer/optim.h"

namespace qd {

struct EvalResult {
  double loss = 0.0;
  double accuracy = 0.0;  // percent
  int64_t samples = 0;
};

struct TrainResult {
  int64_t epochs_completed = 0;
  double final_accuracy = 0.0;  // test accuracy after the last epoch, percent
  double best_accuracy = 0.0;   // best test accuracy over epochs (best.pt), percent
  double samples_per_second = 0.0;  // training throughput (all ranks), excluding evaluation
  double train_seconds = 0.0;
};

EvalResult evaluate(Model& model, const ImageDataset& ds, int64_t batch_size, torch::Device device,
                    bool channels_last);

class Trainer {
 public:
  // `run_dir` empty: nothing is written (tests). Otherwise checkpoints/ and metrics.jsonl go there.
  Trainer(ExperimentConfig cfg, std::shared_ptr<Model> model, const DataBundle& data, std::string run_dir);

  void add_hook(std::shared_ptr<TrainHook> hook) { hooks_.push_back(std::move(hook)); }
  Model& model() { return *model_; }
  torch::optim::Optimizer& optimizer() { return *optimizer_; }

  // Trains for trainer.epochs (continuing from last.pt when resume is set and one exists).
  TrainResult fit();

  std::string last_checkpoint() const;
  std::string best_checkpoint() const;

 private:
  void train_epoch(TrainState& state, double& samples_seen, double& seconds);
  void checkpoint(const TrainState& state, double accuracy, bool best);

  ExperimentConfig cfg_;
  std::shared_ptr<Model> model_;
  const DataBundle& data_;
  std::string run_dir_;
  torch::Device device_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  std::vector<std::shared_ptr<TrainHook>> hooks_;
  MetricsLog metrics_;
  double best_accuracy_ = -1.0;
  double last_accuracy_ = 0.0;  // of the checkpoint resumed from
  std::map<std::string, double> last_epoch_train_;  // train_loss, train_accuracy of the last epoch
};

}  // namespace qd
