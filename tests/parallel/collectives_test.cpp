// Collectives of the MPI backend on 2 ranks: sum, average, max, broadcast, barrier, on odd
// sizes and on float and double.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "common/error.h"
#include "parallel/launch.h"
#include "parallel/mpi_communicator.h"

namespace qd {
namespace {

std::shared_ptr<MpiCommunicator> comm() {
  static auto c = std::make_shared<MpiCommunicator>(60.0);
  return c;
}

class Collectives : public ::testing::TestWithParam<std::tuple<torch::ScalarType, int64_t>> {};

TEST_P(Collectives, AllReduceSumAvgMax) {
  const auto [dtype, n] = GetParam();
  auto c = comm();
  ASSERT_EQ(c->world_size(), 2) << "run under mpiexec -n 2";
  const double r = c->rank();
  // rank r holds i + 1000 r: sum = 2i + 1000, avg = i + 500, max = i + 1000
  torch::Tensor base = torch::arange(n, torch::TensorOptions().dtype(dtype));
  torch::Tensor t = base + 1000 * r;
  c->all_reduce(t, ReduceOp::kSum)->wait();
  EXPECT_TRUE(torch::equal(t, base * 2 + 1000));
  t = base + 1000 * r;
  c->all_reduce(t, ReduceOp::kAvg)->wait();
  EXPECT_TRUE(torch::allclose(t, base + 500));
  t = base + 1000 * r;
  c->all_reduce(t, ReduceOp::kMax)->wait();
  EXPECT_TRUE(torch::equal(t, base + 1000));
  t = base + 1000 * r;
  c->all_reduce(t, ReduceOp::kMin)->wait();
  EXPECT_TRUE(torch::equal(t, base));
}

INSTANTIATE_TEST_SUITE_P(OddSizes, Collectives,
                         ::testing::Combine(::testing::Values(torch::kFloat32, torch::kFloat64),
                                            ::testing::Values<int64_t>(1, 7, 1023, 100003)));

TEST(Collectives, SeveralInFlightCompleteInAnyWaitOrder) {
  auto c = comm();
  std::vector<torch::Tensor> ts;
  std::vector<std::unique_ptr<Work>> works;
  for (int i = 0; i < 5; ++i) {
    ts.push_back(torch::full({17 + i}, static_cast<float>(c->rank() + i)));
    works.push_back(c->all_reduce(ts.back(), ReduceOp::kSum));
  }
  for (int i = 4; i >= 0; --i) {
    works[static_cast<size_t>(i)]->wait();
    EXPECT_TRUE(torch::equal(ts[static_cast<size_t>(i)], torch::full({17 + i}, static_cast<float>(1 + 2 * i))));
  }
}

TEST(Collectives, BroadcastFromEitherRoot) {
  auto c = comm();
  for (int root : {0, 1}) {
    torch::Tensor t = torch::full({13}, static_cast<double>(c->rank() * 10 + 1), torch::kFloat64);
    c->broadcast(t, root);
    EXPECT_TRUE(torch::equal(t, torch::full({13}, static_cast<double>(root * 10 + 1), torch::kFloat64)));
  }
  torch::Tensor i64 = torch::arange(5, torch::kInt64) * (c->rank() + 1);
  c->broadcast(i64, 1);
  EXPECT_TRUE(torch::equal(i64, torch::arange(5, torch::kInt64) * 2));
}

TEST(Collectives, BarrierOrdersRanks) {
  auto c = comm();
  // Rank 1 sleeps before the barrier; rank 0 cannot leave the barrier before rank 1 arrives.
  c->barrier();  // start together (within a few ms)
  const auto start = std::chrono::steady_clock::now();
  if (c->rank() == 1) std::this_thread::sleep_for(std::chrono::milliseconds(300));
  c->barrier();
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (c->rank() == 0) {
    EXPECT_GE(waited, 0.25);
  }
}

TEST(Collectives, NonContiguousAndUnsupportedDtypesAreRejected) {
  auto c = comm();
  torch::Tensor strided = torch::ones({4, 4}).t();
  EXPECT_THROW(c->all_reduce(strided, ReduceOp::kSum), Error);
  torch::Tensor half = torch::ones({3}, torch::kFloat16);
  EXPECT_THROW(c->all_reduce(half, ReduceOp::kSum), Error);
}

}  // namespace
}  // namespace qd
