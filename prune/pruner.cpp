#include "prune/pruner.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "common/log.h"
#include "common/config.h"

namespace qd {

namespace {

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + v[i];
  return s;
}

// "block0.conv.weight" -> "block0"; "classifier.weight" -> "classifier".
std::string layer_of(const std::string& param) {
  std::string s = param.substr(0, param.rfind(".weight"));
  if (s.size() > 5 && s.compare(s.size() - 5, 5, ".conv") == 0) s.resize(s.size() - 5);
  return s;
}

// Prunable weights (conv and linear), by layer name.
std::vector<std::pair<std::string, torch::Tensor>> prunable_weights(Model& model) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& p : model.named_parameters()) {
    const std::string& key = p.key();
    if (p.value().dim() < 2 || key.size() < 7 || key.compare(key.size() - 7, 7, ".weight") != 0) continue;
    out.emplace_back(layer_of(key), p.value());
  }
  return out;
}

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

// "NAME=SPARSITY" entries in file order (NAME may be a glob, e.g. "layer*.ffn"); throws UserError
// on a malformed one.
std::vector<std::pair<std::string, double>> parse_targets(const std::vector<std::string>& entries) {
  std::vector<std::pair<std::string, double>> out;
  for (const auto& e : entries) {
    const size_t eq = e.find('=');
    QD_CHECK(eq != std::string::npos && eq > 0, UserError, "'", e, "': expected NAME=SPARSITY, e.g. block4=0.3");
    double v = 0;
    try {
      size_t used = 0;
      v = std::stod(e.substr(eq + 1), &used);
      QD_CHECK(used == e.size() - eq - 1, UserError, "");
    } catch (const std::exception&) {
      throw UserError(concat("'", e, "': the sparsity after '=' must be a number in [0, 1)"));
    }
    QD_CHECK(v >= 0.0 && v < 1.0, UserError, "'", e, "': sparsity ", v, " is outside [0, 1)");
    out.emplace_back(e.substr(0, eq), v);
  }
  return out;
}

bool matches_any(const std::string& pattern, const std::vector<std::string>& names) {
  return std::any_of(names.begin(), names.end(), [&](const std::string& n) { return layer_pattern_match(pattern, n); });
}

bool excluded(const std::vector<std::string>& exclude, const std::string& name) {
  return std::any_of(exclude.begin(), exclude.end(), [&](const std::string& e) { return layer_pattern_match(e, name); });
}

// Names a config entry may use: layers (magnitude), or groups and their layers (structured).
std::vector<std::string> valid_names(const PruneConfig& cfg, Model& model, std::vector<PruneGroup>* groups_out) {
  std::vector<std::string> names;
  if (cfg.method == PruneMethod::kMagnitude) {
    for (const auto& [n, w] : prunable_weights(model)) names.push_back(n);
  } else {
    std::vector<PruneGroup> groups = model.prune_groups();
    for (const auto& g : groups) {
      names.push_back(g.name);
      for (const auto& l : g.layers)
        if (!contains(names, l)) names.push_back(l);
    }
    if (groups_out) *groups_out = std::move(groups);
  }
  return names;
}

// Everything a unit owns is zeroed but per-unit state: its readers' weights too, so that a
// quantizer's per-row range sees what the smaller model's will.
bool masked_role(SliceRole r) { return r != SliceRole::kState; }

// [units] from t: |t| (l1), t^2 (l2, before the root) summed over all but the unit's entries.
torch::Tensor per_unit_sum(const ResolvedSlice& s, int64_t units, bool square) {
  const torch::Tensor a = square ? s.t.detach().pow(2) : s.t.detach().abs();
  if (s.dim == 0 && s.block == 1) {  // the common case, reduced as the CNN pruner always has
    std::vector<int64_t> dims;
    for (int64_t d = 1; d < a.dim(); ++d) dims.push_back(d);
    return dims.empty() ? a : a.sum(dims);
  }
  return a.transpose(0, s.dim).reshape({units, -1}).sum(1);
}

}  // namespace

