// The text corpora of the transformer tasks, read from Debian packages, and their fixed splits.
//
// Split rule (the same for every corpus, documented in docs/text_data.md): a record's key (the
// fortune's whitespace-normalized text; the synset's part of speech and offset) is hashed with
// FNV-1a 64; hash % 100 < 5 is `test`, < 10 is `validation`, the rest `train`. It depends only on
// the record, so it never changes when files are added, and duplicates of a text land in the
// same split. The test split is read only by evaluation (`qdistill eval`, summary.json); training
// evaluates on the validation split, and nothing is tuned or cached on test.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace qd {

enum class TextSplit { kTrain, kValidation, kTest };
const char* split_name(TextSplit s);
TextSplit split_of(std::string_view key);
uint64_t fnv1a64(std::string_view s);

// `fortunes` (English files of /usr/share/games/fortunes: every plain file except the Chinese
// ones chinese, tang300, song100, and ascii-art), one document per fortune, in file-name and
// file order, duplicates removed. DataError when the folder has no fortune files.
std::vector<std::string> load_fortunes(const std::string& root, TextSplit split);

// WordNet as a reverse dictionary (wordnet-base, /usr/share/wordnet/data.{noun,verb,adj,adv}):
// per synset the query is its definition (the gloss without its quoted examples), the document
// its lemmas ("bank, depository financial institution"). In file order.
struct Synset {
  std::string key;       // "n00001740"
  std::string query;     // definition
  std::string document;  // lemmas, ", "-joined, underscores as spaces
};
std::vector<Synset> load_wordnet(const std::string& root, TextSplit split);

// A packed language-modelling stream: [eos] doc0 [eos] doc1 [eos] ... so that every document
// token (and every separator) is predicted from what precedes it. `bytes` counts the UTF-8 bytes
// of the documents plus one per separator after the first: the denominator of bits per byte.
struct TokenStream {
  std::vector<int32_t> ids;
  int64_t bytes = 0;
  int64_t documents = 0;
};
TokenStream pack_documents(const std::vector<std::string>& docs,
                           const std::function<std::vector<int32_t>(std::string_view)>& encode, int32_t eos);

}  // namespace qd
