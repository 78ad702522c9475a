// The Unicode the tokenizers need, from utf8proc (Debian's libutf8proc): UTF-8 decoding, general
// categories, NFD and case mapping. The one table kept here is the White_Space property (25 code
// points, stable since Unicode 6.3; utf8proc does not expose it), which Rust's char::is_whitespace,
// Python's \s and llama.cpp all use. No LibTorch.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace qd::text {

// UTF-8 to code points. A byte that does not start a valid sequence decodes to U+FFFD and decoding
// continues at the next byte (what Python's errors="replace" does for most inputs).
std::u32string decode_utf8(std::string_view s);
void append_utf8(std::string& out, char32_t c);
std::string encode_utf8(std::u32string_view s);

bool is_white_space(char32_t c);  // the Unicode White_Space property
bool is_letter(char32_t c);       // \p{L}: Lu Ll Lt Lm Lo
bool is_number(char32_t c);       // \p{N}: Nd Nl No
bool is_punctuation(char32_t c);  // \p{P}: Pc Pd Ps Pe Pi Pf Po
bool is_other(char32_t c);        // \p{C}: Cc Cf Cs Co Cn (unassigned)
bool is_mark_nonspacing(char32_t c);  // Mn
bool is_assigned(char32_t c);     // not Cn

std::u32string nfd(std::u32string_view s);  // canonical decomposition, canonically ordered
// Lowercase of one code point as Rust's char::to_lowercase (which HF tokenizers use): the simple
// mapping, except U+0130 (capital I with dot) which lowercases to "i" + U+0307.
void append_lower(std::u32string& out, char32_t c);

}  // namespace qd::text
