#include "models/llama.h"

#include "formats/gguf.h"

namespace qd {

using fmt::FormatError;

RmsNormImpl::RmsNormImpl(int64_t dim, double eps) : eps_(eps) { weight = register_parameter("weight", torch::ones({dim})); }

torch::Tensor RmsNormImpl::forward(const torch::Tensor& x) {
  const torch::Tensor f = x.to(torch::kFloat32);
  const torch::Tensor var = kept_ > 0 ? f.pow(2).sum(-1, /*keepdim=*/true) / static_cast<double>(kept_)
                                       : f.pow(2).mean(-1, /*keepdim=*/true);
  return weight * (f * torch::rsqrt(var + eps_)).to(x.dtype());
}

void RmsNormImpl::set_kept(const torch::Tensor& keep) {
  kept_ = keep.defined() ? keep.sum().item<int64_t>() : 0;
  if (kept_ == weight.size(0)) kept_ = 0;
}

LlamaLayerImpl::LlamaLayerImpl(const LlamaOptions& o) : heads_(o.heads), kv_heads_(o.kv_heads), head_dim_(o.head_dim()) {
  const auto lin = [](int64_t in, int64_t out) { return Linear(in, out, /*bias=*/false); };
  attn_norm = register_module("attn_norm", RmsNorm(o.hidden, o.rms_eps));
  q = register_module("q", lin(o.hidden, o.heads * head_dim_));
  k = register_module("k", lin(o.hidden, o.kv_heads * head_dim_));
  v = register_module("v", lin(o.hidden, o.kv_heads * head_dim_));
  out = register_module("out", lin(o.heads * head_dim_, o.hidden));
  ffn_norm = register_module("ffn_norm", RmsNorm(o.hidden, o.rms_eps));
  gate = register_module("gate", lin(o.hidden, o.ffn));
  up = register_module("up", lin(o.hidden, o.ffn));
  down = register_module("down", lin(o.ffn, o.hidden));
  k_cache = register_module("k_cache", QuantPoint());
  v_cache = register_module("v_cache", QuantPoint());
}

namespace {
// Hugging Face's rotate_half: (x1, x2) -> (-x2, x1) over the two halves of the last dimension.
torch::Tensor rotate_half(const torch::Tensor& x) {
  const int64_t h = x.size(-1) / 2;
  return torch::cat({-x.narrow(-1, h, h), x.narrow(-1, 0, h)}, -1);
}
}  // namespace

torch::Tensor LlamaLayerImpl::forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                                      const torch::Tensor& mask, TransformerTrace* trace) {
  const int64_t b = x.size(0), t = x.size(1);
  const torch::Tensor h = attn_norm(x);
  const torch::Tensor qp = q(h), kp = k(h), vp = v(h);
  if (trace && trace->want_qkv) trace->q.push_back(qp), trace->k.push_back(kp), trace->v.push_back(vp);
  torch::Tensor qs = qp.view({b, t, heads_, head_dim_}).transpose(1, 2);  // [B, nh, T, hd]
  torch::Tensor ks = kp.view({b, t, kv_heads_, head_dim_}).transpose(1, 2);
  torch::Tensor vs = vp.view({b, t, kv_heads_, head_dim_}).transpose(1, 2);
  qs = qs * cos + rotate_half(qs) * sin;
  ks = k_cache(ks * cos + rotate_half(ks) * sin);  // [B, nkv, T, hd]: rows of head_dim, as a KV cache stores them
  vs = v_cache(vs);
  if (kv_heads_ != heads_) {  // grouped-query attention: kv head j serves query heads j * r .. j * r + r - 1
    ks = ks.repeat_interleave(heads_ / kv_heads_, 1);
    vs = vs.repeat_interleave(heads_ / kv_heads_, 1);
  }
  const torch::Tensor heads = at::scaled_dot_product_attention(qs, ks, vs, mask);  // [B, nh, T, hd]
  const torch::Tensor a = heads.transpose(1, 2).reshape({b, t, heads_ * head_dim_});
  const torch::Tensor y = x + out(a);
  const torch::Tensor f = ffn_norm(y);
  const torch::Tensor act = torch::silu(gate(f)) * up(f);
  if (trace && trace->want_units) {
    // Minitron's importance: a head group by the L2 norms of its heads' outputs, an FFN neuron by
    // |its activation|, a hidden feature by |its normalized value| at every norm.
    trace->add_units(name + ".heads", heads.norm(2, -1).transpose(1, 2).reshape({b, t, kv_heads_, heads_ / kv_heads_}).sum(-1));
    trace->add_units(name + ".ffn", act);
    trace->add_units("hidden", h);
    trace->add_units("hidden", f);
  }
  return y + down(act);
}

