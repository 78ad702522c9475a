// Export of the transformer students (export/text_export.h): the op graph of a tiny QAT bert and
// llama against the training simulation (every weight grid and input mode the configs use, a
// factored layer, the tied head), the KV-cache path against the whole sequence, the `.qdm` file
// round trip with its tokenizer, and clear refusals of what the runtime cannot express.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "common/atomic_file.h"
#include "export/gguf_export.h"
#include "export/text_export.h"
#include "formats/gguf.h"
#include "models/lowrank.h"
#include "models/registry.h"
#include "models/text_model.h"
#include "qat/module_qat.h"
#include "runtime/executor.h"
#include "runtime/qdm.h"
#include "tests/export/ort_util.h"
#include "tests/test_util.h"
#include "text/bpe.h"
#include "trainer/experiment_config.h"

namespace qd {
namespace {

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

ExperimentConfig bert_config(const std::string& qat) {
  return parse_experiment_config(
      "experiment: {name: t}\ntask: {name: sentence_embedding, teacher: minilm-l6}\ndata: {dataset: wordnet}\n"
      "model: {name: bert, tokenizer: minilm-l6, hidden: 64, layers: 2, heads: 4, ffn: 96, max_positions: 32, "
      "embedding_dim: 48}\nqat:\n" + qat,
      "b.yaml");
}

ExperimentConfig llama_config(const std::string& qat) {
  return parse_experiment_config(
      "experiment: {name: t}\ntask: {name: causal_lm}\ndata: {dataset: fortunes}\n"
      "model: {name: llama, tokenizer: smollm2-135m, hidden: 64, layers: 2, heads: 4, kv_heads: 2, ffn: 96, "
      "max_positions: 64}\nqat:\n" + qat,
      "l.yaml");
}

// The model of `c` with non-trivial norms and biases, QAT attached and on (scales observed once).
template <class M>
std::shared_ptr<M> quantized(const ExperimentConfig& c, const std::function<void(M&)>& before_qat = {}) {
  torch::manual_seed(5);
  auto m = std::dynamic_pointer_cast<M>(make_model(c.model, InputSpec{}));
  {
    torch::NoGradGuard g;
    for (auto& p : m->named_parameters())
      if (p.key().find("norm") != std::string::npos) p.value().uniform_(0.5, 1.5);
      else if (p.key().find("bias") != std::string::npos) p.value().uniform_(-0.3, 0.3);
  }
  if (before_qat) before_qat(*m);
  attach_qat(*m, c.qat);
  for (auto& t : layer_qats(*m)) {
    t->set_enabled(true);
    if (t->weight_quant) t->weight_quant->set_enabled(true), t->weight_quant->set_observing(true);
  }
  m->eval();
  return m;
}

std::vector<int32_t> ids_of(const TextModel& m, const std::string& text, size_t max = 60) {
  std::vector<int32_t> ids = m.tokenizer().encode(text);
  if (ids.size() > max) ids.resize(max);
  return ids;
}

const char* const kTexts[] = {"a bank is a financial institution that accepts deposits",
                              "the quick brown fox jumps over the lazy dog",
                              "to be or not to be, that is the question: whether 'tis nobler in the mind to suffer",
                              "x"};

TEST(TextExport, BertGraphComputesTheSimulationsEmbedding) {
  auto m = quantized<BertModel>(bert_config("  enabled: true\n  weight: {bits: 8, per_channel: true}\n"
                                            "  activation: {bits: 8, dynamic: per_token}\n"));
  const rt::Graph g = build_text_graph(*m);
  EXPECT_EQ(g.metadata.at("task"), "sentence_embedding");
  EXPECT_TRUE(contains(g.metadata.at("tokenizer.json"), "WordPiece"));
  // Every linear reads per-token int8 inputs against int8 rows; the tables are int8 rows too.
  int64_t linears = 0;
  for (const rt::Node& n : g.nodes) {
    if (n.op == "linear") {
      ++linears;
      EXPECT_EQ(n.at("input_quant").s, "per_token") << n.name;
      EXPECT_EQ(n.at("weight").dtype, rt::DType::kI8) << n.name;
      EXPECT_EQ(n.at("weight_scale").shape[1], 1) << n.name << ": one scale per row";
    }
    if (n.op == "embedding" || n.op == "add_positions") {
      EXPECT_EQ(n.at("weight").dtype, rt::DType::kI8) << n.name;
    }
  }
  EXPECT_EQ(linears, 2 * 6 + 1) << "six per layer and the dense projection";
  std::vector<std::vector<int32_t>> inputs;
  for (const char* t : kTexts) inputs.push_back(ids_of(*m, t, 32));
  const nlohmann::json v = verify_text_graph(*m, g, inputs, false);
  EXPECT_EQ(v["samples"].get<int64_t>(), 4);
  EXPECT_GE(v["min_cosine"].get<double>(), 0.9999) << v.dump();
  EXPECT_EQ(v["sentences_below_0_999"].get<int64_t>(), 0);
}

// The same check made to fail: a graph whose weights are off by one LSB somewhere is caught.
TEST(TextExport, VerificationNoticesAWrongWeight) {
  auto m = quantized<BertModel>(bert_config("  enabled: true\n  activation: {dynamic: per_token}\n"));
  rt::Graph g = build_text_graph(*m);
  for (rt::Node& n : g.nodes)
    if (n.name == "layer0.ffn_out" || n.name == "layer1.ffn_out") {
      // The FFN's output negated (its scales' sign flipped): a different model, as a wrong grid would be.
      rt::Attr& s = n.attrs.at("weight_scale");
      for (size_t i = 0; i < s.data.size() / 4; ++i) reinterpret_cast<float*>(s.data.data())[i] *= -1.0f;
    }
  const nlohmann::json v = verify_text_graph(*m, g, {ids_of(*m, kTexts[0]), ids_of(*m, kTexts[2])}, false);
  EXPECT_LT(v["min_cosine"].get<double>(), 0.999) << v.dump();
}

TEST(TextExport, LlamaGraphComputesTheSimulationsLogitsAndItsKvCacheAgrees) {
  // Q8_0 weights and Q8_0 activation blocks (llama.cpp's grid), Q4_0 for one projection, the tied
  // head quantized as the embedding's rule says, and a factored (low-rank) projection.
  auto m = quantized<LlamaModel>(
      llama_config("  enabled: true\n  weight: {bits: 8, group_size: 32, format: ggml}\n  activation: {dynamic: per_block}\n"
                   "  layers:\n    \"lm.layer1.up\": {weight: {bits: 4}}\n    \"lm.embed\": {weight: {bits: 8}}\n"),
      [](LlamaModel& lm) {
        LinearImpl& gate = *lm.lm->layers[0]->gate;
        torch::NoGradGuard g;
        const auto svd = torch::linalg_svd(gate.weight, false);
        const torch::Tensor u = std::get<0>(svd).slice(1, 0, 32), s = std::get<1>(svd).slice(0, 0, 32), vh = std::get<2>(svd).slice(0, 0, 32);
        gate.factorize(vh, u * s);
      });
  const rt::Graph g = build_text_graph(*m);
  EXPECT_EQ(g.metadata.at("task"), "causal_lm");
  std::map<std::string, const rt::Node*> by_name;
  for (const rt::Node& n : g.nodes) by_name[n.name] = &n;
  ASSERT_TRUE(by_name.count("layer0.gate.a") && by_name.count("layer0.gate.b")) << "the factored layer is two linears";
  EXPECT_EQ(by_name.at("layer0.q")->at("weight_scale").shape, (rt::Shape{64, 2})) << "Q8_0: a scale per block of 32";
  EXPECT_EQ(by_name.at("layer0.q")->at("input_quant").s, "q8_0");
  const rt::Attr& up = by_name.at("layer1.up")->at("weight");
  for (int64_t i = 0; i < up.numel(); ++i) ASSERT_TRUE(up.as<int8_t>()[i] >= -8 && up.as<int8_t>()[i] <= 7) << "Q4_0 values";
  EXPECT_EQ(by_name.at("lm_head")->at("weight").shape, (rt::Shape{m->lm->options().vocab, 64})) << "the tied table";
  // The tokenizer travels with the graph and tokenizes as the model's own.
  const text::BpeTokenizer tok = text::BpeTokenizer::from_json(nlohmann::json::parse(g.metadata.at("tokenizer.bpe")), "g");
  EXPECT_EQ(tok.encode(kTexts[2], false, false), m->tokenizer().bpe()->encode(kTexts[2], false, false));

  std::vector<std::vector<int32_t>> inputs;
  for (const char* t : kTexts)
    if (ids_of(*m, t).size() >= 2) inputs.push_back(ids_of(*m, t));
  const nlohmann::json v = verify_text_graph(*m, g, inputs, false);
  EXPECT_GE(v["argmax_agreement"].get<double>(), 0.97) << v.dump();
  EXPECT_NEAR(v["perplexity_ratio"].get<double>(), 1.0, 0.005) << v.dump();
  EXPECT_LT(v["max_logit_diff"].get<double>(), 0.05) << v.dump();
  EXPECT_LT(v["kv_cache_max_logit_diff"].get<double>(), 1e-4) << v.dump();
  EXPECT_EQ(v["kv_cache_argmax_agreement"].get<double>(), 1.0) << v.dump();

  // The file round trip keeps everything: the same logits from the loaded graph.
  test::TempDir dir;
  rt::save_graph(g, dir.file("s.qdm"));
  rt::Executor a(g), b(rt::load_graph(dir.file("s.qdm")));
  for (rt::Executor* e : {&a, &b}) {
    e->input(0).resize({static_cast<int64_t>(inputs[0].size())});
    std::copy(inputs[0].begin(), inputs[0].end(), e->input(0).data<int32_t>());
    e->run();
  }
  EXPECT_EQ(a.output(0).bytes, b.output(0).bytes);
  EXPECT_EQ(rt::load_graph(dir.file("s.qdm")).metadata, g.metadata);
}

// qat.kv_cache: the runtime keeps keys and values as the simulation rounds them (Q8_0 blocks of a
// head's row, or int8 per row), and the cached path still equals the whole sequence.
TEST(TextExport, QuantizedKvCacheIsKeptAsTheSimulationRoundsIt) {
  for (const char* mode : {"per_block", "per_token"}) {
    const ExperimentConfig c = parse_experiment_config(
        std::string("experiment: {name: t}\ntask: {name: causal_lm}\ndata: {dataset: fortunes}\n"
                    "model: {name: llama, tokenizer: smollm2-135m, hidden: 64, layers: 2, heads: 2, kv_heads: 1, ffn: 96, "
                    "max_positions: 64}\nqat:\n  enabled: true\n  weight: {bits: 8, group_size: 32, format: ggml}\n"
                    "  activation: {dynamic: per_block}\n  kv_cache: ") + mode + "\n",
        "kv.yaml");
    auto m = quantized<LlamaModel>(c);
    const rt::Graph g = build_text_graph(*m);
    int64_t stores = 0;
    for (const rt::Node& n : g.nodes)
      if (n.op == "attention") stores += n.at("kv_store").s == (std::string(mode) == "per_block" ? "q8_0" : "per_token");
    EXPECT_EQ(stores, 2) << mode;
    std::vector<std::vector<int32_t>> inputs;
    for (const char* t : kTexts)
      if (ids_of(*m, t).size() >= 2) inputs.push_back(ids_of(*m, t));
    const nlohmann::json v = verify_text_graph(*m, g, inputs, false);
    EXPECT_GE(v["argmax_agreement"].get<double>(), 0.97) << mode << " " << v.dump();
    EXPECT_NEAR(v["perplexity_ratio"].get<double>(), 1.0, 0.005) << mode << " " << v.dump();
    EXPECT_LT(v["kv_cache_max_logit_diff"].get<double>(), 1e-4) << mode << " " << v.dump();
  }
}

test::ProcResult run_tool(const std::string& args) {
  return test::run_command(std::string(QD_BINARY_DIR) + "/qdistill-run " + args);
}

// qdistill-run's text modes on exported graphs: --embed prints what the executor computes, one
// line per input line; --prompt generates greedily with the KV cache what a full recomputation
// picks; bad input is one line and exit 2.
TEST(TextExport, QdistillRunEmbedsAndGeneratesFromTheFile) {
  test::TempDir dir;
  auto bert = quantized<BertModel>(bert_config("  enabled: true\n  activation: {dynamic: per_token}\n"));
  const rt::Graph bg = build_text_graph(*bert);
  rt::save_graph(bg, dir.file("bert.qdm"));
  {
    std::ofstream f(dir.file("s.txt"));
    f << kTexts[0] << "\n" << kTexts[1] << "\r\n\n" << kTexts[3] << "\n";
  }
  test::ProcResult r = run_tool(dir.file("bert.qdm") + " --embed " + dir.file("s.txt") + " 2>&1");
  ASSERT_EQ(r.code, 0) << r.output;
  std::istringstream lines(r.output);
  rt::Executor ex(bg);
  const std::vector<std::string> texts = {kTexts[0], kTexts[1], "", kTexts[3]};
  for (const std::string& t : texts) {
    std::string line;
    ASSERT_TRUE(std::getline(lines, line)) << "one line per input line";
    std::istringstream values(line);
    const std::vector<int32_t> ids = bert->tokenizer().encode(t);
    ex.input(0).resize({static_cast<int64_t>(ids.size())});
    std::copy(ids.begin(), ids.end(), ex.input(0).data<int32_t>());
    ex.run();
    int64_t n = 0;
    for (float v; values >> v; ++n) ASSERT_EQ(v, ex.output(0).data<float>()[n]) << t << " value " << n;
    EXPECT_EQ(n, 48) << "the dense projection's width";
  }
  r = run_tool(dir.file("bert.qdm") + " --embed " + dir.file("s.txt") + " --bench --repeat 2 --json 2>&1");
  ASSERT_EQ(r.code, 0) << r.output;
  const nlohmann::json b = nlohmann::json::parse(r.output);
  EXPECT_EQ(b["sentences"].get<int64_t>(), 4);
  EXPECT_EQ(b["runs"].get<int64_t>(), 8);

  auto llama = quantized<LlamaModel>(llama_config("  enabled: true\n  weight: {bits: 8, group_size: 32, format: ggml}\n"
                                                  "  activation: {dynamic: per_block}\n"));
  const rt::Graph lg = build_text_graph(*llama);
  rt::save_graph(lg, dir.file("llama.qdm"));
  r = run_tool(dir.file("llama.qdm") + " --prompt " + test::quoted(kTexts[1]) + " --max-tokens 6 --json 2>/dev/null");
  ASSERT_EQ(r.code, 0) << r.output;
  const nlohmann::json j = nlohmann::json::parse(r.output);
  const std::vector<int32_t> prompt = llama->tokenizer().bpe()->encode(kTexts[1], true, true);
  EXPECT_EQ(j["prompt_ids"].get<std::vector<int32_t>>(), prompt);
  // Greedy by recomputing the whole sequence each step, no cache.
  std::vector<int32_t> seq = prompt, want;
  rt::Executor full(lg);
  for (int i = 0; i < 6; ++i) {
    full.reset();
    full.input(0).resize({static_cast<int64_t>(seq.size())});
    std::copy(seq.begin(), seq.end(), full.input(0).data<int32_t>());
    full.run();
    const rt::Buffer& lo = full.output(0);
    const float* last = lo.data<float>() + (lo.shape[0] - 1) * lo.shape[1];
    const int32_t next = static_cast<int32_t>(std::max_element(last, last + lo.shape[1]) - last);
    want.push_back(next), seq.push_back(next);
    if (next == llama->tokenizer().eos_id()) break;
  }
  EXPECT_EQ(j["generated_ids"].get<std::vector<int32_t>>(), want);
  EXPECT_EQ(j["text"].get<std::string>(), llama->tokenizer().bpe()->decode(want));
  EXPECT_GT(j["generation_tokens_per_s"].get<double>(), 0.0);
  // Sampling is reproducible by seed.
  const std::string sample = dir.file("llama.qdm") + " --prompt hello --max-tokens 5 --top-k 20 --top-p 0.9 --temperature 1.5 --json 2>/dev/null";
  const auto sampled = [&](int seed) {
    const test::ProcResult p = run_tool(sample + " --seed " + std::to_string(seed));
    EXPECT_EQ(p.code, 0) << p.output;
    return nlohmann::json::parse(p.output)["generated_ids"].get<std::vector<int32_t>>();
  };
  EXPECT_EQ(sampled(3), sampled(3));
  // Benchmark controls: the prompt cut to N tokens, generation past end-of-text.
  r = run_tool(dir.file("llama.qdm") + " --prompt " + test::quoted(kTexts[2]) +
               " --max-prompt-tokens 3 --max-tokens 7 --ignore-eos --json 2>/dev/null");
  ASSERT_EQ(r.code, 0) << r.output;
  const nlohmann::json cut = nlohmann::json::parse(r.output);
  EXPECT_EQ(cut["prompt_tokens"].get<int64_t>(), 3);
  EXPECT_EQ(cut["generated_tokens"].get<int64_t>(), 7);
  EXPECT_GT(cut["peak_rss_mb"].get<double>(), 0.0);

  // Wrong mode for the model, no mode, a missing file: one line, exit 2.
  r = run_tool(dir.file("llama.qdm") + " --embed " + dir.file("s.txt") + " 2>&1");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "is a causal_lm model; --embed needs a sentence_embedding model")) << r.output;
  r = run_tool(dir.file("bert.qdm") + " 2>&1");
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(contains(r.output, "exactly one of --idx")) << r.output;
  r = run_tool(dir.file("bert.qdm") + " --embed " + dir.file("missing.txt") + " 2>&1");
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(contains(r.output, "missing.txt: cannot read")) << r.output;
}

