// BERT's WordPiece tokenizer, as Hugging Face tokenizers runs it for an uncased BERT
// (all-MiniLM-L6-v2's tokenizer.json): split on the added special tokens ([CLS], [MASK], ... typed
// literally), BertNormalizer (drop control characters, map whitespace to ' ', put spaces around CJK
// ideographs, NFD and drop nonspacing marks, lowercase), BertPreTokenizer (split on whitespace,
// every punctuation character alone), then WordPiece (greedy longest match, "##" continuations, a
// word that cannot be covered, or longer than max_input_chars_per_word, becomes [UNK]), and the
// template [CLS] A [SEP]. Produces exactly the reference's ids (tests/text/tokenizer_test.cpp).
// Loaded from tokenizer.json, validated; no LibTorch.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "text/special_tokens.h"

namespace qd::text {

class WordPieceTokenizer {
 public:
  // Reads a Hugging Face tokenizer.json whose model is WordPiece with a BertNormalizer and a
  // BertPreTokenizer. Throws fmt::FormatError (exit code 2) naming the file and the key otherwise.
  static WordPieceTokenizer from_file(const std::string& tokenizer_json);
  // The same from the parsed file; `path` names it in messages.
  static WordPieceTokenizer from_json(const nlohmann::json& j, const std::string& path);

  // Vocabulary pruning. The ids every pruned vocabulary keeps whatever the corpus: the special
  // tokens (added_tokens, [UNK]) and every single character, alone and as a "##" continuation, so
  // any word still splits into pieces (the rarer words of new text into shorter ones, not [UNK]).
  std::vector<int32_t> base_ids() const;
  // `tokenizer_json` (this tokenizer's file) with only the tokens `keep` (increasing old ids), renumbered
  // 0.. in their old order: model.vocab, added_tokens, the post-processor's and the padding's ids.
  // A text whose pieces are all kept tokenizes to the same pieces (greedy longest match finds no
  // longer kept piece that was not a piece before), with new id i for old id keep[i].
  static nlohmann::json pruned_json(const nlohmann::json& tokenizer_json, const std::vector<int32_t>& keep);

  // Token ids of `text`; with `add_special`, [CLS] ... [SEP].
  std::vector<int32_t> encode(std::string_view text, bool add_special = true) const;
  // The same as token strings (for messages and tests).
  std::vector<std::string> tokenize(std::string_view text) const;

  int32_t cls_id() const { return cls_; }
  int32_t sep_id() const { return sep_; }
  int32_t pad_id() const { return pad_; }
  int32_t unk_id() const { return unk_; }
  size_t vocab_size() const { return id_to_token_.size(); }
  const std::string& token(int32_t id) const { return id_to_token_.at(static_cast<size_t>(id)); }

 private:
  void encode_words(std::u32string_view normalized, std::vector<int32_t>& out) const;
  void wordpiece(std::u32string_view word, std::vector<int32_t>& out) const;

  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  SpecialTokens added_;  // literal special tokens, longest first
  bool clean_text_ = true, handle_chinese_ = true, strip_accents_ = true, lowercase_ = true;
  std::string prefix_ = "##";
  size_t max_chars_ = 100;
  int32_t unk_ = -1, cls_ = -1, sep_ = -1, pad_ = -1;
};

}  // namespace qd::text
