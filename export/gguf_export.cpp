#include "export/gguf_export.h"

#include <cstring>
#include <map>
#include <nlohmann/json.hpp>

#include "common/error.h"

namespace qd {

namespace {

using fmt::GgmlType;

const rt::Node& node(const std::map<std::string, const rt::Node*>& by_name, const std::string& name) {
  const auto it = by_name.find(name);
  QD_CHECK(it != by_name.end(), UserError, "GGUF export: the graph has no node ", name, "; only llama students export to GGUF");
  return *it->second;
}

// Rows [rows, cols] of a weight attribute in llama.cpp's block type, the rows in `order`.
struct Packed {
  GgmlType type;
  std::vector<uint8_t> bytes;
};
// llama.cpp's CPU matmuls quantize a quantized matrix's input row in Q8_0 blocks.
void check_input(const rt::Node& n) {
  if (n.at("weight").dtype == rt::DType::kF32) return;
  const rt::Attr* in = n.find("input_quant");
  QD_CHECK(in && in->s == "q8_0", UserError, "GGUF export: ", n.name, " quantizes its input as ", in ? in->s : "none",
           "; llama.cpp's CPU matmuls quantize it in Q8_0 blocks: train with qat.activation.dynamic: per_block");
}

Packed pack(const rt::Node& n, const std::vector<int64_t>& order) {
  const rt::Attr& w = n.at("weight");
  const int64_t rows = w.shape[0], cols = w.shape[1];
  if (w.dtype == rt::DType::kF32) {
    std::vector<uint8_t> bytes(static_cast<size_t>(rows * cols) * 4);
    for (int64_t r = 0; r < rows; ++r)
      std::memcpy(bytes.data() + r * cols * 4, w.as<float>() + order[static_cast<size_t>(r)] * cols, static_cast<size_t>(cols) * 4);
    return {GgmlType::kF32, std::move(bytes)};
  }
  const rt::Attr& s = n.at("weight_scale");
  QD_CHECK(s.shape[1] * 32 == cols, UserError, "GGUF export: ", n.name, " has ", s.shape[1], " scales per row of ", cols,
           " weights; llama.cpp's blocks have one per 32. Train with qat.weight: {format: ggml, group_size: 32}");
  if (n.op == "linear") check_input(n);
  // Q4_0 blocks hold -8..7; a Q8_0 block holds +-127 wherever it is not all zeros.
  bool q4 = true;
  for (int64_t i = 0; i < w.numel() && q4; ++i) q4 = w.as<int8_t>()[i] >= -8 && w.as<int8_t>()[i] <= 7;
  std::vector<int8_t> q(static_cast<size_t>(rows * cols));
  std::vector<float> d(static_cast<size_t>(rows * (cols / 32)));
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t src = order[static_cast<size_t>(r)];
    std::memcpy(q.data() + r * cols, w.as<int8_t>() + src * cols, static_cast<size_t>(cols));
    std::memcpy(d.data() + r * (cols / 32), s.as<float>() + src * (cols / 32), static_cast<size_t>(cols / 32) * 4);
  }
  try {
    if (q4) return {GgmlType::kQ4_0, fmt::pack_q4_0(q.data(), d.data(), rows * cols)};
    return {GgmlType::kQ8_0, fmt::pack_q8_0(q.data(), d.data(), rows * cols)};
  } catch (const Error& e) {
    throw UserError(concat("GGUF export: ", n.name, ": ", e.what()));
  }
}

std::vector<int64_t> identity(int64_t n) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = i;
  return v;
}

// llama.cpp's converter interleaves each head's rotary halves: new row h*hd + 2i + j is old row
// h*hd + j*hd/2 + i (models/llama.h permute_rotary_rows).
std::vector<int64_t> rotary_order(int64_t heads, int64_t hd) {
  std::vector<int64_t> v;
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < hd / 2; ++i)
      for (int64_t j = 0; j < 2; ++j) v.push_back(h * hd + j * (hd / 2) + i);
  return v;
}

void add_weight(fmt::GgufWriter& out, const std::string& name, const rt::Node& n, const std::vector<int64_t>& order,
                std::map<GgmlType, int64_t>& types) {
  Packed p = pack(n, order);
  ++types[p.type];
  const rt::Attr& w = n.at("weight");
  out.add_tensor(name, p.type, {w.shape[0], w.shape[1]}, std::move(p.bytes));
}

void add_norm(fmt::GgufWriter& out, const std::string& name, const rt::Node& n) {
  const rt::Attr& w = n.at("weight");
  out.add_f32_tensor(name, {w.shape[0]}, std::vector<float>(w.as<float>(), w.as<float>() + w.numel()));
}

}  // namespace

