// Data-parallel equivalence: 2 ranks, each on half of a batch, end with the same parameters as
// one process on the whole batch (relative tolerance 1e-5), with one large bucket, with many
// tiny buckets, and with gradient accumulation.
#include "parallel/grad_reducer.h"

#include <gtest/gtest.h>

#include "parallel/mpi_communicator.h"

namespace qd {
namespace {

constexpr double kRtol = 1e-5, kAtol = 1e-7;

std::shared_ptr<MpiCommunicator> comm() {
  static auto c = std::make_shared<MpiCommunicator>(60.0);
  return c;
}

torch::nn::Sequential make_net() {
  torch::manual_seed(0);  // same init on every rank (and the reference)
  return torch::nn::Sequential(torch::nn::Linear(20, 33), torch::nn::ReLU(), torch::nn::Linear(33, 17),
                               torch::nn::ReLU(), torch::nn::Linear(17, 10));
}

struct Data {
  std::vector<torch::Tensor> x, y;  // per step: [16, 20], [16]
};
Data make_data(int steps) {
  torch::manual_seed(1);
  Data d;
  for (int s = 0; s < steps; ++s) {
    d.x.push_back(torch::randn({16, 20}));
    d.y.push_back(torch::randint(0, 10, {16}, torch::kInt64));
  }
  return d;
}

torch::optim::SGD make_opt(torch::nn::Sequential& net) {
  return torch::optim::SGD(net->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9).weight_decay(1e-3));
}

std::vector<torch::Tensor> reference(int steps) {
  auto net = make_net();
  auto opt = make_opt(net);
  Data d = make_data(steps);
  for (int s = 0; s < steps; ++s) {
    opt.zero_grad();
    torch::nn::functional::cross_entropy(net->forward(d.x[s]), d.y[s]).backward();
    opt.step();
  }
  return net->parameters();
}

// Each rank takes rows [8r, 8r + 8) of every batch, split into `micro` micro-batches.
std::vector<torch::Tensor> data_parallel(int steps, GradReducerOptions o, int micro, size_t* buckets = nullptr,
                                         size_t* launched = nullptr) {
  auto c = comm();
  auto net = make_net();
  auto opt = make_opt(net);
  GradReducer reducer(net->parameters(), c, o);
  Data d = make_data(steps);
  const int64_t per_rank = 16 / c->world_size(), mb = per_rank / micro;
  for (int s = 0; s < steps; ++s) {
    reducer.zero_grad();
    for (int m = 0; m < micro; ++m) {
      const int64_t lo = c->rank() * per_rank + m * mb;
      reducer.prepare(m == micro - 1);
      (torch::nn::functional::cross_entropy(net->forward(d.x[s].narrow(0, lo, mb)), d.y[s].narrow(0, lo, mb)) /
       static_cast<double>(micro))
          .backward();
    }
    reducer.finalize();
    opt.step();
  }
  if (buckets) *buckets = reducer.num_buckets();
  if (launched) *launched = reducer.launched_during_backward();
  return net->parameters();
}

void expect_close(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    const double err = (a[i] - b[i]).abs().max().item<double>();
    EXPECT_TRUE(torch::allclose(a[i], b[i], kRtol, kAtol)) << "parameter " << i << " max abs diff " << err;
  }
}

TEST(GradReducer, OneLargeBucketMatchesFullBatch) {
  GradReducerOptions o;  // 25 MB: everything in the first (1 MB) bucket
  size_t buckets = 0;
  expect_close(data_parallel(4, o, 1, &buckets), reference(4));
  EXPECT_EQ(buckets, 1u);
}

TEST(GradReducer, ManyTinyBucketsMatchFullBatchAndOverlapBackward) {
  GradReducerOptions o;
  o.bucket_bytes = o.first_bucket_bytes = 64;  // one parameter per bucket
  size_t buckets = 0, launched = 0;
  expect_close(data_parallel(4, o, 1, &buckets, &launched), reference(4));
  EXPECT_EQ(buckets, 6u);
  // Every bucket's all-reduce started from a gradient hook, i.e. while backward was running.
  EXPECT_EQ(launched, 6u);
}

TEST(GradReducer, GradientAccumulationMatchesFullBatch) {
  GradReducerOptions o;
  o.bucket_bytes = o.first_bucket_bytes = 2048;
  expect_close(data_parallel(3, o, /*micro=*/4), reference(3));
}

TEST(GradReducer, BucketsFollowReverseRegistrationOrder) {
  auto net = make_net();
  GradReducerOptions o;
  o.bucket_bytes = o.first_bucket_bytes = 64;
  GradReducer reducer(net->parameters(), comm(), o);
  ASSERT_EQ(reducer.num_buckets(), 6u);
  for (size_t b = 0; b < 6; ++b) EXPECT_EQ(reducer.bucket_params(b), std::vector<size_t>{5 - b});
}

TEST(GradReducer, GradsAreViewsIntoBuckets) {
  auto net = make_net();
  GradReducer reducer(net->parameters(), comm(), GradReducerOptions{});
  reducer.zero_grad();
  const auto params = net->parameters();
  // Parameters are laid out back to front in one flat buffer: each grad ends where the next begins.
  for (size_t i = 0; i + 1 < params.size(); ++i) {
    const auto* next_end = static_cast<const char*>(params[i + 1].grad().data_ptr()) + params[i + 1].numel() * 4;
    EXPECT_EQ(next_end, params[i].grad().data_ptr());
  }
}

}  // namespace
}  // namespace qd
