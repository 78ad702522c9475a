// The NCCL backend on CUDA tensors. Labelled `gpu`: on machines without CUDA every test skips
// and says why. Registered twice: 1 rank (any GPU machine) and 2 ranks (one GPU per rank).
#include <gtest/gtest.h>

#include "parallel/communicator.h"
#include "parallel/launch.h"

namespace qd {
namespace {

std::shared_ptr<Communicator> nccl() {
  static std::shared_ptr<Communicator> c = [] {
    ParallelConfig cfg;
    cfg.backend = BackendKind::kNccl;
    cfg.timeout_seconds = 60;
    const LaunchInfo& li = mpi_runtime();
    return make_communicator(cfg, torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(li.local_rank)));
  }();
  return c;
}

#define QD_REQUIRE_GPUS()                                                                                   \
  do {                                                                                                      \
    if (!torch::cuda::is_available()) GTEST_SKIP() << "CUDA is not available here: NCCL tests need a GPU";  \
    const LaunchInfo& li_ = mpi_runtime();                                                                  \
    if (static_cast<int>(torch::cuda::device_count()) < li_.local_size)                                     \
      GTEST_SKIP() << li_.local_size << " ranks on this node but " << torch::cuda::device_count()           \
                   << " GPU(s): NCCL needs one GPU per rank";                                               \
  } while (0)

TEST(Nccl, AllReduceSumAvgMaxOnOddSizes) {
  QD_REQUIRE_GPUS();
  auto c = nccl();
  EXPECT_EQ(c->backend(), "nccl");
  const auto dev = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(mpi_runtime().local_rank));
  const double w = c->world_size(), r = c->rank();
  for (int64_t n : {1, 7, 1023, 100003}) {
    for (auto dtype : {torch::kFloat32, torch::kFloat64}) {
      torch::Tensor base = torch::arange(n, torch::TensorOptions().dtype(dtype).device(dev));
      torch::Tensor t = base + 1000 * r;  // written on the current stream just before the collective
      c->all_reduce(t, ReduceOp::kSum)->wait();
      EXPECT_TRUE(torch::allclose(t, base * w + 1000 * (w * (w - 1) / 2))) << "n " << n;
      t = base + 1000 * r;
      c->all_reduce(t, ReduceOp::kAvg)->wait();
      EXPECT_TRUE(torch::allclose(t, base + 1000 * (w - 1) / 2)) << "n " << n;
      t = base + 1000 * r;
      c->all_reduce(t, ReduceOp::kMax)->wait();
      EXPECT_TRUE(torch::allclose(t, base + 1000 * (w - 1))) << "n " << n;
    }
  }
}

TEST(Nccl, BroadcastBarrierAndCpuTensorsGoToMpi) {
  QD_REQUIRE_GPUS();
  auto c = nccl();
  const auto dev = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(mpi_runtime().local_rank));
  torch::Tensor t = torch::full({13}, static_cast<float>(c->rank() + 1), torch::TensorOptions().device(dev));
  c->broadcast(t, 0);
  EXPECT_TRUE(torch::equal(t.cpu(), torch::full({13}, 1.0f)));
  c->barrier();
  torch::Tensor cpu = torch::full({5}, 2.0);
  c->all_reduce(cpu, ReduceOp::kSum)->wait();
  EXPECT_TRUE(torch::allclose(cpu, torch::full({5}, 2.0 * c->world_size())));
}

}  // namespace
}  // namespace qd
