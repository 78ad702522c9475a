#include "text/bpe.h"

#include <algorithm>
#include <climits>

#include "formats/gguf.h"
#include "text/unicode.h"

namespace qd::text {

using fmt::FormatError;

namespace {

// GPT-2's bytes_to_unicode: printable bytes map to themselves, the others to U+0100 onwards.
const std::vector<std::string>& byte_chars() {
  static const std::vector<std::string> table = [] {
    std::vector<std::string> t(256);
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      std::string s;
      append_utf8(s, printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++));
      t[static_cast<size_t>(b)] = s;
    }
    return t;
  }();
  return table;
}

const std::unordered_map<std::string, uint8_t>& char_bytes() {
  static const std::unordered_map<std::string, uint8_t> m = [] {
    std::unordered_map<std::string, uint8_t> r;
    for (int b = 0; b < 256; ++b) r[byte_chars()[static_cast<size_t>(b)]] = static_cast<uint8_t>(b);
    return r;
  }();
  return m;
}

// llama.cpp's code point flags; `any` is false only past the end of the piece (an unassigned code
// point has llama.cpp's UNDEFINED flag, so [^\s\p{L}\p{N}] takes it, as a regex engine would).
struct Flags {
  bool letter = false, number = false, space = false, any = false;
};
Flags flags_of(const std::u32string& s, size_t i) {
  Flags f;
  if (i >= s.size()) return f;
  const char32_t c = s[i];
  f.letter = is_letter(c), f.number = is_number(c), f.space = is_white_space(c);
  f.any = true;
  return f;
}

// GPT-2's pattern on code points [begin, end) of s: the cut positions (llama.cpp's
// unicode_regex_split_custom_gpt2, whose lookahead never sees past the piece).
void split_gpt2(const std::u32string& s, size_t begin, size_t end, std::vector<size_t>& cuts) {
  const auto cpt = [&](size_t i) -> char32_t { return i < end ? s[i] : 0xFFFFFFFF; };
  const auto flags = [&](size_t i) { return i < end ? flags_of(s, i) : Flags{}; };
  size_t pos = begin;
  while (pos < end) {
    const char32_t c = s[pos];
    if (c == U'\'' && pos + 1 < end) {  // 's|'t|'re|'ve|'m|'ll|'d
      const char32_t n1 = cpt(pos + 1), n2 = cpt(pos + 2);
      if (n1 == U's' || n1 == U't' || n1 == U'm' || n1 == U'd') {
        cuts.push_back(pos += 2);
        continue;
      }
      if ((n1 == U'r' && n2 == U'e') || (n1 == U'v' && n2 == U'e') || (n1 == U'l' && n2 == U'l')) {
        cuts.push_back(pos += 3);
        continue;
      }
    }
    Flags f2 = c == U' ' ? flags(pos + 1) : flags(pos);
    if (f2.letter) {  //  ?\p{L}+
      pos += c == U' ';
      while (flags(pos).letter) ++pos;
      cuts.push_back(pos);
      continue;
    }
    if (f2.number) {  //  ?\p{N}+
      pos += c == U' ';
      while (flags(pos).number) ++pos;
      cuts.push_back(pos);
      continue;
    }
    if (!(f2.space || f2.letter || f2.number) && f2.any) {  //  ?[^\s\p{L}\p{N}]+
      pos += c == U' ';
      for (Flags f = flags(pos); !(f.space || f.letter || f.number) && f.any; f = flags(++pos)) {
      }
      cuts.push_back(pos);
      continue;
    }
    size_t spaces = 0;
    while (flags(pos + spaces).space) ++spaces;
    if (spaces > 1 && pos + spaces < end) {  // \s+(?!\S): leave the last space to the next piece
      cuts.push_back(pos += spaces - 1);
      continue;
    }
    if (spaces > 0) {  // \s+
      cuts.push_back(pos += spaces);
      continue;
    }
    cuts.push_back(++pos);  // no match: one code point
  }
}

}  // namespace

struct BpeTokenizer::Parts {
  std::string path, prefix;  // messages: "<path>: <prefix><key> ..."
  std::string model, pre = "default";
  std::vector<std::string> tokens, merges;
  std::vector<int64_t> token_types;  // empty: not given
  int64_t bos = -1, eos = -1;        // -1: not given
  bool add_bos = false;
};

