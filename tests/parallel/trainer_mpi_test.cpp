// The trainer on 2 MPI ranks: ranks stay in lock-step (identical weights after training),
// sharded evaluation equals a full evaluation, and the sampler gives disjoint shards.
#include <gtest/gtest.h>

#include "parallel/mpi_communicator.h"
#include "trainer/experiment.h"
#include "trainer/trainer.h"

namespace qd {
namespace {

std::shared_ptr<MpiCommunicator> comm() {
  static auto c = std::make_shared<MpiCommunicator>(120.0);
  return c;
}

TEST(TrainerMpi, RanksEndWithIdenticalWeightsAndEvalIsSharded) {
  auto c = comm();
  ASSERT_EQ(c->world_size(), 2);
  ExperimentConfig cfg = parse_experiment_config(
      "experiment: {name: t}\nmodel: {name: convnet, width: 4, depth: 2}\n"
      "data: {train_subset: 1024, test_subset: 300, batch_size: 32, augment: {random_crop: true}}\n"
      "trainer: {epochs: 1, progress: false, threads: 1, accumulate_steps: 2}\n"
      "parallel: {bucket_mb: 0.001, first_bucket_mb: 0.001}\n",
      "test.yaml");
  torch::set_num_threads(1);
  const DataBundle data = load_data(cfg.data);
  // A different seed per rank: the broadcast of rank 0's initial weights must align them.
  cfg.experiment.seed = c->rank();
  auto model = build_model(cfg, data);
  cfg.experiment.seed = 0;
  Trainer trainer(cfg, model, data, "", c);
  const TrainResult r = trainer.fit();
  EXPECT_EQ(r.epochs_completed, 1);

  for (auto& p : model->parameters()) {
    torch::Tensor mine = p.detach().contiguous().clone();
    torch::Tensor maxed = mine.clone();
    all_reduce_now(*c, maxed, ReduceOp::kMax);
    EXPECT_TRUE(torch::equal(mine, maxed)) << "ranks diverged";
  }
  const EvalResult sharded = evaluate(*model, data.test, 64, torch::kCPU, true, c.get());
  const EvalResult full = evaluate(*model, data.test, 64, torch::kCPU, true, nullptr);
  EXPECT_EQ(sharded.samples, 300);
  EXPECT_NEAR(sharded.accuracy, full.accuracy, 1e-9);
  EXPECT_NEAR(sharded.loss, full.loss, 1e-5);
  EXPECT_NEAR(r.final_accuracy, full.accuracy, 1e-9);
}

}  // namespace
}  // namespace qd
