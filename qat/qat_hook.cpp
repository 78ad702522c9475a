#include "qat/qat_hook.h"

#include "common/error.h"
#include "common/log.h"
#include "parallel/communicator.h"

namespace qd {

QatPhase qat_phase(const QatConfig& cfg, int64_t epoch, int64_t global_step) {
  QatPhase p;
  if (!cfg.enabled) return p;
  p.active = cfg.start_step >= 0 ? global_step >= cfg.start_step : epoch >= cfg.start_epoch;
  p.observers_frozen = cfg.freeze_observers_epoch >= 0 && epoch >= cfg.freeze_observers_epoch;
  p.bn_frozen = cfg.freeze_bn_epoch >= 0 && epoch >= cfg.freeze_bn_epoch;
  return p;
}

int64_t qat_first_quantized_epoch(const QatConfig& cfg, int64_t steps_per_epoch) {
  if (cfg.start_step < 0) return cfg.start_epoch;
  return cfg.start_step / std::max<int64_t>(1, steps_per_epoch);  // global step start_step lies in this epoch
}

void QatHook::on_train_begin(TrainState& state) {
  quantizers_ = fake_quantizers(*state.model);
  conv_bns_.clear();
  for (const auto& m : state.model->modules())
    if (auto c = std::dynamic_pointer_cast<ConvBnQatImpl>(m)) conv_bns_.emplace_back(c);
  layers_ = layer_qats(*state.model);
  QD_CHECK(!quantizers_.empty() || !layers_.empty(), UserError,
           "qat: the model has no quantizers (attach_qat was not called)");
  state.best_from_epoch = std::max(state.best_from_epoch, qat_first_quantized_epoch(cfg_, state.steps_per_epoch));
  const QuantSpec w = cfg_.weight_spec();
  if (!layers_.empty()) {
    log_info("qat: ", layers_.size(), " linear/embedding layers quantized (", quantizers_.size(), " observed quantizers)",
             cfg_.start_step >= 0 ? concat("; from step ", cfg_.start_step) : concat("; from epoch ", cfg_.start_epoch + 1));
    return;
  }
  log_info("qat: ", quantizers_.size(), " quantizers, ", conv_bns_.size(), " folded conv-BN layers; target ",
           target_name(cfg_.target), ": weights ", w.bits, "-bit in [", w.quant_min(), ", ", w.quant_max(), "] ",
           w.per_channel ? "per-channel" : "per-tensor", ", activations ",
           cfg_.activation.bits, "-bit ", cfg_.activation.symmetric ? "symmetric" : "asymmetric",
           cfg_.start_step >= 0 ? concat("; from step ", cfg_.start_step) : concat("; from epoch ", cfg_.start_epoch + 1));
}

void QatHook::apply(const QatPhase& p) {
  for (auto& q : quantizers_) {
    q->set_enabled(p.active);
    q->set_observing(p.active && !p.observers_frozen);
  }
  for (auto& c : conv_bns_) c->set_bn_frozen(p.bn_frozen);
  for (auto& l : layers_) l->set_enabled(p.active);
  if (flags_loaded_ && (p.active != phase_.active || p.observers_frozen != phase_.observers_frozen ||
                        p.bn_frozen != phase_.bn_frozen)) {
    log_info("qat: fake-quant ", p.active ? "on" : "off", ", observers ", p.observers_frozen ? "frozen" : "live",
             conv_bns_.empty() ? "" : (p.bn_frozen ? ", BatchNorm frozen" : ", BatchNorm training"));
  }
  phase_ = p;
}

void QatHook::on_step_begin(TrainState& state) {
  if (!flags_loaded_) {  // after a resume the buffers hold the saved state (initialized scales)
    for (auto& q : quantizers_) q->load_flags();
    for (auto& c : conv_bns_) c->load_flags();
    for (auto& l : layers_) l->load_flags();
    flags_loaded_ = true;
    phase_ = QatPhase{};
  }
  apply(qat_phase(cfg_, state.epoch, state.global_step));
}

void QatHook::sync_observers(const std::vector<FakeQuantize>& quantizers, Communicator* comm, int world_size) {
  for (const bool sum : {false, true}) {
    std::vector<torch::Tensor> parts;
    std::vector<FakeQuantize> owners;
    for (const auto& q : quantizers) {
      if (q->options().weight || !q->pending().defined() || q->pending_reduces_with_sum() != sum) continue;
      parts.push_back(q->pending().reshape({-1}));
      owners.push_back(q);
    }
    if (parts.empty()) continue;
    torch::Tensor flat = torch::cat(parts);  // one collective for every quantizer of this kind
    if (comm && world_size > 1) all_reduce_now(*comm, flat, sum ? ReduceOp::kSum : ReduceOp::kMax);
    int64_t offset = 0;
    for (auto& q : owners) {
      const int64_t n = q->pending().numel();
      q->update(flat.slice(0, offset, offset + n).view(q->pending().sizes()), world_size);
      offset += n;
    }
  }
}

void QatHook::on_after_backward(TrainState& state) {
  if (phase_.active && !phase_.observers_frozen) sync_observers(quantizers_, state.comm, state.world_size);
}

void QatHook::on_epoch_end(TrainState& state) {
  state.epoch_metrics["qat_active"] = phase_.active ? 1.0 : 0.0;
  state.epoch_metrics["qat_observers_frozen"] = phase_.observers_frozen ? 1.0 : 0.0;
  state.epoch_metrics["qat_bn_frozen"] = phase_.bn_frozen ? 1.0 : 0.0;
}

bool load_qat_flags(torch::nn::Module& model) {
  bool any = false;
  for (auto& q : fake_quantizers(model)) {
    q->load_flags();
    any = any || (q->enabled() && q->initialized());
  }
  for (const auto& m : model.modules())
    if (auto c = std::dynamic_pointer_cast<ConvBnQatImpl>(m)) c->load_flags();
  for (auto& l : layer_qats(model)) {
    l->load_flags();
    any = any || l->enabled();
  }
  return any;
}

void set_fake_quant_enabled(torch::nn::Module& model, bool on) {
  for (auto& q : fake_quantizers(model)) q->set_enabled(on);
  for (auto& l : layer_qats(model)) l->set_enabled(on);
}

int64_t int8_model_bytes(const torch::nn::Module& model, int weight_bits) {
  int64_t bytes = 0;
  for (const auto& p : model.named_parameters()) {
    const torch::Tensor& t = p.value();
    if (t.dim() < 2) continue;  // BN and biases fold into the per-channel int32 bias
    bytes += (t.numel() * weight_bits + 7) / 8 + t.size(0) * (4 + 4);
  }
  return bytes;
}

}  // namespace qd
