// The `data` section of an experiment.
#pragma once

#include <cstdint>
#include <string>
#include <string>
#include <vector>

#include "common/config.h"

namespace qd {

enum class DatasetKind { kFashionMnist, kMnist, kFortunes, kWordNet };

struct AugmentConfig {
  bool random_crop = false;  // zero-pad by crop_padding, then crop back to the input size
  int crop_padding = 2;
  bool hflip = false;  // horizontal flip with probability 1/2
  int views = 0;       // > 0: each sample has only this many fixed views (see augment.h)
  int64_t view_seed = 0;  // which fixed views (independent of experiment.seed, so runs share them)

  bool any() const { return random_crop || hflip; }

  template <class V>
  void visit(V& v) {
    v.field("random_crop", random_crop, "random crop of the zero-padded image (train only)");
    v.field("crop_padding", crop_padding, "zero padding on each side before the random crop, pixels",
            Range<int>{1, 16});
    v.field("hflip", hflip, "random horizontal flip with probability 1/2 (train only)");
    v.field("views", views,
            "0: a fresh random view of each sample every epoch; K > 0: each sample has K fixed views, one "
            "drawn per epoch (lets distillation cache the teacher's outputs for every view)",
            Range<int>{0, 1024});
    v.field("view_seed", view_seed,
            "seed of the fixed views (views > 0); independent of experiment.seed so that runs with other "
            "seeds see the same views and share one teacher cache",
            Range<int64_t>{0, int64_t{1} << 62});
  }
};

struct DataConfig {
  DatasetKind dataset = DatasetKind::kFashionMnist;
  std::string root = "/usr/share/datasets/fashion-mnist";
  int batch_size = 128;       // per process; a data-parallel step sees batch_size * world_size
  int eval_batch_size = 1000;
  int64_t train_subset = 0;   // use only the first N training samples (0: all); for quick runs
  int64_t test_subset = 0;    // likewise for the test set
  int64_t validation_size = 0;  // > 0: hold out the last N training samples and evaluate on them
  std::vector<double> mean;   // per-channel normalization; empty: computed from the training set
  std::vector<double> std;
  AugmentConfig augment;
  // Text (task causal_lm: fortunes; sentence_embedding: wordnet). See data/text_corpus.h.
  std::string text_root;  // empty: the Debian package's folder
  int seq_len = 128;      // causal_lm: tokens per training sequence; sentence_embedding: longest text in tokens

  bool is_text() const { return dataset == DatasetKind::kFortunes || dataset == DatasetKind::kWordNet; }
  std::string text_folder() const {
    if (!text_root.empty()) return text_root;
    return dataset == DatasetKind::kWordNet ? "/usr/share/wordnet" : "/usr/share/games/fortunes";
  }

  template <class V>
  void visit(V& v) {
    v.field("dataset", dataset,
            "images: fashion_mnist | mnist (IDX files under root); text: fortunes (causal_lm corpus) | wordnet "
            "(sentence_embedding reverse dictionary), split train/validation/test by a fixed hash (docs/text_data.md)",
            Choices<DatasetKind>{{{"fashion_mnist", DatasetKind::kFashionMnist}, {"mnist", DatasetKind::kMnist},
                                   {"fortunes", DatasetKind::kFortunes}, {"wordnet", DatasetKind::kWordNet}}});
    v.field("root", root, "folder holding the train-/t10k- IDX files (.gz or raw)");
    v.field("batch_size", batch_size, "training batch per process", Range<int>{1, 65536});
    v.field("eval_batch_size", eval_batch_size, "evaluation batch per process", Range<int>{1, 65536});
    v.field("train_subset", train_subset,
            "use only the first N training samples (0: all); causal_lm: sequences, sentence_embedding: texts",
            Range<int64_t>{0, int64_t{1} << 40});
    v.field("test_subset", test_subset,
            "use only the first N test samples (0: all); text tasks: the first N held-out documents or synsets "
            "of the validation and test splits",
            Range<int64_t>{0, int64_t{1} << 40});
    v.field("validation_size", validation_size,
            "> 0: hold out the last N training samples (after train_subset) and evaluate on them instead of "
            "the test set, for tuning without touching it; epoch records and summary.json then say "
            "eval_split: validation, and their test_* fields hold validation numbers",
            Range<int64_t>{0, int64_t{1} << 40});
    v.field("mean", mean, "per-channel mean of [0,1] pixels, folded into the model (empty: measured)");
    v.field("std", std, "per-channel std of [0,1] pixels, folded into the model (empty: measured)",
            Range<double>{0.0, 1e6, true, false});
    v.check(mean.size() == std.size(), "std", "data.mean and data.std must have the same length");
    v.section("augment", augment);
    v.field("text_root", text_root,
            "text datasets: the folder to read (empty: /usr/share/games/fortunes or /usr/share/wordnet)");
    v.field("seq_len", seq_len,
            "causal_lm: tokens per training sequence (packed documents); sentence_embedding: texts are cut to "
            "this many tokens",
            Range<int>{2, 1 << 16});
  }
};

}  // namespace qd
