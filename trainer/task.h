// The task seam: what the trainer learns and measures. A task owns its data, builds each
// micro-batch into the TrainState, computes the forward pass and the loss, keeps the epoch's
// training statistics and evaluates; the trainer loop (sampling, accumulation, all-reduce,
// optimizer, hooks, checkpoints) is the same for all of them.
//
//   image_classification  images [B, C, H, W] -> logits [B, classes]; cross-entropy; accuracy
//   causal_lm             packed token sequences [B, T] -> logits [B, T, vocab]; next-token
//                         cross-entropy; perplexity per token and bits per byte
//   sentence_embedding    texts [B, T] + mask -> embedding [B, H]; 1 - cosine to the teacher's
//                         embedding of the same text; reverse-dictionary recall@1 / @10
#pragma once

#include <torch/torch.h>

#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/train_hook.h"
#include "data/mnist.h"
#include "data/text_corpus.h"
#include "trainer/experiment_config.h"

namespace qd {

class Communicator;
class Model;
class TextModel;

// Evaluation on one split. `values` are the record's keys (metrics.jsonl, eval --json);
// `score` picks best.pt (higher is better).
struct TaskMetrics {
  std::map<std::string, double> values;
  double score = 0.0;
  int64_t samples = 0;
  std::string split;
  std::string line;  // for the log: "test loss 0.31, test acc 88.9%"
};

// Sums of one epoch's training statistics on this rank, float64 on the device: [loss * units,
// correct, units] (units: samples, or predicted tokens); the trainer all-reduces them.
constexpr int kTrainSums = 3;

class Task {
 public:
  virtual ~Task() = default;
  virtual std::string name() const = 0;
  // Examples the sampler shuffles (images, sequences, texts).
  virtual int64_t train_size() const = 0;
  // Fills state.inputs, state.mask, state.targets (on state.device) for examples indices[first, last).
  virtual void load_batch(TrainState& state, const std::vector<int64_t>& indices, int64_t first, int64_t last) = 0;
  // Forward pass and the task loss (mean over the micro-batch's units); sets state.logits.
  virtual torch::Tensor forward_loss(Model& model, TrainState& state) = 0;
  // Adds the micro-batch to `sums` ([kTrainSums] float64).
  virtual void accumulate(const TrainState& state, const torch::Tensor& loss, torch::Tensor& sums) const = 0;
  // The epoch's training metrics from the all-reduced sums.
  virtual std::map<std::string, double> train_metrics(const torch::Tensor& sums) const = 0;
  // Metrics on the split training evaluates on (`held_out_test` false) or on the test split. With a
  // communicator each rank evaluates a share and every rank gets the global result.
  virtual TaskMetrics evaluate(Model& model, torch::Device device, Communicator* comm, bool held_out_test) = 0;
  // The score before any epoch ("no best yet"), and the record keys of the best score.
  virtual double no_score() const { return -std::numeric_limits<double>::infinity(); }
  virtual void add_best(nlohmann::json& record, double best_score) const = 0;
  // What the training examples are, for the log: "60000 train / 10000 test images".
  virtual std::string describe() const = 0;
  // causal_lm: the training sequences [N, L] int64 (example i's input ids); undefined otherwise.
  virtual torch::Tensor training_sequences() const { return {}; }
  // Per-example units of training throughput (tokens per sequence for causal_lm; 1 otherwise).
  virtual int64_t units_per_example() const { return 1; }
};

// image_classification on a DataBundle (borrowed; it must outlive the task).
std::shared_ptr<Task> make_image_task(const ExperimentConfig& cfg, const DataBundle& data);
// causal_lm / sentence_embedding: reads the corpus (and, for sentence_embedding, the teacher's
// embeddings of the training texts: computed once, then cached) for `model`'s tokenizer.
// `for_training` false: only evaluation will run (no teacher embeddings are needed).
std::shared_ptr<Task> make_text_task(const ExperimentConfig& cfg, const TextModel& model, torch::Device device,
                                     Communicator* comm, bool for_training = true);

// Next-token cross-entropy of logits [B, T, V] against targets [B, T] (-100: ignored): mean over
// the counted tokens, and their number.
torch::Tensor causal_lm_loss(const torch::Tensor& logits, const torch::Tensor& targets);
// Recall@k of queries [Q, D] against documents [N, D] (both L2-normalized): the fraction of
// queries whose document `answer[q]` is among the k most similar (ties count against).
std::pair<double, double> recall_at_1_and_10(const torch::Tensor& queries, const torch::Tensor& docs,
                                             const std::vector<int64_t>& answer);
// Embeds `texts` with `model` (no grad, eval mode) in length-sorted batches: [N, hidden], rows in
// the order of `texts`. A communicator shares the work by rows; every rank gets all rows.
// `tokens`, if given, receives the number of tokens embedded (all ranks).
torch::Tensor embed_texts(TextModel& model, const std::vector<std::string>& texts, int64_t max_tokens,
                          int64_t batch_size, torch::Device device, Communicator* comm, bool progress = false,
                          int64_t* tokens = nullptr);

}  // namespace qd
