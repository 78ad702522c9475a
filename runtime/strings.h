// Message helpers of the edge runtime (no dependencies): every reader, validator and kernel builds
// its one-line errors with these.
#pragma once

#include <cstdio>
#include <sstream>
#include <string>

namespace qd::rt {

template <typename... Args>
std::string cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

// Names come from files: anything but printable ASCII is escaped (\xNN), so that a message never
// carries control characters to a terminal or a log.
inline std::string printable(const std::string& s) {
  std::string out;
  for (const char ch : s) {
    const auto u = static_cast<unsigned char>(ch);
    if (u >= 0x20 && u < 0x7f && u != '\\') {
      out += ch;
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", u);
      out += buf;
    }
  }
  return out;
}

}  // namespace qd::rt