LlamaImpl::LlamaImpl(const LlamaOptions& o) : opts_(o) {
  TORCH_CHECK((o.head_size > 0 || o.hidden % o.heads == 0) && o.heads % o.kv_heads == 0 && o.head_dim() % 2 == 0,
              "llama: hidden must split into heads of even size (or head_size be set), and heads into kv_heads groups");
  embed = register_module("embed", Embedding(o.vocab, o.hidden));
  for (int64_t i = 0; i < o.layers; ++i) {
    layers.push_back(register_module("layer" + std::to_string(i), LlamaLayer(o)));
    layers.back()->name = "layer" + std::to_string(i);
  }
  norm = register_module("norm", RmsNorm(o.hidden, o.rms_eps));
  if (!o.tied_embeddings) lm_head = register_module("lm_head", Linear(o.hidden, o.vocab, /*bias=*/false));
  const int64_t hd = o.head_dim();
  inv_freq_ = 1.0 / torch::pow(o.rope_theta, torch::arange(0, hd, 2, torch::kLong).to(torch::kFloat32) / static_cast<double>(hd));
  inv_freq_ = register_buffer("inv_freq", inv_freq_.to(torch::kFloat32));
}

torch::Tensor LlamaImpl::hidden_states(const torch::Tensor& ids, const torch::Tensor& mask) {
  return decode(embed(ids), mask);
}

torch::Tensor LlamaImpl::decode(torch::Tensor x, const torch::Tensor& mask) {
  const int64_t b = x.size(0), t = x.size(1);
  TORCH_CHECK(t <= opts_.max_positions, "a sequence of ", t, " tokens is longer than the model's ", opts_.max_positions, " positions");
  // Rotary angles, in float32 as Hugging Face computes them: [T, hd] = (pos x inv_freq) twice.
  const torch::Tensor pos = torch::arange(t, torch::TensorOptions().dtype(torch::kFloat32).device(x.device()));
  const torch::Tensor freqs = torch::outer(pos, inv_freq_);
  const torch::Tensor emb = torch::cat({freqs, freqs}, -1);
  const torch::Tensor cos = emb.cos(), sin = emb.sin();
  // Causal, and padding keys masked (padding sits at the end, so every query keeps key 0).
  const torch::Tensor causal = torch::ones({t, t}, torch::TensorOptions().dtype(torch::kBool).device(x.device())).tril();
  const torch::Tensor attn = causal.view({1, 1, t, t}) & mask.to(torch::kBool).view({b, 1, 1, t});
  TransformerTrace* tr = trace && (is_training() || trace->in_eval) ? trace : nullptr;
  if (tr && tr->want_hidden) tr->hidden.push_back(x);
  for (auto& l : layers) {
    x = l(x, cos, sin, attn, tr);
    if (tr && tr->want_hidden) tr->hidden.push_back(x);
  }
  if (!tr || !tr->want_units) return norm(x);
  const torch::Tensor h = norm(x);
  tr->add_units("hidden", h);
  return h;
}

torch::Tensor LlamaImpl::forward(const torch::Tensor& ids, const torch::Tensor& mask) {
  if (!opts_.tied_embeddings) return lm_head(hidden_states(ids, mask));
  // The (fake-quantized) table once for the lookup and the tied head.
  const torch::Tensor w = embed->effective_weight();
  const torch::Tensor h = decode(torch::nn::functional::embedding(ids, w), mask);
  return torch::matmul(embed->head_input(h), w.t());
}

torch::Tensor unpermute_rotary_rows(const torch::Tensor& w, int64_t heads) {
  const int64_t half = w.size(0) / heads / 2;
  return w.reshape({heads, half, 2, w.size(1)}).transpose(1, 2).reshape(w.sizes());
}

torch::Tensor permute_rotary_rows(const torch::Tensor& w, int64_t heads) {
  const int64_t half = w.size(0) / heads / 2;
  return w.reshape({heads, 2, half, w.size(1)}).transpose(1, 2).reshape(w.sizes());
}