BpeTokenizer BpeTokenizer::from_parts(const Parts& p) {
  const std::string at = p.path + ": " + p.prefix;
  if (p.model != "gpt2") throw FormatError(at + "model is \"" + p.model + "\"; only byte-level BPE (\"gpt2\") is supported");
  BpeTokenizer t;
  t.pre_ = p.pre;
  static const char* const kDigitsFirst[] = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone"};
  static const char* const kGpt2[] = {"gpt2", "mpt", "olmo", "jais", "default"};
  if (std::find(std::begin(kDigitsFirst), std::end(kDigitsFirst), t.pre_) != std::end(kDigitsFirst)) t.split_digits_ = true;
  else if (std::find(std::begin(kGpt2), std::end(kGpt2), t.pre_) != std::end(kGpt2)) t.split_digits_ = false;
  else
    throw FormatError(at + "pre \"" + t.pre_ +
                      "\" is not supported (smollm, starcoder, refact, command-r, codeshell, exaone, gpt2, mpt, olmo, jais)");
  t.tokens_ = p.tokens;
  if (t.tokens_.empty() || t.tokens_.size() > INT32_MAX) throw FormatError(at + "tokens is empty");
  for (size_t i = 0; i < t.tokens_.size(); ++i)
    if (!t.ids_.emplace(t.tokens_[i], static_cast<int32_t>(i)).second)
      throw FormatError(at + "tokens: token " + std::to_string(i) + " repeats an earlier token");
  if (!p.token_types.empty() && p.token_types.size() != t.tokens_.size())
    throw FormatError(at + "token_type has " + std::to_string(p.token_types.size()) + " entries for " +
                      std::to_string(t.tokens_.size()) + " tokens");
  for (size_t i = 0; i < p.token_types.size(); ++i) {
    if (p.token_types[i] < 0 || p.token_types[i] > 6)
      throw FormatError(at + "token_type[" + std::to_string(i) + "] = " + std::to_string(p.token_types[i]) + " is not a token type (0-6)");
    t.token_types_.push_back(static_cast<int32_t>(p.token_types[i]));
    if ((p.token_types[i] == 3 || p.token_types[i] == 4) && !t.tokens_[i].empty())  // CONTROL, USER_DEFINED
      t.specials_.emplace_back(t.tokens_[i], static_cast<int32_t>(i));
  }
  sort_longest_first(t.specials_);
  t.merges_ = p.merges;
  for (size_t r = 0; r < p.merges.size(); ++r) {
    const std::string& m = p.merges[r];
    const size_t sp = m.find(' ', 1);
    if (sp == std::string::npos || sp + 1 >= m.size())
      throw FormatError(at + "merges[" + std::to_string(r) + "] \"" + m + "\" is not \"A B\"");
    t.ranks_.emplace(std::make_pair(m.substr(0, sp), m.substr(sp + 1)), static_cast<int32_t>(r));
  }
  const auto id = [&](const char* key, int64_t v) -> int32_t {
    if (v == -1) return -1;
    if (v < 0 || v >= static_cast<int64_t>(t.tokens_.size()))
      throw FormatError(at + key + " = " + std::to_string(v) + " is not a token id");
    return static_cast<int32_t>(v);
  };
  t.bos_ = id("bos_token_id", p.bos);
  t.eos_ = id("eos_token_id", p.eos);
  t.add_bos_ = p.add_bos;
  return t;
}

BpeTokenizer BpeTokenizer::from_gguf(const fmt::GgufFile& f) {
  Parts p;
  p.path = f.path();
  p.prefix = "tokenizer.ggml.";
  p.model = f.get_string("tokenizer.ggml.model");
  if (f.find_meta("tokenizer.ggml.pre")) p.pre = f.get_string("tokenizer.ggml.pre");
  p.tokens = f.get_strings("tokenizer.ggml.tokens");
  if (const fmt::GgufValue* types = f.find_meta("tokenizer.ggml.token_type")) {
    if (types->ints.size() != types->array_size())
      throw FormatError(p.path + ": tokenizer.ggml.token_type must be an array of integers");
    p.token_types.assign(types->ints.begin(), types->ints.end());
    if (p.token_types.empty() && types->array_size() != 0)
      throw FormatError(p.path + ": tokenizer.ggml.token_type must be an array of integers");
  }
  p.merges = f.get_strings("tokenizer.ggml.merges");
  // A negative id in the file is as wrong as one past the vocabulary (-1 means "not given" here).
  const auto id = [&](const char* key) -> int64_t {
    if (!f.find_meta(key)) return -1;
    const int64_t v = f.get_int(key);
    if (v < 0) throw FormatError(p.path + ": " + key + " = " + std::to_string(v) + " is not a token id");
    return v;
  };
  p.bos = id("tokenizer.ggml.bos_token_id");
  p.eos = id("tokenizer.ggml.eos_token_id");
  p.add_bos = f.find_meta("tokenizer.ggml.add_bos_token") ? f.get_int("tokenizer.ggml.add_bos_token") != 0 : false;
  return from_parts(p);
}

nlohmann::json BpeTokenizer::to_json() const {
  nlohmann::json j = {{"model", "gpt2"}, {"pre", pre_}, {"tokens", tokens_}, {"merges", merges_}, {"add_bos_token", add_bos_}};
  if (!token_types_.empty()) j["token_type"] = token_types_;
  if (bos_ >= 0) j["bos_token_id"] = bos_;
  if (eos_ >= 0) j["eos_token_id"] = eos_;
  return j;
}