// The graph's weight of `n` dequantized, row r: q * scale per block (or the float row).
std::vector<float> graph_row(const rt::Node& n, int64_t r) {
  const rt::Attr& w = n.at("weight");
  const int64_t cols = w.shape[1];
  std::vector<float> out(static_cast<size_t>(cols));
  for (int64_t j = 0; j < cols; ++j) {
    if (w.dtype == rt::DType::kF32) {
      out[static_cast<size_t>(j)] = w.as<float>()[r * cols + j];
    } else {
      const rt::Attr& s = n.at("weight_scale");
      const int64_t groups = s.shape[1];
      out[static_cast<size_t>(j)] = static_cast<float>(w.as<int8_t>()[r * cols + j]) * s.as<float>()[r * groups + j / (cols / groups)];
    }
  }
  return out;
}

// The llama student's GGUF holds the runtime's weights exactly (Q8_0 and Q4_0 blocks, Q and K rows
// in llama.cpp's rotary order, the tied head left out), its hyper-parameters and tokenizer; the
// gguf package reads the same values; llama.cpp (llama-cpp-python) computes the runtime's logits.
TEST(TextExport, LlamaGgufHoldsTheRuntimesWeightsAndLlamaCppAgrees) {
  auto m = quantized<LlamaModel>(
      llama_config("  enabled: true\n  weight: {bits: 8, group_size: 32, format: ggml}\n  activation: {dynamic: per_block}\n"
                   "  layers:\n    \"lm.layer1.up\": {weight: {bits: 4}}\n    \"lm.embed\": {weight: {bits: 8}}\n"));
  const rt::Graph g = build_text_graph(*m);
  test::TempDir dir;
  const std::string path = dir.file("student.gguf");
  gguf_from_graph(g, "tiny").write(path);
  const fmt::GgufFile f(path);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get_int("llama.block_count"), 2);
  EXPECT_EQ(f.get_int("llama.attention.head_count"), 4);
  EXPECT_EQ(f.get_int("llama.attention.head_count_kv"), 2);
  EXPECT_EQ(f.get_int("general.file_type"), 7) << "mostly Q8_0";
  EXPECT_EQ(f.find("output.weight"), nullptr) << "the tied head is token_embd";
  EXPECT_EQ(f.at("token_embd.weight").type, fmt::GgmlType::kQ8_0);
  EXPECT_EQ(f.at("blk.1.ffn_up.weight").type, fmt::GgmlType::kQ4_0);
  EXPECT_EQ(f.at("blk.0.attn_norm.weight").type, fmt::GgmlType::kF32);
  std::map<std::string, const rt::Node*> by_name;
  for (const rt::Node& n : g.nodes) by_name[n.name] = &n;
  const int64_t hd = 16;
  const std::vector<std::pair<std::string, std::string>> pairs = {
      {"token_embd.weight", "embed"}, {"blk.0.attn_q.weight", "layer0.q"}, {"blk.0.attn_k.weight", "layer0.k"},
      {"blk.1.attn_v.weight", "layer1.v"}, {"blk.1.attn_output.weight", "layer1.out"}, {"blk.0.ffn_gate.weight", "layer0.gate"},
      {"blk.1.ffn_up.weight", "layer1.up"}, {"blk.1.ffn_down.weight", "layer1.down"}, {"output_norm.weight", "norm"}};
  for (const auto& [tensor, name] : pairs) {
    const std::vector<float> v = f.dequantize(f.at(tensor));
    const rt::Node& n = *by_name.at(name);
    const int64_t rows = n.op == "rms_norm" ? 1 : n.at("weight").shape[0], cols = n.at("weight").numel() / rows;
    ASSERT_EQ(static_cast<int64_t>(v.size()), rows * cols) << tensor;
    const bool rotary = name.find(".q") != std::string::npos || name.find(".k") != std::string::npos;
    for (int64_t r = 0; r < rows; ++r) {
      // GGUF row h*hd + 2i + j is the graph's row h*hd + j*hd/2 + i for Q and K.
      const int64_t src = rotary ? (r / hd) * hd + (r % 2) * (hd / 2) + (r % hd) / 2 : r;
      const std::vector<float> want = n.op == "rms_norm" ? std::vector<float>(n.at("weight").as<float>(), n.at("weight").as<float>() + cols)
                                                          : graph_row(n, src);
      for (int64_t j = 0; j < cols; ++j)
        ASSERT_EQ(v[static_cast<size_t>(r * cols + j)], want[static_cast<size_t>(j)]) << tensor << " row " << r << " col " << j;
    }
  }
  const text::BpeTokenizer tok = text::BpeTokenizer::from_gguf(f);
  EXPECT_EQ(tok.encode(kTexts[2], false, false), m->tokenizer().bpe()->encode(kTexts[2], false, false));

  // The peers: the gguf package, and llama.cpp when llama-cpp-python is installed.
  const std::string py = test::setup_python(QD_SOURCE_DIR);
  if (test::run_command(py + " -c 'import gguf, numpy' >/dev/null 2>&1").code != 0)
    GTEST_SKIP() << "the gguf package is not installed for " << py << ": run scripts/setup.sh";
  std::vector<int32_t> ids = m->tokenizer().bpe()->encode(kTexts[2], false, true);
  std::string id_list;
  for (int32_t id : ids) id_list += (id_list.empty() ? "" : ",") + std::to_string(id);
  const test::ProcResult r = test::run_command(py + " " + QD_SOURCE_DIR + "/tests/export/gguf_check.py " + path + " --llama " +
                                               id_list + " " + dir.file("llama.f32") + " 2>&1");
  ASSERT_EQ(r.code, 0) << r.output;
  // The JSON is the last line (llama.cpp may log before it).
  std::string last = r.output;
  while (!last.empty() && last.back() == '\n') last.pop_back();
  last = last.substr(last.rfind('\n') + 1);
  const nlohmann::json j = nlohmann::json::parse(last, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.output;
  EXPECT_EQ(j["metadata"]["tokens"].get<int64_t>(), static_cast<int64_t>(tok.vocab_size()));
  for (const fmt::GgufTensor& t : f.tensors()) {
    const std::vector<float> v = f.dequantize(t);
    double sum = 0, sq = 0;
    for (float x : v) sum += x, sq += double{x} * x;
    const nlohmann::json& p = j["tensors"][t.name];
    EXPECT_EQ(p["type"].get<std::string>(), fmt::ggml_type_name(t.type)) << t.name;
    EXPECT_EQ(p["shape"].get<std::vector<int64_t>>(), t.shape()) << t.name;
    EXPECT_NEAR(p["sum"].get<double>(), sum, 1e-9 * (1 + sq)) << t.name;
    EXPECT_NEAR(p["sum_sq"].get<double>(), sq, 1e-9 * (1 + sq)) << t.name;
  }
  if (!j["llama"].get<bool>()) {
    std::printf("[   INFO   ] llama.cpp's logits are not compared: %s\n", j.value("llama_skipped", std::string("?")).c_str());
    return;
  }
  rt::Executor ex(g);
  ex.input(0).resize({static_cast<int64_t>(ids.size())});
  std::copy(ids.begin(), ids.end(), ex.input(0).data<int32_t>());
  ex.run();
  const rt::Buffer& ours = ex.output(0);
  const std::string theirs_bytes = read_file(dir.file("llama.f32"));
  ASSERT_EQ(theirs_bytes.size(), static_cast<size_t>(ours.numel()) * 4);
  const float* theirs = reinterpret_cast<const float*>(theirs_bytes.data());
  const int64_t t = ours.shape[0], v = ours.shape[1];
  int64_t agree = 0;
  double max_diff = 0, spread = 0;
  for (int64_t p = 0; p < t; ++p) {
    const float* a = ours.data<float>() + p * v;
    const float* b = theirs + p * v;
    agree += std::max_element(a, a + v) - a == std::max_element(b, b + v) - b;
    for (int64_t k = 0; k < v; ++k) max_diff = std::max(max_diff, std::fabs(double{a[k]} - b[k])), spread = std::max(spread, std::fabs(double{a[k]}));
  }
  std::printf("[   INFO   ] llama.cpp %s vs qdistill-run on %lld positions: argmax agreement %lld, max |logit diff| %.3g (max |logit| %.3g)\n",
              j["llama_cpp_version"].get<std::string>().c_str(), static_cast<long long>(t), static_cast<long long>(agree), max_diff, spread);
  EXPECT_EQ(agree, t) << "llama.cpp picks the runtime's next token";
  EXPECT_LT(max_diff, 1e-3 * spread) << "llama.cpp computes the runtime's logits up to float summation order";
}

