// The trainer on 2 MPI ranks: ranks stay in lock-step (identical weights after training),
// sharded evaluation equals a full evaluation, and the sampler gives disjoint shards.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>

#include "distill/teacher_cache.h"
#include "models/registry.h"
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

// Each rank computes the teacher logits of half the samples; the assembled table equals a
// single-process build, every rank holds it, rank 0 writes it, and a second call reads it back.
TEST(TeacherCacheMpi, SplitBuildEqualsSingleProcessBuild) {
  auto c = comm();
  DataConfig d;
  d.train_subset = 300;
  d.test_subset = 10;
  const DataBundle data = load_data(d);
  ModelConfig mc;
  mc.name = ModelKind::kConvNet;
  mc.width = 4;
  mc.depth = 2;
  torch::manual_seed(11);
  auto teacher = make_model(mc, input_spec(data));
  teacher->eval();
  TeacherCacheSpec spec;
  spec.views = 2;
  spec.augment.random_crop = true;
  spec.augment.views = 2;
  spec.seed = 3;
  spec.key = "mpi-test";
  // Rank 0's temp path is the one that counts; every rank must use the same one.
  torch::Tensor stamp = torch::tensor({static_cast<int64_t>(::getpid())});
  c->broadcast(stamp, 0);
  spec.path = (std::filesystem::temp_directory_path() / ("qd_cache_mpi_" + std::to_string(stamp.item<int64_t>()) + ".qdc")).string();

  TeacherCache split = TeacherCache::load_or_build(spec, *teacher, data.train, torch::kCPU, c.get());
  EXPECT_TRUE(split.built);
  TeacherCacheSpec local_spec = spec;
  local_spec.path = spec.path + ".local." + std::to_string(c->rank());
  TeacherCache local = TeacherCache::load_or_build(local_spec, *teacher, data.train, torch::kCPU, nullptr);
  EXPECT_TRUE(torch::equal(split.table, local.table));
  c->barrier();
  TeacherCache again = TeacherCache::load_or_build(spec, *teacher, data.train, torch::kCPU, c.get());
  EXPECT_FALSE(again.built) << "rank 0 wrote the file; everyone reuses it";
  EXPECT_TRUE(torch::equal(again.table, split.table));
  c->barrier();
  std::filesystem::remove(local_spec.path);
  if (c->rank() == 0) std::filesystem::remove(spec.path);
}

}  // namespace
}  // namespace qd
