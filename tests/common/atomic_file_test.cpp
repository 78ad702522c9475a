#include "common/atomic_file.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>

#include "common/error.h"
#include "tests/test_util.h"

namespace qd {
namespace {

TEST(AtomicFile, CommitReplacesContent) {
  test::TempDir dir;
  const std::string path = dir.file("a.txt");
  write_file_atomic(path, "old");
  write_file_atomic(path, "new content");
  EXPECT_EQ(read_file(path), "new content");
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()), {}), 1) << "no temp file left";
}

TEST(AtomicFile, ExceptionBeforeCommitKeepsOldFile) {
  test::TempDir dir;
  const std::string path = dir.file("a.txt");
  write_file_atomic(path, "old");
  try {
    AtomicFile f(path);
    f.write("partial", 7);
    throw std::runtime_error("interrupted");
  } catch (const std::runtime_error&) {
  }
  EXPECT_EQ(read_file(path), "old");
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()), {}), 1) << "temp file removed";
}

TEST(AtomicFile, ProcessKilledBeforeRenameKeepsOldFile) {
  test::TempDir dir;
  const std::string path = dir.file("a.txt");
  write_file_atomic(path, "old");
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {  // child: half-written temp file, then dies without unwinding
    AtomicFile f(path);
    f.write("half", 4);
    ::_exit(0);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  EXPECT_EQ(read_file(path), "old");
}

TEST(AtomicFile, UnwritableDirectoryIsAnError) {
  EXPECT_THROW(AtomicFile("/nonexistent_dir_qd/x"), Error);
}

}  // namespace
}  // namespace qd