// `qdistill export` on real (tiny) training runs: a bert and a llama trained a few QAT steps by
// `qdistill train`; the report's verification on held-out text, the files, and the llama's GGUF.
TEST(TextExport, ExportCommandVerifiesTrainedRunsOnHeldOutText) {
  test::TempDir dir;
  const std::string qd = std::string(QD_BINARY_DIR) + "/qdistill ";
  const auto write = [&](const std::string& name, const std::string& yaml) {
    std::ofstream(dir.file(name)) << yaml;
    return dir.file(name);
  };
  const std::string common = "optimizer: {name: adamw, lr: 0.002, weight_decay: 0.0}\ntrainer: {epochs: 1, progress: false, threads: 2}\n";
  const std::string bert = write("tb.yaml",
      "experiment: {name: tb, output_dir: " + dir.path().string() + "}\ntask: {name: sentence_embedding, loss: contrastive}\n"
      "data: {dataset: wordnet, seq_len: 24, batch_size: 16, train_subset: 48, test_subset: 32}\n"
      "model: {name: bert, tokenizer: minilm-l6, hidden: 64, layers: 2, heads: 4, ffn: 96, max_positions: 32}\n"
      "qat: {enabled: true, start_step: 0, weight: {bits: 8, per_channel: true}, activation: {bits: 8, dynamic: per_token}}\n" + common);
  const std::string llama = write("tl.yaml",
      "experiment: {name: tl, output_dir: " + dir.path().string() + "}\ntask: {name: causal_lm}\n"
      "data: {dataset: fortunes, seq_len: 32, batch_size: 4, eval_batch_size: 8, train_subset: 16, test_subset: 8}\n"
      "model: {name: llama, tokenizer: smollm2-135m, hidden: 64, layers: 2, heads: 4, kv_heads: 2, ffn: 96, max_positions: 64}\n"
      "qat: {enabled: true, start_step: 0, weight: {bits: 8, group_size: 32, format: ggml}, activation: {dynamic: per_block}}\n" + common);
  for (const std::string& cfg : {bert, llama}) {
    const test::ProcResult r = test::run_command(qd + "train " + cfg + " 2>&1");
    ASSERT_EQ(r.code, 0) << r.output;
  }
  test::ProcResult r = test::run_command(qd + "export " + dir.file("tb") + " --verify-samples 30 2>&1");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "verified on 30 held-out sentences")) << r.output;
  nlohmann::json rep = nlohmann::json::parse(read_file(dir.file("tb/export/report.json")));
  EXPECT_EQ(rep["task"], "sentence_embedding");
  EXPECT_GE(rep["verify"]["min_cosine"].get<double>(), 0.999) << rep.dump();
  EXPECT_GT(rep["files"]["student.qdm"].get<int64_t>(), 0);
  EXPECT_FALSE(rep["files"].contains("student.gguf"));
  for (const char* f : {"student.int8.onnx", "student.fp32.onnx", "tokenizer.json"}) EXPECT_GT(rep["files"][f].get<int64_t>(), 0) << f;
  // ONNX Runtime on the exported files against the same simulation, recorded in the report.
  const test::OrtPython py = test::ort_python(QD_SOURCE_DIR);
  if (!py.error.empty()) {
    ADD_FAILURE() << py.error;
  } else if (!py.skip.empty()) {
    std::printf("[  SKIPPED ] ONNX Runtime parity of the exported run: %s\n", py.skip.c_str());
  } else {
    r = test::run_command(py.command + " " + test::quoted(std::string(QD_SOURCE_DIR) + "/scripts/onnx_parity.py") + " " +
                          test::quoted(dir.file("tb")) + " 2>&1");
    EXPECT_EQ(r.code, 0) << r.output;
    rep = nlohmann::json::parse(read_file(dir.file("tb/export/report.json")));
    EXPECT_EQ(rep["onnx_runtime"]["student.int8.onnx"]["sentences"].get<int64_t>(), 30) << rep.dump();
    EXPECT_GE(rep["onnx_runtime"]["student.int8.onnx"]["min_cosine"].get<double>(), 0.999) << rep.dump();
    EXPECT_TRUE(rep.contains("verify")) << "the script keeps what export wrote";
  }
  // The exported file runs in qdistill-run.
  std::ofstream(dir.file("one.txt")) << "a small dog\n";
  r = run_tool(dir.file("tb/export/student.qdm") + " --embed " + dir.file("one.txt") + " 2>&1");
  EXPECT_EQ(r.code, 0) << r.output;

  r = test::run_command(qd + "export " + dir.file("tl") + " --verify-samples 3 2>&1");
  ASSERT_EQ(r.code, 0) << r.output;
  rep = nlohmann::json::parse(read_file(dir.file("tl/export/report.json")));
  EXPECT_EQ(rep["verify"]["samples"].get<int64_t>(), 3);
  EXPECT_EQ(rep["verify"]["tokens"].get<int64_t>(), 96);
  EXPECT_GE(rep["verify"]["argmax_agreement"].get<double>(), 0.99) << rep.dump();
  EXPECT_NEAR(rep["verify"]["perplexity_ratio"].get<double>(), 1.0, 0.005) << rep.dump();
  EXPECT_LT(rep["verify"]["kv_cache_max_logit_diff"].get<double>(), 1e-3) << rep.dump();
  EXPECT_GT(rep["files"]["student.gguf"].get<int64_t>(), 0) << "a Q8_0 llama exports to llama.cpp too";
  EXPECT_EQ(fmt::GgufFile(dir.file("tl/export/student.gguf")).get_string("general.architecture"), "llama");

  r = test::run_command(qd + "export " + dir.file("tl") + " --format onnx 2>&1");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "student.gguf")) << r.output;
}

TEST(TextExport, WhatTheRuntimeCannotRunIsAClearError) {
  const auto error = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const UserError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  auto static_inputs = quantized<BertModel>(bert_config("  enabled: true\n  activation: {bits: 8, per_channel: false}\n"));
  EXPECT_TRUE(contains(error([&] { build_text_graph(*static_inputs); }), "static per-tensor scale"));
  // QAT left off for some layers: they export in float and still match.
  auto partial = quantized<LlamaModel>(llama_config("  enabled: true\n  weight: {bits: 8, group_size: 32, format: ggml}\n"
                                                    "  activation: {dynamic: per_block}\n  layers:\n    \"*.down\": {enabled: false}\n"));
  const rt::Graph g = build_text_graph(*partial);
  for (const rt::Node& n : g.nodes)
    if (n.name == "layer0.down") {
      EXPECT_EQ(n.at("weight").dtype, rt::DType::kF32);
    }
  const nlohmann::json v = verify_text_graph(*partial, g, {ids_of(*partial, kTexts[0])}, false);
  EXPECT_GE(v["argmax_agreement"].get<double>(), 0.97) << v.dump();
}

}  // namespace
}  // namespace qd
