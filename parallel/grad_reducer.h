// Bucketed gradient all-reduce, overlapped with backward.
//
// Parameters are grouped in reverse registration order (roughly the order backward produces
// their gradients) into flat buckets; each parameter's .grad is a view into its bucket, so
// backward accumulates straight into the buffer that is all-reduced, with no copies. A post-hook
// on each parameter's gradient accumulator counts down its bucket; a full bucket's all-reduce
// starts at once, while backward continues. Buckets are launched strictly in index order so
// every rank issues the same collectives in the same order.
//
//   reducer.zero_grad();                       // start of an optimizer step
//   for micro-batch i of k:
//     reducer.prepare(/*sync=*/i == k - 1);    // no communication on accumulation micro-batches
//     loss_i.backward();
//   reducer.finalize();                        // wait, average over ranks
//   optimizer.step();
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "parallel/communicator.h"

namespace torch::autograd {
struct Node;
}

namespace qd {

struct GradReducerOptions {
  int64_t bucket_bytes = 25 << 20;
  int64_t first_bucket_bytes = 1 << 20;
};

class GradReducer {
 public:
  // `params` in registration order (model.parameters()); all on one device, same dtype per
  // bucket. Parameters without requires_grad are skipped.
  GradReducer(std::vector<torch::Tensor> params, std::shared_ptr<Communicator> comm, GradReducerOptions opts);
  ~GradReducer();
  GradReducer(const GradReducer&) = delete;
  GradReducer& operator=(const GradReducer&) = delete;

  void zero_grad();
  void prepare(bool sync);
  void finalize();

  size_t num_buckets() const { return buckets_.size(); }
  // Parameter indices (into the constructor's list) of bucket b, in bucket order.
  const std::vector<size_t>& bucket_params(size_t b) const { return buckets_[b].params; }
  // How many buckets were launched from hooks (during backward) in the last synced step.
  size_t launched_during_backward() const { return launched_in_backward_; }

 private:
  struct Bucket {
    std::vector<size_t> params;
    std::vector<int64_t> offsets;  // element offset of each param in `flat`
    torch::Tensor flat;            // [numel] contiguous
    size_t pending = 0;
    std::unique_ptr<Work> work;
  };
  void on_grad_ready(size_t param_index);
  void launch_ready_buckets(bool all);
  void attach_grad_views();

  std::vector<torch::Tensor> params_;
  std::shared_ptr<Communicator> comm_;
  std::vector<Bucket> buckets_;
  std::vector<size_t> bucket_of_;  // param -> bucket
  std::vector<char> ready_;        // param -> grad accumulated this backward
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators_;
  std::vector<uintptr_t> hook_keys_;
  std::mutex mu_;
  size_t next_launch_ = 0;
  bool sync_ = true;
  bool prepared_ = false;
  size_t launched_in_backward_ = 0;
};

}  // namespace qd
