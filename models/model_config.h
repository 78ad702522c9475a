// The `model` section of an experiment.
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include "common/config.h"

namespace qd {

enum class ModelKind { kMlp, kConvNet, kResNet, kBert, kLlama };
enum class HeadKind { kGap, kFlatten };

struct ModelConfig {
  ModelKind name = ModelKind::kConvNet;
  int width = 32;   // mlp: hidden units; convnet / resnet: channels of the first stage
  int depth = 6;    // mlp: hidden layers; convnet: conv blocks; resnet: layers, 6n+2 (8, 14, 20, ...)
  int blocks_per_stage = 2;  // convnet: conv blocks between 2x2 max-pools (channels double after each)
  HeadKind head = HeadKind::kGap;  // convnet: global average pool, or flatten -> linear
  double dropout = 0.0;            // before the classifier
  // Explicit output channels of every channel group (Model::prune_groups() order; a pruned
  // model after physical removal). Empty: derived from width.
  std::vector<int> channels;
  // Transformers (bert, llama).
  std::string pretrained;  // a teacher's files (folder / .gguf) or name (minilm-l6, smollm2-135m); empty: from scratch
  std::string tokenizer;   // from scratch: whose tokenizer (a pretrained name or path); fixes the vocabulary
  int hidden = 256, layers = 4, heads = 4, kv_heads = 0, ffn = 1024, max_positions = 512;
  int head_dim = 0;       // 0: hidden / heads (a pruned model's heads keep their size while hidden shrinks)
  double rope_theta = 10000.0;
  double norm_eps = 0.0;  // llama RMSNorm epsilon (0: 1e-5)
  int embedding_dim = 0;  // bert from scratch: project the pooled embedding to this width (0: hidden)
  // bert: a factorized word embedding, [vocab, rank] then rank -> hidden (ALBERT); pretrained: from
  // the truncated SVD of the teacher's table. 0: a plain [vocab, hidden] table.
  int embedding_rank = 0;
  // Pretrained only: keep these of the teacher's layers (0-based, in order), dropping the rest: a
  // shallower student initialised from a subset of the teacher's layers. Empty: all layers.
  std::vector<int> keep_layers;
  // Low-rank factored linear layers, "NAME=RANK" (models/lowrank.h; written by the lowrank section).
  std::vector<std::string> ranks;
  // Start from a trained run's weights (a run directory's checkpoints/best.pt, or a .pt file) of
  // the architecture this section describes: a QAT stage after a float KD stage, say.
  std::string init_checkpoint;

  bool is_text() const { return name == ModelKind::kBert || name == ModelKind::kLlama; }

