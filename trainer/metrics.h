// metrics.jsonl: one JSON object per line, appended and flushed as training goes.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdio>
#include <string>

namespace qd {

class MetricsLog {
 public:
  MetricsLog() = default;  // a log that writes nothing (ranks other than 0, tests)
  // Fresh run: truncates. Resume: keeps only records with "epoch" <= kept_epochs (the ones the
  // checkpoint covers), so a resumed run's log has no duplicate or orphaned records; a mid-epoch
  // checkpoint (kept_step >= 0) also keeps the step records up to its step.
  MetricsLog(const std::string& path, bool resume, int64_t kept_epochs, int64_t kept_step = -1);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;
  MetricsLog(MetricsLog&& o) noexcept : file_(o.file_) { o.file_ = nullptr; }
  MetricsLog& operator=(MetricsLog&& o) noexcept;

  void write(const nlohmann::json& record);

 private:
  std::FILE* file_ = nullptr;
};

}  // namespace qd
