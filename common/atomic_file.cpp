#include "common/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/error.h"

namespace qd {

namespace {
std::string errno_text() { return std::strerror(errno); }

void fsync_dir(const std::string& file_path) {
  std::filesystem::path dir = std::filesystem::path(file_path).parent_path();
  if (dir.empty()) dir = ".";
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}
}  // namespace

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  tmp_ = path_ + ".tmp." + std::to_string(::getpid());
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  QD_CHECK(fd_ >= 0, Error, tmp_, ": cannot create file (", errno_text(),
           "); check that the directory exists and is writable");
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(tmp_.c_str());
}

void AtomicFile::write(const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd_, p, size);
    if (n < 0 && errno == EINTR) continue;
    QD_CHECK(n > 0, Error, tmp_, ": write failed (", errno_text(), "); is the disk full?");
    p += n;
    size -= static_cast<size_t>(n);
  }
}

void AtomicFile::commit() {
  QD_CHECK(::fsync(fd_) == 0, Error, tmp_, ": fsync failed (", errno_text(), ")");
  QD_CHECK(::close(fd_) == 0, Error, tmp_, ": close failed (", errno_text(), ")");
  fd_ = -1;
  QD_CHECK(::rename(tmp_.c_str(), path_.c_str()) == 0, Error, "cannot rename ", tmp_, " to ",
           path_, " (", errno_text(), ")");
  committed_ = true;
  fsync_dir(path_);
}

void write_file_atomic(const std::string& path, const std::string& content) {
  AtomicFile f(path);
  f.write(content.data(), content.size());
  f.commit();
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  QD_CHECK(in.good(), UserError, path, ": cannot open file; check the path");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace qd
