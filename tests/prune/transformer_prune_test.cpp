// Structured pruning of a Llama decoder: each axis (key-value head groups with their query heads,
// FFN neurons, the hidden size through every residual and RMSNorm) removes exactly what its mask
// zeroes, with and without QAT twins; the criteria score what a hand computation says.
#include <gtest/gtest.h>

#include <fstream>

#include "../pretrained_util.h"
#include "../test_util.h"
#include "common/error.h"
#include "models/registry.h"
#include "models/text_model.h"
#include "prune/pruner.h"
#include "prune/remove.h"
#include "qat/module_qat.h"
#include "qat/qat_hook.h"
#include "trainer/experiment_config.h"

namespace qd {
namespace {

const char* kTinyLlama =
    "{name: llama, tokenizer: smollm2-135m, hidden: 64, layers: 2, heads: 4, kv_heads: 2, ffn: 96, max_positions: 32}";

ExperimentConfig tiny_config(const std::string& qat = "") {
  return parse_experiment_config(std::string("experiment: {name: t}\ntask: {name: causal_lm}\ndata: {dataset: fortunes}\n"
                                             "model: ") + kTinyLlama + "\n" + qat,
                                 "t.yaml");
}

// A tiny llama with non-trivial norm scales (the fresh ones are all 1).
std::shared_ptr<LlamaModel> tiny_llama(const ExperimentConfig& c) {
  torch::manual_seed(7);
  auto m = std::dynamic_pointer_cast<LlamaModel>(make_model(c.model, InputSpec{}));
  torch::NoGradGuard g;
  for (auto& p : m->named_parameters())
    if (p.key().find("norm") != std::string::npos) p.value().uniform_(0.5, 1.5);
  return m;
}

TrainState state_for(Model& m) {
  TrainState s;
  s.model = &m;
  s.steps_per_epoch = 10;
  return s;
}

// Half of every group of `axis` pruned at once; the others excluded.
PruneConfig prune_axis(Model& m, const std::string& axis) {
  PruneConfig c;
  c.enabled = true;
  c.schedule = PruneSchedule::kOneShot;
  c.target_sparsity = 0.5;
  for (const auto& g : m.prune_groups())
    if (axis != "all" && g.axis != axis) c.exclude.push_back(g.name);
  return c;
}

// Runs the hook's one-shot schedule at step 0: the masks are applied when it returns.
void prune_at_step0(PruneHook& hook, Model& m) {
  TrainState s = state_for(m);
  hook.on_train_begin(s);
  hook.on_step_begin(s);
}

torch::Tensor logits(LlamaModel& m, const torch::Tensor& ids) {
  torch::NoGradGuard g;
  return m.forward_text(ids, torch::ones_like(ids));
}

TEST(LlamaPrune, GroupsDeclareHeadsFfnAndHidden) {
  const std::string skip = test::missing_teacher("smollm2-135m");
  if (!skip.empty()) GTEST_SKIP() << skip;
  auto m = tiny_llama(tiny_config());
  const std::vector<PruneGroup> g = m->prune_groups();
  ASSERT_EQ(g.size(), 5u);
  EXPECT_EQ(g[0].name, "layer0.heads");
  EXPECT_EQ(g[0].units, 2) << "one unit per key-value head";
  EXPECT_EQ(g[1].name, "layer0.ffn");
  EXPECT_EQ(g[1].units, 96);
  EXPECT_EQ(g[4].name, "hidden");
  EXPECT_EQ(g[4].units, 64);
  EXPECT_EQ(g[4].norms.size(), 5u) << "two norms per layer and the final one";
  // A kv group owns its 2 query heads: 2 x 16 rows of q, 16 rows of k and v, 32 columns of out.
  int seen = 0;
  for (const auto& s : g[0].slices) {
    if (s.tensor == "lm.layer0.q.weight") {
      EXPECT_EQ(s.block, 32);
      ++seen;
    } else if (s.tensor == "lm.layer0.k.weight") {
      EXPECT_EQ(s.block, 16);
      ++seen;
    } else if (s.tensor == "lm.layer0.out.weight") {
      EXPECT_EQ(s.dim, 1);
      EXPECT_EQ(s.block, 32);
      EXPECT_EQ(s.role, SliceRole::kConsumer);
      ++seen;
    }
  }
  EXPECT_EQ(seen, 3);
}

// QAT twins attached and on from the start, weight observers included.
void quantize_now(torch::nn::Module& m, const QatConfig& q) {
  attach_qat(m, q);
  for (auto& t : layer_qats(m)) {
    t->set_enabled(true);
    if (t->weight_quant) t->weight_quant->set_enabled(true), t->weight_quant->set_observing(true);
  }
}

// Masks half of `axis` (one-shot), removes it physically and checks the smaller model computes the
// masked model's logits; returns the removal for shape checks.
RemovalResult check_axis(const std::string& axis, bool qat_on) {
  ExperimentConfig c = tiny_config(qat_on ? "qat: {enabled: true}\n" : "");
  auto m = tiny_llama(c);
  if (qat_on) quantize_now(*m, c.qat);
  PruneHook hook(prune_axis(*m, axis));
  prune_at_step0(hook, *m);
  m->eval();
  torch::manual_seed(1);
  const torch::Tensor ids = torch::randint(0, 49152, {2, 12});
  const torch::Tensor want = logits(*m, ids);
  RemovalResult r = remove_pruned_units(*m, c.model, InputSpec{}, qat_on ? &c.qat : nullptr);
  auto small = std::dynamic_pointer_cast<LlamaModel>(r.model);
  EXPECT_TRUE(small);
  if (!small) return r;
  small->eval();
  const torch::Tensor got = logits(*small, ids);
  EXPECT_LT(count_params(*small), count_params(*m)) << axis;
  // Without QAT: equal up to float summation order. With int8 weights the per-channel scales are
  // cut with their rows, so the same integers come out; the dynamic activations see the same rows.
  const double tol = qat_on ? 1e-3 : 1e-4;
  EXPECT_TRUE(torch::allclose(got, want, tol, tol))
      << axis << (qat_on ? " (QAT)" : "") << ": max difference " << (got - want).abs().max().item<float>();
  // The architecture round-trips through its config.
  auto again = make_model(r.config, InputSpec{});
  EXPECT_EQ(count_params(*again), count_params(*small));
  return r;
}

TEST(LlamaPrune, EachAxisRemovesExactlyWhatTheMaskZeroes) {
  const std::string skip = test::missing_teacher("smollm2-135m");
  if (!skip.empty()) GTEST_SKIP() << skip;
  for (const bool qat_on : {false, true}) {
    const RemovalResult ffn = check_axis("ffn", qat_on);
    EXPECT_EQ(ffn.config.ffn, 48);
    EXPECT_EQ(ffn.config.hidden, 64);
    const RemovalResult heads = check_axis("heads", qat_on);
    EXPECT_EQ(heads.config.kv_heads, 1);
    EXPECT_EQ(heads.config.heads, 2) << "grouped-query attention: a kv head goes with its query heads";
    EXPECT_EQ(heads.config.head_dim, 16) << "heads keep their size";
    const RemovalResult hidden = check_axis("hidden", qat_on);
    EXPECT_EQ(hidden.config.hidden, 32);
    EXPECT_EQ(hidden.config.head_dim, 16);
    EXPECT_EQ(hidden.config.heads, 4);
    const RemovalResult all = check_axis("all", qat_on);
    EXPECT_EQ(all.config.hidden, 32);
    EXPECT_EQ(all.config.ffn, 48);
    EXPECT_EQ(all.config.kv_heads, 1);
  }
}

TEST(LlamaPrune, HeadGroupsGoWithTheirQueryHeadsAndL1ScoresPickTheWeakest) {
  const std::string skip = test::missing_teacher("smollm2-135m");
  if (!skip.empty()) GTEST_SKIP() << skip;
  auto m = tiny_llama(tiny_config());
  LlamaLayerImpl& l0 = *m->lm->layers[0];
  {
    // Shrink kv group 0 of layer 0 (its q rows 0..31, k and v rows 0..15) so its L1 score (the
    // sum of |q|, |k| and |v| over its rows) is the lower one; in layer 1 shrink group 1 instead.
    torch::NoGradGuard g;
    l0.q->weight.slice(0, 0, 32).mul_(0.01);
    l0.k->weight.slice(0, 0, 16).mul_(0.01);
    l0.v->weight.slice(0, 0, 16).mul_(0.01);
    LlamaLayerImpl& l1 = *m->lm->layers[1];
    l1.q->weight.slice(0, 32, 64).mul_(0.01);
    l1.k->weight.slice(0, 16, 32).mul_(0.01);
    l1.v->weight.slice(0, 16, 32).mul_(0.01);
  }
  PruneHook hook(prune_axis(*m, "heads"));
  prune_at_step0(hook, *m);
  EXPECT_EQ(l0.q->weight.slice(0, 0, 32).count_nonzero().item<int64_t>(), 0);
  EXPECT_EQ(l0.q->weight.slice(0, 32, 64).count_nonzero().item<int64_t>(), 32 * 64);
  EXPECT_EQ(l0.k->weight.slice(0, 0, 16).count_nonzero().item<int64_t>(), 0);
  EXPECT_EQ(l0.v->weight.slice(0, 16, 32).count_nonzero().item<int64_t>(), 16 * 64);
  EXPECT_EQ(l0.out->weight.slice(1, 0, 32).count_nonzero().item<int64_t>(), 0) << "out's columns that read the pruned heads";
  EXPECT_EQ(l0.out->weight.slice(1, 32, 64).count_nonzero().item<int64_t>(), 64 * 32);
  EXPECT_EQ(m->lm->layers[1]->q->weight.slice(0, 32, 64).count_nonzero().item<int64_t>(), 0);
  const auto sp = hook.sparsity();
  EXPECT_DOUBLE_EQ(sp.at("layer0.heads"), 0.5);
  EXPECT_EQ(sp.count("hidden"), 0u) << "excluded";
}

TEST(LlamaPrune, HiddenMaskKeepsTheResidualStreamZeroAndNormsCountKeptFeatures) {
  const std::string skip = test::missing_teacher("smollm2-135m");
  if (!skip.empty()) GTEST_SKIP() << skip;
  auto m = tiny_llama(tiny_config());
  PruneHook hook(prune_axis(*m, "hidden"));
  prune_at_step0(hook, *m);
  const torch::Tensor pruned = m->lm->embed->weight.abs().sum(0).eq(0);  // [64]
  EXPECT_EQ(pruned.sum().item<int64_t>(), 32);
  TransformerTrace trace;
  trace.want_hidden = true;
  m->set_trace(&trace);
  m->train();
  logits(*m, torch::randint(0, 49152, {2, 8}));
  m->set_trace(nullptr);
  ASSERT_EQ(trace.hidden.size(), 3u);
  for (const auto& h : trace.hidden)
    EXPECT_EQ(h.index({torch::indexing::Ellipsis, pruned}).abs().max().item<float>(), 0.0f) << "a pruned feature of the residual stream";
  // RMSNorm over the kept features only: x with the pruned features 0 normalizes as the kept x alone.
  RmsNorm& n = m->lm->norm;
  const torch::Tensor x = torch::randn({3, 64}) * (~pruned).to(torch::kFloat32);
  const torch::Tensor kept_x = x.index({torch::indexing::Slice(), ~pruned});
  const torch::Tensor want = kept_x * torch::rsqrt(kept_x.pow(2).mean(-1, true) + n->eps()) * n->weight.index({~pruned});
  EXPECT_TRUE(torch::allclose(n(x).index({torch::indexing::Slice(), ~pruned}), want, 1e-5, 1e-6));
}

// Resuming a masked run restores what the norms count: the hook's state alone brings it back.
TEST(LlamaPrune, ResumedMasksRestoreTheNormsKeptFeatures) {
  const std::string skip = test::missing_teacher("smollm2-135m");
  if (!skip.empty()) GTEST_SKIP() << skip;
  auto m = tiny_llama(tiny_config());
  PruneHook hook(prune_axis(*m, "hidden"));
  prune_at_step0(hook, *m);
  m->eval();
  const torch::Tensor ids = torch::randint(0, 49152, {1, 8});
  const torch::Tensor want = logits(*m, ids);
  torch::serialize::OutputArchive out;
  hook.save_state(out);
  std::ostringstream buf;
  out.save_to(buf);

  auto fresh = tiny_llama(tiny_config());
  {
    torch::NoGradGuard g;
    for (auto& p : fresh->named_parameters()) p.value().copy_(m->named_parameters()[p.key()]);
  }
  fresh->eval();
  EXPECT_FALSE(torch::allclose(logits(*fresh, ids), want, 1e-4, 1e-4)) << "norms unaware of the mask differ";
  PruneHook resumed(prune_axis(*fresh, "hidden"));
  TrainState s2 = state_for(*fresh);
  resumed.on_train_begin(s2);
  torch::serialize::InputArchive in;
  std::istringstream read(buf.str());
  in.load_from(read);
  resumed.load_state(in);
  EXPECT_TRUE(torch::equal(logits(*fresh, ids), want));
}

// Minitron's activation importance, against a hand computation: with every layer's out and down
// zeroed the residual stream stays the embedding x, so each FFN neuron's score is
// sum |silu(gate(ffn_norm(x))) * up(ffn_norm(x))| and each hidden feature's the sum of |norm(x)|
// over every RMSNorm; the activation criterion then prunes the lowest-scoring units.
TEST(LlamaPrune, ActivationImportanceMatchesAHandComputation) {
  const std::string skip = test::missing_teacher("smollm2-135m");
  if (!skip.empty()) GTEST_SKIP() << skip;
  auto m = tiny_llama(tiny_config());
  torch::NoGradGuard g;
  for (auto& l : m->lm->layers) l->out->weight.zero_(), l->down->weight.zero_();
  torch::manual_seed(2);
  const torch::Tensor ids = torch::randint(0, 49152, {2, 10});
  auto measure = [&ids](Model& model) {
    auto& tm = dynamic_cast<LlamaModel&>(model);
    TransformerTrace trace;
    trace.want_units = trace.in_eval = true;
    tm.set_trace(&trace);
    tm.eval();
    tm.forward_text(ids, torch::ones_like(ids));
    tm.set_trace(nullptr);
    return trace.units;
  };
  const auto units = measure(*m);
  const torch::Tensor x = m->lm->embed->weight.index_select(0, ids.reshape({-1})).to(torch::kFloat64);  // [20, 64]
  torch::Tensor hidden = m->lm->norm(x.to(torch::kFloat32)).abs().sum(0).to(torch::kFloat64);
  for (size_t i = 0; i < m->lm->layers.size(); ++i) {
    LlamaLayerImpl& l = *m->lm->layers[i];
    const torch::Tensor f = l.ffn_norm(x.to(torch::kFloat32));
    hidden += l.attn_norm(x.to(torch::kFloat32)).abs().sum(0).to(torch::kFloat64) + f.abs().sum(0).to(torch::kFloat64);
    const torch::Tensor act = (torch::silu(l.gate(f)) * l.up(f)).abs().sum(0).to(torch::kFloat64);
    const std::string name = "layer" + std::to_string(i) + ".ffn";
    ASSERT_TRUE(units.count(name)) << name;
    EXPECT_TRUE(torch::allclose(units.at(name), act, 1e-5, 1e-8)) << name;
    ASSERT_TRUE(units.count("layer" + std::to_string(i) + ".heads"));
    EXPECT_EQ(units.at("layer" + std::to_string(i) + ".heads").numel(), 2);
  }
  ASSERT_TRUE(units.count("hidden"));
  EXPECT_TRUE(torch::allclose(units.at("hidden"), hidden, 1e-5, 1e-8));

  PruneConfig c = prune_axis(*m, "ffn");
  c.criterion = PruneCriterion::kActivation;
  PruneHook hook(c, measure);
  prune_at_step0(hook, *m);
  const torch::Tensor order = std::get<1>(units.at("layer0.ffn").sort(/*stable=*/true, 0, false));
  const torch::Tensor rows = m->lm->layers[0]->gate->weight.abs().sum(1);
  EXPECT_EQ(rows.index_select(0, order.slice(0, 0, 48)).count_nonzero().item<int64_t>(), 0) << "the 48 weakest neurons go";
  EXPECT_EQ(rows.index_select(0, order.slice(0, 48)).count_nonzero().item<int64_t>(), 48);
}

ExperimentConfig tiny_bert_config(const std::string& qat = "") {
  return parse_experiment_config(
      "experiment: {name: t}\ntask: {name: sentence_embedding, teacher: minilm-l6}\ndata: {dataset: wordnet}\n"
      "model: {name: bert, tokenizer: minilm-l6, hidden: 32, layers: 2, heads: 4, ffn: 64, max_positions: 32}\n" + qat,
      "b.yaml");
}

// A tiny bert with non-trivial biases and norms (the fresh ones are 0 and 1).
std::shared_ptr<BertModel> tiny_bert(const ExperimentConfig& c) {
  torch::manual_seed(11);
  auto m = std::dynamic_pointer_cast<BertModel>(make_model(c.model, InputSpec{}));
  torch::NoGradGuard g;
  for (auto& p : m->named_parameters())
    if (p.key().find("bias") != std::string::npos) p.value().uniform_(-0.5, 0.5);
    else if (p.key().find("norm") != std::string::npos) p.value().uniform_(0.5, 1.5);
  return m;
}

// Two sentences, the second padded: the mask matters.
std::pair<torch::Tensor, torch::Tensor> bert_batch() {
  torch::manual_seed(2);
  const torch::Tensor ids = torch::randint(1000, 30000, {2, 10});
  torch::Tensor mask = torch::ones({2, 10}, torch::kLong);
  mask[1].slice(0, 6).fill_(0);
  return {ids, mask};
}

TEST(BertPrune, EachAxisRemovesExactlyWhatTheMaskZeroes) {
  const std::string skip = test::missing_teacher("minilm-l6");
  if (!skip.empty()) GTEST_SKIP() << skip;
  for (const bool qat_on : {false, true}) {
    for (const std::string axis : {"heads", "ffn", "hidden", "all"}) {
      ExperimentConfig c = tiny_bert_config(qat_on ? "qat: {enabled: true, activation: {dynamic: per_token}}\n" : "");
      auto m = tiny_bert(c);
      if (qat_on) quantize_now(*m, c.qat);
      PruneHook hook(prune_axis(*m, axis));
      prune_at_step0(hook, *m);
      m->eval();
      const auto [ids, mask] = bert_batch();
      torch::Tensor want, got;
      {
        torch::NoGradGuard g;
        want = m->embed(ids, mask);
      }
      RemovalResult r = remove_pruned_units(*m, c.model, InputSpec{}, qat_on ? &c.qat : nullptr);
      auto small = std::dynamic_pointer_cast<BertModel>(r.model);
      ASSERT_TRUE(small);
      small->eval();
      {
        torch::NoGradGuard g;
        got = small->embed(ids, mask);
      }
      const double tol = qat_on ? 1e-3 : 1e-5;
      ASSERT_EQ(got.sizes(), want.sizes()) << axis << ": the sentence embedding keeps its width";
      EXPECT_TRUE(torch::allclose(got, want, tol, tol))
          << axis << (qat_on ? " (QAT)" : "") << ": max difference " << (got - want).abs().max().item<float>();
      const bool heads = axis == "heads" || axis == "all", ffn = axis == "ffn" || axis == "all",
                 hidden = axis == "hidden" || axis == "all";
      EXPECT_EQ(r.config.heads, heads ? 2 : 4) << axis;
      EXPECT_EQ(r.config.ffn, ffn ? 32 : 64) << axis;
      EXPECT_EQ(r.config.head_dim, 8) << "heads keep their size";
      EXPECT_EQ(r.config.hidden, hidden ? 16 : 32) << axis;
      EXPECT_EQ(r.config.embedding_dim, hidden ? 32 : 0) << axis << ": a narrower stream is projected back to 32";
      auto again = make_model(r.config, InputSpec{});
      EXPECT_EQ(count_params(*again), count_params(*small));
      // Per layer: q, k, v lose 2 heads x 8 rows (and biases), attn_out 16 columns; the FFN 32 rows,
      // 32 biases and 32 columns. The hidden size: 16 columns of the word, position (32) and token-type
      // (2) tables, 16 entries of every LayerNorm's weight and bias (1 + 2 per layer), 16 input columns
      // of q, k, v (32 rows each) and ffn_in (64 rows), 16 rows and biases of attn_out (32 columns) and
      // ffn_out (64 columns); the projection back to 32 adds [32, 16] and a bias.
      const int64_t heads_cut = 2 * (3 * (16 * 32 + 16) + 32 * 16), ffn_cut = 2 * (32 * 32 + 32 + 32 * 32);
      const int64_t hidden_cut = 16 * (30522 + 32 + 2) + 2 * 16 * 5 +
                                 2 * (16 * (3 * 32 + 64) + 16 * 32 + 16 + 16 * 64 + 16) - (32 * 16 + 32);
      if (!qat_on && axis != "all") {
        EXPECT_EQ(count_params(*m) - count_params(*small), heads ? heads_cut : ffn ? ffn_cut : hidden_cut) << axis;
      }
    }
  }
}

// Hidden-size pruning through the LayerNorms: under the mask the pruned features of every hidden
// state stay exactly 0, and each norm's statistics run over the kept features alone.
TEST(BertPrune, HiddenMaskKeepsTheResidualStreamZeroAndNormsCountKeptFeatures) {
  const std::string skip = test::missing_teacher("minilm-l6");
  if (!skip.empty()) GTEST_SKIP() << skip;
  auto m = tiny_bert(tiny_bert_config());
  PruneHook hook(prune_axis(*m, "hidden"));
  prune_at_step0(hook, *m);
  m->eval();
  const torch::Tensor keep = m->encoder->embed_norm->weight.ne(0);
  ASSERT_EQ(keep.sum().item<int64_t>(), 16);
  const auto [ids, mask] = bert_batch();
  TransformerTrace trace;
  trace.want_hidden = trace.in_eval = true;
  m->set_trace(&trace);
  torch::NoGradGuard g;
  m->forward_text(ids, mask);
  m->set_trace(nullptr);
  ASSERT_EQ(trace.hidden.size(), 3u);
  for (const auto& h : trace.hidden) EXPECT_EQ(h.index({"...", keep.logical_not()}).count_nonzero().item<int64_t>(), 0);
  // The last norm by hand over the kept features: its input is the layer's y + ffn_out(gelu(ffn_in(y))).
  auto& l = *m->encoder->layers[1];
  const torch::Tensor h = trace.hidden[2].index({"...", keep});
  const torch::Tensor k = keep.nonzero().reshape({-1});
  const torch::Tensor z = (h - l.ffn_norm->bias.index_select(0, k)) / l.ffn_norm->weight.index_select(0, k);
  EXPECT_TRUE(torch::allclose(z.mean(-1), torch::zeros_like(z.mean(-1)), 1e-4, 1e-4)) << "mean 0 over the kept features";
  EXPECT_TRUE(torch::allclose(z.pow(2).mean(-1), torch::ones_like(z.mean(-1)), 1e-3, 1e-3)) << "variance 1 over them";
}

// The activation criterion on a bert: a head by the L2 norm of its output, an FFN neuron by
// |gelu(ffn_in(y))|, summed over the tokens and not the padding, by hand from the layer's pieces.
TEST(BertPrune, ActivationImportanceMatchesAHandComputation) {
  const std::string skip = test::missing_teacher("minilm-l6");
  if (!skip.empty()) GTEST_SKIP() << skip;
  auto m = tiny_bert(tiny_bert_config());
  m->eval();
  const auto [ids, mask] = bert_batch();
  TransformerTrace trace;
  trace.want_units = trace.in_eval = true;
  m->set_trace(&trace);
  torch::NoGradGuard g;
  m->forward_text(ids, mask);
  m->set_trace(nullptr);
  auto& e = *m->encoder;
  const torch::Tensor pos = torch::arange(10);
  const torch::Tensor x = e.embed_norm(e.word(ids) + e.position(pos).unsqueeze(0) + e.token_type->weight[0]);
  auto& l = *e.layers[0];
  const auto split = [](const torch::Tensor& y) { return y.view({2, 10, 4, 8}).transpose(1, 2); };
  const torch::Tensor scores = split(l.query(x)).matmul(split(l.key(x)).transpose(-1, -2)) / std::sqrt(8.0);
  const torch::Tensor keys = mask.to(torch::kBool).view({2, 1, 1, 10});
  const torch::Tensor heads = scores.masked_fill(keys.logical_not(), -1e30).softmax(-1).matmul(split(l.value(x)));
  const torch::Tensor y = l.attn_norm(x + l.attn_out(heads.transpose(1, 2).reshape({2, 10, 32})));
  const torch::Tensor tok = mask.to(torch::kFloat32).view({2, 10, 1});
  const torch::Tensor want_heads = (heads.norm(2, -1).transpose(1, 2) * tok).reshape({-1, 4}).sum(0).to(torch::kFloat64);
  const torch::Tensor want_ffn = (torch::gelu(l.ffn_in(y)) * tok).abs().reshape({-1, 64}).sum(0).to(torch::kFloat64);
  ASSERT_TRUE(trace.units.count("layer0.heads") && trace.units.count("layer0.ffn"));
  EXPECT_TRUE(torch::allclose(trace.units["layer0.heads"], want_heads, 1e-4, 1e-5)) << trace.units["layer0.heads"] << want_heads;
  EXPECT_TRUE(torch::allclose(trace.units["layer0.ffn"], want_ffn, 1e-4, 1e-5));
  // A hidden feature: |its value| after every LayerNorm, over the tokens.
  torch::Tensor want_hidden = (x * tok).abs().reshape({-1, 32}).sum(0).to(torch::kFloat64);
  torch::Tensor h = x;
  for (auto& layer : e.layers) {
    const torch::Tensor qs = split(layer->query(h)), ks = split(layer->key(h)), vs = split(layer->value(h));
    const torch::Tensor att = (qs.matmul(ks.transpose(-1, -2)) / std::sqrt(8.0)).masked_fill(keys.logical_not(), -1e30);
    const torch::Tensor yy = layer->attn_norm(h + layer->attn_out(att.softmax(-1).matmul(vs).transpose(1, 2).reshape({2, 10, 32})));
    h = layer->ffn_norm(yy + layer->ffn_out(torch::gelu(layer->ffn_in(yy))));
    want_hidden += ((yy * tok).abs() + (h * tok).abs()).reshape({-1, 32}).sum(0).to(torch::kFloat64);
  }
  ASSERT_TRUE(trace.units.count("hidden"));
  EXPECT_TRUE(torch::allclose(trace.units["hidden"], want_hidden, 1e-4, 1e-5));
  // The groups as `qdistill layers` lists them: 2 per layer, heads then FFN, then the hidden size.
  const std::vector<PruneGroup> groups = m->prune_groups();
  ASSERT_EQ(groups.size(), 5u);
  EXPECT_EQ(groups[0].name, "layer0.heads");
  EXPECT_EQ(groups[3].name, "layer1.ffn");
  EXPECT_EQ(groups[4].name, "hidden");
  EXPECT_EQ(groups[4].norms.size(), 5u) << "the embeddings' LayerNorm and two per layer";
}

TEST(LlamaPrune, UnevenLayersAreRefusedWithTheFix) {
  const std::string skip = test::missing_teacher("smollm2-135m");
  if (!skip.empty()) GTEST_SKIP() << skip;
  ExperimentConfig c = tiny_config();
  auto m = tiny_llama(c);
  PruneConfig p = prune_axis(*m, "ffn");
  p.layer_targets = {"layer1.ffn=0.25"};
  PruneHook hook(p);
  prune_at_step0(hook, *m);
  try {
    remove_pruned_units(*m, c.model, InputSpec{}, nullptr);
    FAIL() << "layers with different FFN widths cannot be one llama";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("one FFN width"), std::string::npos) << e.what();
  }
}


// ---- vocabulary pruning ------------------------------------------------------------------------

const std::vector<std::string> kCorpus = {"a small dog barks at the mailman",
                                          "(botany) the fruit of an oak tree; an acorn",
                                          "photosynthesis, chlorophyll and carbon dioxide"};
const std::vector<std::string> kNewText = {"xylophones quietly zigzag past kaleidoscopes", "Überraschung! 42 émigrés"};

std::vector<int32_t> corpus_ids(const TextModel& m) {
  std::vector<int32_t> used;
  for (const auto& t : kCorpus)
    for (int32_t id : m.tokenizer().encode(t)) used.push_back(id);
  return used;
}

torch::Tensor embed_one(TextModel& m, const std::vector<int32_t>& ids) {
  torch::NoGradGuard g;
  const torch::Tensor x = torch::tensor(std::vector<int64_t>(ids.begin(), ids.end()), torch::kInt64).unsqueeze(0);
  return m.embed(x, torch::ones_like(x));
}

// The corpus's texts tokenize to the same pieces under the new numbering (new id i is old id
// kept[i]) and embed exactly as before; new text still tokenizes without [UNK], into pieces that
// spell the same words; the word table keeps only the kept rows.
TEST(BertVocabulary, PrunedTokenizerRoundTripsTheCorpusAndKeepsTheEmbeddings) {
  const std::string skip = test::missing_teacher("minilm-l6");
  if (!skip.empty()) GTEST_SKIP() << skip;
  auto m = tiny_bert(tiny_bert_config());
  m->eval();
  const VocabularyCut cut = cut_vocabulary(*m, corpus_ids(*m), nullptr);
  const TextTokenizer& tok = cut.model->tokenizer();
  const std::vector<int32_t> base = m->tokenizer().wordpiece()->base_ids();
  EXPECT_EQ(tok.vocab_size(), static_cast<int64_t>(cut.kept.size()));
  EXPECT_GT(cut.kept.size(), base.size()) << "the corpus adds its words to the single characters";
  EXPECT_LT(cut.kept.size(), base.size() + 40);
  EXPECT_TRUE(std::includes(cut.kept.begin(), cut.kept.end(), base.begin(), base.end()));
  EXPECT_EQ(count_params(*m) - count_params(*cut.model), (30522 - static_cast<int64_t>(cut.kept.size())) * 32);
  auto& small = static_cast<TextModel&>(*cut.model);
  for (const auto& t : kCorpus) {
    const std::vector<int32_t> old_ids = m->tokenizer().encode(t), new_ids = tok.encode(t);
    std::vector<int32_t> back;
    for (int32_t id : new_ids) back.push_back(cut.kept.at(static_cast<size_t>(id)));
    EXPECT_EQ(back, old_ids) << t;
    EXPECT_TRUE(torch::equal(embed_one(small, new_ids), embed_one(*m, old_ids))) << t;
  }
  const text::WordPieceTokenizer& wp_old = *m->tokenizer().wordpiece();
  const text::WordPieceTokenizer& wp_new = *tok.wordpiece();
  for (const auto& t : kNewText) {
    std::string old_text, new_text;
    for (int32_t id : wp_old.encode(t, false)) old_text += wp_old.token(id) + " ";
    for (int32_t id : wp_new.encode(t, false)) {
      EXPECT_NE(id, wp_new.unk_id()) << t;
      new_text += wp_new.token(id) + " ";
    }
    const auto words = [](std::string s) {  // the pieces joined back into words
      for (size_t at; (at = s.find(" ##")) != std::string::npos;) s.erase(at, 3);
      return s;
    };
    EXPECT_EQ(words(new_text), words(old_text)) << t;
  }
  // Special tokens keep their meaning under their new ids.
  EXPECT_EQ(wp_new.token(wp_new.cls_id()), "[CLS]");
  EXPECT_EQ(wp_new.token(wp_new.pad_id()), "[PAD]");
  EXPECT_EQ(cut.tokenizer_json["padding"]["pad_id"].get<int32_t>(), wp_new.pad_id());
  EXPECT_EQ(cut.tokenizer_json["post_processor"]["special_tokens"]["[SEP]"]["ids"][0].get<int32_t>(), wp_new.sep_id());
  // Once only, and a bert's only.
  EXPECT_THROW(cut_vocabulary(small, corpus_ids(small), nullptr), UserError);
  auto llama = tiny_llama(tiny_config());
  try {
    cut_vocabulary(*llama, {1, 2, 3}, nullptr);
    FAIL() << "a llama keeps its vocabulary";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("prune.vocabulary"), std::string::npos) << e.what();
  }
}

