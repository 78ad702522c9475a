// The text corpora: the fixed hash split, the fortunes and WordNet readers on small files written
// here (and their refusal of a malformed line), and the packing of documents into a token stream.
#include "data/text_corpus.h"

#include <gtest/gtest.h>

#include <fstream>
#include <set>

#include "common/error.h"
#include "tests/test_util.h"

namespace qd {
namespace {

void write(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
}

TEST(TextSplit, IsFixedDisjointAndNearTheDocumentedShares) {
  int64_t counts[3] = {0, 0, 0};
  for (int i = 0; i < 20000; ++i) {
    const std::string key = "record " + std::to_string(i);
    const TextSplit s = split_of(key);
    EXPECT_EQ(s, split_of(key));
    ++counts[static_cast<int>(s)];
  }
  EXPECT_NEAR(counts[static_cast<int>(TextSplit::kTest)] / 20000.0, 0.05, 0.01);
  EXPECT_NEAR(counts[static_cast<int>(TextSplit::kValidation)] / 20000.0, 0.05, 0.01);
  // FNV-1a 64 of known strings (the published test vectors), so the split never drifts.
  EXPECT_EQ(fnv1a64(""), 0xcbf29ce484222325ull);
  EXPECT_EQ(fnv1a64("a"), 0xaf63dc4c8601ec8cull);
}

TEST(Fortunes, SplitsEntriesSkipsChineseAndDuplicatesAndCoversEverySplitOnce) {
  test::TempDir dir;
  std::string a, chinese;
  for (int i = 0; i < 300; ++i) a += "Fortune number " + std::to_string(i) + " says\nhello.\n%\n";
  a += "Fortune number 7 says\n  hello.\n%\n";  // a duplicate up to whitespace
  write(dir.file("wisdom"), a);
  write(dir.file("wisdom.dat"), "binary index");
  write(dir.file("chinese"), "\xe4\xb8\xad\xe6\x96\x87\n%\n");
  std::set<std::string> all;
  size_t total = 0;
  for (TextSplit s : {TextSplit::kTrain, TextSplit::kValidation, TextSplit::kTest}) {
    for (const auto& d : load_fortunes(dir.path().string(), s)) {
      EXPECT_EQ(d.find('%'), std::string::npos) << d;
      EXPECT_EQ(d.rfind("Fortune number ", 0), 0u) << d;  // nothing from chinese or wisdom.dat
      EXPECT_EQ(split_of([&] {
                  std::string k;  // the key is the whitespace-normalized text
                  for (char c : d) k += c == '\n' ? ' ' : c;
                  return k;
                }()),
                s);
      all.insert(d);
      ++total;
    }
  }
  EXPECT_EQ(total, 300u) << "the duplicate of fortune 7 is dropped";
  EXPECT_EQ(all.size(), 300u);
  EXPECT_THROW(load_fortunes(dir.file("missing"), TextSplit::kTrain), DataError);
}

TEST(WordNet, ReadsDefinitionsAndLemmasAndRefusesABrokenLine) {
  test::TempDir dir;
  const std::string header = "  1 This software and database is being provided\n";
  write(dir.file("data.noun"),
        header + "00002137 03 n 02 abstraction 0 abstract_entity 0 001 @ 00001740 n 0000 | a general concept formed by "
                 "extracting common features from specific examples; \"an example\"  \n");
  write(dir.file("data.verb"), header + "00001740 29 v 01 breathe 0 002 @ 00001 v 0000 | draw air into, and expel out of, the lungs  \n");
  write(dir.file("data.adj"), header + "00003553 00 s 02 emergent(a) 0 emerging 0 000 | coming into existence; \"an emergent republic\"\n");
  write(dir.file("data.adv"), header);
  std::vector<Synset> all;
  for (TextSplit s : {TextSplit::kTrain, TextSplit::kValidation, TextSplit::kTest})
    for (auto& x : load_wordnet(dir.path().string(), s)) all.push_back(x);
  ASSERT_EQ(all.size(), 3u);
  std::map<std::string, Synset> by_key;
  for (const auto& s : all) by_key[s.key] = s;
  EXPECT_EQ(by_key.at("n00002137").document, "abstraction, abstract entity");
  EXPECT_EQ(by_key.at("n00002137").query, "a general concept formed by extracting common features from specific examples");
  EXPECT_EQ(by_key.at("v00001740").query, "draw air into, and expel out of, the lungs");
  EXPECT_EQ(by_key.at("s00003553").document, "emergent, emerging");
  EXPECT_EQ(by_key.at("s00003553").query, "coming into existence");

  write(dir.file("data.adv"), header + "00001 02 r zz\n");
  try {
    load_wordnet(dir.path().string(), TextSplit::kTrain);
    FAIL() << "a malformed line must be refused";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("data.adv:2"), std::string::npos) << e.what();
  }
}

TEST(PackDocuments, SeparatesDocumentsAndCountsBytes) {
  const auto encode = [](std::string_view s) {
    std::vector<int32_t> ids;
    for (char c : s) ids.push_back(static_cast<unsigned char>(c));
    return ids;
  };
  const TokenStream t = pack_documents({"ab", "xyz"}, encode, 0);
  EXPECT_EQ(t.ids, (std::vector<int32_t>{0, 'a', 'b', 0, 'x', 'y', 'z', 0}));
  EXPECT_EQ(t.bytes, 2 + 1 + 3 + 1);
  EXPECT_EQ(t.documents, 2);
}

}  // namespace
}  // namespace qd