std::vector<ResolvedSlice> resolve_slices(torch::nn::Module& model, const PruneGroup& g) {
  std::map<std::string, torch::Tensor> tensors;
  for (const auto& p : model.named_parameters(true)) tensors[p.key()] = p.value();
  for (const auto& b : model.named_buffers(true)) tensors[b.key()] = b.value();
  std::vector<ResolvedSlice> out;
  auto add = [&](const std::string& name, const DimSlice& d, bool wildcard) {
    auto it = tensors.find(name);
    QD_CHECK(it != tensors.end(), Error, "prune group ", g.name, ": the model has no tensor ", name);
    const torch::Tensor& t = it->second;
    QD_CHECK(t.dim() > d.dim, Error, "prune group ", g.name, ": ", name, " has no dimension ", d.dim);
    ResolvedSlice r{name, t, d.dim, d.block, d.role};
    if (wildcard) {
      QD_CHECK(t.size(d.dim) % g.units == 0, Error, "prune group ", g.name, ": ", name, " has ", t.size(d.dim),
               " entries along dimension ", d.dim, ", not a multiple of its ", g.units, " units");
      r.block = t.size(d.dim) / g.units;
    }
    QD_CHECK(t.size(d.dim) == g.units * r.block, Error, "prune group ", g.name, ": ", name, " has ", t.size(d.dim),
             " entries along dimension ", d.dim, ", expected ", g.units, " units x ", r.block);
    out.push_back(std::move(r));
  };
  for (const auto& d : g.slices) {
    const size_t n = d.tensor.size();
    if (n < 2 || d.tensor.compare(n - 2, 2, ".*") != 0) {
      add(d.tensor, d, false);
      continue;
    }
    const std::string path = d.tensor.substr(0, n - 2);
    for (const auto& m : model.named_modules("", false)) {
      if (m.key() != path && m.key().rfind(path + ".", 0) != 0) continue;
      if (const auto* pc = dynamic_cast<const PerChannelState*>(m.value().get()))
        for (const auto& rel : pc->per_channel_tensors()) add(m.key() + "." + rel, d, true);
    }
  }
  return out;
}

torch::Tensor slice_indices(const ResolvedSlice& s, const torch::Tensor& keep) {
  if (s.block == 1) return keep;
  return (keep.view({-1, 1}) * s.block + torch::arange(s.block, keep.options()).view({1, -1})).reshape({-1});
}

double scheduled_sparsity(const PruneConfig& cfg, double target, int64_t step, int64_t steps_per_epoch) {
  const int64_t t0 = static_cast<int64_t>(cfg.start_epoch) * steps_per_epoch;
  if (step < t0) return 0.0;
  if (cfg.schedule == PruneSchedule::kOneShot) return target;
  const int64_t t1 = static_cast<int64_t>(cfg.end_epoch) * steps_per_epoch;
  if (step >= t1) return target;
  const double si = std::min(cfg.initial_sparsity, target);
  const double frac = static_cast<double>(step - t0) / static_cast<double>(t1 - t0);
  return target + (si - target) * std::pow(1.0 - frac, 3.0);
}

std::optional<std::pair<std::string, std::string>> check_prune_names(const PruneConfig& cfg, Model& model) {
  std::vector<std::string> names;
  try {
    names = valid_names(cfg, model, nullptr);
  } catch (const UserError& e) {
    return std::make_pair(std::string("prune.method"), std::string(e.what()));
  }
  const std::string what = cfg.method == PruneMethod::kMagnitude ? "a prunable layer" : "a channel group or its layer";
  for (const auto& e : cfg.exclude)
    if (!matches_any(e, names))
      return std::make_pair(std::string("prune.exclude"),
                            concat("'", e, "' is not ", what, " of the ", model.kind(), "; valid: ", join(names)));
  try {
    for (const auto& [n, v] : parse_targets(cfg.layer_targets))
      if (!matches_any(n, names))
        return std::make_pair(std::string("prune.layer_targets"),
                              concat("'", n, "' is not ", what, " of the ", model.kind(), "; valid: ", join(names)));
  } catch (const UserError& e) {
    return std::make_pair(std::string("prune.layer_targets"), std::string(e.what()));
  }
  return std::nullopt;
}

