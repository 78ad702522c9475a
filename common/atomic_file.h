// Crash-safe file replacement: write a temporary file beside the target, fsync it, rename it
// over the target, fsync the directory. A reader sees the old file or the new one, never half.
#pragma once

#include <cstddef>
#include <string>

namespace qd {

class AtomicFile {
 public:
  // Opens "<path>.tmp.<pid>" for writing. Throws qd::Error if the directory is not writable.
  explicit AtomicFile(std::string path);
  // Without commit() (an exception, an interrupted write) the temporary file is removed and
  // the previous file at `path` is left untouched.
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t size);
  // fsync + rename + fsync(dir). After it returns the new content is durable.
  void commit();

  const std::string& temp_path() const { return tmp_; }

 private:
  std::string path_;
  std::string tmp_;
  int fd_ = -1;
  bool committed_ = false;
};

// Whole-file convenience.
void write_file_atomic(const std::string& path, const std::string& content);
std::string read_file(const std::string& path);  // throws UserError naming the file

}  // namespace qd
