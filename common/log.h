// Minimal logging to stderr. Only one process (rank 0) logs in data-parallel runs.
#pragma once

#include <string>

#include "common/error.h"

namespace qd {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

void set_log_level(LogLevel level);
void set_log_enabled(bool enabled);  // false on ranks other than 0
void log_line(LogLevel level, const std::string& text);

template <class... Args>
void log_info(const Args&... args) { log_line(LogLevel::kInfo, detail::concat(args...)); }
template <class... Args>
void log_warn(const Args&... args) { log_line(LogLevel::kWarn, detail::concat(args...)); }
template <class... Args>
void log_debug(const Args&... args) { log_line(LogLevel::kDebug, detail::concat(args...)); }

bool stderr_is_tty();

}  // namespace qd
