// Data parallel for the text tasks: 2 ranks with batch B train the same model as one process with
// batch 2B (up to float rounding), for causal_lm and for sentence_embedding, and the sharded
// evaluation equals a one-process evaluation; the language-model teacher cache builds sharded.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>

#include "common/error.h"
#include "distill/lm_teacher_cache.h"
#include "models/text_model.h"
#include "parallel/mpi_communicator.h"
#include "trainer/experiment.h"
#include "tests/pretrained_util.h"
#include "trainer/trainer.h"

namespace qd {
namespace {

namespace fs = std::filesystem;

std::shared_ptr<MpiCommunicator> comm() {
  static auto c = std::make_shared<MpiCommunicator>(120.0);
  return c;
}

// A folder name every rank agrees on (rank 0's pid).
std::string shared_temp(const std::string& stem) {
  torch::Tensor stamp = torch::tensor({static_cast<int64_t>(::getpid())});
  comm()->broadcast(stamp, 0);
  return (fs::temp_directory_path() / (stem + std::to_string(stamp.item<int64_t>()))).string();
}


// Trains `cfg` on 2 ranks with its batch, and alone with twice the batch; returns the largest
// parameter difference.
double dp_vs_single(ExperimentConfig cfg) {
  auto c = comm();
  torch::set_num_threads(1);
  const auto train = [&](ExperimentConfig k, std::shared_ptr<Communicator> with) {
    torch::manual_seed(1);
    auto model = make_text_model(k.model);
    auto task = make_text_task(k, *model, torch::kCPU, with.get());
    Trainer t(k, model, task, "", with);
    t.fit();
    return std::make_pair(model, task);
  };
  auto [dp, dp_task] = train(cfg, c);
  c->barrier();
  ExperimentConfig single = cfg;
  single.data.batch_size *= 2;
  auto [one, one_task] = train(single, std::make_shared<LocalCommunicator>());
  double worst = 0.0;
  const auto a = dp->parameters(), b = one->parameters();
  for (size_t i = 0; i < a.size(); ++i) {
    worst = std::max(worst, (a[i] - b[i]).abs().max().item<double>());
    torch::Tensor maxed = a[i].detach().clone();
    all_reduce_now(*c, maxed, ReduceOp::kMax);
    EXPECT_TRUE(torch::equal(maxed, a[i])) << "ranks diverged at parameter " << i;
  }
  // Sharded evaluation = one process's.
  const TaskMetrics sharded = dp_task->evaluate(*dp, torch::kCPU, c.get(), false);
  const TaskMetrics alone = dp_task->evaluate(*dp, torch::kCPU, nullptr, false);
  for (const auto& [k, v] : alone.values) EXPECT_NEAR(sharded.values.at(k), v, 1e-6 * std::max(1.0, std::abs(v))) << k;
  return worst;
}

TEST(TextDataParallel, CausalLmTwoRanksEqualOneProcessWithTheDoubledBatch) {
  const std::string skip = test::missing_teacher("smollm2-135m");
  if (!skip.empty()) GTEST_SKIP() << skip;
  const std::string corpus = shared_temp("qd_dp_corpus_");
  if (comm()->rank() == 0) {
    fs::create_directories(corpus);
    fs::copy_file("/usr/share/games/fortunes/fortunes", fs::path(corpus) / "fortunes", fs::copy_options::overwrite_existing);
  }
  comm()->barrier();
  ExperimentConfig cfg = parse_experiment_config(
      "experiment: {name: lm}\ntask: {name: causal_lm}\n"
      "data: {dataset: fortunes, seq_len: 16, batch_size: 4, eval_batch_size: 4, train_subset: 64, test_subset: 30}\n"
      "model: {name: llama, tokenizer: smollm2-135m, hidden: 32, layers: 2, heads: 4, kv_heads: 2, ffn: 64, max_positions: 32}\n"
      "optimizer: {name: sgd, lr: 0.05, momentum: 0.9, weight_decay: 0.0}\n"
      "trainer: {epochs: 1, progress: false, threads: 1}\nparallel: {bucket_mb: 0.01, first_bucket_mb: 0.01}\n",
      "lm.yaml");
  cfg.data.text_root = corpus;
  const double worst = dp_vs_single(cfg);
  EXPECT_LT(worst, 2e-5) << "largest parameter difference, 2 ranks x 4 vs 1 x 8";
  comm()->barrier();
  if (comm()->rank() == 0) fs::remove_all(corpus);
}

TEST(TextDataParallel, SentenceEmbeddingTwoRanksEqualOneProcessWithTheDoubledBatch) {
  const std::string skip = test::missing_teacher("minilm-l6");
  if (!skip.empty()) GTEST_SKIP() << skip;
  const std::string cache = shared_temp("qd_dp_cache_");
  ExperimentConfig cfg = parse_experiment_config(
      "experiment: {name: emb}\ntask: {name: sentence_embedding, teacher: minilm-l6}\n"
      "data: {dataset: wordnet, seq_len: 16, batch_size: 8, eval_batch_size: 32, train_subset: 96, test_subset: 64}\n"
      "model: {name: bert, tokenizer: minilm-l6, hidden: 384, layers: 1, heads: 6, ffn: 128, max_positions: 32}\n"
      "optimizer: {name: sgd, lr: 0.5, momentum: 0.9, weight_decay: 0.0}\n"
      "trainer: {epochs: 1, progress: false, threads: 1}\nparallel: {bucket_mb: 0.01, first_bucket_mb: 0.01}\n",
      "emb.yaml");
  cfg.task.cache_dir = cache;
  const double worst = dp_vs_single(cfg);
  EXPECT_LT(worst, 2e-5) << "largest parameter difference, 2 ranks x 8 vs 1 x 16";
  comm()->barrier();
  if (comm()->rank() == 0) fs::remove_all(cache);
}

// The language-model teacher cache built over 2 ranks (each ranks' half of the sequences, joined by
// an all-reduce) equals a one-process build, every rank holds it, and rank 0 wrote the file.
TEST(TextDataParallel, LmTeacherCacheSplitBuildEqualsOneProcess) {
  auto c = comm();
  torch::manual_seed(5);
  LlamaOptions o;
  o.vocab = 50, o.hidden = 16, o.layers = 1, o.heads = 2, o.kv_heads = 1, o.ffn = 32, o.max_positions = 16;
  LlamaModel teacher(Llama(o), nullptr);
  const torch::Tensor seqs = torch::randint(0, 50, {9, 6}, torch::kLong);  // same on both ranks (same seed)
  LmCacheSpec spec;
  spec.path = shared_temp("qd_lm_cache_") + ".qdlc";
  spec.top_k = 4;
  spec.batch_size = 1;  // the same forward shapes in both builds, whatever GEMM kernels the CPU picks
  spec.key = lm_cache_key("tiny", seqs, 4, 1.0);
  const LmTeacherCache split = LmTeacherCache::load_or_build(spec, teacher, seqs, torch::kCPU, c.get());
  EXPECT_TRUE(split.built);
  LmCacheSpec local = spec;
  local.path = spec.path + ".rank" + std::to_string(c->rank());
  const LmTeacherCache one = LmTeacherCache::load_or_build(local, teacher, seqs, torch::kCPU, nullptr);
  EXPECT_TRUE(torch::equal(split.ids, one.ids));
  EXPECT_TRUE(torch::equal(split.logits, one.logits));
  EXPECT_TRUE(torch::equal(split.rest_lse, one.rest_lse));
  c->barrier();
  const LmTeacherCache again = LmTeacherCache::load_or_build(spec, teacher, seqs, torch::kCPU, c.get());
  EXPECT_FALSE(again.built) << "rank 0 wrote the file; every rank reuses it";
  EXPECT_TRUE(torch::equal(again.logits, split.logits));
  c->barrier();
  fs::remove(local.path);
  if (c->rank() == 0) fs::remove(spec.path);
}

}  // namespace
}  // namespace qd
