// The Q8_0 / Q4_0 fake-quant grids against the gguf package's quantizer (which follows ggml's
// reference rounding bit for bit): the same dequantized float32 values, bit for bit, on weights
// that include all-zero blocks, ties of the largest magnitude and values on rounding boundaries;
// and the straight-through gradient.
#include "qat/ggml_quant.h"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include "common/error.h"
#include "tests/test_util.h"

namespace qd {
namespace {

torch::Tensor test_weights() {
  torch::manual_seed(7);
  torch::Tensor w = torch::randn({6, 128}) * 0.05;
  w[0].narrow(0, 0, 32).zero_();                                   // an all-zero block
  w[1].narrow(0, 0, 32).fill_(0.01f);                              // a constant block
  w[1][3] = 0.2f, w[1][9] = -0.2f;                                 // a tie of |max| with both signs
  w[2].narrow(0, 32, 32).copy_(torch::arange(-16, 16).to(torch::kFloat32) * 0.125f);  // many .5 boundaries
  w[3] *= 1e-5;                                                    // tiny scales (fp16 subnormals)
  w[4] *= 100;                                                     // large scales
  // Blocks whose scale is exactly 1, so x / d lands on .5: Q8_0 rounds those away from zero.
  w[5].narrow(0, 0, 32).copy_(torch::arange(-15, 17).to(torch::kFloat32) + 0.5f);
  w[5][0] = 127.0f;
  w[5].narrow(0, 32, 32).copy_((torch::arange(-16, 16).to(torch::kFloat32) * 0.25f));
  w[5][32] = -8.0f;  // Q4_0: d = -8 / -8 = 1
  return w;
}

// The gguf package's quantize -> dequantize of `w` as `type` (Q8_0 or Q4_0), or a skip reason.
std::pair<torch::Tensor, std::string> reference(const torch::Tensor& w, const char* type) {
  const std::string py = test::setup_python(QD_SOURCE_DIR);
  if (test::run_command(py + " -c 'import gguf, numpy' >/dev/null 2>&1").code != 0)
    return {torch::Tensor(), "the gguf package is missing for " + py + ": run scripts/setup.sh"};
  test::TempDir dir;
  const std::string in = dir.file("w.f32"), out = dir.file("q.f32");
  const torch::Tensor c = w.contiguous();
  std::ofstream(in, std::ios::binary).write(static_cast<const char*>(c.data_ptr()), c.numel() * 4);
  const std::string code =
      "import numpy as np, gguf, sys\n"
      "w = np.fromfile(sys.argv[1], dtype=np.float32).reshape(" + std::to_string(w.size(0)) + ", " + std::to_string(w.size(1)) + ")\n"
      "t = gguf.GGMLQuantizationType." + std::string(type) + "\n"
      "gguf.quants.dequantize(gguf.quants.quantize(w, t), t).astype(np.float32).tofile(sys.argv[2])\n";
  const std::string script = dir.file("ref.py");
  std::ofstream(script) << code;
  const test::ProcResult r = test::run_command(py + " " + script + " " + in + " " + out + " 2>&1");
  if (r.code != 0) throw std::runtime_error("gguf reference failed:\n" + r.output);
  torch::Tensor q = torch::empty_like(c);
  std::ifstream(out, std::ios::binary).read(static_cast<char*>(q.data_ptr()), q.numel() * 4);
  return {q, ""};
}

TEST(GgmlFakeQuant, MatchesTheGgufPackageBitForBit) {
  const torch::Tensor w = test_weights();
  for (auto [type, name] : {std::make_pair(GgmlBlockType::kQ8_0, "Q8_0"), std::make_pair(GgmlBlockType::kQ4_0, "Q4_0")}) {
    auto [ref, skip] = reference(w, name);
    if (!skip.empty()) GTEST_SKIP() << skip;
    const torch::Tensor ours = ggml_quantize_dequantize(w, type);
    const int64_t differ = ours.ne(ref).sum().item<int64_t>();
    EXPECT_EQ(differ, 0) << name << ": " << differ << " of " << w.numel() << " values differ; max |diff| "
                         << (ours - ref).abs().max().item<float>();
    EXPECT_GT(ours.ne(w).sum().item<int64_t>(), w.numel() / 2) << name << ": the grid changed nothing";
    // Per block, at most 2^bits distinct levels.
    const torch::Tensor levels = std::get<0>(at::_unique(ours[5].narrow(0, 0, 32)));
    EXPECT_LE(levels.numel(), type == GgmlBlockType::kQ8_0 ? 255 : 16);
  }
}

TEST(GgmlFakeQuant, ForwardIsTheGridAndTheGradientPassesStraightThrough) {
  const torch::Tensor w = test_weights().requires_grad_(true);
  const torch::Tensor y = ggml_fake_quant(w, GgmlBlockType::kQ4_0);
  EXPECT_TRUE(torch::equal(y.detach(), ggml_quantize_dequantize(w, GgmlBlockType::kQ4_0)));
  (y * 3.0).sum().backward();
  EXPECT_TRUE(torch::equal(w.grad(), torch::full_like(w, 3.0)));
  EXPECT_THROW(ggml_quantize_dequantize(torch::zeros({4, 30}), GgmlBlockType::kQ8_0), Error);
}

}  // namespace
}  // namespace qd
