#include "models/bert.h"

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "formats/json_file.h"
#include "formats/safetensors.h"

namespace qd {

using fmt::FormatError;

namespace {
std::string shape_text(const std::vector<int64_t>& s) {
  std::string t = "[";
  for (size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
  return t + "]";
}
}  // namespace

BertNormImpl::BertNormImpl(int64_t dim, double eps) : eps_(eps) {
  weight = register_parameter("weight", torch::ones({dim}));
  bias = register_parameter("bias", torch::zeros({dim}));
}

torch::Tensor BertNormImpl::forward(const torch::Tensor& x) {
  if (!keep_.defined()) return torch::layer_norm(x, {weight.size(0)}, weight, bias, eps_);
  const torch::Tensor k = keep_.to(x.device(), x.scalar_type());
  const torch::Tensor mean = (x * k).sum(-1, /*keepdim=*/true) / kept_;
  const torch::Tensor var = ((x - mean) * k).pow(2).sum(-1, /*keepdim=*/true) / kept_;
  return (x - mean) * torch::rsqrt(var + eps_) * weight + bias;  // pruned features: weight = bias = 0
}

void BertNormImpl::set_kept(const torch::Tensor& keep) {
  kept_ = keep.defined() ? keep.sum().item<double>() : 0.0;
  keep_ = keep.defined() && kept_ < weight.size(0) ? keep.detach().to(torch::kCPU, torch::kFloat32) : torch::Tensor();
}

BertLayerImpl::BertLayerImpl(const BertOptions& o) : heads_(o.heads), head_dim_(o.head_dim()) {
  const int64_t inner = o.heads * head_dim_;
  query = register_module("query", Linear(o.hidden, inner));
  key = register_module("key", Linear(o.hidden, inner));
  value = register_module("value", Linear(o.hidden, inner));
  attn_out = register_module("attn_out", Linear(inner, o.hidden));
  attn_norm = register_module("attn_norm", BertNorm(o.hidden, o.layer_norm_eps));
  ffn_in = register_module("ffn_in", Linear(o.hidden, o.ffn));
  ffn_out = register_module("ffn_out", Linear(o.ffn, o.hidden));
  ffn_norm = register_module("ffn_norm", BertNorm(o.hidden, o.layer_norm_eps));
}

torch::Tensor BertLayerImpl::forward(const torch::Tensor& x, const torch::Tensor& key_mask, TransformerTrace* trace) {
  const int64_t b = x.size(0), t = x.size(1), hd = head_dim_;
  const auto split = [&](const torch::Tensor& y) { return y.view({b, t, heads_, hd}).transpose(1, 2); };  // [B, nh, T, hd]
  const torch::Tensor qs = query(x), ks = key(x), vs = value(x);
  if (trace && trace->want_qkv) trace->q.push_back(qs), trace->k.push_back(ks), trace->v.push_back(vs);
  const torch::Tensor heads = at::scaled_dot_product_attention(split(qs), split(ks), split(vs), key_mask);  // [B, nh, T, hd]
  const torch::Tensor a = heads.transpose(1, 2).reshape({b, t, heads_ * hd});
  torch::Tensor y = attn_norm(x + attn_out(a));
  const torch::Tensor act = torch::gelu(ffn_in(y));
  if (trace && trace->want_units) {
    // Minitron's importance: a head by the L2 norm of its output, an FFN neuron by |its activation|,
    // over the tokens (not the padding).
    const torch::Tensor tok = key_mask.view({b, t, 1}).to(act.scalar_type());
    trace->add_units(name + ".heads", heads.norm(2, -1).transpose(1, 2) * tok);
    trace->add_units(name + ".ffn", act * tok);
    // A hidden feature by |its value| after each norm (the residual stream of a post-norm encoder).
    trace->add_units("hidden", y * tok);
  }
  const torch::Tensor out = ffn_norm(y + ffn_out(act));
  if (trace && trace->want_units) trace->add_units("hidden", out * key_mask.view({b, t, 1}).to(out.scalar_type()));
  return out;
}

BertEncoderImpl::BertEncoderImpl(const BertOptions& o) : opts_(o) {
  word = register_module("word", Embedding(o.vocab, o.embedding_rank > 0 ? o.embedding_rank : o.hidden));
  if (o.embedding_rank > 0) word_proj = register_module("word_proj", Linear(o.embedding_rank, o.hidden, false));
  position = register_module("position", Embedding(o.max_positions, o.hidden));
  token_type = register_module("token_type", Embedding(o.type_vocab, o.hidden));
  embed_norm = register_module("embed_norm", BertNorm(o.hidden, o.layer_norm_eps));
  for (int64_t i = 0; i < o.layers; ++i) {
    layers.push_back(register_module("layer" + std::to_string(i), BertLayer(o)));
    layers.back()->name = "layer" + std::to_string(i);
  }
  if (o.embedding_dim > 0) dense = register_module("dense", Linear(o.hidden, o.embedding_dim));
}

torch::Tensor BertEncoderImpl::forward(const torch::Tensor& ids, const torch::Tensor& mask) {
  const int64_t t = ids.size(1);
  TORCH_CHECK(t <= opts_.max_positions, "a sequence of ", t, " tokens is longer than the model's ", opts_.max_positions,
              " positions");
  const torch::Tensor pos = torch::arange(t, ids.options().dtype(torch::kLong));
  torch::Tensor x = (word_proj ? word_proj(word(ids)) : word(ids)) + position(pos).unsqueeze(0) + token_type->effective_weight()[0];  // token type 0 throughout
  x = embed_norm(x);
  const torch::Tensor key_mask = mask.to(torch::kBool).view({ids.size(0), 1, 1, t});
  TransformerTrace* tr = trace && (is_training() || trace->in_eval) ? trace : nullptr;
  if (tr && tr->want_hidden) tr->hidden.push_back(x);
  if (tr && tr->want_units) tr->add_units("hidden", x * mask.view({ids.size(0), t, 1}).to(x.scalar_type()));
  for (auto& l : layers) {
    x = l(x, key_mask, tr);
    if (tr && tr->want_hidden) tr->hidden.push_back(x);
  }
  return x;
}

torch::Tensor BertEncoderImpl::embed(const torch::Tensor& ids, const torch::Tensor& mask) {
  if (!dense) return masked_mean_normalized(forward(ids, mask), mask);
  return torch::nn::functional::normalize(dense(masked_mean(forward(ids, mask), mask)),
                                          torch::nn::functional::NormalizeFuncOptions().p(2).dim(1));
}

torch::Tensor masked_mean(const torch::Tensor& h, const torch::Tensor& mask) {
  const torch::Tensor m = mask.to(h.dtype()).unsqueeze(-1);  // [B, T, 1]
  return (h * m).sum(1) / m.sum(1).clamp_min(1e-9);          // sentence-transformers' clamp
}

torch::Tensor masked_mean_normalized(const torch::Tensor& h, const torch::Tensor& mask) {
  return torch::nn::functional::normalize(masked_mean(h, mask), torch::nn::functional::NormalizeFuncOptions().p(2).dim(1));
}

BertOptions read_bert_config(const std::string& path) {
  const nlohmann::json j = fmt::read_json_file(path);
  const auto integer = [&](const char* key, int64_t lo, int64_t hi) {
    if (!j.contains(key) || !j[key].is_number_integer() || j[key].get<int64_t>() < lo || j[key].get<int64_t>() > hi)
      throw FormatError(path + ": " + key + " must be an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return j[key].get<int64_t>();
  };
  if (j.value("model_type", "") != "bert") throw FormatError(path + ": model_type must be \"bert\"");
  if (j.value("hidden_act", "gelu") != "gelu") throw FormatError(path + ": hidden_act " + j["hidden_act"].dump() + " is not supported (gelu)");
  if (j.value("position_embedding_type", "absolute") != "absolute")
    throw FormatError(path + ": position_embedding_type must be \"absolute\"");
  BertOptions o;
  o.vocab = integer("vocab_size", 1, 1 << 22);
  o.hidden = integer("hidden_size", 1, 1 << 16);
  o.layers = integer("num_hidden_layers", 1, 512);
  o.heads = integer("num_attention_heads", 1, 1024);
  o.ffn = integer("intermediate_size", 1, 1 << 18);
  o.max_positions = integer("max_position_embeddings", 1, 1 << 20);
  o.type_vocab = integer("type_vocab_size", 1, 1 << 10);
  if (o.hidden % o.heads != 0) throw FormatError(path + ": hidden_size is not a multiple of num_attention_heads");
  if (j.contains("layer_norm_eps")) {
    if (!j["layer_norm_eps"].is_number() || !(j["layer_norm_eps"].get<double>() > 0))
      throw FormatError(path + ": layer_norm_eps must be a positive number");
    o.layer_norm_eps = j["layer_norm_eps"].get<double>();
  }
  return o;
}

BertEncoder load_bert(const std::string& folder) {
  const BertOptions o = read_bert_config(folder + "/config.json");
  const fmt::SafetensorsFile f(folder + "/model.safetensors");
  const std::string prefix = f.find("bert.embeddings.word_embeddings.weight") ? "bert." : "";
  BertEncoder m(o);
  torch::NoGradGuard g;
  const auto load = [&](const std::string& name, torch::Tensor& dst) {
    const fmt::SafetensorsTensor& t = f.at(prefix + name);
    if (t.shape != dst.sizes().vec())
      throw FormatError(f.path() + ": tensor '" + t.name + "' has shape " + shape_text(t.shape) + ", config.json implies " +
                        shape_text(dst.sizes().vec()));
    const std::vector<float> v = f.to_float(t);
    dst.copy_(torch::from_blob(const_cast<float*>(v.data()), dst.sizes(), torch::kFloat32));
  };
  const auto linear = [&](const std::string& name, Linear& l) {
    load(name + ".weight", l->weight);
    load(name + ".bias", l->bias);
  };
  const auto norm = [&](const std::string& name, BertNorm& l) {
    load(name + ".weight", l->weight);
    load(name + ".bias", l->bias);
  };
  load("embeddings.word_embeddings.weight", m->word->weight);
  load("embeddings.position_embeddings.weight", m->position->weight);
  load("embeddings.token_type_embeddings.weight", m->token_type->weight);
  norm("embeddings.LayerNorm", m->embed_norm);
  for (int64_t i = 0; i < o.layers; ++i) {
    const std::string p = "encoder.layer." + std::to_string(i) + ".";
    BertLayer& l = m->layers[static_cast<size_t>(i)];
    linear(p + "attention.self.query", l->query);
    linear(p + "attention.self.key", l->key);
    linear(p + "attention.self.value", l->value);
    linear(p + "attention.output.dense", l->attn_out);
    norm(p + "attention.output.LayerNorm", l->attn_norm);
    linear(p + "intermediate.dense", l->ffn_in);
    linear(p + "output.dense", l->ffn_out);
    norm(p + "output.LayerNorm", l->ffn_norm);
  }
  m->eval();
  return m;
}

BertEncoder factorize_word_embedding(const BertEncoder& full, int64_t rank) {
  BertOptions o = full->options();
  QD_CHECK(o.embedding_rank == 0, UserError, "model.embedding_rank: the word embedding is factorized already");
  QD_CHECK(rank > 0 && rank < o.hidden, UserError, "model.embedding_rank: ", rank, " must be between 1 and the hidden size ",
           o.hidden, " - 1 to make the embedding smaller");
  o.embedding_rank = rank;
  BertEncoder f(o);
  torch::NoGradGuard g;
  auto from = full->named_parameters(true);
  auto from_buffers = full->named_buffers(true);
  for (auto& p : f->named_parameters(true))
    if (p.key() != "word.weight" && p.key() != "word_proj.weight") p.value().copy_(from[p.key()]);
  for (auto& b : f->named_buffers(true)) b.value().copy_(from_buffers[b.key()]);
  // Double precision: the factors are the best rank-r approximation whatever the machine's SVD kernel.
  const auto [u, s, vh] = torch::linalg_svd(full->word->weight.to(torch::kFloat64), false);
  f->word->weight.copy_((u.narrow(1, 0, rank) * s.narrow(0, 0, rank)).to(torch::kFloat32));
  f->word_proj->weight.copy_(vh.narrow(0, 0, rank).t().to(torch::kFloat32));
  f->train(full->is_training());
  return f;
}

}  // namespace qd