void PruneHook::collect(Model& model) {
  model_ = &model;
  units_.clear();
  groups_.clear();
  slices_.clear();
  const auto targets = parse_targets(cfg_.layer_targets);
  auto target_of = [&](const std::vector<std::string>& names) {  // the first entry in file order that matches
    for (const auto& [pattern, v] : targets)
      if (matches_any(pattern, names)) return v;
    return cfg_.target_sparsity;
  };
  if (cfg_.method == PruneMethod::kMagnitude) {
    for (auto& [n, w] : prunable_weights(model)) {
      if (excluded(cfg_.exclude, n)) continue;
      Unit u;
      u.name = n;
      u.weight = w;
      u.target = target_of({n});
      units_.push_back(std::move(u));
    }
    return;
  }
  valid_names(cfg_, model, &groups_);
  for (const auto& g : groups_) {
    slices_.push_back(resolve_slices(model, g));
    QD_CHECK(cfg_.criterion != PruneCriterion::kBnGamma ||
                 std::any_of(g.slices.begin(), g.slices.end(), [](const DimSlice& d) { return d.role == SliceRole::kScale; }),
             UserError, "prune.criterion: bn_gamma scores units by a BatchNorm scale, which group ", g.name, " (", g.axis,
             ") has none of; use l1, l2 or activation");
  }
  for (size_t i = 0; i < groups_.size(); ++i) {
    std::vector<std::string> names = groups_[i].layers;
    names.insert(names.begin(), groups_[i].name);
    if (std::any_of(names.begin(), names.end(), [&](const std::string& n) { return excluded(cfg_.exclude, n); }))
      continue;
    Unit u;
    u.name = groups_[i].name;
    u.group = static_cast<int>(i);
    u.target = target_of(names);
    units_.push_back(std::move(u));
  }
}

void PruneHook::on_train_begin(TrainState& state) {
  auto* model = dynamic_cast<Model*>(state.model);
  QD_CHECK(model != nullptr, UserError, "prune: the trained network is not a model of the zoo");
  collect(*model);
  // Before the final sparsity is reached, epochs measure a bigger model: not eligible for best.pt.
  const int64_t done = cfg_.schedule == PruneSchedule::kOneShot ? cfg_.start_epoch : cfg_.end_epoch;
  state.best_from_epoch = std::max(state.best_from_epoch, done);
  log_info("prune: ", cfg_.method == PruneMethod::kChannel ? "units" : "weights", " of ", units_.size(),
           cfg_.method == PruneMethod::kChannel ? " groups" : " layers", " to ", cfg_.target_sparsity,
           cfg_.layer_targets.empty() ? std::string() : concat(" (", join(cfg_.layer_targets), " where they match)"),
           cfg_.schedule == PruneSchedule::kOneShot ? concat(" at once at epoch ", cfg_.start_epoch + 1)
                                                   : concat(" from epoch ", cfg_.start_epoch + 1, " to ", cfg_.end_epoch));
}

torch::Tensor PruneHook::unit_scores(size_t group, const std::map<std::string, torch::Tensor>& measured) const {
  torch::NoGradGuard ng;
  const int64_t units = groups_[group].units;
  if (cfg_.criterion == PruneCriterion::kActivation) {
    auto it = measured.find(groups_[group].name);
    QD_CHECK(it != measured.end() && it->second.numel() == units, Error, "prune: the calibration pass measured no ",
             units, " activations for group ", groups_[group].name);
    return it->second.to(torch::kCPU, torch::kFloat64);
  }
  torch::Tensor score = torch::zeros({units}, torch::kFloat64);
  for (const auto& sl : slices_[group]) {
    torch::Tensor s;
    switch (cfg_.criterion) {
      case PruneCriterion::kL1:
        if (sl.role == SliceRole::kWeight) s = per_unit_sum(sl, units, false);
        break;
      case PruneCriterion::kL2:
        if (sl.role == SliceRole::kWeight) s = per_unit_sum(sl, units, true).sqrt();
        break;
      case PruneCriterion::kBnGamma:
        if (sl.role == SliceRole::kScale) s = per_unit_sum(sl, units, false);
        break;
      case PruneCriterion::kActivation:  // returned above
        break;
    }
    if (s.defined()) score += s.to(torch::kCPU, torch::kFloat64);
  }
  return score;
}

