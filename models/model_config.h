// The `model` section of an experiment.
#pragma once

#include <vector>

#include "common/config.h"

namespace qd {

enum class ModelKind { kMlp, kConvNet, kResNet };
enum class HeadKind { kGap, kFlatten };

struct ModelConfig {
  ModelKind name = ModelKind::kConvNet;
  int width = 32;   // mlp: hidden units; convnet / resnet: channels of the first stage
  int depth = 6;    // mlp: hidden layers; convnet: conv blocks; resnet: layers, 6n+2 (8, 14, 20, ...)
  int blocks_per_stage = 2;  // convnet: conv blocks between 2x2 max-pools (channels double after each)
  HeadKind head = HeadKind::kGap;  // convnet: global average pool, or flatten -> linear
  double dropout = 0.0;            // before the classifier
  // Explicit output channels of every channel group (Model::channel_groups() order; a pruned
  // model after physical removal). Empty: derived from width.
  std::vector<int> channels;

  template <class V>
  void visit(V& v) {
    v.field("name", name, "architecture from the model zoo",
            Choices<ModelKind>{{{"mlp", ModelKind::kMlp}, {"convnet", ModelKind::kConvNet}, {"resnet", ModelKind::kResNet}}},
            kRequired);
    v.field("width", width, "mlp: hidden units; convnet/resnet: channels of the first stage", Range<int>{1, 4096});
    v.field("depth", depth, "mlp: hidden layers; convnet: conv blocks; resnet: layers (6n+2)", Range<int>{0, 200});
    v.field("blocks_per_stage", blocks_per_stage, "convnet: conv blocks between 2x2 max-pools", Range<int>{1, 64});
    v.field("head", head, "convnet classifier input: global average pool or flatten",
            Choices<HeadKind>{{{"gap", HeadKind::kGap}, {"flatten", HeadKind::kFlatten}}});
    v.field("dropout", dropout, "dropout probability before the classifier", Range<double>{0.0, 1.0, false, true});
    v.field("channels", channels,
            "explicit output channels per channel group, in `qdistill layers` group order (what physical "
            "channel removal writes); empty: derived from width",
            Range<int>{1, 65536});
    v.check(name != ModelKind::kResNet || (depth >= 8 && (depth - 2) % 6 == 0), "depth",
            "resnet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, ...)");
    v.check(name != ModelKind::kConvNet || depth >= 1, "depth", "convnet needs depth >= 1 conv blocks");
  }
};

}  // namespace qd
