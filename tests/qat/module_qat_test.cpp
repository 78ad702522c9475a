// QAT attached by module type (qat/module_qat.h): layer-name patterns pick each layer's rule (first
// match wins, every pattern must match something); the twins compute per-token dynamic int8 inputs
// as a hand computation does, group-wise int4/int8 weights with one symmetric scale per group,
// llama.cpp's Q8_0 / Q4_0 grids for format ggml; they are the identity until the schedule enables
// them; gradients pass straight through; qat.layers reads from YAML in file order.
#include "qat/module_qat.h"

#include <gtest/gtest.h>

#include <cmath>

#include "common/error.h"
#include "models/llama.h"
#include "qat/ggml_quant.h"
#include "trainer/experiment_config.h"

namespace qd {
namespace {

TEST(LayerPattern, GlobMatchesWholeNames) {
  EXPECT_TRUE(layer_pattern_match("*.gate", "lm.layer3.gate"));
  EXPECT_FALSE(layer_pattern_match("*.gate", "lm.layer3.gate2"));
  EXPECT_TRUE(layer_pattern_match("lm.embed", "lm.embed"));
  EXPECT_FALSE(layer_pattern_match("lm.embed", "lm.embedding"));
  EXPECT_TRUE(layer_pattern_match("*layer1?.*", "lm.layer12.up"));
  EXPECT_FALSE(layer_pattern_match("*layer1?.*", "lm.layer1.up"));
  EXPECT_TRUE(layer_pattern_match("*", "anything"));
  EXPECT_TRUE(layer_pattern_match("a*b*c", "a.x.b.y.c"));
  EXPECT_FALSE(layer_pattern_match("a*b*c", "a.x.c.y.b"));
}

TEST(PerTokenQuant, MatchesAHandComputation) {
  const torch::Tensor x = torch::tensor({{1.0f, -2.0f, 0.5f, 0.01f}, {0.0f, 0.0f, 0.0f, 0.0f}, {3.0f, 1.0f, -1.5f, 0.7f}})
                              .requires_grad_(true);
  const torch::Tensor y = per_token_fake_quant(x, 8);
  const float* in = x.data_ptr<float>();
  const torch::Tensor yc = y.detach().contiguous();
  for (int r = 0; r < 3; ++r) {
    float amax = 0.0f;
    for (int c = 0; c < 4; ++c) amax = std::max(amax, std::fabs(in[r * 4 + c]));
    const float s = amax / 127.0f;
    for (int c = 0; c < 4; ++c) {
      const float v = in[r * 4 + c];
      const float want = s > 0 ? std::nearbyint(v / s) * s : 0.0f;
      EXPECT_EQ(yc[r][c].item<float>(), want) << "row " << r << " col " << c;
    }
  }
  EXPECT_EQ(yc[0][0].item<float>(), 64.0f * (2.0f / 127.0f)) << "63.5 rounds half to even";
  y.sum().backward();
  EXPECT_TRUE(torch::equal(x.grad(), torch::ones_like(x))) << "straight-through gradient";
}

QatConfig qat_with(const std::string& yaml_qat) {
  const ExperimentConfig cfg = parse_experiment_config(
      "experiment: {name: x}\ntask: {name: causal_lm}\ndata: {dataset: fortunes}\n"
      "model: {name: llama, tokenizer: smollm2-135m}\nqat:\n" + yaml_qat, "x.yaml");
  return cfg.qat;
}

TEST(LayerQat, GroupWiseWeightsHaveOneSymmetricScalePerGroup) {
  for (const auto& [bits, group] : std::vector<std::pair<int, int64_t>>{{4, 32}, {8, 64}, {4, 128}}) {
    LayerQuantRule rule;
    rule.weight.bits = bits;
    rule.weight.group_size = group;
    rule.activation.dynamic = DynamicQuant::kPerToken;
    QatConfig cfg;
    LayerQat twin(cfg, rule, 3, 256, "t");
    twin->set_enabled(true);
    twin->weight_quant->set_enabled(true);
    twin->weight_quant->set_observing(true);
    torch::manual_seed(1);
    const torch::Tensor w = torch::randn({3, 256});
    const torch::Tensor q = twin->weight(w).detach();
    const float qmax = static_cast<float>((1 << (bits - 1)) - 1);
    const torch::Tensor wg = w.reshape({-1, group}), qg = q.reshape({-1, group});
    for (int64_t g = 0; g < wg.size(0); ++g) {
      const float s = wg[g].abs().max().item<float>() / qmax;
      const torch::Tensor want = torch::round(wg[g] * (1.0f / s)).clamp(-qmax, qmax) * s;
      EXPECT_TRUE(torch::allclose(qg[g], want, 0.0, 1e-6)) << bits << "-bit, group " << group << ": group " << g;
      const torch::Tensor levels = torch::round(qg[g] / s);
      EXPECT_LE(levels.abs().max().item<float>(), qmax);
      EXPECT_TRUE(torch::allclose(levels * s, qg[g], 0.0, 1e-6)) << "on the group's grid";
    }
  }
}

TEST(LayerQat, GgmlFormatTrainsOnTheQ8_0AndQ4_0Grids) {
  const QatConfig cfg = qat_with(
      "  enabled: true\n  layers:\n    \"*.gate\": {weight: {bits: 4, group_size: 32, format: ggml}, "
      "activation: {dynamic: per_block}}\n    \"*\": {weight: {bits: 8, group_size: 32, format: ggml}, "
      "activation: {dynamic: per_block}}\n");
  torch::manual_seed(2);
  const torch::Tensor w = torch::randn({4, 64}) * 0.1, x = torch::randn({2, 3, 64});
  for (const auto& [name, type] : std::vector<std::pair<std::string, GgmlBlockType>>{
           {"lm.layer0.gate", GgmlBlockType::kQ4_0}, {"lm.layer0.up", GgmlBlockType::kQ8_0}}) {
    LayerQat twin(cfg, cfg.rule_for(name), 4, 64, name);
    twin->set_enabled(true);
    EXPECT_TRUE(torch::equal(twin->weight(w), ggml_quantize_dequantize(w, type))) << name;
    EXPECT_TRUE(torch::equal(twin->input(x), ggml_quantize_dequantize(x.reshape({-1, 64}), GgmlBlockType::kQ8_0).view({2, 3, 64})))
        << "llama.cpp quantizes the activation row to Q8_0 blocks";
  }
}

Llama tiny_llama(int64_t heads = 4, int64_t kv_heads = 2) {
  LlamaOptions o;
  o.vocab = 64, o.hidden = 64, o.layers = 2, o.heads = heads, o.kv_heads = kv_heads, o.ffn = 96, o.max_positions = 32;
  torch::manual_seed(3);
  return Llama(o);
}

TEST(AttachQat, PatternsPickEachLayersRuleAndTypos) {
  Llama m = tiny_llama();
  const QatConfig cfg = qat_with(
      "  enabled: true\n  layers:\n    embed: {enabled: false}\n    \"*.down\": {weight: {bits: 4, group_size: 32}}\n"
      "    \"*\": {activation: {dynamic: per_token}}\n");
  ASSERT_EQ(cfg.layers.size(), 3u);
  EXPECT_EQ(cfg.layers[0].first, "embed") << "file order";
  EXPECT_EQ(cfg.layers[2].second.weight.bits, 8) << "a rule starts from qat.weight";
  EXPECT_EQ(attach_qat(*m, cfg), 14) << "7 linears per layer, the embedding left float";
  EXPECT_FALSE(m->embed->quant);
  auto down = std::dynamic_pointer_cast<LayerQatImpl>(m->layers[1]->down->quant);
  ASSERT_TRUE(down);
  EXPECT_EQ(down->weight_spec().bits, 4);
  EXPECT_EQ(down->weight_spec().group_size, 32);
  EXPECT_EQ(down->input_spec().dynamic, DynamicQuant::kNone) << "first match wins: *.down, not *";
  auto q = std::dynamic_pointer_cast<LayerQatImpl>(m->layers[0]->q->quant);
  ASSERT_TRUE(q);
  EXPECT_EQ(q->input_spec().dynamic, DynamicQuant::kPerToken);
  EXPECT_EQ(q->weight_spec().max_abs, 64) << "8-bit per-channel onnx weights keep qat.target portable's range";
  EXPECT_EQ(layer_qats(*m).size(), 14u);

  Llama typo = tiny_llama();
  try {
    attach_qat(*typo, qat_with("  enabled: true\n  layers:\n    \"*.mlp.*\": {weight: {bits: 4}}\n"));
    FAIL() << "a pattern that matches nothing must be refused";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("*.mlp.*"), std::string::npos) << e.what();
  }
  Llama odd = tiny_llama();
  EXPECT_THROW(attach_qat(*odd, qat_with("  enabled: true\n  layers:\n    \"*.down\": {weight: {group_size: 64}}\n")),
               UserError)
      << "down reads 96 inputs: not a multiple of 64";
}

TEST(AttachQat, TwinIsTheIdentityUntilEnabledAndPassesGradients) {
  Llama m = tiny_llama();
  const torch::Tensor ids = torch::randint(0, 64, {2, 8});
  const torch::Tensor mask = torch::ones({2, 8}, torch::kLong);
  const torch::Tensor before = m->forward(ids, mask).detach();
  attach_qat(*m, qat_with("  enabled: true\n  weight: {bits: 4, group_size: 32}\n  activation: {dynamic: per_token}\n"));
  EXPECT_TRUE(torch::equal(m->forward(ids, mask).detach(), before)) << "attached but not enabled: float";
  for (auto& t : layer_qats(*m)) {
    t->set_enabled(true);
    if (t->weight_quant) t->weight_quant->set_enabled(true), t->weight_quant->set_observing(true);
  }
  const torch::Tensor after = m->forward(ids, mask);
  EXPECT_FALSE(torch::allclose(after.detach(), before, 1e-4, 1e-4)) << "4-bit weights change the logits";
  // The quantized computation is F::linear of the quantized input and weight.
  auto& gate = *m->layers[0]->gate;
  const torch::Tensor h = torch::randn({5, 64});
  const torch::Tensor want = torch::nn::functional::linear(per_token_fake_quant(h, 8), gate.quant->weight(gate.weight));
  EXPECT_TRUE(torch::equal(gate.forward(h), want));
  after.sum().backward();
  EXPECT_TRUE(m->layers[0]->gate->weight.grad().defined());
  EXPECT_GT(m->layers[0]->gate->weight.grad().abs().sum().item<double>(), 0.0) << "the STE reaches the float weight";
}

// qat.kv_cache: the keys (after rotary positions) and values of every llama layer pass through an
// input-only twin, llama.cpp's q8_0 cache blocks over each head's row; the linears are untouched.
TEST(AttachQat, KvCacheQuantizesKeysAndValuesAsTheCacheHoldsThem) {
  Llama m = tiny_llama(2, 1);  // head_dim 32: one q8_0 block per row
  const torch::Tensor ids = torch::randint(0, 64, {1, 8});
  const torch::Tensor mask = torch::ones({1, 8}, torch::kLong);
  const torch::Tensor before = m->forward(ids, mask).detach();
  const QatConfig cfg = qat_with("  enabled: true\n  kv_cache: per_block\n  layers:\n    \"*\": {enabled: false}\n");
  EXPECT_EQ(attach_qat(*m, cfg), 4) << "k_cache and v_cache of two layers; every linear left float";
  auto k = std::dynamic_pointer_cast<LayerQatImpl>(m->layers[0]->k_cache->quant);
  ASSERT_TRUE(k);
  EXPECT_FALSE(k->weight_quant) << "an activation point has no weight";
  for (auto& t : layer_qats(*m)) t->set_enabled(true);
  const torch::Tensor x = torch::randn({1, 1, 8, 32});  // [B, kv heads, T, head_dim]
  EXPECT_TRUE(torch::equal(m->layers[0]->k_cache(x),
                           ggml_quantize_dequantize(x.reshape({-1, 32}), GgmlBlockType::kQ8_0).view(x.sizes())));
  const torch::Tensor after = m->forward(ids, mask).detach();
  EXPECT_FALSE(torch::equal(after, before));
  const double moved = ((after - before).norm() / before.norm()).item<double>();
  EXPECT_LT(moved, 0.05) << "int8 keys and values move the logits a little";
  Llama odd = tiny_llama();  // head_dim 16: not a whole q8_0 block
  attach_qat(*odd, cfg);
  for (auto& t : layer_qats(*odd)) t->set_enabled(true);
  EXPECT_THROW(odd->forward(ids, mask), UserError);
}

TEST(QatLayersConfig, BadRulesAreRefusedWithTheKey) {
  const auto error = [](const std::string& qat) {
    try {
      qat_with(qat);
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(error("  layers:\n    \"*\": {weight: {group_size: 48}}\n").find("qat.layers.*.weight.group_size"), std::string::npos);
  EXPECT_NE(error("  layers:\n    \"*\": {weight: {format: ggml, bits: 8}}\n").find("format"), std::string::npos);
  EXPECT_NE(error("  layers:\n    \"*\": {weight: {colour: red}}\n").find("colour"), std::string::npos);
  EXPECT_NE(error("  layers: [1, 2]\n").find("qat.layers"), std::string::npos);
  EXPECT_NE(error("  activation: {dynamic: per_token, bits: 4}\n").find("bits"), std::string::npos);
  // A CNN takes rules too (its layers are checked when the twins attach: QatModels.CnnTwins...).
  EXPECT_NO_THROW(parse_experiment_config(
      "experiment: {name: x}\nmodel: {name: convnet}\nqat:\n  layers:\n    \"block*\": {weight: {bits: 4}}\n", "x.yaml"));
}

}  // namespace
}  // namespace qd
