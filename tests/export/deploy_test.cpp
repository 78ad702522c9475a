// Which platforms compute an integer model exactly (export/deploy_targets.h): the static proof,
// the vpmaddubsw pair arithmetic by hand, the kernel emulation against the interpreter, and ONNX
// Runtime on this CPU and on emulated ones (QEMU) against the emulation. Every expected value is
// computed by the same code on every CPU: where ONNX Runtime runs natively, the expectation is the
// emulation of this CPU's class, so the test holds on AVX2, AVX-512 VNNI and ARM64 hosts alike.
// No LibTorch.
#include "export/deploy_targets.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "runtime/interpreter.h"
#include "tests/export/ort_util.h"
#include "tests/runtime/model_builders.h"

namespace qd {
namespace {

using namespace rt::test_models;
using rt::Model;
using rt::OpKind;

// input 3x9x9 -> A: conv 3x3 p1 3 -> 16 (ReLU) -> B: conv 3x3 p1 16 -> 16 -> add(A, B) (ReLU)
// -> maxpool 2 (16x4x4) -> C: conv 1x1 16 -> 8 (ReLU) -> gap -> linear 10. A reads 3 channels
// (ONNX Runtime: im2col GEMM, pairs straddle kernel positions), B 16 (its "ConvSym" kernel).
// `max_abs`: weights clipped to [-max_abs, max_abs] (64: the portable grid).
Model model(int max_abs, int32_t input_zero_point = -10) {
  seed_state() = 7;
  Model m;
  m.mean = {0.3f, 0.3f, 0.3f};
  m.inv_std = {1.0f / 0.35f, 1.0f / 0.35f, 1.0f / 0.35f};
  m.tensors = {tensor(3, 9, 9, 0.0213f, input_zero_point), tensor(16, 9, 9, 0.02f, -128), tensor(16, 9, 9, 0.05f, 3),
               tensor(16, 9, 9, 0.04f, -128), tensor(16, 4, 4, 0.04f, -128), tensor(8, 4, 4, 0.03f, -128),
               tensor(8, 1, 1, 0.02f, -128), tensor(10, 1, 1, 1.0f, 0)};
  m.layers.push_back(conv("A", m, 0, 16, 3, 1, 1, 0.02f));
  m.layers.back().act_min = -128;  // = the zero point: a fused ReLU
  m.layers.push_back(conv("B", m, 1, 16, 3, 1, 1, 0.05f));
  m.layers.push_back(add(m, 1, 2, 0.04f));
  m.layers.back().act_min = -128;
  m.layers.push_back(pool("pool", 3, 2, 2, 0));
  m.layers.push_back(conv("C", m, 4, 8, 1, 1, 0, 0.03f));
  m.layers.back().act_min = -128;
  m.layers.push_back(gap(m, 5, 0.02f));
  m.layers.push_back(linear(m, 6, 10));
  for (rt::Layer& l : m.layers)
    for (int8_t& w : l.weight) w = static_cast<int8_t>(std::clamp<int>(w, -max_abs, max_abs));
  return m;
}

// The same with symmetric activations (TensorRT's form): every zero point 0, the ReLUs clamp at 0,
// which ONNX Runtime cannot fold into the following QuantizeLinear: those convs stay float.
Model symmetric_model(int max_abs) {
  Model m = model(max_abs, 0);
  for (size_t t = 0; t + 1 < m.tensors.size(); ++t) m.tensors[t].zero_point = 0;
  for (const char* relu : {"A", "residual", "C"})
    for (rt::Layer& l : m.layers)
      if (l.name == relu) l.act_min = 0;
  return m;
}

// input 1x10x10 -> D: conv 3x3 p1 1 -> 8 (ReLU) -> E: conv 3x3 p1 8 -> 16 (ReLU) -> gap -> linear
// 10: every conv read by one layer, so ONNX Runtime fuses them all; D's 9 products per output pair
// across kernel positions (im2col), E takes the "ConvSym" kernel.
Model chain_model(int max_abs) {
  seed_state() = 11;
  Model m;
  m.mean = {0.3f};
  m.inv_std = {1.0f / 0.35f};
  m.tensors = {tensor(1, 10, 10, 0.0213f, -10), tensor(8, 10, 10, 0.02f, -128), tensor(16, 10, 10, 0.04f, -128),
               tensor(16, 1, 1, 0.02f, -128), tensor(10, 1, 1, 1.0f, 0)};
  m.layers.push_back(conv("D", m, 0, 8, 3, 1, 1, 0.02f));
  m.layers.push_back(conv("E", m, 1, 16, 3, 1, 1, 0.04f));
  m.layers.push_back(gap(m, 2, 0.02f));
  m.layers.push_back(linear(m, 3, 10));
  for (rt::Layer& l : m.layers)
    for (int8_t& w : l.weight) w = static_cast<int8_t>(std::clamp<int>(w, -max_abs, max_abs));
  return m;
}

std::vector<float> random_pixels(const Model& m, int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<float> px(static_cast<size_t>(n * m.tensors[0].numel()));
  for (float& p : px) p = u(rng);
  return px;
}

const DeployPlatform& platform(const std::string& id) {
  const DeployPlatform* p = find_platform(id);
  if (!p) throw std::runtime_error("no platform " + id);
  return *p;
}

TEST(Vpmaddubsw, SumsPairsOfU8TimesS8WithInt16Saturation) {
  EXPECT_EQ(vpmaddubsw_pair(200, 100, 3, -7), 19979);           // in range: exact
  EXPECT_EQ(vpmaddubsw_pair(255, 64, 255, 64), 32640);          // the portable grid's worst case
  EXPECT_EQ(vpmaddubsw_pair(255, 127, 255, 127), 32767);        // 64770 clipped
  EXPECT_EQ(vpmaddubsw_pair(255, -128, 255, -128), -32768);     // -65280 clipped
  EXPECT_EQ(vpmaddubsw_pair(255, 127, 255, -127), 0);           // opposite signs never clip
  EXPECT_EQ(vpmaddubsw_pair(129, 127, 128, 127), 32639);        // 16383 + 16256: just fits
  EXPECT_EQ(vpmaddubsw_pair(129, 127, 130, 127), 32767);        // 32893 clipped
}

TEST(DeployCheck, PortableGridIsExactOnEveryCpu) {
  const Model m = model(64);
  for (const DeployPlatform& p : deploy_platforms()) {
    SCOPED_TRACE(p.id);
    const PlatformVerdict v = check_platform(m, p);
    if (p.needs_symmetric_activations) {  // TensorRT: this model has zero points
      EXPECT_FALSE(v.exact);
      EXPECT_NE(v.reason.find("qat.target: tensorrt"), std::string::npos) << v.reason;
      continue;
    }
    EXPECT_TRUE(v.exact) << v.reason;
    if (p.dot == DotProduct::kPairSaturate16) {
      EXPECT_LE(v.worst_pair, 32640);
      EXPECT_GT(v.worst_pair, 16000) << "the bound should be tight, not trivially small";
    }
  }
}

TEST(DeployCheck, FullGridCanSaturateOnlyOnX86WithoutVnni) {
  const Model m = model(127);
  for (const char* id : {"ort_x86_avx2", "ort_x86_avx512"}) {
    const PlatformVerdict v = check_platform(m, platform(id));
    EXPECT_FALSE(v.exact) << id;
    EXPECT_GT(v.worst_pair, 32767) << id;
    EXPECT_NE(v.reason.find("qat.target: portable"), std::string::npos) << v.reason;
    EXPECT_NE(v.reason.find("session.x64quantprecision=1"), std::string::npos) << v.reason;
  }
  for (const char* id : {"qdistill_run", "ort_x86_vnni", "ort_arm64_dot", "ort_arm64_neon"})
    EXPECT_TRUE(check_platform(m, platform(id)).exact) << id;
  // ARM64 NEON: two products of |q| <= 128 and |w| <= 127 stay below 32768.
  const PlatformVerdict neon = check_platform(m, platform("ort_arm64_neon"));
  EXPECT_LE(neon.worst_pair, 2 * 128 * 127);
  EXPECT_GE(neon.worst_pair, 2 * 128 * 120);
}

TEST(DeployCheck, BoundUsesTheValueRangesAndThePairing) {
  // A linear layer over a ReLU output: its u8 bytes lie in [zp + 128, 255] = [128, 255].
  Model m;
  m.mean = {0.0f, 0.0f, 0.0f, 0.0f};
  m.inv_std = {1.0f, 1.0f, 1.0f, 1.0f};
  m.tensors = {tensor(4, 1, 1, 0.1f, 0), tensor(4, 1, 1, 0.1f, 0), tensor(1, 1, 1, 1.0f, 0)};
  m.layers.push_back(conv("relu", m, 0, 4, 1, 1, 0, 0.1f));
  m.layers[0].act_min = 0;                                  // tensor 1 in [0, 127]: bytes [128, 255]
  m.layers[0].weight.assign(m.layers[0].weight.size(), 1);  // the conv's own pairs stay small
  m.layers.push_back(linear(m, 1, 1));
  // Pairs (0, 1) and (2, 3): 127 and 127 together reach 255 * 254.
  m.layers[1].weight = {127, 127, -127, -127};
  const PlatformVerdict v = check_platform(m, platform("ort_x86_avx2"));
  EXPECT_FALSE(v.exact);
  EXPECT_EQ(v.worst_pair, 255 * 254);
  EXPECT_EQ(v.worst_layer, "classifier");
  // Every pair of one sign each: at most 255 * 127 - 128 * 127, given bytes >= 128.
  m.layers[1].weight = {127, -127, 127, -127};
  const PlatformVerdict mixed = check_platform(m, platform("ort_x86_avx2"));
  EXPECT_TRUE(mixed.exact) << mixed.reason;
  EXPECT_EQ(mixed.worst_pair, 127 * 127);
}

TEST(DeployCheck, TensorRtNeedsActivationsWithoutZeroPoints) {
  Model m = model(127, /*input_zero_point=*/0);
  EXPECT_FALSE(check_platform(m, platform("tensorrt")).exact);
  for (size_t t = 0; t + 1 < m.tensors.size(); ++t) m.tensors[t].zero_point = 0;
  EXPECT_TRUE(check_platform(m, platform("tensorrt")).exact) << check_platform(m, platform("tensorrt")).reason;
}

TEST(KernelEmulator, ExactKernelReproducesTheInterpreterBitForBit) {
  const Model m = model(127);
  rt::Interpreter interp(m);
  KernelEmulator vnni(m, DotProduct::kExact);
  const int n = 20;
  const std::vector<float> px = random_pixels(m, n, 3);
  const int64_t per = m.tensors[0].numel();
  for (int i = 0; i < n; ++i) {
    float a[10], b[10];
    interp.run(&px[static_cast<size_t>(i * per)], a);
    vnni.run(&px[static_cast<size_t>(i * per)], b);
    EXPECT_EQ(std::memcmp(a, b, sizeof a), 0) << "image " << i;
  }
  for (int64_t s : vnni.saturated()) EXPECT_EQ(s, 0);
}

// Logits of the interpreter and of the saturating emulation for `n` images; counts images whose
// logits differ.
int differing_images(const Model& m, KernelEmulator& e, int n) {
  rt::Interpreter interp(m);
  const std::vector<float> px = random_pixels(m, n, 11);
  const int64_t per = m.tensors[0].numel();
  int differ = 0;
  for (int i = 0; i < n; ++i) {
    float a[10], b[10];
    interp.run(&px[static_cast<size_t>(i * per)], a);
    e.run(&px[static_cast<size_t>(i * per)], b);
    differ += std::memcmp(a, b, sizeof a) != 0;
  }
  return differ;
}

TEST(KernelEmulator, SaturatingKernelIsExactOnThePortableGrid) {
  const Model m = model(64);
  KernelEmulator avx2(m, DotProduct::kPairSaturate16);
  EXPECT_EQ(differing_images(m, avx2, 30), 0);
  int64_t pairs = 0;
  for (size_t i = 0; i < m.layers.size(); ++i) {
    EXPECT_EQ(avx2.saturated()[i], 0) << m.layers[i].name;
    pairs += avx2.pairs()[i];
  }
  // B: 81 pixels x 16 channels x 72 pairs (144 products); C: 16 x 8 x 8; linear 10 x 4. Not A:
  // its output is read by B and by the add, so ONNX Runtime runs it as a float Conv.
  EXPECT_EQ(pairs, 30 * (81 * 16 * 72 + 16 * 8 * 8 + 10 * 4));
  EXPECT_EQ(avx2.pairs()[0], 0);
}

TEST(KernelEmulator, SaturatingKernelClipsOnTheFullGrid) {
  const Model m = model(127);
  KernelEmulator avx2(m, DotProduct::kPairSaturate16);
  const int differ = differing_images(m, avx2, 30);
  int64_t clipped = 0;
  for (int64_t s : avx2.saturated()) clipped += s;
  std::printf("full grid under vpmaddubsw: %lld clipped pair sums, %d of 30 images with other logits\n",
              static_cast<long long>(clipped), differ);
  EXPECT_GT(clipped, 0);
  EXPECT_GT(differ, 0);
}

TEST(KernelEmulator, PairsAreConsecutiveReductionIndices) {
  // Linear over 4 bytes of 255 (q = 127, zero point 0): weights (127, 127, -127, -127). Paired
  // (0, 1) and (2, 3) the sums clip to 32767 and -32768: the accumulator is off by -1 from the
  // exact 0. Any other pairing would leave it exact.
  Model m;
  m.mean = {0.0f, 0.0f, 0.0f, 0.0f};
  m.inv_std = {1.0f, 1.0f, 1.0f, 1.0f};
  m.tensors = {tensor(4, 1, 1, 1.0f / 127, 0), tensor(1, 1, 1, 1.0f, 0)};
  m.layers.push_back(linear(m, 0, 1));
  m.layers[0].weight = {127, 127, -127, -127};
  m.layers[0].bias = {0};
  m.layers[0].output_scale = {1.0f};
  const float px[4] = {1.0f, 1.0f, 1.0f, 1.0f};  // q = 127 (input scale 1/127, zero point 0)
  float exact = 0.0f, emulated = 0.0f;
  rt::Interpreter(m).run(px, &exact);
  KernelEmulator avx2(m, DotProduct::kPairSaturate16);
  avx2.run(px, &emulated);
  EXPECT_EQ(exact, 0.0f);
  // (32767 - 32768) - 128 * 0 = -1: bytes 255, zero-point correction 128 * (sum of w = 0).
  EXPECT_EQ(emulated, -1.0f);
  EXPECT_EQ(avx2.saturated()[0], 2);
}

TEST(DeployCheck, PlatformsAreDistinctAndThisCpuIsOne) {
  std::set<std::string> ids;
  for (const DeployPlatform& p : deploy_platforms()) EXPECT_TRUE(ids.insert(p.id).second) << p.id;
  const std::string here = this_cpu_platform();
#if defined(__x86_64__) || defined(__aarch64__)
  EXPECT_TRUE(ids.count(here) || here == "ort_x86_sse") << here;
#endif
  std::printf("this CPU's ONNX Runtime platform: %s\n", here.c_str());
}

// ---- the emulation against the real kernels: ONNX Runtime on this CPU and on an emulated one ----

// The logits of `e` for every image.
std::vector<float> emulated_logits(KernelEmulator& e, const Model& m, const std::vector<float>& px, int n) {
  std::vector<float> out(static_cast<size_t>(n * m.num_classes()));
  const int64_t per = m.tensors[0].numel();
  for (int i = 0; i < n; ++i) e.run(&px[static_cast<size_t>(i * per)], &out[static_cast<size_t>(i * m.num_classes())]);
  return out;
}

// The emulation of a platform's kernels: the saturating one, or exact (ARM64 NEON's int16 lanes
// cannot wrap with symmetric weights: check_platform proves it for each model).
DotProduct dot_of(const std::string& platform_id) {
  const DeployPlatform* p = find_platform(platform_id);
  // Not a platform of the report (x86 without AVX2): assumed exact, as MLAS's SSE kernels on Linux
  // widen to int16 before multiplying.
  return p && p->dot == DotProduct::kPairSaturate16 ? p->dot : DotProduct::kExact;
}

// ONNX Runtime on the full 8-bit grid, where x86 without VNNI clips pair sums: whatever the CPU,
// its answers are the emulation's for that CPU's kernel family, within requantization rounding
// (test::one_lsb_tolerance). On a VNNI or ARM64 machine that is the exact answer, on an AVX2 one
// the saturated one: the expectation follows the CPU, the emulation is the same code everywhere.
TEST(OnnxRuntimeKernels, ThisCpuComputesWhatItsKernelEmulationSays) {
  const test::OrtPython py = test::ort_python(QD_SOURCE_DIR, "native");
  QD_REQUIRE_ORT(py);
  const int n = 64;
  const std::string here = this_cpu_platform();
  for (const Model& m : {model(127), chain_model(127)}) {
    const std::vector<float> px = random_pixels(m, n, 5);
    const std::vector<float> ort = test::ort_logits(py, m, px, n);
    KernelEmulator e(m, dot_of(here));
    const test::LogitAgreement a =
        test::compare_logits(ort, emulated_logits(e, m, px, n), 10, test::one_lsb_tolerance(m));
    std::printf("ORT on this CPU (%s) vs its emulation, %zu layers: %s\n", here.c_str(), m.layers.size(),
                test::describe(a).c_str());
    EXPECT_EQ(a.within_tolerance, n);
  }
}

// ONNX Runtime on emulated CPUs of each class (QEMU): the answers are the emulation's for the
// class's kernels. x86 AVX2: on the full grid its vpmaddubsw kernels clip, as emulated (the exact
// interpreter's answers are far off); on the portable grid nothing clips. ARM64 (plain NEON, dot
// product, i8mm): exact on both grids.
class EmulatedCpu : public ::testing::TestWithParam<const char*> {};

TEST_P(EmulatedCpu, ComputesWhatTheKernelEmulationSays) {
  const std::string cpu = GetParam();
  const test::OrtPython py = test::ort_python(QD_SOURCE_DIR, cpu);
  QD_REQUIRE_ORT(py);
  const DotProduct dot = dot_of("ort_" + cpu);
  const int n = 64;
  const std::pair<const char*, Model> models[] = {
      {"full grid", model(127)},           {"portable grid", model(64)},
      {"full grid, chain", chain_model(127)}, {"portable grid, chain", chain_model(64)},
      {"full grid, symmetric activations", symmetric_model(127)}};
  for (const auto& [name, m] : models) {
    SCOPED_TRACE(name);
    const std::vector<float> px = random_pixels(m, n, 5);
    const std::vector<float> ort = test::ort_logits(py, m, px, n);
    KernelEmulator expected(m, dot), exact(m, DotProduct::kExact);
    const std::vector<float> tol = test::one_lsb_tolerance(m);
    const test::LogitAgreement a = test::compare_logits(ort, emulated_logits(expected, m, px, n), 10, tol);
    const test::LogitAgreement x = test::compare_logits(ort, emulated_logits(exact, m, px, n), 10, tol);
    int64_t clipped = 0;
    for (int64_t c : expected.saturated()) clipped += c;
    std::printf("%s, ORT on %s: vs its emulation (%lld pair sums clipped) %s; vs exact int32 %s\n", name, cpu.c_str(),
                static_cast<long long>(clipped), test::describe(a).c_str(), test::describe(x).c_str());
    EXPECT_EQ(a.within_tolerance, n);
    // Where the emulation clips, ONNX Runtime must be far from the exact answers: the test can tell.
    if (clipped > 1000) {
      EXPECT_LT(x.within_tolerance, n / 2) << "ONNX Runtime should clip like the emulation";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(OnnxRuntimeKernels, EmulatedCpu,
                         ::testing::Values("x86_avx2", "arm64_neon", "arm64_dot", "arm64_i8mm"));

}  // namespace
}  // namespace qd
