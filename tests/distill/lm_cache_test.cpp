// The language-model teacher cache: built once, then read back equal; its lookup is the teacher's
// own top-k target (fp16-rounded logits); a stale, mismatched, truncated or corrupt file is
// rebuilt and says why.
#include "distill/lm_teacher_cache.h"

#include <gtest/gtest.h>

#include <fstream>

#include "common/atomic_file.h"
#include "models/text_model.h"
#include "tests/test_util.h"

namespace qd {
namespace {

std::shared_ptr<LlamaModel> tiny_teacher() {
  torch::manual_seed(5);
  LlamaOptions o;
  o.vocab = 50, o.hidden = 16, o.layers = 1, o.heads = 2, o.kv_heads = 1, o.ffn = 32, o.max_positions = 16;
  return std::make_shared<LlamaModel>(Llama(o), nullptr);  // the cache never tokenizes
}

// A tiny teacher, `n` random sequences of 6 tokens and the spec of their cache file.
class LmTeacherCacheTest : public ::testing::Test {
 protected:
  void make(int64_t n, int64_t k, double t) {
    seqs = torch::randint(0, 50, {n, 6}, torch::kLong);
    spec.path = dir.file("lm.qdlc");
    spec.top_k = k;
    spec.temperature = t;
    spec.batch_size = 1;  // one sequence per forward, as the reference below: no GEMM-shape dependence
    spec.key = lm_cache_key("tiny", seqs, k, t);
  }
  LmTeacherCache load_or_build(const LmCacheSpec& s) {
    return LmTeacherCache::load_or_build(s, *teacher, seqs, torch::kCPU, nullptr);
  }
  test::TempDir dir;
  std::shared_ptr<LlamaModel> teacher = tiny_teacher();
  torch::Tensor seqs;
  LmCacheSpec spec;
};

TEST_F(LmTeacherCacheTest, BuildsOnceAndLooksUpTheTeachersTopK) {
  make(7, 5, 2.0);
  const LmTeacherCache built = load_or_build(spec);
  EXPECT_TRUE(built.built);
  EXPECT_EQ(built.rebuild_reason, "no cache file yet");
  const LmTeacherCache read = load_or_build(spec);
  EXPECT_FALSE(read.built);
  EXPECT_TRUE(torch::equal(read.ids, built.ids));
  EXPECT_TRUE(torch::equal(read.logits, built.logits));
  EXPECT_TRUE(torch::equal(read.rest_lse, built.rest_lse));

  // The lookup of sequences {4, 1} is the teacher's own target on them, logits rounded to fp16.
  const TopKTarget got = read.lookup({4, 1}, torch::kCPU);
  torch::NoGradGuard g;
  teacher->eval();
  std::vector<torch::Tensor> rows;
  for (int64_t s : {4, 1}) {
    const torch::Tensor x = seqs[s].unsqueeze(0);
    rows.push_back(teacher->forward_text(x, torch::ones_like(x))[0]);
  }
  const torch::Tensor z = torch::cat(rows).reshape({12, 50});
  const TopKTarget want = make_topk_target(z, 5, 2.0);
  EXPECT_TRUE(torch::equal(got.ids, want.ids));
  EXPECT_TRUE(torch::equal(got.logits, want.logits.to(torch::kHalf).to(torch::kFloat32)));
  EXPECT_TRUE(torch::allclose(got.rest_lse, want.rest_lse, 1e-6, 1e-6));
  EXPECT_EQ(got.temperature, 2.0);
}

TEST_F(LmTeacherCacheTest, StaleMismatchedTruncatedOrCorruptFilesAreRebuilt) {
  make(4, 3, 1.0);
  load_or_build(spec);
  const std::string good = read_file(spec.path);
  const auto rebuild_reason = [&](const LmCacheSpec& s) { return load_or_build(s).rebuild_reason; };
  LmCacheSpec other = spec;
  other.key = lm_cache_key("another teacher", seqs, 3, 1.0);
  EXPECT_NE(rebuild_reason(other).find("stale"), std::string::npos);
  write_file_atomic(spec.path, good);
  other = spec;
  other.top_k = 4;  // same key string by mistake, another k
  EXPECT_EQ(rebuild_reason(other), "shape mismatch");
  write_file_atomic(spec.path, good.substr(0, good.size() - 7));
  EXPECT_EQ(rebuild_reason(spec), "truncated or oversized payload");
  std::string bad = good;
  bad[bad.size() - 30] ^= 0x40;
  write_file_atomic(spec.path, bad);
  EXPECT_EQ(rebuild_reason(spec), "corrupt: CRC mismatch");
  write_file_atomic(spec.path, "QDLC");
  EXPECT_EQ(rebuild_reason(spec), "unsupported cache version");
  write_file_atomic(spec.path, "junk");
  EXPECT_NE(rebuild_reason(spec).find("bad magic"), std::string::npos);
  // After each rebuild the file is good again.
  EXPECT_EQ(rebuild_reason(spec), "");
  EXPECT_EQ(read_file(spec.path), good);
}

}  // namespace
}  // namespace qd
