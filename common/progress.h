// Progress bar for long loops: redraws one line on a terminal, prints plain periodic lines
// when stderr is not a TTY (CI logs, `| tee`), and nothing when disabled (ranks != 0).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace qd {

class ProgressBar {
 public:
  // `plain_every`: on non-TTYs, print a line every this many updates (0: only at finish).
  ProgressBar(std::string label, int64_t total, bool enabled, int64_t plain_every);
  // `done` items finished; `samples` processed so far (for samples/s); `extra` e.g. "loss 0.31".
  void update(int64_t done, int64_t samples, const std::string& extra);
  void finish(const std::string& extra);

 private:
  void draw(int64_t done, int64_t samples, const std::string& extra, bool final);
  std::string label_;
  int64_t total_;
  bool enabled_;
  bool tty_;
  int64_t plain_every_;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
  int64_t last_done_ = 0, last_samples_ = 0;
};

std::string format_duration(double seconds);  // "1:05:03", "4:12"

}  // namespace qd
