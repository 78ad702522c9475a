#include "prune/remove.h"

#include <map>

#include "common/error.h"
#include "models/registry.h"
#include "prune/pruner.h"
#include "qat/qat_hook.h"

namespace qd {

namespace {

// Units whose output is not identically zero in some producing slice.
torch::Tensor alive_units(const PruneGroup& g, const std::vector<ResolvedSlice>& slices) {
  torch::NoGradGuard ng;
  torch::Tensor alive = torch::zeros({g.units}, torch::kBool);
  for (const auto& s : slices) {
    if (s.role == SliceRole::kConsumer || s.role == SliceRole::kState) continue;
    alive |= s.t.detach().ne(0).transpose(0, s.dim).reshape({g.units, -1}).any(1).cpu();
  }
  if (!alive.any().item<bool>()) alive[0] = true;  // a group keeps at least one unit
  return alive.nonzero().reshape({-1});
}

}  // namespace

RemovalResult remove_pruned_units(Model& masked, const ModelConfig& cfg, const InputSpec& in, const QatConfig* qat) {
  std::vector<torch::Tensor> keep;
  for (const auto& g : masked.prune_groups()) keep.push_back(alive_units(g, resolve_slices(masked, g)));
  return remove_units(masked, cfg, in, qat, keep);
}

RemovalResult remove_units(Model& masked, const ModelConfig& cfg, const InputSpec& in, const QatConfig* qat,
                           const std::vector<torch::Tensor>& keep_per_group) {
  QD_CHECK(!(qat && qat->enabled && qat->activation.per_channel && !cfg.is_text()), UserError,
           "physical removal: per-channel activation quantizers (qat.activation.per_channel) are not supported; "
           "use per-tensor activations");
  const std::vector<PruneGroup> groups = masked.prune_groups();
  QD_CHECK(keep_per_group.size() == groups.size(), Error, "physical removal: ", keep_per_group.size(),
           " kept-unit lists for ", groups.size(), " groups");
  RemovalResult r;
  // Index slices to apply to one named tensor: (dimension, kept entries).
  std::map<std::string, std::vector<std::pair<int64_t, torch::Tensor>>> slices;
  for (size_t i = 0; i < groups.size(); ++i) {
    const PruneGroup& g = groups[i];
    const torch::Tensor keep = keep_per_group[i].to(torch::kCPU, torch::kInt64);
    QD_CHECK(keep.numel() > 0 && keep.max().item<int64_t>() < g.units, Error, "physical removal: bad kept units for ",
             g.name);
    r.kept.push_back(keep.numel());
    r.total.push_back(g.units);
    for (const auto& s : resolve_slices(masked, g)) slices[s.name].emplace_back(s.dim, slice_indices(s, keep));
  }
  r.config = masked.pruned_config(cfg, r.kept);
  r.model = make_model(r.config, in);
  if (qat && qat->enabled) attach_qat(*r.model, *qat);
  r.model->to(masked.parameters().front().device());

  torch::NoGradGuard ng;
  auto copy_all = [&](const auto& dst_items, const auto& src_items) {
    for (const auto& item : dst_items) {
      if (!src_items.contains(item.key())) {
        torch::Tensor t = item.value();
        QD_CHECK(masked.fill_added_tensor(item.key(), t, keep_per_group), Error, "physical removal: the smaller model has ",
                 item.key(), " which the pruned one lacks");
        continue;
      }
      torch::Tensor src = src_items[item.key()];
      auto it = slices.find(item.key());
      if (it != slices.end()) {
        // Per-tensor quantizer state ([1]) and fully kept groups already have the right size.
        for (const auto& [dim, idx] : it->second)
          if (src.dim() > dim && src.size(dim) != item.value().size(dim)) src = src.index_select(dim, idx.to(src.device()));
      }
      QD_CHECK(src.sizes() == item.value().sizes(), UserError, "physical removal: ", item.key(), " has shape ",
               src.sizes(), " after cutting the pruned units but the smaller model expects ", item.value().sizes(),
               item.key().find(".qat.") != std::string::npos
                   ? " (quantizer state that groups a layer's inputs cannot lose inputs: prune before QAT groups them, "
                     "or quantize per channel)"
                   : "");
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
