#include "prune/remove.h"

#include <map>

#include "common/error.h"
#include "models/registry.h"
#include "qat/qat_hook.h"

namespace qd {

namespace {

// Index slices to apply to one named tensor: (dimension, kept indices).
using Slices = std::vector<std::pair<int64_t, torch::Tensor>>;

// Channels whose output is not identically zero in some producer.
torch::Tensor alive_channels(const ChannelGroup& g) {
  torch::NoGradGuard ng;
  torch::Tensor alive = torch::zeros({g.channels}, torch::kBool);
  for (const auto& p : g.producers) {
    alive |= p->conv->weight.detach().abs().sum({1, 2, 3}).ne(0).cpu();
    alive |= p->bn->weight.detach().ne(0).cpu();
    alive |= p->bn->bias.detach().ne(0).cpu();
  }
  if (!alive.any().item<bool>()) alive[0] = true;  // a layer keeps at least one channel
  return alive.nonzero().reshape({-1});
}

}  // namespace

RemovalResult remove_pruned_channels(Model& masked, const ModelConfig& cfg, const InputSpec& in, const QatConfig* qat) {
  QD_CHECK(!(qat && qat->enabled && qat->activation.per_channel), UserError,
           "channel removal: per-channel activation quantizers (qat.activation.per_channel) are not supported; "
           "use per-tensor activations");
  const std::vector<ChannelGroup> groups = masked.channel_groups();
  RemovalResult r;
  r.config = cfg;
  r.config.channels.clear();
  std::map<std::string, Slices> slices;
  const auto params = masked.named_parameters();
  for (const auto& g : groups) {
    const torch::Tensor keep = alive_channels(g);  // [K] int64
    r.kept.push_back(keep.numel());
    r.total.push_back(g.channels);
    r.config.channels.push_back(static_cast<int>(keep.numel()));
    for (const auto& layer : g.layers) {
      // The producer: everything per output channel under its module path.
      for (const char* t : {".conv.weight", ".bn.weight", ".bn.bias", ".bn.running_mean", ".bn.running_var",
                                   ".qat.weight_quant.scale", ".qat.weight_quant.zero_point",
                                   ".qat.weight_quant.running_min", ".qat.weight_quant.running_max",
                                   ".qat.weight_quant.lsq_scale"})
        slices[layer + t].emplace_back(0, keep);
    }
    for (const auto& c : g.consumers) {
      const std::string name = params.contains(c.layer + ".conv.weight") ? c.layer + ".conv.weight" : c.layer + ".weight";
      torch::Tensor idx = keep;
      if (c.per_channel > 1)  // channel k feeds inputs [k*hw, (k+1)*hw)
        idx = (keep.view({-1, 1}) * c.per_channel + torch::arange(c.per_channel, torch::kInt64).view({1, -1})).reshape({-1});
      slices[name].emplace_back(1, idx);
    }
  }
  r.model = make_model(r.config, in);
  if (qat && qat->enabled) attach_qat(*r.model, *qat);
  r.model->to(masked.parameters().front().device());

  torch::NoGradGuard ng;
  auto copy_all = [&](const auto& dst_items, const auto& src_items) {
    for (const auto& item : dst_items) {
      torch::Tensor src = src_items[item.key()];
      auto it = slices.find(item.key());
      if (it != slices.end()) {
        // Per-tensor quantizer state ([1]) and fully kept groups already have the right size.
        for (const auto& [dim, idx] : it->second)
          if (src.dim() > dim && src.size(dim) != item.value().size(dim)) src = src.index_select(dim, idx.to(src.device()));
      }
      QD_CHECK(src.sizes() == item.value().sizes(), Error, "channel removal: ", item.key(), " has shape ",
               src.sizes(), " after slicing but the smaller model expects ", item.value().sizes());
      item.value().copy_(src);
    }
  };
  copy_all(r.model->named_parameters(), masked.named_parameters());
  copy_all(r.model->named_buffers(), masked.named_buffers());
  load_qat_flags(*r.model);  // the quantizers' cached flags and scales follow the copied buffers
  r.model->train(masked.is_training());
  return r;
}

}  // namespace qd
