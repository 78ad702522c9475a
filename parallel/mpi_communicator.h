// MPI backend for CPU tensors.
#pragma once

#include <mpi.h>

#include "parallel/communicator.h"

namespace qd {

class MpiCommunicator : public Communicator {
 public:
  // Uses a duplicate of MPI_COMM_WORLD (initializing MPI if needed). `timeout_seconds` bounds
  // every wait: a peer that never arrives aborts the job instead of hanging it.
  explicit MpiCommunicator(double timeout_seconds = 600.0);
  ~MpiCommunicator() override;
  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  std::string backend() const override { return "mpi"; }
  std::unique_ptr<Work> all_reduce(torch::Tensor& t, ReduceOp op) override;
  void broadcast(torch::Tensor& t, int root) override;
  void barrier() override;

 private:
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, world_ = 1;
  double timeout_;
};

// MPI datatype for a tensor's dtype; throws for dtypes MPI cannot reduce.
MPI_Datatype mpi_dtype(torch::ScalarType t);

}  // namespace qd
