#include "data/text_corpus.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <unordered_set>

#include "common/error.h"

namespace qd {

namespace fs = std::filesystem;

const char* split_name(TextSplit s) {
  switch (s) {
    case TextSplit::kTrain: return "train";
    case TextSplit::kValidation: return "validation";
    case TextSplit::kTest: return "test";
  }
  return "?";
}

uint64_t fnv1a64(std::string_view s) {
  uint64_t h = 14695981039346656037ull;  // FNV-1a 64 offset basis
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

TextSplit split_of(std::string_view key) {
  const uint64_t b = fnv1a64(key) % 100;
  return b < 5 ? TextSplit::kTest : b < 10 ? TextSplit::kValidation : TextSplit::kTrain;
}

namespace {
std::string read_all(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  QD_CHECK(f.good(), DataError, p.string(), ": cannot read");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string trim(std::string_view s) {
  const auto is_space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
  size_t a = 0, b = s.size();
  while (a < b && is_space(s[a])) ++a;
  while (b > a && is_space(s[b - 1])) --b;
  return std::string(s.substr(a, b - a));
}

std::string squeeze_spaces(std::string_view s) {
  std::string out;
  bool space = false;
  for (char c : s) {
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
      space = !out.empty();
      continue;
    }
    if (space) out += ' ';
    space = false;
    out += c;
  }
  return out;
}
}  // namespace

std::vector<std::string> load_fortunes(const std::string& root, TextSplit split) {
  static const std::set<std::string> kSkip = {"chinese", "tang300", "song100", "ascii-art"};
  std::vector<fs::path> files;
  std::error_code ec;
  QD_CHECK(fs::is_directory(root, ec), DataError, root, ": no such folder; data.text_root must hold the fortunes "
           "files (Debian package fortunes, installed by scripts/setup.sh)");
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string name = e.path().filename().string();
    if (!e.is_regular_file() || name.find('.') != std::string::npos || kSkip.count(name)) continue;
    files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  QD_CHECK(!files.empty(), DataError, root, ": holds no fortune files (expected e.g. ", root, "/fortunes)");
  std::vector<std::string> docs;
  std::unordered_set<uint64_t> seen;
  for (const auto& p : files) {
    const std::string text = read_all(p);
    size_t pos = 0;
    while (pos < text.size()) {
      size_t end = text.find("\n%\n", pos);
      if (end == std::string::npos) end = text.size();
      std::string doc = trim(std::string_view(text).substr(pos, end - pos));
      if (doc.size() >= 2 && doc[0] == '%' && doc[1] == '\n') doc = trim(std::string_view(doc).substr(2));
      pos = end + 3;
      if (doc.empty() || doc == "%") continue;
      const std::string key = squeeze_spaces(doc);
      if (!seen.insert(fnv1a64(key)).second || split_of(key) != split) continue;
      docs.push_back(std::move(doc));
    }
  }
  return docs;
}

std::vector<Synset> load_wordnet(const std::string& root, TextSplit split) {
  std::vector<Synset> out;
  for (const char* pos : {"noun", "verb", "adj", "adv"}) {
    const fs::path p = fs::path(root) / (std::string("data.") + pos);
    QD_CHECK(fs::is_regular_file(p), DataError, p.string(), ": missing; data.text_root must be the WordNet folder "
             "(Debian package wordnet-base, installed by scripts/setup.sh)");
    std::ifstream f(p);
    std::string line;
    int64_t lineno = 0;
    while (std::getline(f, line)) {
      ++lineno;
      if (line.empty() || line[0] == ' ') continue;  // the license header
      const size_t bar = line.find(" | ");
      std::istringstream in(line.substr(0, bar));
      std::string offset, lexfile, type, count_hex;
      in >> offset >> lexfile >> type >> count_hex;
      int words = 0;
      try {
        words = std::stoi(count_hex, nullptr, 16);
      } catch (const std::exception&) {
        words = 0;
      }
      QD_CHECK(bar != std::string::npos && words > 0 && !offset.empty() && !type.empty(), DataError, p.string(), ":",
               lineno, ": not a WordNet data line (offset lex_filenum ss_type w_cnt word lex_id ... | gloss)");
      Synset s;
      s.key = type.substr(0, 1) + offset;
      for (int i = 0; i < words; ++i) {
        std::string w, lex_id;
        in >> w >> lex_id;
        QD_CHECK(!w.empty(), DataError, p.string(), ":", lineno, ": the synset lists fewer words than its count");
        std::replace(w.begin(), w.end(), '_', ' ');
        const size_t paren = w.find('(');  // adjective markers: "(a)", "(p)", "(ip)"
        if (paren != std::string::npos && w.back() == ')') w.resize(paren);
        s.document += (i ? ", " : "") + w;
      }
      std::string gloss = trim(std::string_view(line).substr(bar + 3));
      const size_t example = gloss.find("; \"");
      if (example != std::string::npos) gloss.resize(example);
      if (!gloss.empty() && gloss[0] == '"') continue;  // a gloss that is only an example: no definition to query with
      s.query = trim(gloss);
      if (s.query.empty() || split_of(s.key) != split) continue;
      out.push_back(std::move(s));
    }
  }
  return out;
}

TokenStream pack_documents(const std::vector<std::string>& docs,
                           const std::function<std::vector<int32_t>(std::string_view)>& encode, int32_t eos) {
  TokenStream s;
  s.ids.push_back(eos);
  for (const auto& d : docs) {
    const std::vector<int32_t> ids = encode(d);
    s.ids.insert(s.ids.end(), ids.begin(), ids.end());
    s.ids.push_back(eos);
    s.bytes += static_cast<int64_t>(d.size()) + 1;
  }
  s.documents = static_cast<int64_t>(docs.size());
  return s;
}

}  // namespace qd
