// Fake quantization, observers, BN folding and the QAT schedule, against values computed by hand
// (or by an independent scalar formula) on small tensors.
#include <gtest/gtest.h>

#include <cmath>

#include "common/error.h"
#include "models/registry.h"
#include "models/zoo.h"
#include "qat/conv_bn.h"
#include "qat/fake_quantize.h"
#include "qat/qat_hook.h"
#include "common/atomic_file.h"
#include "tests/test_util.h"
#include "trainer/experiment_config.h"

namespace qd {
namespace {

// Reference: the quantize-dequantize of one value, written out (round half to even).
float ref_fq(float x, float scale, int zp, int qmin, int qmax) {
  const float q = std::nearbyint(x * (1.0f / scale)) + static_cast<float>(zp);
  return (std::clamp(q, static_cast<float>(qmin), static_cast<float>(qmax)) - static_cast<float>(zp)) * scale;
}

QuantSpec weight_spec(int bits) {
  QuantSpec s;
  s.bits = bits;
  return s;
}

FakeQuantize weight_fq(int bits, int64_t channels, bool per_channel = true) {
  FakeQuantizeOptions o;
  o.spec = weight_spec(bits);
  o.spec.per_channel = per_channel;
  o.channels = channels;
  o.weight = true;
  FakeQuantize fq(o);
  fq->set_enabled(true);
  fq->set_observing(true);
  return fq;
}

FakeQuantize act_fq(ObserverKind kind, bool relu = false, double momentum = 0.5) {
  FakeQuantizeOptions o;
  o.spec.symmetric = false;
  o.spec.per_channel = false;
  o.spec.observer = kind;
  o.spec.momentum = momentum;
  o.relu = relu;
  FakeQuantize fq(o);
  fq->set_enabled(true);
  fq->set_observing(true);
  return fq;
}

// One training step of an activation quantizer on one rank: observe `x`, then sync (world 1).
void observe(FakeQuantize& fq, const torch::Tensor& x) {
  fq->train();
  fq(x);
  QatHook::sync_observers({fq}, nullptr, 1);
}

TEST(QuantSpec, IntegerRanges) {
  QuantSpec s;
  EXPECT_EQ(s.quant_min(), -127);  // symmetric 8-bit: TensorRT's range
  EXPECT_EQ(s.quant_max(), 127);
  s.bits = 4;
  EXPECT_EQ(s.quant_min(), -7);
  s.symmetric = false;
  EXPECT_EQ(s.quant_min(), -8);
  EXPECT_EQ(s.quant_max(), 7);
  s.bits = 2;
  EXPECT_EQ(s.quant_min(), -2);
  EXPECT_EQ(s.quant_max(), 1);
}

TEST(Qparams, SymmetricAndAsymmetricByHand) {
  QuantSpec sym;  // 8-bit symmetric: absmax / 127
  auto [s1, z1] = compute_qparams(torch::tensor({-2.54f}), torch::tensor({1.0f}), sym);
  EXPECT_NEAR(s1.item<float>(), 0.02f, 1e-7);
  EXPECT_EQ(z1.item<int>(), 0);
  QuantSpec asym;
  asym.symmetric = false;  // [-128, 127]: scale = 4 / 255, zp = -128 - round(-1 / scale) = -64
  auto [s2, z2] = compute_qparams(torch::tensor({-1.0f}), torch::tensor({3.0f}), asym);
  EXPECT_NEAR(s2.item<float>(), 4.0f / 255.0f, 1e-8);
  EXPECT_EQ(z2.item<int>(), -64);
  // A range that excludes 0 is widened to contain it; all-positive ranges get zp = qmin.
  auto [s3, z3] = compute_qparams(torch::tensor({0.5f}), torch::tensor({2.55f}), asym);
  EXPECT_NEAR(s3.item<float>(), 0.01f, 1e-8);
  EXPECT_EQ(z3.item<int>(), -128);
}

TEST(FakeQuantize, PerTensorRoundingTiesAndClamping) {
  // absmax 1.27 -> scale 0.01 exactly as float? Use a power of two to make ties exact: 0.5.
  FakeQuantize fq = weight_fq(8, 1, /*per_channel=*/false);
  const torch::Tensor w = torch::tensor({63.5f, 0.25f, 0.75f, -0.25f, 1.25f, -63.5f});
  // scale = 63.5 / 127 = 0.5: x/scale = 127, 0.5, 1.5, -0.5, 2.5, -127 -> ties go to even.
  const torch::Tensor y = fq(w);
  EXPECT_FLOAT_EQ(fq->scale.item<float>(), 0.5f);
  const std::vector<float> want = {63.5f, 0.0f, 1.0f, 0.0f, 1.0f, -63.5f};
  for (int i = 0; i < 6; ++i) EXPECT_FLOAT_EQ(y[i].item<float>(), want[static_cast<size_t>(i)]) << i;
  // With the scale frozen, values beyond the range clamp to +-127 * scale.
  fq->set_observing(false);
  const torch::Tensor z = fq(torch::tensor({100.0f, -100.0f, 0.3f}));
  EXPECT_FLOAT_EQ(z[0].item<float>(), 63.5f);
  EXPECT_FLOAT_EQ(z[1].item<float>(), -63.5f);
  EXPECT_FLOAT_EQ(z[2].item<float>(), 0.5f);  // 0.6 -> 1
}

TEST(FakeQuantize, PerChannel8And4BitMatchScalarReference) {
  torch::manual_seed(0);
  const torch::Tensor w = torch::randn({3, 2, 3, 3}) * torch::tensor({0.1f, 1.0f, 5.0f}).view({3, 1, 1, 1});
  for (int bits : {8, 4}) {
    FakeQuantize fq = weight_fq(bits, 3);
    const torch::Tensor y = fq(w);
    const int qmax = (1 << (bits - 1)) - 1;
    for (int64_t c = 0; c < 3; ++c) {
      const float scale = w[c].abs().max().item<float>() / static_cast<float>(qmax);
      EXPECT_FLOAT_EQ(fq->scale[c].item<float>(), scale);
      const torch::Tensor wc = w[c].reshape({-1}), yc = y[c].reshape({-1});
      for (int64_t i = 0; i < wc.numel(); ++i)
        ASSERT_FLOAT_EQ(yc[i].item<float>(), ref_fq(wc[i].item<float>(), scale, 0, -qmax, qmax))
            << "bits " << bits << " channel " << c << " element " << i;
      // 4-bit: at most 15 distinct levels per channel.
      EXPECT_LE(std::get<0>(torch::_unique(yc)).numel(), 2 * qmax + 1);
    }
  }
}

TEST(FakeQuantize, AsymmetricActivationWithZeroPoint) {
  FakeQuantize fq = act_fq(ObserverKind::kMinMax);
  observe(fq, torch::tensor({-1.0f, 3.0f}));  // scale 4/255, zp -64 (see Qparams)
  ASSERT_TRUE(fq->initialized());
  const float s = 4.0f / 255.0f;
  const torch::Tensor x = torch::tensor({-2.0f, -1.0f, 0.0f, 0.1f, 2.999f, 5.0f});
  fq->eval();
  const torch::Tensor y = fq(x);
  for (int64_t i = 0; i < x.numel(); ++i)
    EXPECT_NEAR(y[i].item<float>(), ref_fq(x[i].item<float>(), s, -64, -128, 127), 1e-6) << i;
  EXPECT_NEAR(y[0].item<float>(), -64 * s, 1e-6);  // clamped at qmin
  EXPECT_FLOAT_EQ(y[2].item<float>(), 0.0f);         // zero is exact
}

TEST(FakeQuantize, SteGradientMaskIsOneInsideRangeZeroOutside) {
  FakeQuantize fq = weight_fq(8, 1, false);
  fq(torch::tensor({1.27f}));  // scale 0.01
  fq->set_observing(false);
  torch::Tensor x = torch::tensor({-2.0f, -1.0f, 0.005f, 1.26f, 1.275f, 3.0f}, torch::requires_grad());
  fq(x).sum().backward();
  const std::vector<float> want = {0, 1, 1, 1, 1, 0};  // 1.275 / 0.01 rounds to 127 or 128?
  // 1.275 * 100 = 127.5 -> 128 (ties to even) > 127: outside, masked.
  EXPECT_FLOAT_EQ(x.grad()[0].item<float>(), 0.0f);
  EXPECT_FLOAT_EQ(x.grad()[1].item<float>(), 1.0f);
  EXPECT_FLOAT_EQ(x.grad()[2].item<float>(), 1.0f);
  EXPECT_FLOAT_EQ(x.grad()[3].item<float>(), 1.0f);
  EXPECT_FLOAT_EQ(x.grad()[5].item<float>(), 0.0f);
  const float q = std::nearbyint(1.275f * (1.0f / fq->scale.item<float>()));
  EXPECT_FLOAT_EQ(x.grad()[4].item<float>(), q <= 127.0f ? 1.0f : 0.0f);
}

TEST(FakeQuantCpuKernel, BitIdenticalToLibTorchValuesMaskAndMinMax) {
  torch::manual_seed(4);
  // Random values plus exact ties (k + 0.5) * scale, both layouts, several qparams.
  torch::Tensor x = torch::randn({16, 5, 9, 9}) * 3.0;
  const float scale = 0.0625f;  // a power of two: k + 0.5 ties are exact
  x.view({-1}).slice(0, 0, 400).copy_((torch::arange(400, torch::kFloat32) - 200.5f) * scale);
  for (const bool channels_last : {false, true}) {
    for (const auto& [zp, qmin, qmax] : std::vector<std::tuple<int, int, int>>{{0, -127, 127}, {-128, -128, 127}, {3, -8, 7}}) {
      torch::Tensor xi = (channels_last ? x.contiguous(torch::MemoryFormat::ChannelsLast) : x.clone()).requires_grad_(true);
      torch::Tensor xr = x.clone().requires_grad_(true);
      FakeQuantParams p;
      p.scale = scale;
      p.zero_point = zp;
      p.quant_min = qmin;
      p.quant_max = qmax;
      float mm[2];
      torch::Tensor y = fake_quantize_per_tensor_cpu(xi, p, mm);
      torch::Tensor ref = torch::fake_quantize_per_tensor_affine(xr, scale, zp, qmin, qmax);
      EXPECT_TRUE(torch::equal(y.contiguous(), ref)) << "zp " << zp << " channels_last " << channels_last;
      const torch::Tensor g = torch::randn_like(x);
      y.backward(g);
      ref.backward(g);
      EXPECT_TRUE(torch::equal(xi.grad().contiguous(), xr.grad())) << "zp " << zp;
      EXPECT_EQ(mm[0], x.min().item<float>());
      EXPECT_EQ(mm[1], x.max().item<float>());
    }
  }
}

TEST(FakeQuantize, FusedReluEqualsReluThenQuantize) {
  FakeQuantize fused = act_fq(ObserverKind::kMinMax, /*relu=*/true);
  torch::manual_seed(1);
  const torch::Tensor x = torch::randn({4, 3, 5, 5});
  observe(fused, x);
  EXPECT_EQ(fused->zero_point.item<int>(), -128);  // the range starts at 0
  EXPECT_FLOAT_EQ(fused->running_min.item<float>(), 0.0f);
  torch::Tensor xg = x.clone().requires_grad_(true);
  fused->eval();
  torch::Tensor y = fused(xg);
  const torch::Tensor ref = torch::fake_quantize_per_tensor_affine(torch::relu(x), fused->scale.item<float>(), -128, -128, 127);
  EXPECT_TRUE(torch::equal(y, ref));
  y.sum().backward();
  EXPECT_TRUE(torch::equal(xg.grad(), (x > 0).to(torch::kFloat32)));  // ReLU's gradient
}

TEST(Observer, MinMaxKeepsTheExtremes) {
  FakeQuantize fq = act_fq(ObserverKind::kMinMax);
  observe(fq, torch::tensor({-1.0f, 2.0f}));
  observe(fq, torch::tensor({-0.5f, 4.0f}));
  observe(fq, torch::tensor({-3.0f, 1.0f}));
  EXPECT_FLOAT_EQ(fq->running_min.item<float>(), -3.0f);
  EXPECT_FLOAT_EQ(fq->running_max.item<float>(), 4.0f);
}

TEST(Observer, MovingAverageFirstSetsThenAverages) {
  FakeQuantize fq = act_fq(ObserverKind::kMovingAverage, false, /*momentum=*/0.25);
  observe(fq, torch::tensor({-1.0f, 2.0f}));
  observe(fq, torch::tensor({-3.0f, 6.0f}));
  EXPECT_FLOAT_EQ(fq->running_min.item<float>(), -1.0f + 0.25f * (-3.0f + 1.0f));  // -1.5
  EXPECT_FLOAT_EQ(fq->running_max.item<float>(), 2.0f + 0.25f * (6.0f - 2.0f));    // 3
  auto [s, z] = compute_qparams(torch::tensor({-1.5f}), torch::tensor({3.0f}), fq->options().spec);
  EXPECT_FLOAT_EQ(fq->scale.item<float>(), s.item<float>());
  EXPECT_EQ(fq->zero_point.item<int>(), z.item<int>());
}

TEST(Observer, PercentileClipsOutliers) {
  FakeQuantizeOptions o;
  o.spec.symmetric = false;
  o.spec.per_channel = false;
  o.spec.observer = ObserverKind::kPercentile;
  o.spec.percentile = 99.0;
  FakeQuantize fq(o);
  fq->set_enabled(true);
  fq->set_observing(true);
  torch::Tensor x = torch::arange(1, 10001, torch::kFloat32);  // 1..10000
  x[9999] = 1e6;                                                // one outlier
  observe(fq, x);
  EXPECT_FLOAT_EQ(fq->running_max.item<float>(), 9900.0f);  // the 9900th smallest of 10000
  EXPECT_FLOAT_EQ(fq->running_min.item<float>(), 101.0f);   // the 101st
  FakeQuantize mm = act_fq(ObserverKind::kMinMax);
  observe(mm, x);
  EXPECT_FLOAT_EQ(mm->running_max.item<float>(), 1e6f);  // min-max is dragged by the outlier
}

TEST(Observer, LsqStartsFromTheRangeThenLearnsTheScale) {
  FakeQuantize fq = act_fq(ObserverKind::kLsq);
  ASSERT_TRUE(fq->lsq_scale.defined());
  observe(fq, torch::tensor({-1.0f, 3.0f}));
  EXPECT_FLOAT_EQ(fq->lsq_scale.item<float>(), 4.0f / 255.0f);
  torch::Tensor x = torch::linspace(-2.0, 4.0, 64).requires_grad_(true);
  fq(x).pow(2).sum().backward();
  ASSERT_TRUE(fq->lsq_scale.grad().defined());
  EXPECT_NE(fq->lsq_scale.grad().item<float>(), 0.0f);  // clipped values pull the scale up
  observe(fq, torch::tensor({-10.0f, 30.0f}));              // observers no longer move an LSQ scale
  EXPECT_FLOAT_EQ(fq->lsq_scale.item<float>(), 4.0f / 255.0f);
}

TEST(Observer, FrozenStopsUpdatesAndDisabledPassesThrough) {
  FakeQuantize fq = act_fq(ObserverKind::kMinMax);
  observe(fq, torch::tensor({-1.0f, 1.0f}));
  const torch::Tensor scale = fq->scale.clone();
  fq->set_observing(false);
  observe(fq, torch::tensor({-50.0f, 50.0f}));
  EXPECT_TRUE(torch::equal(fq->scale, scale));
  EXPECT_FLOAT_EQ(fq->running_max.item<float>(), 1.0f);
  fq->set_enabled(false);
  const torch::Tensor x = torch::tensor({0.123456f, 7.0f});
  EXPECT_TRUE(torch::equal(fq(x), x));
}

TEST(BnFold, FoldedConvEqualsConvThenBatchNormInEval) {
  torch::manual_seed(2);
  ConvBnRelu unit(3, 4, 3, 1, /*relu=*/false);
  {
    torch::NoGradGuard g;
    unit->bn->weight.uniform_(0.5, 2.0);
    unit->bn->bias.uniform_(-1.0, 1.0);
    unit->bn->running_mean.uniform_(-0.5, 0.5);
    unit->bn->running_var.uniform_(0.2, 3.0);
  }
  unit->eval();
  const torch::Tensor x = torch::randn({2, 3, 6, 6});
  const torch::Tensor ref = unit(x);  // conv, then BN with running statistics
  const FoldedWeights f = fold_bn(unit->conv->weight, {}, {unit->bn->weight, unit->bn->bias, unit->bn->running_mean,
                                                           unit->bn->running_var, unit->bn->eps});
  EXPECT_TRUE(torch::allclose(torch::conv2d(x, f.weight, f.bias, 1, 1), ref, 1e-5, 1e-5));
  // The QAT path with BN frozen and fake-quant off computes exactly that fold.
  QatConfig q;
  q.enabled = true;
  unit->attach_quantizers(*cnn_quantizer_factory(q), "unit", nullptr);
  std::dynamic_pointer_cast<ConvBnQatImpl>(unit->qat)->set_bn_frozen(true);
  unit->train();
  const torch::Tensor mean_before = unit->bn->running_mean.clone();
  EXPECT_TRUE(torch::allclose(unit(x), ref, 1e-5, 1e-5));
  EXPECT_TRUE(torch::equal(unit->bn->running_mean, mean_before));  // frozen: no statistics update
}

TEST(BnFold, TrainingPathNormalizesWithBatchStatistics) {
  // Before BN freezes, QAT's conv-BN (fake-quant of the folded weights, fold undone, BN on the
  // batch) equals plain conv -> BN in training mode when quantization is (nearly) lossless.
  torch::manual_seed(3);
  ConvBnRelu a(3, 4), b(3, 4);
  {
    torch::NoGradGuard g;
    for (size_t i = 0; i < a->parameters().size(); ++i) b->parameters()[i].copy_(a->parameters()[i]);
    a->bn->running_var.fill_(2.0);
    b->bn->running_var.fill_(2.0);
  }
  QatConfig q;
  q.enabled = true;
  q.weight.bits = 8;
  b->attach_quantizers(*cnn_quantizer_factory(q), "b", nullptr);
  auto twin = std::dynamic_pointer_cast<ConvBnQatImpl>(b->qat);
  ASSERT_TRUE(twin) << "a Conv-BN unit's twin is ConvBnQat";
  twin->weight_quant->set_enabled(true);
  twin->weight_quant->set_observing(true);
  a->train();
  b->train();
  const torch::Tensor x = torch::randn({8, 3, 6, 6});
  const torch::Tensor ya = a(x), yb = b(x);
  // 8-bit weights: close but not equal; the running statistics move the same way.
  EXPECT_LT((ya - yb).abs().max().item<float>(), 0.05f);
  EXPECT_GT((ya - yb).abs().max().item<float>(), 0.0f);
  EXPECT_TRUE(torch::allclose(a->bn->running_mean, b->bn->running_mean, 1e-2, 1e-3));
}

TEST(QatSchedule, PhasesFollowTheConfig) {
  QatConfig q;
  q.enabled = true;
  q.start_epoch = 2;
  q.freeze_bn_epoch = 4;
  q.freeze_observers_epoch = 5;
  EXPECT_FALSE(qat_phase(q, 1, 100).active);
  EXPECT_TRUE(qat_phase(q, 2, 0).active);
  EXPECT_FALSE(qat_phase(q, 3, 0).bn_frozen);
  EXPECT_TRUE(qat_phase(q, 4, 0).bn_frozen);
  EXPECT_FALSE(qat_phase(q, 4, 0).observers_frozen);
  EXPECT_TRUE(qat_phase(q, 5, 0).observers_frozen);
  q.start_step = 250;
  EXPECT_FALSE(qat_phase(q, 9, 249).active);
  EXPECT_TRUE(qat_phase(q, 0, 250).active);
  EXPECT_EQ(qat_first_quantized_epoch(q, 100), 2);  // steps 250.. start mid epoch 2, which ends quantized
  q.start_step = 300;
  EXPECT_EQ(qat_first_quantized_epoch(q, 100), 3) << "epoch 2 ends at step 299, before QAT";
  q.start_step = 299;
  EXPECT_EQ(qat_first_quantized_epoch(q, 100), 2);
}

TEST(QatModels, ConvNetAndResNetQuantizeEveryLayerMlpRefuses) {
  QatConfig q;
  q.enabled = true;
  InputSpec in;
  for (const char* model : {"{name: convnet, width: 4, depth: 3}", "{name: resnet, width: 4, depth: 8}"}) {
    ExperimentConfig c = parse_experiment_config(std::string("experiment: {name: t}\nmodel: ") + model + "\n", "t.yaml");
    torch::manual_seed(0);
    std::shared_ptr<Model> m = make_model(c.model, in);
    const torch::Tensor x = torch::rand({4, 1, 28, 28});
    m->eval();
    const torch::Tensor fp32 = m->forward(x);
    attach_qat(*m, q);
    m->eval();
    EXPECT_TRUE(torch::equal(m->forward(x), fp32)) << "quantizers must start disabled: " << m->kind();
    // Turn QAT on, observe one training batch, then the eval output differs but stays close.
    auto fqs = fake_quantizers(*m);
    for (auto& f : fqs) f->set_enabled(true), f->set_observing(true);
    m->train();
    m->forward(x);
    QatHook::sync_observers(fqs, nullptr, 1);
    for (auto& f : fqs) EXPECT_TRUE(f->initialized()) << m->kind();
    m->eval();
    const torch::Tensor q8 = m->forward(x);
    EXPECT_FALSE(torch::equal(q8, fp32)) << m->kind();
    EXPECT_TRUE(torch::isfinite(q8).all().item<bool>());
  }
  ModelConfig mlp;
  mlp.name = ModelKind::kMlp;
  std::shared_ptr<Model> m = make_model(mlp, in);
  EXPECT_THROW(attach_qat(*m, q), UserError);
}

// The CNNs get their twins through the same module-type mapping as the transformers: the names
// their state has in checkpoints are the layers' (so CNN checkpoints from before the mapping still
// load), and qat.layers patterns configure them per layer.
TEST(QatModels, CnnTwinsAttachByLayerNameWithCheckpointNamesKept) {
  auto cfg = [](const std::string& model, const std::string& qat) {
    return parse_experiment_config("experiment: {name: t}\nmodel: " + model + "\nqat:\n  enabled: true\n" + qat, "q.yaml");
  };
  InputSpec in;
  {
    ExperimentConfig c = cfg("{name: convnet, width: 4, depth: 3}", "");
    std::shared_ptr<Model> m = make_model(c.model, in);
    EXPECT_EQ(attach_qat(*m, c.qat), 3 * 2 + 3)
        << "each conv: ConvBnQat + its output; the input, the pooled features (gap head), the classifier";
    const auto buffers = m->named_buffers();
    for (const char* key : {"input_quant.scale", "block0.qat.weight_quant.scale", "block0.qat.bn_frozen",
                            "block2.out_quant.scale", "classifier_quant.scale"})
      EXPECT_TRUE(buffers.contains(key)) << key;
    EXPECT_TRUE(std::dynamic_pointer_cast<ConvBnQatImpl>(m->named_modules()["block1.qat"]) != nullptr);
  }
  {  // A rule per layer name: block1's folded weights in 4 bits, the rest at the section's 8.
    ExperimentConfig c = cfg("{name: resnet, width: 4, depth: 8}",
                             "  layers:\n    \"*.conv2\": {weight: {bits: 4}}\n    \"fc\": {weight: {bits: 6}}\n");
    std::shared_ptr<Model> m = make_model(c.model, in);
    attach_qat(*m, c.qat);
    auto mods = m->named_modules();
    auto bits = [&](const std::string& name) {
      return std::dynamic_pointer_cast<FakeQuantizeImpl>(mods[name])->options().spec.bits;
    };
    EXPECT_EQ(bits("stage1_block0.conv2.qat.weight_quant"), 4);
    EXPECT_EQ(bits("stage1_block0.conv1.qat.weight_quant"), 8);
    EXPECT_EQ(bits("stem.qat.weight_quant"), 8);
    EXPECT_EQ(bits("fc_quant"), 6);
    EXPECT_EQ(bits("stage1_block0.add_quant"), 8);
  }
  auto refused = [&](const std::string& qat) {
    ExperimentConfig c = cfg("{name: convnet, width: 4, depth: 3}", qat);
    std::shared_ptr<Model> m = make_model(c.model, in);
    try {
      attach_qat(*m, c.qat);
    } catch (const UserError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(refused("  layers:\n    \"blok*\": {weight: {bits: 4}}\n").find("matches no layer"), std::string::npos);
  EXPECT_NE(refused("  layers:\n    \"block1\": {enabled: false}\n").find("block1"), std::string::npos);
  EXPECT_NE(refused("  layers:\n    \"block1\": {weight: {group_size: 32}}\n").find("per output channel"),
            std::string::npos);
  EXPECT_NE(refused("  layers:\n    \"input_quant\": {activation: {dynamic: per_token}}\n").find("static scales"),
            std::string::npos);
}

TEST(QatConfig, BadValuesNameTheKey) {
  auto err = [](const std::string& qat) {
    try {
      parse_experiment_config("experiment: {name: t}\nmodel: {name: convnet}\nqat:\n" + qat, "q.yaml");
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(err("  weight: {bits: 12}\n").find("qat.weight.bits"), std::string::npos);
  EXPECT_NE(err("  weight: {symmetric: false}\n").find("qat.weight.symmetric"), std::string::npos);
  EXPECT_NE(err("  activation: {observer: histo}\n").find("qat.activation.observer"), std::string::npos);
  EXPECT_NE(err("  weight: {observer: percentile}\n").find("weights are observed exactly"), std::string::npos);
}

TEST(QatTarget, PortableLimitsWeightsTo64TheOthersUseTheFullGrid) {
  auto cfg = [](const std::string& qat) {
    return parse_experiment_config("experiment: {name: t}\nmodel: {name: convnet}\nqat: {enabled: true" + qat + "}\n",
                                   "q.yaml")
        .qat;
  };
  EXPECT_EQ(cfg("").target, QatTarget::kPortable) << "portable is the default";
  EXPECT_EQ(cfg("").weight_spec().quant_max(), 64);
  EXPECT_EQ(cfg("").weight_spec().quant_min(), -64);
  EXPECT_EQ(cfg(", target: x86_vnni").weight_spec().quant_max(), 127);
  EXPECT_EQ(cfg(", target: tensorrt, activation: {symmetric: true}").weight_spec().quant_max(), 127);
  EXPECT_EQ(cfg(", weight: {bits: 4}").weight_spec().quant_max(), 7) << "narrower grids are portable already";
  EXPECT_EQ(cfg("").activation.quant_max(), 127) << "activations keep their 8 bits";
  EXPECT_EQ(cfg("").activation.quant_min(), -128);

  // The weight quantizer trains on that grid: scale = max|w| / 64, integers in [-64, 64].
  FakeQuantize fq = make_weight_quant(cfg(""), 2);
  fq->set_enabled(true);
  fq->set_observing(true);
  const torch::Tensor w = torch::tensor({{0.64f, -0.32f, 0.015f}, {-1.28f, 0.5f, 0.0f}});
  const torch::Tensor y = fq(w);
  const torch::Tensor scale = fq->effective_scale();
  EXPECT_FLOAT_EQ(scale[0].item<float>(), 0.01f);
  EXPECT_FLOAT_EQ(scale[1].item<float>(), 0.02f);
  const torch::Tensor q = torch::round(y / scale.view({2, 1}));
  EXPECT_EQ(q.abs().max().item<float>(), 64.0f);
  EXPECT_TRUE(torch::equal(q, torch::tensor({{64.0f, -32.0f, 2.0f}, {-64.0f, 25.0f, 0.0f}}))) << q;
  FakeQuantize full = make_weight_quant(cfg(", target: x86_vnni"), 2);
  full->set_enabled(true);
  full->set_observing(true);
  full(w);
  EXPECT_FLOAT_EQ(full->effective_scale()[1].item<float>(), 1.28f / 127.0f);
}

TEST(QatTarget, TensorRtNeedsSymmetricActivations) {
  try {
    parse_experiment_config("experiment: {name: t}\nmodel: {name: convnet}\nqat: {enabled: true, target: tensorrt}\n",
                            "q.yaml");
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("qat.activation.symmetric"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("TensorRT"), std::string::npos) << e.what();
  }
}

TEST(QatTarget, RunsFromBeforeTheTargetReadAsTheFullGrid) {
  test::TempDir dir;
  const std::string body = "experiment: {name: t}\nmodel: {name: convnet}\nqat: {enabled: true}\n";
  write_file_atomic(dir.file("old.yaml"), body);
  EXPECT_EQ(load_run_config(dir.file("old.yaml")).qat.target, QatTarget::kX86Vnni);
  // A resolved config written today names its target, which is read as written.
  write_file_atomic(dir.file("new.yaml"), to_yaml(parse_experiment_config(body, "t.yaml")));
  EXPECT_EQ(load_run_config(dir.file("new.yaml")).qat.target, QatTarget::kPortable);
  EXPECT_EQ(load_experiment_config(dir.file("old.yaml")).qat.target, QatTarget::kPortable)
      << "experiment configs (not run directories) take today's default";
}

TEST(Int8Size, CountsInt8WeightsAndPerChannelBiasAndScale) {
  ModelConfig mc;
  mc.width = 4;
  mc.depth = 2;
  InputSpec in;
  std::shared_ptr<Model> m = make_model(mc, in);
  // conv 4x1x3x3 + conv 4x4x3x3 + linear 10x4, each +8 bytes per output channel
  EXPECT_EQ(int8_model_bytes(*m), (36 + 4 * 8) + (144 + 4 * 8) + (40 + 10 * 8));
  EXPECT_EQ(int8_model_bytes(*m, 4), (18 + 4 * 8) + (72 + 4 * 8) + (20 + 10 * 8));  // 4-bit weights, packed
}

}  // namespace
}  // namespace qd
