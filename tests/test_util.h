// Helpers shared by the tests: a temporary directory that cleans up after itself.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>

namespace qd::test {

class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() /
            ("qdistill_test_" + std::to_string(::getpid()) + "_" + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

struct ProcResult {
  int code;
  std::string output;  // stdout (+ stderr when the command redirects it)
};

// Runs a shell command; code is its exit status (-1 if it did not exit normally).
inline ProcResult run_command(const std::string& cmd) {
  ProcResult r{-1, ""};
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.output.append(buf.data(), n);
  const int status = ::pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// The Python that scripts/setup.sh installs torch and onnxruntime into (scripts/common.sh's
// qd_python): the project's .venv if setup made one, else $PYTHON, else python3.
inline std::string setup_python(const std::string& source_dir) {
  const std::string venv = source_dir + "/.venv/bin/python";
  if (::access(venv.c_str(), X_OK) == 0) return venv;
  const char* env = std::getenv("PYTHON");
  return env && *env ? env : "python3";
}

}  // namespace qd::test
