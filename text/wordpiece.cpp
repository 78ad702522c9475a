#include "text/wordpiece.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "formats/json_file.h"
#include "text/unicode.h"

namespace qd::text {

using fmt::FormatError;

namespace {

// The CJK ideograph blocks of HF tokenizers' BertNormalizer (is_chinese_char).
bool is_chinese_char(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
         (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

bool is_bert_whitespace(char32_t c) { return c == U'\t' || c == U'\n' || c == U'\r' || is_white_space(c); }
bool is_bert_control(char32_t c) { return c != U'\t' && c != U'\n' && c != U'\r' && is_other(c); }
bool is_bert_punctuation(char32_t c) {
  const bool ascii = (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126);
  return ascii || is_punctuation(c);
}

const nlohmann::json& need(const nlohmann::json& j, const char* key, const std::string& path, const std::string& where) {
  if (!j.is_object() || !j.contains(key)) throw FormatError(path + ": " + where + key + " is missing");
  return j[key];
}

}  // namespace

WordPieceTokenizer WordPieceTokenizer::from_file(const std::string& path) {
  return from_json(fmt::read_json_file(path), path);
}

WordPieceTokenizer WordPieceTokenizer::from_json(const nlohmann::json& j, const std::string& path) {
  WordPieceTokenizer t;
  const nlohmann::json& model = need(j, "model", path, "");
  if (need(model, "type", path, "model.") != "WordPiece")
    throw FormatError(path + ": model.type is " + model["type"].dump() + ", expected \"WordPiece\"");
  const nlohmann::json& vocab = need(model, "vocab", path, "model.");
  if (!vocab.is_object() || vocab.empty()) throw FormatError(path + ": model.vocab must be a non-empty object");
  t.id_to_token_.resize(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 || it.value().get<int64_t>() >= static_cast<int64_t>(vocab.size()))
      throw FormatError(path + ": model.vocab[" + nlohmann::json(it.key()).dump() + "] = " + it.value().dump() +
                        " is not an id in [0, " + std::to_string(vocab.size()) + ")");
    const int32_t id = it.value().get<int32_t>();
    if (!t.id_to_token_[static_cast<size_t>(id)].empty() || it.key().empty())
      throw FormatError(path + ": model.vocab: id " + std::to_string(id) + " is given twice (or to an empty token)");
    t.id_to_token_[static_cast<size_t>(id)] = it.key();
    t.vocab_.emplace(it.key(), id);
  }
  t.prefix_ = model.value("continuing_subword_prefix", std::string("##"));
  t.max_chars_ = model.value("max_input_chars_per_word", size_t{100});
  const auto id_of = [&](const std::string& tok, const char* what) {
    const auto f = t.vocab_.find(tok);
    if (f == t.vocab_.end()) throw FormatError(path + ": " + what + " " + tok + " is not in the vocabulary");
    return f->second;
  };
  t.unk_ = id_of(model.value("unk_token", std::string("[UNK]")), "model.unk_token");

  const nlohmann::json& norm = need(j, "normalizer", path, "");
  if (!norm.is_object() || norm.value("type", "") != "BertNormalizer")
    throw FormatError(path + ": normalizer must be a BertNormalizer (got " + norm.dump().substr(0, 80) + ")");
  t.clean_text_ = norm.value("clean_text", true);
  t.handle_chinese_ = norm.value("handle_chinese_chars", true);
  t.lowercase_ = norm.value("lowercase", true);
  t.strip_accents_ = norm.contains("strip_accents") && norm["strip_accents"].is_boolean() ? norm["strip_accents"].get<bool>()
                                                                                        : t.lowercase_;
  const nlohmann::json& pre = need(j, "pre_tokenizer", path, "");
  if (!pre.is_object() || pre.value("type", "") != "BertPreTokenizer")
    throw FormatError(path + ": pre_tokenizer must be a BertPreTokenizer (got " + pre.dump().substr(0, 80) + ")");
  t.cls_ = id_of("[CLS]", "the special token");
  t.sep_ = id_of("[SEP]", "the special token");
  t.pad_ = id_of("[PAD]", "the special token");
  if (j.contains("added_tokens") && j["added_tokens"].is_array())
    for (const nlohmann::json& a : j["added_tokens"]) {
      if (!a.is_object() || !a.contains("content") || !a["content"].is_string() || !a.contains("id") || !a["id"].is_number_integer())
        throw FormatError(path + ": added_tokens: an entry without content and id");
      const int64_t id = a["id"].get<int64_t>();
      if (id < 0 || id >= static_cast<int64_t>(t.id_to_token_.size()))
        throw FormatError(path + ": added token " + a["content"].dump() + " has id " + std::to_string(id) + ", outside the vocabulary");
      if (!a["content"].get<std::string>().empty()) t.added_.emplace_back(a["content"].get<std::string>(), static_cast<int32_t>(id));
    }
  sort_longest_first(t.added_);
  return t;
}

std::vector<int32_t> WordPieceTokenizer::base_ids() const {
  std::vector<int32_t> ids = {unk_, cls_, sep_, pad_};
  for (const auto& a : added_) ids.push_back(a.second);
  for (size_t i = 0; i < id_to_token_.size(); ++i) {
    std::string_view tok = id_to_token_[i];
    if (tok.size() > prefix_.size() && tok.substr(0, prefix_.size()) == prefix_) tok.remove_prefix(prefix_.size());
    if (decode_utf8(tok).size() == 1) ids.push_back(static_cast<int32_t>(i));
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

nlohmann::json WordPieceTokenizer::pruned_json(const nlohmann::json& original, const std::vector<int32_t>& keep) {
  nlohmann::json j = original;
  const nlohmann::json& vocab = original.at("model").at("vocab");
  std::vector<int32_t> new_id(vocab.size(), -1);
  for (size_t i = 0; i < keep.size(); ++i) {
    QD_CHECK(keep[i] >= 0 && static_cast<size_t>(keep[i]) < vocab.size() && (i == 0 || keep[i] > keep[i - 1]), Error,
             "vocabulary pruning: kept ids must increase and lie in the vocabulary");
    new_id[static_cast<size_t>(keep[i])] = static_cast<int32_t>(i);
  }
  const auto remap = [&](const nlohmann::json& id, const std::string& what) {
    const int64_t old = id.get<int64_t>();
    QD_CHECK(old >= 0 && static_cast<size_t>(old) < new_id.size() && new_id[static_cast<size_t>(old)] >= 0, Error,
             "vocabulary pruning: ", what, " (id ", old, ") is not kept");
    return new_id[static_cast<size_t>(old)];
  };
  nlohmann::json pruned = nlohmann::json::object();
  for (auto it = vocab.begin(); it != vocab.end(); ++it)
    if (new_id.at(it.value().get<size_t>()) >= 0) pruned[it.key()] = new_id[it.value().get<size_t>()];
  j["model"]["vocab"] = std::move(pruned);
  if (j.contains("added_tokens") && j["added_tokens"].is_array())
    for (auto& a : j["added_tokens"]) a["id"] = remap(a.at("id"), "added token " + a.value("content", std::string()));
  if (j.contains("post_processor") && j["post_processor"].is_object() && j["post_processor"].contains("special_tokens"))
    for (auto& [name, st] : j["post_processor"]["special_tokens"].items())
      if (st.contains("ids"))
        for (auto& id : st["ids"]) id = remap(id, "special token " + name);
  if (j.contains("padding") && j["padding"].is_object() && j["padding"].contains("pad_id"))
    j["padding"]["pad_id"] = remap(j["padding"]["pad_id"], "the padding token");
  return j;
}

void WordPieceTokenizer::wordpiece(std::u32string_view word, std::vector<int32_t>& out) const {
  if (word.size() > max_chars_) {
    out.push_back(unk_);
    return;
  }
  const size_t start_size = out.size();
  size_t start = 0;
  std::string piece;
  while (start < word.size()) {
    size_t end = word.size();
    int32_t found = -1;
    while (start < end) {  // greedy: the longest prefix in the vocabulary
      piece = start > 0 ? prefix_ : std::string();
      piece += encode_utf8(word.substr(start, end - start));
      const auto it = vocab_.find(piece);
      if (it != vocab_.end()) {
        found = it->second;
        break;
      }
      --end;
    }
    if (found < 0) {  // the word cannot be covered: one [UNK] for all of it
      out.resize(start_size);
      out.push_back(unk_);
      return;
    }
    out.push_back(found);
    start = end;
  }
}

void WordPieceTokenizer::encode_words(std::u32string_view text, std::vector<int32_t>& out) const {
  // BertNormalizer.
  std::u32string s;
  s.reserve(text.size());
  for (char32_t c : text) {
    if (clean_text_ && (c == 0 || c == 0xFFFD || is_bert_control(c))) continue;
    const char32_t d = clean_text_ && is_bert_whitespace(c) ? U' ' : c;
    if (handle_chinese_ && is_chinese_char(d)) {
      s += U' ';
      s += d;
      s += U' ';
    } else {
      s += d;
    }
  }
  if (strip_accents_) {
    std::u32string stripped;
    for (char32_t c : nfd(s))
      if (!is_mark_nonspacing(c)) stripped += c;
    s.swap(stripped);
  }
  if (lowercase_) {
    std::u32string lower;
    lower.reserve(s.size());
    for (char32_t c : s) append_lower(lower, c);
    s.swap(lower);
  }
  // BertPreTokenizer, then WordPiece on each word.
  std::u32string word;
  for (char32_t c : s) {
    if (is_white_space(c)) {
      if (!word.empty()) wordpiece(word, out), word.clear();
    } else if (is_bert_punctuation(c)) {
      if (!word.empty()) wordpiece(word, out), word.clear();
      wordpiece(std::u32string(1, c), out);
    } else {
      word += c;
    }
  }
  if (!word.empty()) wordpiece(word, out);
}

std::vector<int32_t> WordPieceTokenizer::encode(std::string_view text, bool add_special) const {
  std::vector<int32_t> out;
  if (add_special) out.push_back(cls_);
  // The added tokens are matched on the raw text first (they are not normalized).
  split_on_specials(
      text, added_, [&](std::string_view plain) { encode_words(decode_utf8(plain), out); },
      [&](int32_t id) { out.push_back(id); });
  if (add_special) out.push_back(sep_);
  return out;
}

std::vector<std::string> WordPieceTokenizer::tokenize(std::string_view text) const {
  std::vector<std::string> out;
  for (int32_t id : encode(text, false)) out.push_back(token(id));
  return out;
}

}  // namespace qd::text
