#include "common/log.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>

namespace qd {

namespace {
std::atomic<int> g_level{static_cast<int>(LogLevel::kInfo)};
std::atomic<bool> g_enabled{true};
}  // namespace

void set_log_level(LogLevel level) { g_level = static_cast<int>(level); }
void set_log_enabled(bool enabled) { g_enabled = enabled; }

bool stderr_is_tty() { return ::isatty(STDERR_FILENO) == 1; }

void log_line(LogLevel level, const std::string& text) {
  if (!g_enabled || static_cast<int>(level) < g_level) return;
  const std::time_t now = std::time(nullptr);
  char stamp[32];
  std::strftime(stamp, sizeof(stamp), "%H:%M:%S", std::localtime(&now));
  const char* tag = level == LogLevel::kWarn ? " warning:" : level == LogLevel::kError ? " error:" : "";
  std::fprintf(stderr, "[%s]%s %s\n", stamp, tag, text.c_str());
  std::fflush(stderr);
}

}  // namespace qd
