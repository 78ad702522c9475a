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

// `s` as one single-quoted shell word.
inline std::string quoted(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// The Python that scripts/setup.sh installs torch and onnxruntime into (scripts/common.sh's
// qd_python): the project's .venv if setup made one, else $PYTHON, else python3.
inline std::string setup_python(const std::string& source_dir) {
  const std::string venv = source_dir + "/.venv/bin/python";
  if (::access(venv.c_str(), X_OK) == 0) return venv;
  const char* env = std::getenv("PYTHON");
  return env && *env ? env : "python3";
}

// A command that starts a Python with ONNX Runtime and numpy importable, either the setup Python on
// this CPU or one on an emulated CPU (scripts/emulated_python.sh, QEMU user mode), so that ONNX
// Runtime picks that CPU's int8 kernels. When it cannot run, `command` is empty and `skip` (QEMU or
// the ARM64 sysroot is missing, which scripts/setup.sh installs, or this host cannot emulate that
// CPU: the script's exit code 3) or `error` (anything else, e.g. the guest is not the class asked
// for) says why.
struct OrtPython {
  std::string command;
  std::string skip;   // the test skips and prints this
  std::string error;  // the test fails with this
  std::string cpu;    // "native", or the emulated CPU class
};

// `cpu`: "native", or one of emulated_python.sh's classes: "x86_avx2" (AVX2 and FMA, no AVX-512,
// no VNNI), "arm64_neon" (no dot product), "arm64_dot", "arm64_i8mm".
inline OrtPython ort_python(const std::string& source_dir, const std::string& cpu = "native") {
  OrtPython p;
  p.cpu = cpu;
  if (cpu == "native") {
    const std::string py = setup_python(source_dir);
    if (run_command(py + " -c 'import onnxruntime, numpy' >/dev/null 2>&1").code != 0)
      p.skip = "onnxruntime or numpy not importable from " + py + ": run scripts/setup.sh";
    else
      p.command = py;
    return p;
  }
  const std::string script = quoted(source_dir + "/scripts/emulated_python.sh");
  const ProcResult check = run_command(script + " check " + quoted(cpu) + " 2>&1");
  std::string out = check.output;
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  if (check.code == 3) p.skip = out;  // one line: what is missing and how to get it
  else if (check.code != 0) p.error = "emulated CPU " + cpu + ": " + out;
  else p.command = script + " run " + quoted(cpu);
  return p;
}

}  // namespace qd::test
