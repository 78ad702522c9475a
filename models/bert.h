// A BERT encoder (Hugging Face's BertModel: post-LayerNorm, absolute positions, token types,
// exact GELU) and its sentence embedding (sentence-transformers' mean pooling over the attention
// mask, then L2 normalization), loadable from a Hugging Face folder (config.json +
// model.safetensors, read by formats/) such as all-MiniLM-L6-v2's.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "models/linear.h"
#include "models/structure.h"

namespace qd {

struct BertOptions {
  int64_t vocab = 30522, hidden = 384, layers = 6, heads = 12, ffn = 1536, max_positions = 512, type_vocab = 2;
  double layer_norm_eps = 1e-12;
  int64_t embedding_dim = 0;  // > 0: a linear projection of the pooled embedding to this width (sentence-transformers' Dense)
  int64_t embedding_rank = 0;  // > 0: the word embedding is a [vocab, rank] table and a rank -> hidden projection (ALBERT)
  int64_t head_size = 0;       // 0: hidden / heads (a model with pruned heads keeps their size)
  int64_t head_dim() const { return head_size > 0 ? head_size : hidden / heads; }
};

// Hugging Face's LayerNorm (weight and bias over the last dimension) that hidden-size pruning can
// restrict: the mean and variance run over the kept features only (the pruned ones are 0 and stay
// 0, their weight and bias being 0), so a masked model computes what the smaller one does.
class BertNormImpl : public torch::nn::Module, public PrunableNorm {
 public:
  BertNormImpl(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);
  void set_kept(const torch::Tensor& keep) override;
  double eps() const { return eps_; }
  bool restricted() const { return keep_.defined(); }  // a masked hidden size (before physical removal)
  torch::Tensor weight, bias;

 private:
  double eps_;
  torch::Tensor keep_;  // [dim] float 1 / 0; undefined: all kept
  double kept_ = 0;     // keep_'s sum, counted once (no host sync per forward)
};
TORCH_MODULE(BertNorm);

class BertLayerImpl : public torch::nn::Module {
 public:
  explicit BertLayerImpl(const BertOptions& o);
  // x [B, T, H], key_mask [B, 1, 1, T] bool (true: attend) -> [B, T, H]
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& key_mask, TransformerTrace* trace = nullptr);
  Linear query{nullptr}, key{nullptr}, value{nullptr}, attn_out{nullptr}, ffn_in{nullptr}, ffn_out{nullptr};
  BertNorm attn_norm{nullptr}, ffn_norm{nullptr};
  std::string name;  // "layer<i>": its prunable groups' prefix (TransformerTrace::units)

 private:
  int64_t heads_, head_dim_;
};
TORCH_MODULE(BertLayer);

class BertEncoderImpl : public torch::nn::Module {
 public:
  explicit BertEncoderImpl(const BertOptions& o);
  // ids [B, T] int64, mask [B, T] (1: token, 0: padding) -> last hidden states [B, T, H].
  torch::Tensor forward(const torch::Tensor& ids, const torch::Tensor& mask);
  // The sentence embedding: masked mean of the last hidden states (projected to embedding_dim when
  // set), L2-normalized. [B, H or embedding_dim]
  torch::Tensor embed(const torch::Tensor& ids, const torch::Tensor& mask);
  int64_t embedding_dim() const { return opts_.embedding_dim > 0 ? opts_.embedding_dim : opts_.hidden; }
  const BertOptions& options() const { return opts_; }
  TransformerTrace* trace = nullptr;  // filled by training forwards when set (feature KD)

  Embedding word{nullptr}, position{nullptr}, token_type{nullptr};
  Linear word_proj{nullptr};  // embedding_rank > 0 only: rank -> hidden, no bias
  BertNorm embed_norm{nullptr};
  std::vector<BertLayer> layers;
  Linear dense{nullptr};  // embedding_dim > 0 only

 private:
  BertOptions opts_;
};
TORCH_MODULE(BertEncoder);

// sentence-transformers' pooling: the mean of h [B, T, H] over mask [B, T] (1: token). [B, H]
torch::Tensor masked_mean(const torch::Tensor& h, const torch::Tensor& mask);
// The same, L2-normalized.
torch::Tensor masked_mean_normalized(const torch::Tensor& h, const torch::Tensor& mask);

// Options from a Hugging Face config.json (model_type bert, hidden_act gelu, absolute positions);
// FormatError naming the file and key otherwise.
BertOptions read_bert_config(const std::string& config_json);
// The encoder of a Hugging Face BERT folder (config.json, model.safetensors): every tensor the
// encoder needs, shape-checked, names as BertModel's (with or without a "bert." prefix; the
// pooler is not used). FormatError for a missing or misshapen tensor.
BertEncoder load_bert(const std::string& folder);
// `full` with its [vocab, hidden] word embedding W replaced by the rank-`rank` truncated SVD
// W ~ (U_r S_r) V_r^T: the table U_r S_r [vocab, rank] and the projection V_r [hidden, rank]
// (word_proj); every other tensor copied. UserError unless 0 < rank < hidden.
BertEncoder factorize_word_embedding(const BertEncoder& full, int64_t rank);

}  // namespace qd
