// In-memory image classification datasets (MNIST / Fashion-MNIST) and batch assembly.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "data/data_config.h"

namespace qd {

struct ImageDataset {
  torch::Tensor images;  // [N, C, H, W] uint8, kept compact; batches are converted on the fly
  torch::Tensor labels;  // [N] int64
  int64_t num_classes = 10;
  std::string name;      // "train" / "test"

  int64_t size() const { return images.defined() ? images.size(0) : 0; }
  int64_t channels() const { return images.size(1); }
  int64_t height() const { return images.size(2); }
  int64_t width() const { return images.size(3); }
};

struct Batch {
  torch::Tensor inputs;   // [B, C, H, W] float32 pixels in [0, 1]
  torch::Tensor targets;  // [B] int64
  int64_t size() const { return targets.size(0); }
};

struct DataBundle {
  ImageDataset train;
  ImageDataset test;  // what training evaluates on: the test split, or the validation split
                      // when data.validation_size > 0 (then test.name == "validation")
  std::vector<double> mean;  // per channel, of [0,1] pixels; the model folds (x - mean) / std in
  std::vector<double> std;
};

// Loads one split from `root` ("train" -> train-*, "test" -> t10k-*), .gz preferred, raw IDX
// accepted. Checks images/labels agree in count and labels are < 10. Throws DataError.
ImageDataset load_mnist_split(const std::string& root, bool train);

// Loads both splits, applies subsets, resolves normalization (measured when cfg.mean is empty).
DataBundle load_data(const DataConfig& cfg);

// Gathers samples `indices[begin, end)` as a float batch in [0, 1].
Batch gather_batch(const ImageDataset& ds, const std::vector<int64_t>& indices, int64_t begin, int64_t end);
// Contiguous samples [begin, end) (evaluation).
Batch slice_batch(const ImageDataset& ds, int64_t begin, int64_t end);

}  // namespace qd
