// Special tokens written literally in the text ("[MASK]", "<|im_start|>"): both tokenizers match
// them on the raw text before anything else, the longest one first at each position, and
// tokenize the text between them normally. Header-only, no LibTorch.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace qd::text {

using SpecialTokens = std::vector<std::pair<std::string, int32_t>>;  // (text, id), longest first

inline void sort_longest_first(SpecialTokens& s) {
  std::stable_sort(s.begin(), s.end(), [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
}

// Calls plain(text between matches) and special(id) in order; plain also gets the (possibly
// empty) pieces before the first and after the last match.
template <class Plain, class Special>
void split_on_specials(std::string_view text, const SpecialTokens& specials, Plain plain, Special special) {
  size_t pos = 0, from = 0;
  while (pos < text.size()) {
    const auto hit = std::find_if(specials.begin(), specials.end(),
                                  [&](const auto& s) { return text.compare(pos, s.first.size(), s.first) == 0; });
    if (hit == specials.end()) {
      ++pos;
      continue;
    }
    plain(text.substr(from, pos - from));
    special(hit->second);
    pos += hit->first.size();
    from = pos;
  }
  plain(text.substr(from));
}

}  // namespace qd::text
