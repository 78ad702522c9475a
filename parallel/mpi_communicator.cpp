#include "parallel/mpi_communicator.h"

#include <chrono>
#include <thread>

#include "common/error.h"
#include "parallel/launch.h"

namespace qd {

MPI_Datatype mpi_dtype(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32: return MPI_FLOAT;
    case torch::kFloat64: return MPI_DOUBLE;
    case torch::kInt32: return MPI_INT32_T;
    case torch::kInt64: return MPI_INT64_T;
    case torch::kUInt8: return MPI_UINT8_T;
    default: throw Error(concat("MPI backend: dtype ", c10::toString(t), " is not supported"));
  }
}

namespace {

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg: return MPI_SUM;
    case ReduceOp::kMax: return MPI_MAX;
    case ReduceOp::kMin: return MPI_MIN;
  }
  return MPI_SUM;
}

// Waits on `req` with MPI_Test so a hung peer turns into an error after `timeout` seconds
// (MPI_Wait would block forever).
void wait_with_timeout(MPI_Request* req, double timeout, const char* what) {
  const auto start = std::chrono::steady_clock::now();
  int done = 0;
  int spins = 0;
  while (true) {
    MPI_Test(req, &done, MPI_STATUS_IGNORE);
    if (done) return;
    if (++spins > 1000) std::this_thread::sleep_for(std::chrono::microseconds(50));  // do not burn a core
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > timeout)
      abort_job(1, concat("MPI ", what, " did not complete within parallel.timeout_seconds = ", timeout,
                          " s; a peer rank is stuck or dead"));
  }
}

class MpiWork : public Work {
 public:
  MpiWork(MPI_Request req, torch::Tensor t, bool average, int world, double timeout)
      : req_(req), t_(std::move(t)), average_(average), world_(world), timeout_(timeout) {}
  ~MpiWork() override {
    if (!done_) wait();
  }
  bool test() override {
    if (done_) return true;
    int flag = 0;
    MPI_Test(&req_, &flag, MPI_STATUS_IGNORE);
    if (flag) complete();
    return done_;
  }
  void wait() override {
    if (done_) return;
    wait_with_timeout(&req_, timeout_, "all_reduce");
    complete();
  }

 private:
  void complete() {
    done_ = true;
    if (average_) t_.div_(world_);
  }
  MPI_Request req_;
  torch::Tensor t_;
  bool average_;
  int world_;
  double timeout_;
  bool done_ = false;
};

void check_tensor(const torch::Tensor& t, const char* what) {
  QD_CHECK(t.device().is_cpu(), Error, "MPI backend ", what, ": tensor on ", t.device().str(),
           "; the MPI backend takes CPU tensors (use NCCL for CUDA)");
  QD_CHECK(t.is_contiguous(), Error, "MPI backend ", what, ": tensor must be contiguous");
}

}  // namespace

MpiCommunicator::MpiCommunicator(double timeout_seconds) : timeout_(timeout_seconds) {
  mpi_runtime();
  MPI_Comm_dup(MPI_COMM_WORLD, &comm_);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &world_);
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

std::unique_ptr<Work> MpiCommunicator::all_reduce(torch::Tensor& t, ReduceOp op) {
  check_tensor(t, "all_reduce");
  MPI_Request req;
  MPI_Iallreduce(MPI_IN_PLACE, t.data_ptr(), static_cast<int>(t.numel()), mpi_dtype(t.scalar_type()), mpi_op(op),
                 comm_, &req);
  return std::make_unique<MpiWork>(req, t, op == ReduceOp::kAvg, world_, timeout_);
}

void MpiCommunicator::broadcast(torch::Tensor& t, int root) {
  check_tensor(t, "broadcast");
  MPI_Request req;
  MPI_Ibcast(t.data_ptr(), static_cast<int>(t.numel() * t.element_size()), MPI_BYTE, root, comm_, &req);
  wait_with_timeout(&req, timeout_, "broadcast");
}

void MpiCommunicator::barrier() {
  MPI_Request req;
  MPI_Ibarrier(comm_, &req);
  wait_with_timeout(&req, timeout_, "barrier");
}

}  // namespace qd