  template <class V>
  void visit(V& v) {
    v.field("name", name, "architecture from the model zoo",
            Choices<ModelKind>{{{"mlp", ModelKind::kMlp}, {"convnet", ModelKind::kConvNet}, {"resnet", ModelKind::kResNet},
                                    {"bert", ModelKind::kBert}, {"llama", ModelKind::kLlama}}},
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
    v.field("pretrained", pretrained,
            "bert/llama: load a pretrained model: a Hugging Face BERT folder (config.json, model.safetensors, "
            "tokenizer.json), a llama GGUF file, or the name of an installed teacher (minilm-l6, smollm2-135m); "
            "the architecture keys below are then ignored");
    v.field("tokenizer", tokenizer,
            "bert/llama from scratch: the tokenizer (and so the vocabulary): a pretrained name or path as in "
            "model.pretrained");
    v.field("hidden", hidden, "bert/llama: hidden size", Range<int>{8, 16384});
    v.field("layers", layers, "bert/llama: transformer layers", Range<int>{1, 512});
    v.field("heads", heads, "bert/llama: attention heads (hidden must be a multiple)", Range<int>{1, 1024});
    v.field("kv_heads", kv_heads, "llama: key/value heads, grouped-query attention (0: = heads)", Range<int>{0, 1024});
    v.field("ffn", ffn, "bert/llama: feed-forward inner size", Range<int>{1, 1 << 18});
    v.field("head_dim", head_dim,
            "bert/llama: size of each attention head (0: hidden / heads); physical removal of pruned heads or hidden "
            "features writes it, since a pruned model's heads keep their size",
            Range<int>{0, 4096});
    v.field("norm_eps", norm_eps, "bert: LayerNorm epsilon (0: 1e-12); llama: RMSNorm epsilon (0: 1e-5); physical removal writes the pretrained model's",
            Range<double>{0.0, 1.0});
    v.field("max_positions", max_positions, "bert: position embeddings; llama: longest sequence",
            Range<int>{1, 1 << 20});
    v.field("rope_theta", rope_theta, "llama: rotary base frequency", Range<double>{1.0, 1e9});
    v.field("embedding_dim", embedding_dim,
            "bert from scratch: a linear projection of the pooled sentence embedding to this width, so that a "
            "narrow student matches its teacher's embedding (0: the hidden size, no projection)",
            Range<int>{0, 16384});
    v.field("embedding_rank", embedding_rank,
            "bert: factorize the word embedding into a [vocab, rank] table and a rank -> hidden projection "
            "(ALBERT), a student whose largest tensor shrinks by hidden/rank; with model.pretrained both start "
            "from the truncated SVD of the pretrained table (0: a plain [vocab, hidden] table)",
            Range<int>{0, 16384});
    v.field("keep_layers", keep_layers,
            "bert/llama with model.pretrained: keep only these of its layers (0-based, strictly increasing), e.g. "
            "[0, 2, 4] for a shallower student initialised from the teacher's; empty: all",
            Range<int>{0, 511});
    v.field("init_checkpoint", init_checkpoint,
            "bert/llama: start from these weights: a run directory (its checkpoints/best.pt) or a .pt file, of the "
            "architecture this section describes (e.g. a float KD run, before its QAT stage); empty: the "
            "pretrained or fresh weights");
    v.check(embedding_rank == 0 || name == ModelKind::kBert, "embedding_rank",
            "model.embedding_rank factorizes a bert word embedding; remove it for other models");
    v.check(init_checkpoint.empty() || is_text(), "init_checkpoint", "model.init_checkpoint applies to bert/llama models");
    v.field("ranks", ranks,
            "bert/llama: linear layers factored into two thinner ones, \"NAME=RANK\" ([rank, in] then [out, rank]), "
            "initialised from the truncated SVD of the weights; written by the lowrank section");
    v.check(ranks.empty() || is_text(), "ranks", "low-rank factored layers are for bert and llama; remove model.ranks");
    v.check(keep_layers.empty() || !pretrained.empty(), "keep_layers",
            "model.keep_layers picks layers of a pretrained model; set model.pretrained or remove it");
    v.check(std::is_sorted(keep_layers.begin(), keep_layers.end()) &&
                std::adjacent_find(keep_layers.begin(), keep_layers.end()) == keep_layers.end(),
            "keep_layers", "list each kept layer once, in increasing order, e.g. [0, 1, 2, 29]");
    v.check(!is_text() || !pretrained.empty() || !tokenizer.empty(), "tokenizer",
            "a bert/llama model from scratch needs a tokenizer: model.tokenizer: minilm-l6 (bert) or smollm2-135m "
            "(llama), or a path");
    v.check(!is_text() || !pretrained.empty() || head_dim > 0 || hidden % heads == 0, "heads",
            "hidden must be a multiple of heads (or set model.head_dim)");
    v.check(head_dim == 0 || is_text(), "head_dim", "model.head_dim applies to bert and llama models");
    v.check(name != ModelKind::kLlama || !pretrained.empty() ||
                ((head_dim > 0 ? head_dim : hidden / heads) % 2 == 0 && heads % (kv_heads ? kv_heads : heads) == 0),
            "kv_heads", "llama needs an even head size (model.head_dim, or hidden / heads) and heads a multiple of kv_heads");
    v.check(!is_text() || pretrained.empty() || tokenizer.empty(), "tokenizer",
            "a pretrained model brings its own tokenizer; remove model.tokenizer");
    v.check(name != ModelKind::kResNet || (depth >= 8 && (depth - 2) % 6 == 0), "depth",
            "resnet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, ...)");
    v.check(name != ModelKind::kConvNet || depth >= 1, "depth", "convnet needs depth >= 1 conv blocks");
  }
};

}  // namespace qd
