// Output shapes and parameter counts of each zoo model, counted by hand.
#include <gtest/gtest.h>

#include "models/registry.h"
#include "models/zoo.h"

namespace qd {
namespace {

InputSpec fmnist() {
  InputSpec s;
  s.mean = {0.5};
  s.std = {0.25};
  return s;
}

ModelConfig cfg(ModelKind k, int width, int depth) {
  ModelConfig c;
  c.name = k;
  c.width = width;
  c.depth = depth;
  return c;
}

int64_t conv_bn(int64_t in, int64_t out, int64_t k = 3) { return in * out * k * k + 2 * out; }
int64_t linear(int64_t in, int64_t out) { return in * out + out; }

TEST(Models, MlpShapeAndParams) {
  auto m = make_model(cfg(ModelKind::kMlp, 64, 2), fmnist());
  EXPECT_EQ(m->forward(torch::rand({5, 1, 28, 28})).sizes(), (std::vector<int64_t>{5, 10}));
  EXPECT_EQ(count_params(*m), linear(784, 64) + 2 * 64 + linear(64, 64) + 2 * 64 + linear(64, 10));
}

TEST(Models, ConvNetGapShapeAndParams) {
  auto m = make_model(cfg(ModelKind::kConvNet, 32, 6), fmnist());
  EXPECT_EQ(m->forward(torch::rand({3, 1, 28, 28})).sizes(), (std::vector<int64_t>{3, 10}));
  const int64_t expected = conv_bn(1, 32) + conv_bn(32, 32) + conv_bn(32, 64) + conv_bn(64, 64) +
                           conv_bn(64, 128) + conv_bn(128, 128) + linear(128, 10);
  EXPECT_EQ(count_params(*m), expected);
  EXPECT_EQ(expected, 288170);
}

TEST(Models, ConvNetFlattenHead) {
  ModelConfig c = cfg(ModelKind::kConvNet, 8, 4);
  c.head = HeadKind::kFlatten;
  auto m = make_model(c, fmnist());
  EXPECT_EQ(m->forward(torch::rand({2, 1, 28, 28})).sizes(), (std::vector<int64_t>{2, 10}));
  // 28 -> pool -> 14 after 2 blocks; the last stage is not followed by a pool: 16 x 14 x 14.
  EXPECT_EQ(count_params(*m), conv_bn(1, 8) + conv_bn(8, 8) + conv_bn(8, 16) + conv_bn(16, 16) + linear(16 * 14 * 14, 10));
}

TEST(Models, ResNetShapeAndParams) {
  auto m = make_model(cfg(ModelKind::kResNet, 16, 8), fmnist());  // n = 1 block per stage
  EXPECT_EQ(m->forward(torch::rand({2, 1, 28, 28})).sizes(), (std::vector<int64_t>{2, 10}));
  const int64_t stem = conv_bn(1, 16);
  const int64_t s1 = conv_bn(16, 16) * 2;
  const int64_t s2 = conv_bn(16, 32) + conv_bn(32, 32) + conv_bn(16, 32, 1);
  const int64_t s3 = conv_bn(32, 64) + conv_bn(64, 64) + conv_bn(32, 64, 1);
  EXPECT_EQ(count_params(*m), stem + s1 + s2 + s3 + linear(64, 10));
  auto deeper = make_model(cfg(ModelKind::kResNet, 16, 20), fmnist());
  EXPECT_EQ(deeper->forward(torch::rand({1, 1, 28, 28})).sizes(), (std::vector<int64_t>{1, 10}));
  EXPECT_GT(count_params(*deeper), count_params(*m));
}

TEST(Models, NormalizationIsFoldedIntoTheModel) {
  auto m = make_model(cfg(ModelKind::kMlp, 8, 1), fmnist());
  torch::Tensor mean, inv_std;
  for (const auto& b : m->named_buffers()) {
    if (b.key() == "norm.mean") mean = b.value();
    if (b.key() == "norm.inv_std") inv_std = b.value();
  }
  ASSERT_TRUE(mean.defined() && inv_std.defined());
  EXPECT_FLOAT_EQ(mean.item<float>(), 0.5f);
  EXPECT_FLOAT_EQ(inv_std.item<float>(), 4.0f);
}

TEST(Models, ChannelsLastKeepsOutputs) {
  auto m = make_model(cfg(ModelKind::kConvNet, 8, 4), fmnist());
  m->eval();
  torch::Tensor x = torch::rand({2, 1, 28, 28});
  torch::Tensor before = m->forward(x);
  to_channels_last(*m);
  torch::Tensor after = m->forward(x.contiguous(torch::MemoryFormat::ChannelsLast));
  EXPECT_TRUE(torch::allclose(before, after, 1e-5, 1e-5));
}

TEST(Models, RegistryNames) {
  EXPECT_EQ(model_names(), (std::vector<std::string>{"mlp", "convnet", "resnet", "bert", "llama"}));
}

}  // namespace
}  // namespace qd

namespace qd {
namespace {

TEST(Models, FeatureCaptureNamesAndShapes) {
  ModelConfig c;
  c.name = ModelKind::kConvNet;
  c.width = 4;
  c.depth = 4;
  InputSpec in;
  auto m = make_model(c, in);
  EXPECT_EQ(m->feature_names(), (std::vector<std::string>{"block0", "block1", "block2", "block3", "features"}));
  m->set_capture({"block3", "features"});
  m->forward(torch::rand({2, 1, 28, 28}));
  ASSERT_EQ(m->captured().size(), 2u);
  EXPECT_EQ(m->captured().at("block3").sizes(), (std::vector<int64_t>{2, 8, 14, 14}));
  EXPECT_EQ(m->captured().at("features").sizes(), (std::vector<int64_t>{2, 8}));
  c.name = ModelKind::kResNet;
  c.depth = 8;
  auto r = make_model(c, in);
  EXPECT_EQ(r->feature_names(),
            (std::vector<std::string>{"stem", "stage1_block0", "stage2_block0", "stage3_block0", "features"}));
}

}  // namespace
}  // namespace qd