void PruneHook::update_masks(int64_t step, int64_t steps_per_epoch) {
  torch::NoGradGuard ng;
  // Per unit: how many elements (weights or channels) the schedule prunes now.
  std::vector<torch::Tensor> scores;
  std::vector<int64_t> prune_n;
  std::map<std::string, torch::Tensor> measured;
  if (cfg_.criterion == PruneCriterion::kActivation && cfg_.method == PruneMethod::kChannel) {
    QD_CHECK(importance_ && model_, UserError, "prune.criterion: activation needs a calibration pass, which this "
             "model or task does not offer; use l1 or l2");
    measured = importance_(*model_);
  }
  for (auto& u : units_) {
    const double s = scheduled_sparsity(cfg_, u.target, step, steps_per_epoch);
    torch::Tensor sc = u.group >= 0 ? unit_scores(static_cast<size_t>(u.group), measured)
                                    : u.weight.detach().abs().reshape({-1}).to(torch::kCPU, torch::kFloat64);
    int64_t n = static_cast<int64_t>(std::floor(s * static_cast<double>(sc.numel()) + 1e-9));
    n = std::min<int64_t>(n, sc.numel() - 1);  // never empty a layer
    scores.push_back(sc);
    prune_n.push_back(n);
  }
  if (cfg_.scope == PruneScope::kGlobal && !units_.empty()) {
    // One ranking across units (channel scores normalised by their group's mean, since groups
    // differ in fan-in); at least one element survives per unit.
    std::vector<torch::Tensor> norm;
    int64_t total_n = 0;
    for (size_t i = 0; i < scores.size(); ++i) {
      norm.push_back(units_[i].group >= 0 ? scores[i] / scores[i].mean().clamp_min(1e-30) : scores[i]);
      total_n += prune_n[i];
    }
    torch::Tensor all = torch::cat(norm);
    if (total_n > 0) {
      const double thr = std::get<0>(all.kthvalue(total_n)).item<double>();
      for (size_t i = 0; i < scores.size(); ++i) {
        const int64_t below = norm[i].le(thr).sum().item<int64_t>();
        prune_n[i] = std::min<int64_t>(below, scores[i].numel() - 1);
      }
    }
  }
  for (size_t i = 0; i < units_.size(); ++i) {
    Unit& u = units_[i];
    torch::Tensor keep = torch::ones({scores[i].numel()}, torch::kFloat32);
    if (prune_n[i] > 0) {
      // Exactly prune_n lowest (ties broken by index: deterministic on every rank).
      torch::Tensor order = std::get<1>(scores[i].sort(/*stable=*/true, 0, false));
      keep.index_fill_(0, order.slice(0, 0, prune_n[i]), 0.0f);
    }
    const torch::Device dev = u.group >= 0 ? slices_[static_cast<size_t>(u.group)].front().t.device() : u.weight.device();
    u.mask = (u.group >= 0 ? keep : keep.view(u.weight.sizes())).to(dev);
  }
  apply_masks(false);
  set_norms_kept();
}