// The pruned tokenizer.json is a Hugging Face file: the `tokenizers` library reads it and gives
// our ids, on the corpus and on new text.
TEST(BertVocabulary, HuggingFaceTokenizersReadsThePrunedFileAlike) {
  const std::string skip = test::missing_teacher("minilm-l6");
  if (!skip.empty()) GTEST_SKIP() << skip;
  const std::string py = test::setup_python(QD_SOURCE_DIR);
  if (test::run_command(py + " -c 'import tokenizers' >/dev/null 2>&1").code != 0)
    GTEST_SKIP() << "the tokenizers package is not installed for " << py << ": run scripts/setup.sh";
  auto m = tiny_bert(tiny_bert_config());
  const VocabularyCut cut = cut_vocabulary(*m, corpus_ids(*m), nullptr);
  test::TempDir dir;
  std::ofstream(dir.file("tokenizer.json")) << cut.tokenizer_json.dump();
  std::vector<std::string> texts = kCorpus;
  texts.insert(texts.end(), kNewText.begin(), kNewText.end());
  std::ofstream(dir.file("texts.json")) << nlohmann::json(texts).dump();
  const test::ProcResult p = test::run_command(
      py + " -c 'import json, sys; from tokenizers import Tokenizer; t = Tokenizer.from_file(sys.argv[1]); "
           "t.no_padding(); t.no_truncation(); print(json.dumps([t.encode(x).ids for x in json.load(open(sys.argv[2]))]))' " +
      test::quoted(dir.file("tokenizer.json")) + " " + test::quoted(dir.file("texts.json")) + " 2>&1");
  ASSERT_EQ(p.code, 0) << p.output;
  const nlohmann::json want = nlohmann::json::parse(p.output);
  ASSERT_EQ(want.size(), texts.size());
  for (size_t i = 0; i < texts.size(); ++i)
    EXPECT_EQ(cut.model->tokenizer().encode(texts[i]), want[i].get<std::vector<int32_t>>()) << texts[i];
}

}  // namespace
}  // namespace qd
