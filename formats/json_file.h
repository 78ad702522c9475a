// A JSON file a user hands us (config.json, tokenizer.json): read through MappedFile and parsed
// with nlohmann-json; an unreadable or malformed file is one FormatError naming it. Header-only.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "formats/mapped_file.h"

namespace qd::fmt {

inline nlohmann::json read_json_file(const std::string& path) {
  const MappedFile f(path);
  try {
    return nlohmann::json::parse(f.data(), f.data() + f.size());
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(path + ": not valid JSON: " + e.what());
  }
}

}  // namespace qd::fmt