void PruneHook::apply_masks(bool to_grads) {
  torch::NoGradGuard ng;
  auto mul = [&](const torch::Tensor& t, const torch::Tensor& m) {
    if (!to_grads) {
      t.mul_(m);
    } else if (t.grad().defined()) {
      t.grad().mul_(m);
    }
  };
  for (auto& u : units_) {
    if (!u.mask.defined()) continue;
    if (u.group < 0) {
      mul(u.weight, u.mask);
      continue;
    }
    const auto g = static_cast<size_t>(u.group);
    for (const auto& sl : slices_[g]) {
      if (!masked_role(sl.role)) continue;
      torch::Tensor m = sl.block == 1 ? u.mask : u.mask.repeat_interleave(sl.block);
      std::vector<int64_t> shape(static_cast<size_t>(sl.t.dim()), 1);
      shape[static_cast<size_t>(sl.dim)] = -1;
      mul(sl.t, m.view(shape));
    }
  }
}

void PruneHook::on_step_begin(TrainState& state) {
  const int64_t step = state.global_step, spe = state.steps_per_epoch;
  if (step < static_cast<int64_t>(cfg_.start_epoch) * spe) return;
  const int64_t end = cfg_.schedule == PruneSchedule::kOneShot ? cfg_.start_epoch * spe : cfg_.end_epoch * spe;
  const bool due = last_update_ < 0 || (step <= end && (step - last_update_ >= cfg_.update_every_steps || step == end));
  if (!due || step == last_update_) return;
  update_masks(step, spe);
  last_update_ = step;
}

void PruneHook::on_after_backward(TrainState&) { apply_masks(true); }

void PruneHook::on_after_optimizer_step(TrainState&) { apply_masks(false); }

std::map<std::string, double> PruneHook::sparsity() const {
  std::map<std::string, double> out;
  for (const auto& u : units_) {
    if (!u.mask.defined()) {
      out[u.name] = 0.0;
      continue;
    }
    out[u.name] = 1.0 - u.mask.sum().item<double>() / static_cast<double>(u.mask.numel());
  }
  return out;
}

std::vector<torch::Tensor> PruneHook::kept_units() const {
  std::vector<torch::Tensor> kept;
  for (const auto& g : groups_) kept.push_back(torch::arange(g.units, torch::kInt64));
  for (const auto& u : units_)
    if (u.group >= 0 && u.mask.defined()) kept[static_cast<size_t>(u.group)] = u.mask.cpu().nonzero().reshape({-1});
  return kept;
}

void PruneHook::on_epoch_end(TrainState& state) {
  double pruned = 0, total = 0;
  for (const auto& [name, s] : sparsity()) state.epoch_metrics["sparsity/" + name] = s;
  for (const auto& u : units_) {
    const double n = static_cast<double>(u.mask.defined() ? u.mask.numel() : (u.group >= 0 ? groups_[static_cast<size_t>(u.group)].units : u.weight.numel()));
    total += n;
    if (u.mask.defined()) pruned += n - u.mask.sum().item<double>();
  }
  state.epoch_metrics[cfg_.method == PruneMethod::kChannel ? "channel_sparsity" : "weight_sparsity"] =
      total > 0 ? pruned / total : 0.0;
}

void PruneHook::save_state(torch::serialize::OutputArchive& ar) const {
  ar.write("last_update", torch::tensor({last_update_}, torch::kInt64));
  for (const auto& u : units_)
    if (u.mask.defined()) ar.write("mask/" + u.name, u.mask.cpu());
}

void PruneHook::load_state(torch::serialize::InputArchive& ar) {
  torch::Tensor t;
  if (!ar.try_read("last_update", t)) return;
  last_update_ = t[0].item<int64_t>();
  for (auto& u : units_) {
    torch::Tensor m;
    if (!ar.try_read("mask/" + u.name, m)) continue;
    const torch::Device dev = u.group >= 0 ? slices_[static_cast<size_t>(u.group)].front().t.device() : u.weight.device();
    u.mask = m.to(dev);
  }
  set_norms_kept();  // the checkpoint's weights are masked already
}

void PruneHook::set_norms_kept() {
  for (const auto& u : units_)
    if (u.group >= 0 && u.mask.defined())
      for (PrunableNorm* n : groups_[static_cast<size_t>(u.group)].norms) n->set_kept(u.mask);
}

}  // namespace qd
