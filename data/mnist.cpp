#include "data/mnist.h"

#include <filesystem>

#include "common/error.h"
#include "data/idx.h"

namespace qd {

namespace {
std::string find_file(const std::string& root, const std::string& stem) {
  namespace fs = std::filesystem;
  QD_CHECK(fs::is_directory(root), DataError, root,
           ": dataset folder not found; set data.root (Debian's dataset-fashion-mnist installs "
           "/usr/share/datasets/fashion-mnist; scripts/setup.sh installs it)");
  for (const std::string& name : {stem + ".gz", stem}) {
    const fs::path p = fs::path(root) / name;
    if (fs::exists(p)) return p.string();
  }
  throw DataError(detail::concat((fs::path(root) / (stem + ".gz")).string(),
                                 ": no such file (nor an uncompressed ", stem,
                                 "); set data.root to the folder holding the IDX files"));
}
}  // namespace

ImageDataset load_mnist_split(const std::string& root, bool train) {
  const std::string prefix = train ? "train" : "t10k";
  const std::string img_path = find_file(root, prefix + "-images-idx3-ubyte");
  const std::string lbl_path = find_file(root, prefix + "-labels-idx1-ubyte");
  torch::Tensor images = read_idx(img_path);
  torch::Tensor labels = read_idx(lbl_path);
  QD_CHECK(images.dim() == 3, DataError, img_path, ": expected a 3-d image array [N, H, W], got ",
           images.dim(), " dimensions");
  QD_CHECK(labels.dim() == 1, DataError, lbl_path, ": expected a 1-d label array, got ",
           labels.dim(), " dimensions");
  QD_CHECK(images.size(0) == labels.size(0), DataError, img_path, " holds ", images.size(0),
           " images but ", lbl_path, " holds ", labels.size(0), " labels; the files do not belong together");
  const int64_t max_label = labels.max().item<int64_t>();
  QD_CHECK(max_label < 10, DataError, lbl_path, ": label ", max_label, " out of range; expected 0..9");
  ImageDataset ds;
  ds.images = images.unsqueeze(1);  // [N, 1, H, W]
  ds.labels = labels.to(torch::kInt64);
  ds.num_classes = 10;
  ds.name = train ? "train" : "test";
  return ds;
}

DataBundle load_data(const DataConfig& cfg) {
  DataBundle b;
  b.train = load_mnist_split(cfg.root, true);
  b.test = load_mnist_split(cfg.root, false);
  auto take = [](ImageDataset& ds, int64_t n) {
    if (n > 0 && n < ds.size()) {
      ds.images = ds.images.narrow(0, 0, n).contiguous();
      ds.labels = ds.labels.narrow(0, 0, n).contiguous();
    }
  };
  take(b.train, cfg.train_subset);
  take(b.test, cfg.test_subset);
  if (cfg.validation_size > 0) {
    const int64_t n = b.train.size();
    QD_CHECK(cfg.validation_size < n, ConfigError, "data.validation_size: ", cfg.validation_size,
             " leaves no training samples (the training set has ", n, "); choose fewer than ", n);
    ImageDataset val;
    val.images = b.train.images.narrow(0, n - cfg.validation_size, cfg.validation_size).contiguous();
    val.labels = b.train.labels.narrow(0, n - cfg.validation_size, cfg.validation_size).contiguous();
    val.num_classes = b.train.num_classes;
    val.name = "validation";
    b.train.images = b.train.images.narrow(0, 0, n - cfg.validation_size).contiguous();
    b.train.labels = b.train.labels.narrow(0, 0, n - cfg.validation_size).contiguous();
    b.test = std::move(val);
  }
  const int64_t c = b.train.channels();
  if (cfg.mean.empty()) {
    // Statistics of the full (subset) training set, per channel: [C]
    torch::Tensor x = b.train.images.to(torch::kFloat64).div_(255.0).transpose(0, 1).reshape({c, -1});
    torch::Tensor mean = x.mean(1), std = x.std(1);
    for (int64_t i = 0; i < c; ++i) {
      b.mean.push_back(mean[i].item<double>());
      b.std.push_back(std::max(std[i].item<double>(), 1e-6));
    }
  } else {
    QD_CHECK(static_cast<int64_t>(cfg.mean.size()) == c, ConfigError, "data.mean: has ",
             cfg.mean.size(), " values but the images have ", c, " channel(s); give one per channel");
    b.mean = cfg.mean;
    b.std = cfg.std;
  }
  return b;
}

Batch gather_batch(const ImageDataset& ds, const std::vector<int64_t>& indices, int64_t begin, int64_t end) {
  torch::Tensor idx = torch::from_blob(const_cast<int64_t*>(indices.data()) + begin, {end - begin}, torch::kInt64);
  Batch b;
  b.inputs = ds.images.index_select(0, idx).to(torch::kFloat32).div_(255.0f);
  b.targets = ds.labels.index_select(0, idx);
  return b;
}

Batch slice_batch(const ImageDataset& ds, int64_t begin, int64_t end) {
  Batch b;
  b.inputs = ds.images.narrow(0, begin, end - begin).to(torch::kFloat32).div_(255.0f);
  b.targets = ds.labels.narrow(0, begin, end - begin);
  return b;
}

}  // namespace qd
