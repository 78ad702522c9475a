// IDX reader on files the test writes itself: valid (gz and raw), truncated, corrupt.
#include "data/idx.h"

#include <gtest/gtest.h>
#include <zlib.h>

#include <fstream>

#include "common/atomic_file.h"
#include "common/error.h"
#include "data/mnist.h"
#include "tests/test_util.h"

namespace qd {
namespace {

torch::Tensor sample_images(int64_t n) {
  return torch::arange(n * 28 * 28, torch::kInt64).remainder(251).to(torch::kUInt8).view({n, 28, 28});
}

std::string expect_data_error(const std::string& path) {
  try {
    read_idx(path);
  } catch (const DataError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected DataError for " << path;
  return "";
}

void write_gz(const std::string& path, const std::string& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
  gzclose(f);
}

std::string header(int type, std::vector<uint32_t> dims) {
  std::string h = {0, 0, static_cast<char>(type), static_cast<char>(dims.size())};
  for (uint32_t d : dims)
    for (int s : {24, 16, 8, 0}) h.push_back(static_cast<char>((d >> s) & 0xff));
  return h;
}

TEST(Idx, RoundTripGzAndRaw) {
  test::TempDir dir;
  const torch::Tensor images = sample_images(5);
  for (const std::string name : {"img.gz", "img"}) {
    write_idx(dir.file(name), images);
    const torch::Tensor back = read_idx(dir.file(name));
    EXPECT_EQ(back.sizes(), images.sizes());
    EXPECT_TRUE(torch::equal(back, images));
  }
}

TEST(Idx, TruncatedPayloadNamesFileAndCounts) {
  test::TempDir dir;
  write_gz(dir.file("t.gz"), header(8, {3, 28, 28}) + std::string(100, 'x'));
  const std::string msg = expect_data_error(dir.file("t.gz"));
  EXPECT_NE(msg.find(dir.file("t.gz")), std::string::npos) << msg;
  EXPECT_NE(msg.find("truncated: header promises 2352 bytes of data, file holds 100"), std::string::npos) << msg;
}

TEST(Idx, TruncatedHeader) {
  test::TempDir dir;
  write_gz(dir.file("h.gz"), header(8, {3, 28, 28}).substr(0, 9));
  EXPECT_NE(expect_data_error(dir.file("h.gz")).find("truncated inside the IDX header"), std::string::npos);
  write_gz(dir.file("m.gz"), std::string("\0\0", 2));
  EXPECT_NE(expect_data_error(dir.file("m.gz")).find("shorter than the 4-byte IDX magic"), std::string::npos);
}

TEST(Idx, BadMagicAndType) {
  test::TempDir dir;
  write_gz(dir.file("png.gz"), "\x89PNG\r\n\x1a\n");
  EXPECT_NE(expect_data_error(dir.file("png.gz")).find("not an IDX file"), std::string::npos);
  write_gz(dir.file("f32.gz"), header(0x0d, {2}) + std::string(8, '\0'));
  EXPECT_NE(expect_data_error(dir.file("f32.gz")).find("0xd is not supported"), std::string::npos);
}

TEST(Idx, TrailingBytesAreCorruption) {
  test::TempDir dir;
  write_gz(dir.file("x.gz"), header(8, {4}) + "abcdEXTRA");
  EXPECT_NE(expect_data_error(dir.file("x.gz")).find("bytes after the 4-byte payload"), std::string::npos);
}

TEST(Idx, CorruptGzipStream) {
  test::TempDir dir;
  write_idx(dir.file("c.gz"), sample_images(20));
  std::string bytes = read_file(dir.file("c.gz"));
  // Flip bytes in the middle of the deflate stream (after the 10-byte gzip header).
  for (size_t i = bytes.size() / 2; i < bytes.size() / 2 + 16; ++i) bytes[i] = static_cast<char>(~bytes[i]);
  write_file_atomic(dir.file("c.gz"), bytes);
  const std::string msg = expect_data_error(dir.file("c.gz"));
  EXPECT_NE(msg.find(dir.file("c.gz")), std::string::npos) << msg;
}

TEST(Idx, TruncatedGzipFile) {
  test::TempDir dir;
  write_idx(dir.file("c.gz"), sample_images(20));
  std::string bytes = read_file(dir.file("c.gz"));
  write_file_atomic(dir.file("c.gz"), bytes.substr(0, bytes.size() / 2));
  const std::string msg = expect_data_error(dir.file("c.gz"));
  EXPECT_NE(msg.find("c.gz"), std::string::npos) << msg;
}

TEST(Idx, MissingFile) {
  EXPECT_NE(expect_data_error("/nonexistent/train.gz").find("no such file; set data.root"), std::string::npos);
}

TEST(Mnist, LoadsSplitAndChecksAgreement) {
  test::TempDir dir;
  write_idx(dir.file("train-images-idx3-ubyte.gz"), sample_images(6));
  write_idx(dir.file("train-labels-idx1-ubyte.gz"), torch::tensor({0, 1, 2, 3, 4, 9}, torch::kUInt8));
  const ImageDataset ds = load_mnist_split(dir.path().string(), true);
  EXPECT_EQ(ds.images.sizes(), (std::vector<int64_t>{6, 1, 28, 28}));
  EXPECT_EQ(ds.labels.scalar_type(), torch::kInt64);
  EXPECT_EQ(ds.labels[5].item<int64_t>(), 9);

  write_idx(dir.file("train-labels-idx1-ubyte.gz"), torch::tensor({0, 1, 2}, torch::kUInt8));
  try {
    load_mnist_split(dir.path().string(), true);
    FAIL();
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("holds 6 images but"), std::string::npos) << e.what();
  }
  write_idx(dir.file("train-labels-idx1-ubyte.gz"), torch::tensor({0, 1, 2, 3, 4, 10}, torch::kUInt8));
  EXPECT_THROW(load_mnist_split(dir.path().string(), true), DataError);
}

TEST(Mnist, ValidationSplitHoldsOutTheLastTrainingSamples) {
  test::TempDir dir;
  for (const char* split : {"train", "t10k"}) {
    write_idx(dir.file(std::string(split) + "-images-idx3-ubyte.gz"), sample_images(6));
    write_idx(dir.file(std::string(split) + "-labels-idx1-ubyte.gz"), torch::tensor({0, 1, 2, 3, 4, 5}, torch::kUInt8));
  }
  DataConfig cfg;
  cfg.root = dir.path().string();
  cfg.validation_size = 2;
  const DataBundle b = load_data(cfg);
  EXPECT_EQ(b.train.size(), 4);
  EXPECT_EQ(b.test.name, "validation");
  ASSERT_EQ(b.test.size(), 2);
  EXPECT_EQ(b.test.labels[0].item<int64_t>(), 4);
  EXPECT_TRUE(torch::equal(b.test.images[1][0], sample_images(6)[5]));
  cfg.validation_size = 6;  // nothing left to train on
  EXPECT_THROW(load_data(cfg), ConfigError);
}

TEST(Mnist, BatchesAreFloatPixelsInUnitRange) {
  ImageDataset ds;
  ds.images = sample_images(4).unsqueeze(1);
  ds.labels = torch::tensor({3, 1, 4, 1}, torch::kInt64);
  const Batch b = gather_batch(ds, {2, 0}, 0, 2);
  EXPECT_EQ(b.inputs.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::allclose(b.inputs[0], ds.images[2].to(torch::kFloat32) / 255.0f));
  EXPECT_EQ(b.targets[0].item<int64_t>(), 4);
  EXPECT_LE(b.inputs.max().item<float>(), 1.0f);
}

}  // namespace
}  // namespace qd
