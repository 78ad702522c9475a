#include "parallel/nccl_communicator.h"

#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <mpi.h>
#include <nccl.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <thread>

#include "common/error.h"
#include "parallel/launch.h"
#include "parallel/mpi_communicator.h"

namespace qd {

namespace {

#define QD_NCCL(call)                                                                                  \
  do {                                                                                                 \
    const ncclResult_t r_ = (call);                                                                   \
    if (r_ != ncclSuccess && r_ != ncclInProgress)                                                   \
      throw Error(concat("NCCL error in ", #call, ": ", ncclGetErrorString(r_), " (", static_cast<int>(r_), ")")); \
  } while (0)

ncclDataType_t nccl_dtype(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32: return ncclFloat32;
    case torch::kFloat64: return ncclFloat64;
    case torch::kFloat16: return ncclFloat16;
    case torch::kBFloat16: return ncclBfloat16;
    case torch::kInt32: return ncclInt32;
    case torch::kInt64: return ncclInt64;
    case torch::kUInt8: return ncclUint8;
    default: throw Error(concat("NCCL backend: dtype ", c10::toString(t), " is not supported"));
  }
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return ncclSum;
    case ReduceOp::kAvg: return ncclAvg;
    case ReduceOp::kMax: return ncclMax;
    case ReduceOp::kMin: return ncclMin;
  }
  return ncclSum;
}

// Orders the caller's current stream after the collective; the host does not block.
class NcclWork : public Work {
 public:
  explicit NcclWork(std::shared_ptr<at::cuda::CUDAEvent> done) : done_(std::move(done)) {}
  void wait() override { done_->block(c10::cuda::getCurrentCUDAStream(done_->device_index())); }
  bool test() override { return done_->query(); }

 private:
  std::shared_ptr<at::cuda::CUDAEvent> done_;
};

class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(torch::Device device, double timeout, std::shared_ptr<MpiCommunicator> cpu)
      : device_(device),
        cpu_(std::move(cpu)),
        timeout_(timeout),
        stream_(c10::cuda::getStreamFromPool(/*isHighPriority=*/true, device.index())) {
    c10::cuda::CUDAGuard guard(device_);
    ncclUniqueId id;
    if (cpu_->rank() == 0) QD_NCCL(ncclGetUniqueId(&id));
    MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, MPI_COMM_WORLD);
    QD_NCCL(ncclCommInitRank(&comm_, cpu_->world_size(), id, cpu_->rank()));
    watchdog_ = std::thread([this] { watch(); });
  }
  ~NcclCommunicator() override {
    stop_ = true;
    if (watchdog_.joinable()) watchdog_.join();
    if (comm_) ncclCommDestroy(comm_);
  }
  int rank() const override { return cpu_->rank(); }
  int world_size() const override { return cpu_->world_size(); }
  std::string backend() const override { return "nccl"; }

  std::unique_ptr<Work> all_reduce(torch::Tensor& t, ReduceOp op) override {
    if (t.device().is_cpu()) return cpu_->all_reduce(t, op);
    return enqueue(t, [&](cudaStream_t s) {
      QD_NCCL(ncclAllReduce(t.data_ptr(), t.data_ptr(), t.numel(), nccl_dtype(t.scalar_type()), nccl_op(op), comm_, s));
    });
  }
  void broadcast(torch::Tensor& t, int root) override {
    if (t.device().is_cpu()) return cpu_->broadcast(t, root);
    enqueue(t, [&](cudaStream_t s) {
      QD_NCCL(ncclBroadcast(t.data_ptr(), t.data_ptr(), t.numel(), nccl_dtype(t.scalar_type()), root, comm_, s));
    })->wait();
  }
  void barrier() override {
    torch::Tensor one = torch::ones({1}, torch::TensorOptions().device(device_));
    all_reduce(one, ReduceOp::kSum)->wait();
    c10::cuda::getCurrentCUDAStream(device_.index()).synchronize();
    cpu_->barrier();
  }

 private:
  template <class Launch>
  std::unique_ptr<Work> enqueue(torch::Tensor& t, Launch launch) {
    QD_CHECK(t.device() == device_, Error, "NCCL backend: tensor on ", t.device().str(), ", communicator on ",
             device_.str());
    QD_CHECK(t.is_contiguous(), Error, "NCCL backend: tensor must be contiguous");
    c10::cuda::CUDAGuard guard(device_);
    // The collective must see the producer's writes: our stream waits on the current stream.
    at::cuda::CUDAEvent ready;
    ready.record(c10::cuda::getCurrentCUDAStream(device_.index()));
    ready.block(stream_);
    launch(stream_.stream());
    // The caching allocator must not reuse `t`'s memory until our stream is done with it.
    c10::cuda::CUDACachingAllocator::recordStream(t.storage().data_ptr(), stream_);
    auto done = std::make_shared<at::cuda::CUDAEvent>();
    done->record(stream_);
    {
      std::lock_guard<std::mutex> lock(mu_);
      inflight_.push_back({done, std::chrono::steady_clock::now()});
    }
    return std::make_unique<NcclWork>(done);
  }

  // Polls asynchronous NCCL errors and collectives that exceed the timeout; aborts the job then.
  void watch() {
    while (!stop_) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      ncclResult_t async = ncclSuccess;
      if (ncclCommGetAsyncError(comm_, &async) == ncclSuccess && async != ncclSuccess && async != ncclInProgress) {
        ncclCommAbort(comm_);
        comm_ = nullptr;
        abort_job(1, concat("NCCL asynchronous error: ", ncclGetErrorString(async)));
      }
      std::lock_guard<std::mutex> lock(mu_);
      while (!inflight_.empty() && inflight_.front().event->query()) inflight_.pop_front();
      if (!inflight_.empty() &&
          std::chrono::duration<double>(std::chrono::steady_clock::now() - inflight_.front().start).count() > timeout_) {
        ncclCommAbort(comm_);
        comm_ = nullptr;
        abort_job(1, concat("NCCL collective did not complete within parallel.timeout_seconds = ", timeout_,
                            " s; a peer rank is stuck or dead"));
      }
    }
  }

  struct Inflight {
    std::shared_ptr<at::cuda::CUDAEvent> event;
    std::chrono::steady_clock::time_point start;
  };
  torch::Device device_;
  std::shared_ptr<MpiCommunicator> cpu_;
  double timeout_;
  c10::cuda::CUDAStream stream_;
  ncclComm_t comm_ = nullptr;
  std::thread watchdog_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::deque<Inflight> inflight_;
};

}  // namespace

std::shared_ptr<Communicator> make_nccl_communicator(torch::Device device, double timeout_seconds,
                                                     std::shared_ptr<MpiCommunicator> cpu) {
  return std::make_shared<NcclCommunicator>(device, timeout_seconds, std::move(cpu));
}

}  // namespace qd
