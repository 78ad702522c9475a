// Backend choice and the single-process paths (no mpirun needed).
#include <gtest/gtest.h>

#include "common/error.h"
#include "parallel/communicator.h"
#include "parallel/grad_reducer.h"
#include "parallel/launch.h"

namespace qd {
namespace {

std::string user_error(const ParallelConfig& cfg, torch::Device d) {
  try {
    make_communicator(cfg, d);
  } catch (const UserError& e) {
    return e.what();
  }
  return "";
}

TEST(Communicator, AutoWithoutMpirunIsLocal) {
  ASSERT_FALSE(detect_launch().under_mpirun) << "run this test without mpirun";
  auto c = make_communicator(ParallelConfig{}, torch::kCPU);
  EXPECT_EQ(c->backend(), "local");
  EXPECT_EQ(c->world_size(), 1);
  torch::Tensor t = torch::arange(5.0);
  c->all_reduce(t, ReduceOp::kAvg)->wait();
  EXPECT_TRUE(torch::equal(t, torch::arange(5.0)));
}

TEST(Communicator, ImpossibleRequestsAreClearErrors) {
  ParallelConfig cfg;
  cfg.backend = BackendKind::kNccl;
  EXPECT_NE(user_error(cfg, torch::kCPU).find("parallel.backend: nccl needs CUDA tensors"), std::string::npos);
  cfg.backend = BackendKind::kMpi;
  EXPECT_NE(user_error(cfg, torch::Device(torch::kCUDA, 0)).find("parallel.backend: mpi all-reduces CPU tensors"),
            std::string::npos);
}

TEST(Communicator, NcclBackendIsCompiledWhereCudaIs) {
  // CI builds against the CUDA 13 toolkit with NCCL: the backend must be compiled in even on a
  // machine without a GPU (it is only run where one exists).
  EXPECT_TRUE(nccl_compiled());
}

TEST(GradReducer, SingleProcessLeavesGradientsAsComputed) {
  torch::manual_seed(0);
  torch::nn::Linear net(4, 3);
  GradReducer reducer(net->parameters(), std::make_shared<LocalCommunicator>(), GradReducerOptions{});
  torch::Tensor x = torch::randn({5, 4});
  reducer.zero_grad();
  reducer.prepare(true);
  net(x).sum().backward();
  reducer.finalize();
  torch::Tensor expected = torch::ones({5, 3}).t().mm(x);  // d/dW sum(W x + b) = 1^T x
  EXPECT_TRUE(torch::allclose(net->weight.grad(), expected, 1e-6, 1e-6));
  // A second step starts from zero, not from the previous gradient.
  reducer.zero_grad();
  reducer.prepare(true);
  net(x).sum().backward();
  reducer.finalize();
  EXPECT_TRUE(torch::allclose(net->weight.grad(), expected, 1e-6, 1e-6));
}

}  // namespace
}  // namespace qd
