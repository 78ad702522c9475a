// The encoder's ONNX files (export/onnx_text.h): ONNX Runtime on the int8 QDQ file computes what
// qdistill-run computes on the same graph, sentence by sentence, in padded batches; the fp32 file
// computes the graph with float weights and activations; the int8 file keeps every weight matrix
// int8; and what the form cannot express is refused with a message saying what to do.
#include <gtest/gtest.h>

#include <fstream>

#include "common/atomic_file.h"
#include "export/onnx_summary.h"
#include "export/onnx_text.h"
#include "export/text_export.h"
#include "models/registry.h"
#include "models/text_model.h"
#include "qat/module_qat.h"
#include "runtime/executor.h"
#include "tests/export/ort_util.h"
#include "tests/test_util.h"
#include "trainer/experiment_config.h"

namespace qd {
namespace {

ExperimentConfig bert_config(const std::string& qat) {
  return parse_experiment_config(
      "experiment: {name: t}\ntask: {name: sentence_embedding, teacher: minilm-l6}\ndata: {dataset: wordnet}\n"
      "model: {name: bert, tokenizer: minilm-l6, hidden: 64, layers: 2, heads: 4, ffn: 96, max_positions: 32, "
      "embedding_dim: 48}\nqat:\n" + qat,
      "b.yaml");
}

// A tiny QAT bert with non-trivial norms and biases, its quantizers on and observed once.
std::shared_ptr<BertModel> quantized_bert(const std::string& qat) {
  torch::manual_seed(7);
  auto m = std::dynamic_pointer_cast<BertModel>(make_model(bert_config(qat).model, InputSpec{}));
  {
    torch::NoGradGuard g;
    for (auto& p : m->named_parameters())
      if (p.key().find("norm") != std::string::npos) p.value().uniform_(0.5, 1.5);
      else if (p.key().find("bias") != std::string::npos) p.value().uniform_(-0.3, 0.3);
  }
  attach_qat(*m, bert_config(qat).qat);
  for (auto& t : layer_qats(*m)) {
    t->set_enabled(true);
    if (t->weight_quant) t->weight_quant->set_enabled(true), t->weight_quant->set_observing(true);
  }
  m->eval();
  return m;
}

const char* const kTexts[] = {"a bank is a financial institution that accepts deposits",
                              "the quick brown fox jumps over the lazy dog",
                              "to be or not to be, that is the question: whether 'tis nobler in the mind to suffer",
                              "x", "an edge device runs the small student"};

std::vector<std::vector<int32_t>> sentences(const TextModel& m) {
  std::vector<std::vector<int32_t>> out;
  for (const char* t : kTexts) {
    std::vector<int32_t> ids = m.tokenizer().encode(t);
    if (ids.size() > 32) ids.resize(32);
    out.push_back(std::move(ids));
  }
  return out;
}

// qdistill-run's executor on each sentence: embeddings [sentences, dim], row-major.
std::vector<float> runtime_embeddings(const rt::Graph& g, const std::vector<std::vector<int32_t>>& inputs) {
  rt::Executor ex(g);
  std::vector<float> out;
  for (const auto& ids : inputs) {
    ex.reset();
    ex.input(0).resize({static_cast<int64_t>(ids.size())});
    std::copy(ids.begin(), ids.end(), ex.input(0).data<int32_t>());
    ex.run();
    out.insert(out.end(), ex.output(0).data<float>(), ex.output(0).data<float>() + ex.output(0).numel());
  }
  return out;
}

// The same graph with every weight dequantized to f32 and every input left float.
rt::Graph float_graph(rt::Graph g) {
  for (rt::Node& n : g.nodes) {
    rt::Attr* w = n.attrs.count("weight") ? &n.attrs.at("weight") : nullptr;
    if (w && w->dtype == rt::DType::kI8) {
      const rt::Attr& s = n.attrs.at("weight_scale");
      const int64_t rows = w->shape[0], cols = w->shape[1], groups = s.shape[1];
      std::vector<float> f(static_cast<size_t>(rows * cols));
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < cols; ++j)
          f[static_cast<size_t>(r * cols + j)] = static_cast<float>(w->as<int8_t>()[r * cols + j]) * s.as<float>()[r * groups + j / (cols / groups)];
      *w = rt::Attr::of_tensor(rt::DType::kF32, {rows, cols}, f);
      n.attrs.erase("weight_scale");
    }
    if (n.attrs.count("input_quant")) n.attrs["input_quant"] = rt::Attr::of_string("none");
  }
  return g;
}

// ONNX Runtime (scripts/onnx_parity.py) on `onnx` against `reference`, in padded batches of 4.
nlohmann::json ort_against(const test::OrtPython& py, const test::TempDir& dir, const std::string& onnx,
                           const std::vector<std::vector<int32_t>>& inputs, const std::vector<float>& reference) {
  write_file_atomic(dir.file("ids.json"), nlohmann::json{{"ids", inputs}}.dump());
  write_file_atomic(dir.file("ref.f32"), std::string(reinterpret_cast<const char*>(reference.data()), reference.size() * sizeof(float)));
  const std::string cmd = py.command + " " + test::quoted(std::string(QD_SOURCE_DIR) + "/scripts/onnx_parity.py") +
                          " --model " + test::quoted(onnx) + " --ids " + test::quoted(dir.file("ids.json")) + " --reference " +
                          test::quoted(dir.file("ref.f32")) + " --batch 4 --min-cosine 0 --json " + test::quoted(dir.file("r.json")) +
                          " 2>&1";
  const test::ProcResult r = test::run_command(cmd);
  if (r.code != 0) throw std::runtime_error("onnx_parity.py failed: " + cmd + "\n" + r.output);
  return nlohmann::json::parse(read_file(dir.file("r.json")));
}

TEST(TextOnnx, OnnxRuntimeOnTheInt8FileComputesWhatQdistillRunComputes) {
  const test::OrtPython py = test::ort_python(QD_SOURCE_DIR);
  QD_REQUIRE_ORT(py);
  auto m = quantized_bert("  enabled: true\n  weight: {bits: 8, per_channel: true}\n  activation: {bits: 8, dynamic: per_token}\n");
  const rt::Graph g = build_text_graph(*m);
  const std::vector<std::vector<int32_t>> inputs = sentences(*m);
  test::TempDir dir;
  write_text_onnx(g, OnnxPrecision::kInt8Qdq, dir.file("s.int8.onnx"));
  const nlohmann::json r = ort_against(py, dir, dir.file("s.int8.onnx"), inputs, runtime_embeddings(g, inputs));
  EXPECT_EQ(r["sentences"].get<int64_t>(), 5);
  // The same integers and the same exact int32 sums (MatMulInteger); only the float operations
  // around them (norms, attention, softmax, GELU) differ in order.
  EXPECT_GE(r["min_cosine"].get<double>(), 0.99999) << r.dump();
  EXPECT_LT(r["max_abs_diff"].get<double>(), 2e-3) << r.dump();

  // The check can fail: with the second FFN negated (a different model, not much different after
  // its LayerNorm) the same bounds do not hold.
  rt::Graph wrong = g;
  for (rt::Node& n : wrong.nodes)
    if (n.name == "layer1.ffn_out")
      for (size_t i = 0; i < n.attrs.at("weight_scale").data.size() / 4; ++i)
        reinterpret_cast<float*>(n.attrs.at("weight_scale").data.data())[i] *= -1.0f;
  write_text_onnx(wrong, OnnxPrecision::kInt8Qdq, dir.file("wrong.onnx"));
  const nlohmann::json w = ort_against(py, dir, dir.file("wrong.onnx"), inputs, runtime_embeddings(g, inputs));
  EXPECT_LT(w["min_cosine"].get<double>(), 0.99999) << w.dump();
  EXPECT_GT(w["max_abs_diff"].get<double>(), 2e-3) << w.dump();
}

// The same on an emulated x86 CPU with AVX2 and no VNNI, where ONNX Runtime's u8 x s8 kernel would
// saturate pairs of products: the uint8 x uint8 form stays exact there.
TEST(TextOnnx, TheInt8FileIsExactOnAnAvx2CpuToo) {
  const test::OrtPython py = test::ort_python(QD_SOURCE_DIR, "x86_avx2");
  QD_REQUIRE_ORT(py);
  auto m = quantized_bert("  enabled: true\n  weight: {bits: 8, per_channel: true}\n  activation: {bits: 8, dynamic: per_token}\n");
  // Weights at the ends of the grid, where u8 x s8 pairs would reach 2 x 255 x 127 > 32767.
  rt::Graph g = build_text_graph(*m);
  for (rt::Node& n : g.nodes)
    if (n.op == "linear") {
      rt::Attr& w = n.attrs.at("weight");
      for (size_t i = 0; i < w.data.size(); ++i) {
        int8_t& v = reinterpret_cast<int8_t*>(w.data.data())[i];
        v = v > 0 ? 127 - (v % 8) : v < 0 ? -127 + (-v % 8) : 0;
      }
    }
  const std::vector<std::vector<int32_t>> inputs = sentences(*m);
  test::TempDir dir;
  write_text_onnx(g, OnnxPrecision::kInt8Qdq, dir.file("s.int8.onnx"));
  const nlohmann::json r = ort_against(py, dir, dir.file("s.int8.onnx"), inputs, runtime_embeddings(g, inputs));
  EXPECT_GE(r["min_cosine"].get<double>(), 0.99999) << py.cpu << " " << r.dump();
  EXPECT_LT(r["max_abs_diff"].get<double>(), 2e-3) << py.cpu << " " << r.dump();
}

TEST(TextOnnx, TheFp32FileIsTheGraphWithFloatWeightsAndActivations) {
  const test::OrtPython py = test::ort_python(QD_SOURCE_DIR);
  QD_REQUIRE_ORT(py);
  auto m = quantized_bert("  enabled: true\n  weight: {bits: 8, per_channel: true}\n  activation: {bits: 8, dynamic: per_token}\n");
  const rt::Graph g = build_text_graph(*m);
  const std::vector<std::vector<int32_t>> inputs = sentences(*m);
  test::TempDir dir;
  write_text_onnx(g, OnnxPrecision::kFloat32, dir.file("s.fp32.onnx"));
  const std::vector<float> float_ref = runtime_embeddings(float_graph(g), inputs);
  const nlohmann::json r = ort_against(py, dir, dir.file("s.fp32.onnx"), inputs, float_ref);
  EXPECT_GE(r["min_cosine"].get<double>(), 0.99999) << r.dump();
  EXPECT_LT(r["max_abs_diff"].get<double>(), 1e-4) << r.dump();
  // ...and it is not the int8 model: activation quantization moves the embeddings measurably.
  const nlohmann::json q = ort_against(py, dir, dir.file("s.fp32.onnx"), inputs, runtime_embeddings(g, inputs));
  EXPECT_GT(q["max_abs_diff"].get<double>(), 1e-4) << q.dump();
}

TEST(TextOnnx, TheInt8FileKeepsEveryWeightMatrixInt8AndPassesTheChecker) {
  auto m = quantized_bert("  enabled: true\n  weight: {bits: 8, per_channel: true}\n  activation: {bits: 8, dynamic: per_token}\n");
  const rt::Graph g = build_text_graph(*m);
  const OnnxSummary m8 = summarize_onnx(text_onnx_bytes(g, OnnxPrecision::kInt8Qdq));  // checked inside: it throws otherwise
  int64_t linears = 0;
  for (const rt::Node& n : g.nodes) linears += n.op == "linear";
  const auto count = [](const std::map<std::string, int64_t>& m, const std::string& k) { return m.count(k) ? m.at(k) : 0; };
  EXPECT_EQ(count(m8.matrices, "UINT8"), linears) << "every linear's weight, stored + 128";
  EXPECT_EQ(count(m8.matrices, "INT8"), 2) << "the word table and the position table";
  EXPECT_EQ(count(m8.matrices, "FLOAT"), 0) << "no weight matrix may stay float";
  EXPECT_EQ(count(m8.ops, "QuantizeLinear"), linears) << "each linear quantizes its input per token";
  EXPECT_EQ(count(m8.ops, "MatMulInteger"), linears) << "each linear sums int8 x int8 in int32";
  EXPECT_EQ(count(m8.ops, "MatMul"), 2 * 2) << "only attention's two products per layer stay float";
  EXPECT_EQ(count(m8.ops, "DequantizeLinear"), 1) << "the position table";
  EXPECT_EQ(m8.opset, 17);
  EXPECT_EQ(m8.inputs, (std::vector<std::string>{"input_ids", "attention_mask"}));
  EXPECT_EQ(m8.outputs, (std::vector<std::string>{"embedding"}));
  EXPECT_EQ(m8.output_dims.at(0), (std::vector<int64_t>{-1, 48}));
  const OnnxSummary m32 = summarize_onnx(text_onnx_bytes(g, OnnxPrecision::kFloat32));
  EXPECT_EQ(count(m32.matrices, "INT8") + count(m32.matrices, "UINT8"), 0);
  EXPECT_EQ(count(m32.matrices, "FLOAT"), linears + 2);
  EXPECT_EQ(count(m32.ops, "QuantizeLinear") + count(m32.ops, "DequantizeLinear"), 0);
}

TEST(TextOnnx, WhatTheFormCannotExpressIsRefusedWithAFix) {
  // Weights in groups of 32 (Q8_0-style) have no opset-17 per-channel form.
  auto grouped = quantized_bert("  enabled: true\n  weight: {bits: 8, group_size: 32}\n  activation: {bits: 8, dynamic: per_token}\n");
  const rt::Graph g = build_text_graph(*grouped);
  try {
    text_onnx_bytes(g, OnnxPrecision::kInt8Qdq);
    FAIL() << "grouped weights were accepted";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("per_channel: true"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(text_onnx_bytes(g, OnnxPrecision::kFloat32)) << "the float file has no such limit";
  // A decoder's graph goes to GGUF.
  rt::Graph decoder = g;
  decoder.metadata["task"] = "causal_lm";
  try {
    text_onnx_bytes(decoder, OnnxPrecision::kFloat32);
    FAIL() << "a causal_lm graph was accepted";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("gguf"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace qd