fmt::GgufWriter gguf_from_graph(const rt::Graph& g, const std::string& name) {
  const auto task = g.metadata.find("task");
  QD_CHECK(task != g.metadata.end() && task->second == "causal_lm", UserError,
           "GGUF export: the model is not a causal language model; only llama students export to GGUF");
  std::map<std::string, const rt::Node*> by_name;
  for (const rt::Node& n : g.nodes) {
    QD_CHECK(n.name.size() < 2 || n.name.compare(n.name.size() - 2, 2, ".a") != 0, UserError, "GGUF export: ", n.name,
             " is a factored (low-rank) layer; llama.cpp's llama architecture has no place for two thin matrices");
    by_name[n.name] = &n;
  }
  const rt::Node& embed = node(by_name, "embed");
  const int64_t vocab = embed.at("weight").shape[0], hidden = embed.at("weight").shape[1];
  int64_t layers = 0;
  while (by_name.count("layer" + std::to_string(layers) + ".attention")) ++layers;
  QD_CHECK(layers > 0, UserError, "GGUF export: the graph has no layers");
  const rt::Node& att = node(by_name, "layer0.attention");
  const int64_t heads = att.at("heads").i, kv_heads = att.at("kv_heads").i, hd = att.at("head_dim").i;
  const int64_t ffn = node(by_name, "layer0.gate").at("weight").shape[0];

  fmt::GgufWriter out;
  out.add_string("general.architecture", "llama");
  out.add_string("general.name", name);
  out.add_u32("general.alignment", 32);
  out.add_u32("llama.context_length", static_cast<uint32_t>(att.at("max_positions").i));
  out.add_u32("llama.embedding_length", static_cast<uint32_t>(hidden));
  out.add_u32("llama.block_count", static_cast<uint32_t>(layers));
  out.add_u32("llama.feed_forward_length", static_cast<uint32_t>(ffn));
  out.add_u32("llama.attention.head_count", static_cast<uint32_t>(heads));
  out.add_u32("llama.attention.head_count_kv", static_cast<uint32_t>(kv_heads));
  if (heads * hd != hidden) {  // pruned heads keep their size
    out.add_u32("llama.attention.key_length", static_cast<uint32_t>(hd));
    out.add_u32("llama.attention.value_length", static_cast<uint32_t>(hd));
  }
  out.add_u32("llama.rope.dimension_count", static_cast<uint32_t>(hd));
  out.add_f32("llama.rope.freq_base", att.at("rope_theta").f);
  out.add_f32("llama.attention.layer_norm_rms_epsilon", node(by_name, "norm").at("eps").f);
  out.add_u32("llama.vocab_size", static_cast<uint32_t>(vocab));

  const auto tok = g.metadata.find("tokenizer.bpe");
  QD_CHECK(tok != g.metadata.end(), UserError, "GGUF export: the graph carries no BPE tokenizer");
  const nlohmann::json t = nlohmann::json::parse(tok->second, nullptr, false);
  QD_CHECK(t.is_object() && t.contains("tokens") && t.contains("merges"), UserError, "GGUF export: the graph's tokenizer is damaged");
  out.add_string("tokenizer.ggml.model", t.value("model", "gpt2"));
  out.add_string("tokenizer.ggml.pre", t.value("pre", "default"));
  out.add_strings("tokenizer.ggml.tokens", t["tokens"].get<std::vector<std::string>>());
  if (t.contains("token_type")) out.add_i32s("tokenizer.ggml.token_type", t["token_type"].get<std::vector<int32_t>>());
  out.add_strings("tokenizer.ggml.merges", t["merges"].get<std::vector<std::string>>());
  if (t.contains("bos_token_id")) out.add_u32("tokenizer.ggml.bos_token_id", t["bos_token_id"].get<uint32_t>());
  if (t.contains("eos_token_id")) out.add_u32("tokenizer.ggml.eos_token_id", t["eos_token_id"].get<uint32_t>());
  out.add_bool("tokenizer.ggml.add_bos_token", t.value("add_bos_token", false));

  std::map<GgmlType, int64_t> types;  // matrices per type
  add_weight(out, "token_embd.weight", embed, identity(vocab), types);
  for (int64_t i = 0; i < layers; ++i) {
    const std::string p = "layer" + std::to_string(i) + ".", b = "blk." + std::to_string(i) + ".";
    add_norm(out, b + "attn_norm.weight", node(by_name, p + "attn_norm"));
    add_weight(out, b + "attn_q.weight", node(by_name, p + "q"), rotary_order(heads, hd), types);
    add_weight(out, b + "attn_k.weight", node(by_name, p + "k"), rotary_order(kv_heads, hd), types);
    add_weight(out, b + "attn_v.weight", node(by_name, p + "v"), identity(kv_heads * hd), types);
    add_weight(out, b + "attn_output.weight", node(by_name, p + "out"), identity(hidden), types);
    add_norm(out, b + "ffn_norm.weight", node(by_name, p + "ffn_norm"));
    add_weight(out, b + "ffn_gate.weight", node(by_name, p + "gate"), identity(ffn), types);
    add_weight(out, b + "ffn_up.weight", node(by_name, p + "up"), identity(ffn), types);
    add_weight(out, b + "ffn_down.weight", node(by_name, p + "down"), identity(hidden), types);
  }
  add_norm(out, "output_norm.weight", node(by_name, "norm"));
  const rt::Node& head = node(by_name, "lm_head");
  const bool tied = head.at("weight").data == embed.at("weight").data &&
                    (head.find("weight_scale") == nullptr) == (embed.find("weight_scale") == nullptr) &&
                    (!head.find("weight_scale") || head.at("weight_scale").data == embed.at("weight_scale").data);
  if (!tied) add_weight(out, "output.weight", head, identity(vocab), types);
  else check_input(head);
  // general.file_type, llama_ftype: the type most matrices have (ALL_F32 0, MOSTLY_Q4_0 2, MOSTLY_Q8_0 7).
  const int64_t q4 = types[GgmlType::kQ4_0], q8 = types[GgmlType::kQ8_0];
  out.add_u32("general.file_type", q4 == 0 && q8 == 0 ? 0 : q4 >= q8 ? 2 : 7);
  return out;
}

}  // namespace qd