LlamaOptions read_llama_options(const fmt::GgufFile& f) {
  const std::string arch = f.get_string("general.architecture");
  if (arch != "llama") throw FormatError(f.path() + ": general.architecture is \"" + arch + "\", expected \"llama\"");
  const auto positive = [&](const std::string& key, int64_t hi) {
    const int64_t v = f.get_int(key);
    if (v <= 0 || v > hi) throw FormatError(f.path() + ": metadata " + key + " = " + std::to_string(v) + " is out of range");
    return v;
  };
  LlamaOptions o;
  o.layers = positive("llama.block_count", 1024);
  o.hidden = positive("llama.embedding_length", 1 << 16);
  o.ffn = positive("llama.feed_forward_length", 1 << 18);
  o.heads = positive("llama.attention.head_count", 1024);
  o.kv_heads = f.find_meta("llama.attention.head_count_kv") ? positive("llama.attention.head_count_kv", 1024) : o.heads;
  o.max_positions = positive("llama.context_length", 1 << 24);
  o.vocab = f.find_meta("llama.vocab_size") ? positive("llama.vocab_size", 1 << 22)
                                            : static_cast<int64_t>(f.get_strings("tokenizer.ggml.tokens").size());
  o.rope_theta = f.find_meta("llama.rope.freq_base") ? f.get_float("llama.rope.freq_base") : 10000.0;
  o.rms_eps = f.get_float("llama.attention.layer_norm_rms_epsilon");
  if (o.hidden % o.heads != 0 || o.heads % o.kv_heads != 0 || o.head_dim() % 2 != 0)
    throw FormatError(f.path() + ": llama.embedding_length / head_count / head_count_kv do not split into even heads");
  if (f.find_meta("llama.rope.dimension_count") && f.get_int("llama.rope.dimension_count") != o.head_dim())
    throw FormatError(f.path() + ": partial rotary embeddings (llama.rope.dimension_count != head size) are not supported");
  if (!(o.rope_theta > 0) || !(o.rms_eps > 0)) throw FormatError(f.path() + ": rope.freq_base and rms epsilon must be > 0");
  o.tied_embeddings = f.find("output.weight") == nullptr;
  return o;
}

Llama load_llama(const std::string& path) {
  const fmt::GgufFile f(path);
  const LlamaOptions o = read_llama_options(f);
  Llama m(o);
  torch::NoGradGuard g;
  const auto tensor = [&](const std::string& name, const std::vector<int64_t>& shape) {
    const fmt::GgufTensor& t = f.at(name);
    if (t.shape() != shape) {
      std::string want, got;
      for (int64_t d : shape) want += std::to_string(d) + " ";
      for (int64_t d : t.shape()) got += std::to_string(d) + " ";
      throw FormatError(f.path() + ": tensor '" + name + "' has shape [ " + got + "], the metadata implies [ " + want + "]");
    }
    std::vector<float> v = f.dequantize(t);
    return torch::from_blob(v.data(), shape, torch::kFloat32).clone();
  };
  const int64_t hd = o.head_dim();
  m->embed->weight.copy_(tensor("token_embd.weight", {o.vocab, o.hidden}));
  for (int64_t i = 0; i < o.layers; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    LlamaLayer& l = m->layers[static_cast<size_t>(i)];
    l->attn_norm->weight.copy_(tensor(p + "attn_norm.weight", {o.hidden}));
    l->q->weight.copy_(unpermute_rotary_rows(tensor(p + "attn_q.weight", {o.heads * hd, o.hidden}), o.heads));
    l->k->weight.copy_(unpermute_rotary_rows(tensor(p + "attn_k.weight", {o.kv_heads * hd, o.hidden}), o.kv_heads));
    l->v->weight.copy_(tensor(p + "attn_v.weight", {o.kv_heads * hd, o.hidden}));
    l->out->weight.copy_(tensor(p + "attn_output.weight", {o.hidden, o.heads * hd}));
    l->ffn_norm->weight.copy_(tensor(p + "ffn_norm.weight", {o.hidden}));
    l->gate->weight.copy_(tensor(p + "ffn_gate.weight", {o.ffn, o.hidden}));
    l->up->weight.copy_(tensor(p + "ffn_up.weight", {o.ffn, o.hidden}));
    l->down->weight.copy_(tensor(p + "ffn_down.weight", {o.hidden, o.ffn}));
  }
  m->norm->weight.copy_(tensor("output_norm.weight", {o.hidden}));
  if (!o.tied_embeddings) m->lm_head->weight.copy_(tensor("output.weight", {o.vocab, o.hidden}));
  m->eval();
  return m;
}

}  // namespace qd
