// Runs QAT inside the trainer: the schedule (start, observer freeze, BN freeze) and the
// cross-rank synchronisation of activation statistics, so every rank uses identical scales.
//
// The model must already carry its quantizers (attach_qat of qat/module_qat.h, called where the model is built, so their buffers and LSQ parameters exist before the optimizer and the checkpoint do).
// Everything QAT learns lives in model buffers/parameters: checkpoints restore it bit-exactly,
// and the flags are recomputed from the schedule at every step.
#pragma once

#include <vector>

#include "common/train_hook.h"
#include "qat/conv_bn.h"
#include "qat/fake_quantize.h"
#include "qat/module_qat.h"
#include "qat/qat_config.h"

namespace qd {

// What the schedule says at a point of training.
struct QatPhase {
  bool active = false;            // fake-quant on
  bool observers_frozen = false;  // scales fixed
  bool bn_frozen = false;         // BN folded with its running statistics, which stop updating
};
QatPhase qat_phase(const QatConfig& cfg, int64_t epoch, int64_t global_step);

// First epoch that ends with fake-quant on, so that its evaluation is of the quantized model:
// earlier epochs cannot give the best checkpoint. (An epoch in which qat.start_step falls is one:
// a run of one epoch with QAT for its last steps must have a best.pt for eval and export.)
int64_t qat_first_quantized_epoch(const QatConfig& cfg, int64_t steps_per_epoch);

class QatHook : public TrainHook {
 public:
  explicit QatHook(QatConfig cfg) : cfg_(std::move(cfg)) {}
  std::string name() const override { return "qat"; }
  void on_train_begin(TrainState& state) override;
  void on_step_begin(TrainState& state) override;
  void on_after_backward(TrainState& state) override;
  void on_epoch_end(TrainState& state) override;

  // All-reduces the pending statistics of `quantizers` (one collective per reduction kind) and
  // updates them; what on_after_backward does. Public for tests.
  static void sync_observers(const std::vector<FakeQuantize>& quantizers, Communicator* comm, int world_size);

 private:
  void apply(const QatPhase& p);
  QatConfig cfg_;
  std::vector<FakeQuantize> quantizers_;
  std::vector<ConvBnQat> conv_bns_;
  std::vector<LayerQat> layers_;  // twins of Linear / Embedding layers (transformers)
  bool flags_loaded_ = false;
  QatPhase phase_;
};

// Reads every quantizer's flags back from its buffers (after a checkpoint was loaded outside
// training, e.g. by `qdistill eval`). Returns whether any fake-quant is enabled.
bool load_qat_flags(torch::nn::Module& model);
// Turns fake-quant on or off everywhere (eval's fp32 comparison), BN folding unchanged.
void set_fake_quant_enabled(torch::nn::Module& model, bool on);

// Bytes of the quantized model: `weight_bits`-bit weights of every conv / linear (packed), and
// per output channel an int32 bias and a float32 scale (BN folded away).
int64_t int8_model_bytes(const torch::nn::Module& model, int weight_bits = 8);

}  // namespace qd
