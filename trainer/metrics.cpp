#include "trainer/metrics.h"

#include <fstream>
#include <sstream>

#include "common/atomic_file.h"
#include "common/error.h"

namespace qd {

MetricsLog::MetricsLog(const std::string& path, bool resume, int64_t kept_epochs, int64_t kept_step) {
  if (resume) {
    std::ifstream in(path);
    std::ostringstream kept;
    for (std::string line; std::getline(in, line);) {
      const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (!j.is_object()) continue;
      // Whole epochs the checkpoint covers, and the step records of a mid-epoch checkpoint's epoch.
      const bool covered = j.value("epoch", int64_t{0}) <= kept_epochs ||
                           (kept_step >= 0 && j.value("type", "") == "step" && j.value("step", int64_t{0}) <= kept_step);
      if (covered) kept << line << "\n";
    }
    write_file_atomic(path, kept.str());
  }
  file_ = std::fopen(path.c_str(), resume ? "a" : "w");
  QD_CHECK(file_ != nullptr, Error, path, ": cannot open for writing");
}

MetricsLog::~MetricsLog() {
  if (file_) std::fclose(file_);
}

MetricsLog& MetricsLog::operator=(MetricsLog&& o) noexcept {
  if (this != &o) {
    if (file_) std::fclose(file_);
    file_ = o.file_;
    o.file_ = nullptr;
  }
  return *this;
}

void MetricsLog::write(const nlohmann::json& record) {
  if (!file_) return;
  const std::string line = record.dump() + "\n";
  std::fwrite(line.data(), 1, line.size(), file_);
  std::fflush(file_);
}

}  // namespace qd
