#include "export/text_export.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "common/progress.h"
#include "common/atomic_file.h"
#include "models/text_model.h"
#include "qat/ggml_quant.h"
#include "qat/module_qat.h"
#include "runtime/executor.h"

namespace qd {

namespace {

using rt::Attr;
using rt::DType;

std::vector<float> floats(const torch::Tensor& t) {
  const torch::Tensor c = t.detach().to(torch::kCPU, torch::kFloat32).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

// The layer's twin while it quantizes (QAT on for it), else null: the layer computes in float.
LayerQatImpl* active_twin(const std::shared_ptr<LayerQuantizer>& q) {
  auto* t = dynamic_cast<LayerQatImpl*>(q.get());
  return t && t->enabled() ? t : nullptr;
}

// node.weight (+ weight_scale) of the [rows, cols] weight `w` as `twin` computes with it.
void set_weight(rt::Node& node, const torch::Tensor& w, LayerQatImpl* twin, const std::string& where) {
  torch::NoGradGuard g;
  const int64_t rows = w.size(0), cols = w.size(1);
  if (!twin) {
    node.attrs["weight"] = Attr::of_tensor(DType::kF32, {rows, cols}, floats(w));
    return;
  }
  const QuantSpec& s = twin->weight_spec();
  torch::Tensor q, scale;  // int8 [rows, cols], float [rows, groups]
  if (s.format == WeightFormat::kGgml) {
    GgmlBlocks b = ggml_quantize(w, s.bits == 8 ? GgmlBlockType::kQ8_0 : GgmlBlockType::kQ4_0);
    q = b.q, scale = b.d;
  } else {
    QD_CHECK(twin->weight_quant, Error, "export: ", where, " has no weight quantizer");
    QD_CHECK(s.symmetric, UserError, "export: ", where, ": the integer runtime needs symmetric weights "
             "(qat.weight.symmetric: true)");
    const int64_t group = s.group_size > 0 ? s.group_size : cols;
    const torch::Tensor fq = twin->weight(w).to(torch::kFloat32);
    torch::Tensor sc = twin->weight_quant->effective_scale().to(torch::kCPU, torch::kFloat32);
    sc = sc.numel() == 1 ? sc.expand({rows, cols / group}).contiguous() : sc.reshape({rows, cols / group});
    q = torch::round(fq.reshape({rows, cols / group, group}) / sc.unsqueeze(-1)).reshape({rows, cols});
    QD_CHECK(q.abs().max().item<float>() <= 127.0f, Error, "export: ", where, ": a quantized weight is outside int8");
    q = q.to(torch::kInt8);
    scale = sc;
  }
  QD_CHECK(torch::isfinite(scale).all().item<bool>(), UserError, "export: ", where,
           ": a trained weight scale is not a finite number; the checkpoint is damaged");
  // The integers times their scales must be what the simulation multiplies by, bit for bit.
  const torch::Tensor deq = (q.to(torch::kFloat32).reshape({rows, scale.size(1), -1}) * scale.unsqueeze(-1)).reshape({rows, cols});
  QD_CHECK(torch::equal(deq, twin->weight(w).to(torch::kFloat32)), Error, "export: ", where,
           ": the exported integers do not reproduce the simulation's weights (a bug)");
  const torch::Tensor qc = q.contiguous(), sc = scale.contiguous();
  node.attrs["weight"] = Attr::of_tensor(DType::kI8, {rows, cols}, std::vector<int8_t>(qc.data_ptr<int8_t>(), qc.data_ptr<int8_t>() + qc.numel()));
  node.attrs["weight_scale"] = Attr::of_tensor(DType::kF32, {rows, scale.size(1)}, floats(sc));
}

// How the runtime quantizes the input of a layer that `twin` quantizes.
std::string input_mode(LayerQatImpl* twin, const std::string& where) {
  if (!twin) return "none";
  const QuantSpec& s = twin->input_spec();
  switch (s.dynamic) {
    case DynamicQuant::kPerToken:
      QD_CHECK(s.bits == 8, UserError, "export: ", where, ": per-token inputs of ", s.bits,
               " bits; the integer runtime quantizes inputs to 8 bits (qat.activation.bits: 8)");
      return "per_token";
    case DynamicQuant::kPerBlock:
      return "q8_0";
    case DynamicQuant::kNone:
      break;
  }
  throw UserError(concat("export: ", where, ": its input has a static per-tensor scale; transformer export needs inputs "
                         "quantized on the fly (qat.activation.dynamic: per_token, or per_block for llama.cpp)"));
}

// How the runtime keeps a cache that `twin` quantizes (runtime attention's kv_store).
std::string kv_store(LayerQatImpl* twin, const std::string& where) {
  if (!twin) return "f32";
  const QuantSpec& s = twin->input_spec();
  if (s.dynamic == DynamicQuant::kPerBlock) return "q8_0";
  QD_CHECK(s.dynamic == DynamicQuant::kPerToken && s.bits == 8, UserError, "export: ", where,
           ": the runtime keeps a KV cache in int8 per row (qat.kv_cache: per_token, 8 bits) or in Q8_0 blocks (per_block)");
  return "per_token";
}

class GraphBuilder {
 public:
  rt::Graph g;

  int32_t rows(const std::string& name, int64_t width) { return g.add_value({name, DType::kF32, {-1, width}}); }
  int32_t vector(const std::string& name, int64_t width) { return g.add_value({name, DType::kF32, {width}}); }

  // A Linear (two nodes once factored: a, then b with the bias). `vec`: the input is one vector.
  int32_t linear(LinearImpl& l, int32_t in, const std::string& name, bool vec = false) {
    if (l.factored()) return linear(*l.second, linear(*l.first, in, name + ".a", vec), name + ".b", vec);
    LayerQatImpl* twin = active_twin(l.quant);
    const int32_t out = vec ? vector(name, l.out_features()) : rows(name, l.out_features());
    rt::Node& n = g.add_node("linear", name, {in}, {out});
    set_weight(n, l.weight, twin, name);
    if (l.bias.defined()) n.attrs["bias"] = Attr::of_tensor(DType::kF32, {l.out_features()}, floats(l.bias));
    n.attrs["input_quant"] = Attr::of_string(input_mode(twin, name));
    return out;
  }
  int32_t layer_norm(const BertNormImpl& n, int32_t in, const std::string& name, int64_t width) {
    return norm("layer_norm", n.restricted(), n.weight, n.bias, n.eps(), in, name, width);
  }
  int32_t rms_norm(const RmsNormImpl& n, int32_t in, const std::string& name, int64_t width) {
    return norm("rms_norm", n.restricted(), n.weight, torch::Tensor(), n.eps(), in, name, width);
  }
  int32_t binary(const char* op, int32_t a, int32_t b, const std::string& name, int64_t width) {
    const int32_t out = rows(name, width);
    g.add_node(op, name, {a, b}, {out});
    return out;
  }
  // A norm over `width` features (bias: LayerNorm's, undefined for RMSNorm).
  int32_t norm(const char* op, bool restricted, const torch::Tensor& weight, const torch::Tensor& bias, double eps, int32_t in,
               const std::string& name, int64_t width) {
    QD_CHECK(!restricted, UserError, "export: ", name, " normalizes over a masked hidden size; export the "
             "physically pruned model (the run's pruned/ directory)");
    const int32_t out = rows(name, width);
    rt::Node& n = g.add_node(op, name, {in}, {out});
    n.attrs["weight"] = Attr::of_tensor(DType::kF32, {width}, floats(weight));
    if (bias.defined()) n.attrs["bias"] = Attr::of_tensor(DType::kF32, {width}, floats(bias));
    n.attrs["eps"] = Attr::of_float(static_cast<float>(eps));
    return out;
  }
  int32_t attention(int32_t q, int32_t k, int32_t v, const std::string& name, int64_t heads, int64_t kv_heads, int64_t head_dim,
                    bool causal, int64_t max_positions, double rope_theta) {
    const int32_t out = rows(name, heads * head_dim);
    rt::Node& n = g.add_node("attention", name, {q, k, v}, {out});
    n.attrs["heads"] = Attr::of_int(heads);
    n.attrs["kv_heads"] = Attr::of_int(kv_heads);
    n.attrs["head_dim"] = Attr::of_int(head_dim);
    n.attrs["causal"] = Attr::of_int(causal ? 1 : 0);
    n.attrs["max_positions"] = Attr::of_int(max_positions);
    if (rope_theta > 0) n.attrs["rope_theta"] = Attr::of_float(static_cast<float>(rope_theta));
    if (causal) n.attrs["kv_cache"] = Attr::of_int(1);
    return out;
  }
};

rt::Graph bert_graph(BertModel& m) {
  BertEncoderImpl& e = *m.encoder;
  const BertOptions& o = e.options();
  const int64_t h = o.hidden, hd = o.head_dim();
  GraphBuilder b;
  b.g.metadata["task"] = "sentence_embedding";
  const int32_t ids = b.g.add_value({"input_ids", DType::kI32, {-1}});
  b.g.inputs = {ids};
  const int64_t word_width = e.word->weight.size(1);
  int32_t x = b.rows("word", word_width);
  set_weight(b.g.add_node("embedding", "word", {ids}, {x}), e.word->weight, active_twin(e.word->quant), "word");
  if (e.word_proj) x = b.linear(*e.word_proj, x, "word_proj");
  {
    const int32_t out = b.rows("position", h);
    rt::Node& n = b.g.add_node("add_positions", "position", {x}, {out});
    set_weight(n, e.position->weight, active_twin(e.position->quant), "position");
    // Token type 0 throughout: its (quantized) row is a constant added after the positions.
    n.attrs["bias"] = Attr::of_tensor(DType::kF32, {h}, floats(e.token_type->effective_weight()[0]));
    x = out;
  }
  x = b.layer_norm(*e.embed_norm, x, "embed_norm", h);
  for (size_t i = 0; i < e.layers.size(); ++i) {
    BertLayerImpl& l = *e.layers[i];
    const std::string p = "layer" + std::to_string(i) + ".";
    const int32_t q = b.linear(*l.query, x, p + "query"), k = b.linear(*l.key, x, p + "key"), v = b.linear(*l.value, x, p + "value");
    const int32_t a = b.attention(q, k, v, p + "attention", o.heads, o.heads, hd, false, o.max_positions, 0.0);
    const int32_t y = b.layer_norm(*l.attn_norm, b.binary("add", x, b.linear(*l.attn_out, a, p + "attn_out"), p + "attn_residual", h),
                                   p + "attn_norm", h);
    const int32_t act = b.rows(p + "gelu", o.ffn);
    b.g.add_node("gelu", p + "gelu", {b.linear(*l.ffn_in, y, p + "ffn_in")}, {act});
    x = b.layer_norm(*l.ffn_norm, b.binary("add", y, b.linear(*l.ffn_out, act, p + "ffn_out"), p + "ffn_residual", h),
                     p + "ffn_norm", h);
  }
  int32_t pooled = b.vector("mean_pool", h);
  b.g.add_node("mean_pool", "mean_pool", {x}, {pooled});
  if (e.dense) pooled = b.linear(*e.dense, pooled, "dense", /*vec=*/true);
  const int32_t out = b.vector("embedding", e.embedding_dim());
  b.g.add_node("l2_normalize", "l2_normalize", {pooled}, {out});
  b.g.outputs = {out};
  const std::string& source = m.tokenizer().source();
  QD_CHECK(!source.empty(), UserError, "export: the model's tokenizer was built in memory; export a run whose "
           "tokenizer is a file (model.tokenizer or model.pretrained)");
  b.g.metadata["tokenizer.json"] = read_file(source);
  return std::move(b.g);
}

rt::Graph llama_graph(LlamaModel& m) {
  LlamaImpl& lm = *m.lm;
  const LlamaOptions& o = lm.options();
  const int64_t h = o.hidden, hd = o.head_dim();
  GraphBuilder b;
  b.g.metadata["task"] = "causal_lm";
  const int32_t ids = b.g.add_value({"input_ids", DType::kI32, {-1}});
  b.g.inputs = {ids};
  LayerQatImpl* embed_twin = active_twin(lm.embed->quant);
  int32_t x = b.rows("embed", h);
  set_weight(b.g.add_node("embedding", "embed", {ids}, {x}), lm.embed->weight, embed_twin, "embed");
  for (size_t i = 0; i < lm.layers.size(); ++i) {
    LlamaLayerImpl& l = *lm.layers[i];
    const std::string p = "layer" + std::to_string(i) + ".";
    // The KV cache as QAT simulates it (qat.kv_cache): keys and values stored quantized.
    const std::string kv = kv_store(active_twin(l.k_cache->quant), p + "k_cache");
    QD_CHECK(kv == kv_store(active_twin(l.v_cache->quant), p + "v_cache"), UserError, "export: ", p,
             "k_cache and v_cache are quantized differently; the runtime keeps both one way (set qat.kv_cache for both)");
    const int32_t n1 = b.rms_norm(*l.attn_norm, x, p + "attn_norm", h);
    const int32_t q = b.linear(*l.q, n1, p + "q"), k = b.linear(*l.k, n1, p + "k"), v = b.linear(*l.v, n1, p + "v");
    const int32_t a = b.attention(q, k, v, p + "attention", o.heads, o.kv_heads, hd, true, o.max_positions, o.rope_theta);
    if (kv != "f32") b.g.nodes.back().attrs["kv_store"] = Attr::of_string(kv);
    const int32_t y = b.binary("add", x, b.linear(*l.out, a, p + "out"), p + "attn_residual", h);
    const int32_t n2 = b.rms_norm(*l.ffn_norm, y, p + "ffn_norm", h);
    const int32_t gated = b.binary("silu_mul", b.linear(*l.gate, n2, p + "gate"), b.linear(*l.up, n2, p + "up"), p + "silu_mul", o.ffn);
    x = b.binary("add", y, b.linear(*l.down, gated, p + "down"), p + "ffn_residual", h);
  }
  x = b.rms_norm(*lm.norm, x, "norm", h);
  int32_t logits;
  if (lm.lm_head) {
    logits = b.linear(*lm.lm_head, x, "lm_head");
  } else {
    // The tied head: the embedding table as the head's weight, its input as the embedding's rule
    // quantizes it (Embedding::head_input).
    logits = b.rows("lm_head", o.vocab);
    rt::Node& n = b.g.add_node("linear", "lm_head", {x}, {logits});
    set_weight(n, lm.embed->weight, embed_twin, "embed (tied head)");
    n.attrs["input_quant"] = Attr::of_string(input_mode(embed_twin, "embed (tied head)"));
  }
  b.g.outputs = {logits};
  const text::BpeTokenizer* bpe = m.tokenizer().bpe();
  QD_CHECK(bpe != nullptr, Error, "export: a llama without a BPE tokenizer");
  b.g.metadata["tokenizer.bpe"] = bpe->to_json().dump();
  return std::move(b.g);
}

}  // namespace

rt::Graph build_text_graph(TextModel& model) {
  torch::NoGradGuard no_grad;
  model.eval();
  rt::Graph g;
  if (auto* bert = dynamic_cast<BertModel*>(&model)) g = bert_graph(*bert);
  else if (auto* llama = dynamic_cast<LlamaModel*>(&model)) g = llama_graph(*llama);
  else throw UserError(concat("export: a ", model.kind(), " model has no transformer export"));
  g.metadata["max_positions"] = std::to_string(model.max_positions());
  const std::string err = rt::validate(g);
  QD_CHECK(err.empty(), Error, "export: the graph is inconsistent (a bug): ", err);
  return g;
}

namespace {

// The runtime's output for one sequence from a fresh start: [T, vocab] logits or the [D] embedding.
const rt::Buffer& run_sequence(rt::Executor& ex, const std::vector<int32_t>& ids) {
  ex.reset();
  rt::Buffer& in = ex.input(0);
  in.resize({static_cast<int64_t>(ids.size())});
  std::copy(ids.begin(), ids.end(), in.data<int32_t>());
  ex.run();
  return ex.output(0);
}

}  // namespace

nlohmann::json verify_text_graph(TextModel& model, const rt::Graph& graph, const std::vector<std::vector<int32_t>>& inputs,
                                 bool progress, std::vector<float>* simulation) {
  torch::NoGradGuard no_grad;
  model.eval();
  QD_CHECK(!inputs.empty(), UserError, "export: no held-out text to verify on");
  rt::Executor ex(graph);
  ProgressBar bar("verify", static_cast<int64_t>(inputs.size()), progress, 0);
  const auto tensor = [](const std::vector<int32_t>& ids) {
    return torch::tensor(std::vector<int64_t>(ids.begin(), ids.end()), torch::kLong).view({1, -1});
  };
  nlohmann::json j = {{"samples", inputs.size()}};
  if (!model.causal()) {
    // The simulation in padded batches (each token's quantization is its own, the pooling masked):
    // a QAT forward re-quantizes every weight, which dominates at batch 1.
    std::vector<torch::Tensor> sims;
    for (size_t b0 = 0; b0 < inputs.size(); b0 += 32) {
      const size_t b1 = std::min(inputs.size(), b0 + 32);
      size_t longest = 0;
      for (size_t i = b0; i < b1; ++i) longest = std::max(longest, inputs[i].size());
      torch::Tensor ids = torch::zeros({static_cast<int64_t>(b1 - b0), static_cast<int64_t>(longest)}, torch::kLong);
      torch::Tensor mask = torch::zeros_like(ids);
      for (size_t i = b0; i < b1; ++i) {
        const int64_t n = static_cast<int64_t>(inputs[i].size());
        ids[static_cast<int64_t>(i - b0)].slice(0, 0, n).copy_(tensor(inputs[i])[0]);
        mask[static_cast<int64_t>(i - b0)].slice(0, 0, n).fill_(1);
      }
      const torch::Tensor e = model.embed(ids, mask).to(torch::kFloat64);
      for (int64_t r = 0; r < e.size(0); ++r) sims.push_back(e[r]);
    }
    if (simulation) {
      const torch::Tensor all = torch::stack(sims).to(torch::kFloat32).contiguous();
      simulation->assign(all.data_ptr<float>(), all.data_ptr<float>() + all.numel());
    }
    double min_cos = 1.0, sum_cos = 0.0;
    int64_t below = 0, tokens = 0;
    for (size_t i = 0; i < inputs.size(); ++i) {
      const torch::Tensor& sim = sims[i];
      const rt::Buffer& out = run_sequence(ex, inputs[i]);
      const torch::Tensor got = torch::from_blob(const_cast<float*>(out.data<float>()), {out.numel()}, torch::kFloat32).to(torch::kFloat64);
      const double cos = (sim * got).sum().item<double>() / std::max(1e-30, sim.norm().item<double>() * got.norm().item<double>());
      min_cos = std::min(min_cos, cos), sum_cos += cos, below += cos < 0.999;
      tokens += static_cast<int64_t>(inputs[i].size());
      bar.update(static_cast<int64_t>(i) + 1, tokens, "");
    }
    bar.finish("");
    j.update({{"tokens", tokens}, {"min_cosine", min_cos}, {"mean_cosine", sum_cos / static_cast<double>(inputs.size())},
              {"sentences_below_0_999", below}});
    return j;
  }
  int64_t positions = 0, agree = 0;
  double nll_rt = 0.0, nll_sim = 0.0, max_diff = 0.0;
  torch::Tensor batch_sim;  // the simulation of the sequences of equal length from `batch_at` on, batched
  size_t batch_at = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const std::vector<int32_t>& seq = inputs[i];
    const int64_t t = static_cast<int64_t>(seq.size());
    QD_CHECK(t >= 2, UserError, "export: a held-out sequence of ", t, " tokens; verification needs at least 2");
    const torch::Tensor ids = tensor(seq);
    if (!batch_sim.defined() || i >= batch_at + static_cast<size_t>(batch_sim.size(0)) || batch_sim.size(1) != t) {
      std::vector<torch::Tensor> rows;
      for (size_t r = i; r < inputs.size() && r < i + 4 && inputs[r].size() == seq.size(); ++r) rows.push_back(tensor(inputs[r]));
      const torch::Tensor b = torch::cat(rows, 0);
      batch_sim = model.forward_text(b, torch::ones_like(b)).to(torch::kFloat32);
      batch_at = i;
    }
    const torch::Tensor sim = batch_sim[static_cast<int64_t>(i - batch_at)].contiguous();  // [T, V]
    const rt::Buffer& out = run_sequence(ex, seq);
    const torch::Tensor got = torch::from_blob(const_cast<float*>(out.data<float>()), {out.shape[0], out.shape[1]}, torch::kFloat32).clone();
    agree += (sim.argmax(-1) == got.argmax(-1)).sum().item<int64_t>();
    const torch::Tensor next = ids[0].slice(0, 1);
    const auto nll = [&](const torch::Tensor& logits) {
      return torch::nn::functional::cross_entropy(logits.slice(0, 0, t - 1).to(torch::kFloat64), next,
                                                  torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
          .item<double>();
    };
    nll_rt += nll(got), nll_sim += nll(sim);
    positions += t;
    if (i == 0) {
      // The KV-cache path: the same sequence in chunks of 1, 2, 3, ... tokens.
      ex.reset();
      std::vector<float> chunked;
      for (int64_t at = 0, step = 1; at < t; at += step, ++step) {
        const int64_t n = std::min(step, t - at);
        rt::Buffer& in = ex.input(0);
        in.resize({n});
        std::copy(seq.begin() + at, seq.begin() + at + n, in.data<int32_t>());
        ex.run();
        chunked.insert(chunked.end(), ex.output(0).data<float>(), ex.output(0).data<float>() + ex.output(0).numel());
      }
      const torch::Tensor c = torch::from_blob(chunked.data(), got.sizes(), torch::kFloat32);
      j["kv_cache_max_logit_diff"] = (c - got).abs().max().item<double>();
      j["kv_cache_argmax_agreement"] = (c.argmax(-1) == got.argmax(-1)).to(torch::kFloat64).mean().item<double>();
    }
    max_diff = std::max(max_diff, (sim - got).abs().max().item<double>());
    bar.update(static_cast<int64_t>(i) + 1, positions, "");
  }
  bar.finish("");
  const double predicted = static_cast<double>(positions - static_cast<int64_t>(inputs.size()));
  const double ppl_rt = std::exp(nll_rt / predicted), ppl_sim = std::exp(nll_sim / predicted);
  j.update({{"tokens", positions}, {"argmax_agreement", static_cast<double>(agree) / static_cast<double>(positions)},
            {"runtime_perplexity", ppl_rt}, {"simulation_perplexity", ppl_sim},
            {"perplexity_ratio", ppl_rt / ppl_sim}, {"max_logit_diff", max_diff}});
  return j;
}

}  // namespace qd
