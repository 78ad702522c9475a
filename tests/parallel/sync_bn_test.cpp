// Sync BN on 2 ranks, each with half a batch, equals BatchNorm over the whole batch in one
// process: outputs, input gradients, parameter gradients (summed over ranks) and running stats.
#include <gtest/gtest.h>

#include "models/batchnorm.h"
#include "parallel/mpi_communicator.h"

namespace qd {
namespace {

TEST(SyncBatchNorm, MatchesFullBatchBatchNorm) {
  static auto comm = std::make_shared<MpiCommunicator>(60.0);
  ASSERT_EQ(comm->world_size(), 2);
  torch::manual_seed(3);
  torch::Tensor x = torch::randn({8, 5, 4, 4}) * 3 + 1;  // same on both ranks
  torch::Tensor dy = torch::randn({8, 5, 4, 4});

  BatchNorm full(5);
  full->weight.data().uniform_(0.5, 1.5);
  full->bias.data().uniform_(-1, 1);
  torch::Tensor xf = x.clone().requires_grad_(true);
  torch::Tensor yf = full(xf);
  (yf * dy).sum().backward();

  BatchNorm part(5);
  part->weight.data().copy_(full->weight.detach());
  part->bias.data().copy_(full->bias.detach());
  part->set_all_reduce([](torch::Tensor& t) { all_reduce_now(*comm, t); });
  const int64_t lo = comm->rank() * 4;
  torch::Tensor xp = x.narrow(0, lo, 4).clone().requires_grad_(true);
  torch::Tensor yp = part(xp);
  (yp * dy.narrow(0, lo, 4)).sum().backward();

  EXPECT_TRUE(torch::allclose(yp, yf.narrow(0, lo, 4), 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(xp.grad(), xf.grad().narrow(0, lo, 4), 1e-4, 1e-5))
      << (xp.grad() - xf.grad().narrow(0, lo, 4)).abs().max().item<double>();
  torch::Tensor gw = part->weight.grad().clone(), gb = part->bias.grad().clone();
  all_reduce_now(*comm, gw);
  all_reduce_now(*comm, gb);
  EXPECT_TRUE(torch::allclose(gw, full->weight.grad(), 1e-4, 1e-5));
  EXPECT_TRUE(torch::allclose(gb, full->bias.grad(), 1e-4, 1e-5));
  EXPECT_TRUE(torch::allclose(part->running_mean, full->running_mean, 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(part->running_var, full->running_var, 1e-5, 1e-6));
}

TEST(SyncBatchNorm, EvalModeUsesRunningStatsWithoutCommunication) {
  BatchNorm bn(3);
  int calls = 0;
  bn->set_all_reduce([&calls](torch::Tensor&) { ++calls; });
  bn->eval();
  bn(torch::randn({2, 3, 2, 2}));
  EXPECT_EQ(calls, 0);
}

}  // namespace
}  // namespace qd
