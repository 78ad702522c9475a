// A Llama-architecture decoder (Hugging Face's LlamaForCausalLM: RMSNorm, rotary positions in the
// rotate-half layout, grouped-query attention, SwiGLU feed-forward, optionally tied embeddings),
// loadable from a llama.cpp GGUF file (formats/), whose quantized tensors are dequantized to float
// and whose Q/K rows are brought back from llama.cpp's interleaved rotary layout.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "models/linear.h"
#include "models/structure.h"

namespace qd {

namespace fmt {
class GgufFile;
}

struct LlamaOptions {
  int64_t vocab = 49152, hidden = 576, layers = 30, heads = 9, kv_heads = 3, ffn = 1536, max_positions = 8192;
  int64_t head_size = 0;  // 0: hidden / heads
  double rope_theta = 100000.0, rms_eps = 1e-5;
  bool tied_embeddings = true;
  int64_t head_dim() const { return head_size > 0 ? head_size : hidden / heads; }
};

class RmsNormImpl : public torch::nn::Module, public PrunableNorm {
 public:
  RmsNormImpl(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);  // as Hugging Face's LlamaRMSNorm, in float32
  // Hidden-size pruning: the mean of squares runs over the kept features only (the pruned ones are 0).
  void set_kept(const torch::Tensor& keep) override;
  double eps() const { return eps_; }
  bool restricted() const { return kept_ > 0; }  // a masked hidden size (before physical removal)
  torch::Tensor weight;

 private:
  double eps_;
  int64_t kept_ = 0;  // 0: all
};
TORCH_MODULE(RmsNorm);

class LlamaLayerImpl : public torch::nn::Module {
 public:
  explicit LlamaLayerImpl(const LlamaOptions& o);
  // x [B, T, H]; cos, sin [T, head_dim]; mask [B, 1, T, T] bool (true: attend) -> [B, T, H]
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin, const torch::Tensor& mask,
                        TransformerTrace* trace = nullptr);
  RmsNorm attn_norm{nullptr}, ffn_norm{nullptr};
  QuantPoint k_cache{nullptr}, v_cache{nullptr};  // keys (after rotary) and values as the KV cache holds them
  Linear q{nullptr}, k{nullptr}, v{nullptr}, out{nullptr}, gate{nullptr}, up{nullptr}, down{nullptr};
  std::string name;  // "layer<i>": its prunable groups' prefix (TransformerTrace::units)

 private:
  int64_t heads_, kv_heads_, head_dim_;
};
TORCH_MODULE(LlamaLayer);

class LlamaImpl : public torch::nn::Module {
 public:
  explicit LlamaImpl(const LlamaOptions& o);
  // ids [B, T] int64, mask [B, T] (1: token, 0: padding at the end) -> logits [B, T, vocab]
  torch::Tensor forward(const torch::Tensor& ids, const torch::Tensor& mask);
  torch::Tensor hidden_states(const torch::Tensor& ids, const torch::Tensor& mask);  // [B, T, H], after the final norm
  const LlamaOptions& options() const { return opts_; }
  TransformerTrace* trace = nullptr;  // filled by training forwards when set (feature KD)

  Embedding embed{nullptr};
  std::vector<LlamaLayer> layers;
  RmsNorm norm{nullptr};
  Linear lm_head{nullptr};  // untied embeddings only

 private:
  // The layers and the final norm over embedded tokens x [B, T, H].
  torch::Tensor decode(torch::Tensor x, const torch::Tensor& mask);
  LlamaOptions opts_;
  torch::Tensor inv_freq_;  // [head_dim / 2], float32, as Hugging Face computes it
};
TORCH_MODULE(Llama);

// Options from GGUF metadata (general.architecture "llama", llama.*); FormatError otherwise.
LlamaOptions read_llama_options(const fmt::GgufFile& f);
// The model of a llama.cpp GGUF file, every tensor dequantized and shape-checked.
Llama load_llama(const std::string& gguf_path);

// llama.cpp's converter stores Q and K rows interleaved for its rotary kernel; these map between
// that layout and Hugging Face's ([heads * head_dim, in] weights, `heads` of the tensor).
torch::Tensor unpermute_rotary_rows(const torch::Tensor& w, int64_t heads);
torch::Tensor permute_rotary_rows(const torch::Tensor& w, int64_t heads);

}  // namespace qd
