#include "common/progress.h"

#include <cstdio>

#include "common/error.h"
#include "common/log.h"

namespace qd {

std::string format_duration(double seconds) {
  if (seconds < 0 || seconds > 1e7) return "?";
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof(buf), "%lld:%02lld:%02lld", (long long)(s / 3600), (long long)(s / 60 % 60), (long long)(s % 60));
  else
    std::snprintf(buf, sizeof(buf), "%lld:%02lld", (long long)(s / 60), (long long)(s % 60));
  return buf;
}

ProgressBar::ProgressBar(std::string label, int64_t total, bool enabled, int64_t plain_every)
    : label_(std::move(label)),
      total_(total),
      enabled_(enabled),
      tty_(stderr_is_tty()),
      plain_every_(plain_every),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

void ProgressBar::update(int64_t done, int64_t samples, const std::string& extra) {
  last_done_ = done;
  last_samples_ = samples;
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  if (tty_) {
    // Redraw at most 10 times a second: the bar must not cost training time.
    if (now - last_draw_ < std::chrono::milliseconds(100) && done < total_) return;
    last_draw_ = now;
    draw(done, samples, extra, false);
  } else if (plain_every_ > 0 && done % plain_every_ == 0 && done < total_) {
    draw(done, samples, extra, false);
  }
}

void ProgressBar::finish(const std::string& extra) {
  if (!enabled_) return;
  draw(last_done_, last_samples_, extra, true);
}

void ProgressBar::draw(int64_t done, int64_t samples, const std::string& extra, bool final) {
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double rate = elapsed > 0 ? samples / elapsed : 0.0;
  const double eta = done > 0 ? elapsed * (total_ - done) / done : -1;
  const double frac = total_ > 0 ? static_cast<double>(done) / total_ : 1.0;
  std::string text;
  if (tty_) {
    constexpr int kWidth = 24;
    const int fill = static_cast<int>(frac * kWidth);
    std::string bar(fill, '#');
    bar.resize(kWidth, '.');
    text = detail::concat(label_, " [", bar, "] ", done, "/", total_, "  ", static_cast<int64_t>(rate),
                          " samples/s  ", final ? "took " + format_duration(elapsed) : "eta " + format_duration(eta),
                          extra.empty() ? "" : "  " + extra);
    std::fprintf(stderr, "\r\033[K%s%s", text.c_str(), final ? "\n" : "");
    std::fflush(stderr);
  } else {
    log_info(label_, " ", done, "/", total_, "  ", static_cast<int64_t>(rate), " samples/s  ",
             final ? "took " + format_duration(elapsed) : "eta " + format_duration(eta),
             extra.empty() ? "" : "  " + extra);
  }
}

}  // namespace qd
