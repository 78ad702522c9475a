// Collective communication for data-parallel training: one interface, three backends.
//
//   MPI   — CPU tensors, over OpenMPI (non-blocking collectives, progressed by test()/wait()).
//   NCCL  — CUDA tensors; the ncclUniqueId is broadcast over MPI; CPU tensors still go to MPI.
//   Local — world size 1; every collective is the identity.
//
// make_communicator() is the one place that decides which backend runs.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>

#include "parallel/parallel_config.h"

namespace qd {

enum class ReduceOp { kSum, kAvg, kMax, kMin };

// An in-flight collective. wait() returns when the result is in the tensor (for NCCL: when the
// caller's current CUDA stream is ordered after it).
class Work {
 public:
  virtual ~Work() = default;
  virtual void wait() = 0;
  // Non-blocking progress; true when complete. Default: completes on wait() only.
  virtual bool test() { return false; }
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  virtual std::string backend() const = 0;
  // In place on `t` (contiguous). Returns immediately; call wait() before reading `t`.
  virtual std::unique_ptr<Work> all_reduce(torch::Tensor& t, ReduceOp op = ReduceOp::kSum) = 0;
  virtual void broadcast(torch::Tensor& t, int root = 0) = 0;
  virtual void barrier() = 0;
};

class LocalCommunicator : public Communicator {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  std::string backend() const override { return "local"; }
  std::unique_ptr<Work> all_reduce(torch::Tensor& t, ReduceOp op) override;
  void broadcast(torch::Tensor&, int) override {}
  void barrier() override {}
};

// Chooses the backend from cfg.backend, the training device and how the process was launched.
// Throws UserError for impossible requests (NCCL without a GPU, MPI without mpirun, ...).
std::shared_ptr<Communicator> make_communicator(const ParallelConfig& cfg, torch::Device device);

// Whether this build has the NCCL backend compiled in.
bool nccl_compiled();

// Blocking convenience: all_reduce(...)->wait().
void all_reduce_now(Communicator& comm, torch::Tensor& t, ReduceOp op = ReduceOp::kSum);

}  // namespace qd