BpeTokenizer BpeTokenizer::from_json(const nlohmann::json& j, const std::string& path) {
  if (!j.is_object()) throw FormatError(path + ": the BPE tokenizer must be a JSON object");
  Parts p;
  p.path = path;
  const auto str = [&](const char* key) -> std::string {
    if (!j.contains(key) || !j[key].is_string()) throw FormatError(path + ": " + key + " must be a string");
    return j[key].get<std::string>();
  };
  const auto strings = [&](const char* key) {
    if (!j.contains(key) || !j[key].is_array()) throw FormatError(path + ": " + key + " must be an array of strings");
    std::vector<std::string> v;
    v.reserve(j[key].size());
    for (const auto& e : j[key]) {
      if (!e.is_string()) throw FormatError(path + ": " + key + "[" + std::to_string(v.size()) + "] must be a string");
      v.push_back(e.get<std::string>());
    }
    return v;
  };
  const auto integer = [&](const char* key, int64_t absent) -> int64_t {
    if (!j.contains(key)) return absent;
    if (!j[key].is_number_integer() || j[key].get<int64_t>() < 0) throw FormatError(path + ": " + key + " must be an integer >= 0");
    return j[key].get<int64_t>();
  };
  p.model = str("model");
  if (j.contains("pre")) p.pre = str("pre");
  p.tokens = strings("tokens");
  p.merges = strings("merges");
  if (j.contains("token_type")) {
    if (!j["token_type"].is_array()) throw FormatError(path + ": token_type must be an array of integers");
    for (const auto& e : j["token_type"]) {
      if (!e.is_number_integer()) throw FormatError(path + ": token_type[" + std::to_string(p.token_types.size()) + "] must be an integer");
      p.token_types.push_back(e.get<int64_t>());
    }
  }
  p.bos = integer("bos_token_id", -1);
  p.eos = integer("eos_token_id", -1);
  if (j.contains("add_bos_token")) {
    if (!j["add_bos_token"].is_boolean()) throw FormatError(path + ": add_bos_token must be true or false");
    p.add_bos = j["add_bos_token"].get<bool>();
  }
  return from_parts(p);
}

std::vector<std::string> BpeTokenizer::pre_tokenize(std::string_view text) const {
  const std::u32string s = decode_utf8(text);
  std::vector<size_t> cuts;
  size_t start = 0;
  for (size_t i = 0; i <= s.size(); ++i) {
    // \p{N} alone first (llama.cpp's first regex), the GPT-2 pattern on what lies between.
    if (i == s.size() || (split_digits_ && is_number(s[i]))) {
      if (start < i) split_gpt2(s, start, i, cuts);
      if (i < s.size()) cuts.push_back(i + 1);
      start = i + 1;
    }
  }
  std::vector<std::string> pieces;
  size_t from = 0;
  for (size_t c : cuts) {
    pieces.push_back(encode_utf8(std::u32string_view(s).substr(from, c - from)));
    from = c;
  }
  return pieces;
}

void BpeTokenizer::encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
  std::vector<std::string> sym;
  for (unsigned char b : piece) sym.push_back(byte_chars()[b]);
  // Merge the adjacent pair of lowest rank until none is left (the leftmost on ties).
  while (sym.size() > 1) {
    int32_t best = INT32_MAX;
    size_t at = 0;
    for (size_t i = 0; i + 1 < sym.size(); ++i) {
      const auto it = ranks_.find({sym[i], sym[i + 1]});
      if (it != ranks_.end() && it->second < best) best = it->second, at = i;
    }
    if (best == INT32_MAX) break;
    sym[at] += sym[at + 1];
    sym.erase(sym.begin() + static_cast<std::ptrdiff_t>(at) + 1);
  }
  for (const std::string& s : sym) {
    const auto it = ids_.find(s);
    if (it != ids_.end()) {
      out.push_back(it->second);
      continue;
    }
    // Not in the vocabulary (a merge result the vocabulary lacks): its bytes one by one.
    for (size_t i = 0; i < s.size();) {
      size_t len = 1;
      while (i + len <= s.size() && !ids_.count(s.substr(i, len))) ++len;
      if (i + len > s.size()) break;  // no byte token either: dropped, as llama.cpp does
      out.push_back(ids_.at(s.substr(i, len)));
      i += len;
    }
  }
}

void BpeTokenizer::encode_text(std::string_view text, std::vector<int32_t>& out) const {
  for (const std::string& p : pre_tokenize(text)) encode_piece(p, out);
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text, bool parse_special, bool add_bos) const {
  std::vector<int32_t> out;
  if (add_bos && add_bos_ && bos_ >= 0) out.push_back(bos_);
  static const SpecialTokens kNone;
  split_on_specials(
      text, parse_special ? specials_ : kNone, [&](std::string_view plain) { encode_text(plain, out); },
      [&](int32_t id) { out.push_back(id); });
  return out;
}

std::string BpeTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  for (int32_t id : ids) {
    const std::string& tok = token(id);
    if (std::any_of(specials_.begin(), specials_.end(), [&](const auto& s) { return s.second == id; })) {
      out += tok;
      continue;
    }
    const std::u32string cs = decode_utf8(tok);
    for (char32_t c : cs) {
      std::string one;
      append_utf8(one, c);
      const auto it = char_bytes().find(one);
      if (it != char_bytes().end()) out += static_cast<char>(it->second);
      else out += one;
    }
  }
  return out;
}

}  // namespace qd::text
