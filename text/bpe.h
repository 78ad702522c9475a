// Byte-level BPE (GPT-2's scheme) as llama.cpp runs it from a GGUF file's tokenizer metadata:
// tokenizer.ggml.{tokens, token_type, merges, pre, bos_token_id, eos_token_id, add_bos_token}.
//   1. control and user-defined tokens typed literally in the text are matched first (optional);
//   2. pre-tokenization by the regex that tokenizer.ggml.pre names: for "smollm" (and starcoder,
//      refact, command-r, codeshell, exaone) every \p{N} code point alone, then GPT-2's
//      's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ on each piece;
//      "gpt2" (and mpt, olmo, jais) the GPT-2 regex alone;
//   3. each piece's UTF-8 bytes mapped to GPT-2's printable byte characters, merged by rank.
// The regexes are matched by hand (as llama.cpp does), with Unicode categories from utf8proc.
// No LibTorch.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "text/special_tokens.h"

namespace qd::fmt {
class GgufFile;
}

namespace qd::text {

class BpeTokenizer {
 public:
  // Reads the tokenizer from GGUF metadata; FormatError naming the file and the key when it is
  // missing, inconsistent (a merge of unknown tokens, ids out of range) or a pre-tokenizer this
  // implementation does not have.
  static BpeTokenizer from_gguf(const fmt::GgufFile& f);
  // The same tokenizer as JSON: GGUF's keys without their "tokenizer.ggml." prefix ("model",
  // "pre", "tokens", "token_type", "merges", "bos_token_id", "eos_token_id", "add_bos_token"). How
  // a `.qdm` carries it (runtime/qdm.h metadata "tokenizer.bpe"); from_json validates as from_gguf
  // does, messages naming `path` and the key.
  nlohmann::json to_json() const;
  static BpeTokenizer from_json(const nlohmann::json& j, const std::string& path);

  // Token ids; `parse_special`: control tokens written in the text (e.g. "<|im_start|>") become
  // their ids, as in chat prompts; `add_bos`: prepend bos when the model asks for it
  // (tokenizer.ggml.add_bos_token).
  std::vector<int32_t> encode(std::string_view text, bool parse_special = true, bool add_bos = true) const;
  // The text of ids (byte-level decoding; control tokens as written).
  std::string decode(const std::vector<int32_t>& ids) const;
  // Pre-tokenization alone (for tests): the pieces of `text`.
  std::vector<std::string> pre_tokenize(std::string_view text) const;

  size_t vocab_size() const { return tokens_.size(); }
  const std::string& token(int32_t id) const { return tokens_.at(static_cast<size_t>(id)); }
  int32_t bos_id() const { return bos_; }
  int32_t eos_id() const { return eos_; }
  const std::string& pre() const { return pre_; }

 private:
  void encode_piece(std::string_view piece, std::vector<int32_t>& out) const;
  void encode_text(std::string_view text, std::vector<int32_t>& out) const;

  struct Parts;  // what from_gguf and from_json read, validated once (bpe.cpp)
  static BpeTokenizer from_parts(const Parts& p);

  std::vector<std::string> tokens_;
  std::vector<int32_t> token_types_;  // empty: not given
  std::vector<std::string> merges_;
  std::unordered_map<std::string, int32_t> ids_;
  std::map<std::pair<std::string, std::string>, int32_t> ranks_;
  SpecialTokens specials_;  // control and user-defined tokens, longest first
  std::string pre_;
  bool split_digits_ = true;
  int32_t bos_ = -1, eos_ = -1;
  bool add_bos_ = false;
};

}  // namespace qd::text
