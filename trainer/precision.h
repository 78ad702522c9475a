// Mixed precision (trainer.precision): autocast for the forward passes, and the dynamic loss scale
// that fp16 needs.
//
//   fp32  everything in float32 (the default).
//   bf16  autocast: LibTorch's lower-precision list (matmul, linear, conv, bmm, ...) runs in
//         bfloat16; its float32 list and everything else runs in the inputs' type. Weights, their
//         gradients and the optimizer state stay float32 (the master copy); the tasks take their
//         logits as float32, so losses and softmaxes are float32.
//   fp16  the same in float16, with a LossScaler: the loss is multiplied by the scale before
//         backward, gradients are divided by it before the optimizer step, a step whose gradients
//         overflowed is skipped and halves the scale, and 2000 (trainer.loss_scale_growth_interval)
//         good steps in a row double it (PyTorch's GradScaler rule). Its state is in checkpoints.
//
// Where fake-quant stays float32: every quantizer casts its input to float32 first (qat/: the
// per-token, per-block and static activation quantizers; weights are float32 master weights), so
// the rounding to the int8/int4 grid and its scales are float32 computations. What follows a
// quantizer, the layer's matmul, then runs in 16 bits: bf16 holds the int8 codes exactly but
// rounds their scale to 8 significant bits, so QAT under bf16 trains on the deployed grid up to
// one bf16 rounding of each product; the exported model and qdistill-run use the exact grid.
#pragma once

#include <torch/torch.h>

#include <string>

#include "common/train_hook.h"
#include "trainer/experiment_config.h"

namespace qd {

// Autocast on `device`'s type for the scope's lifetime (nothing for fp32). Nests; restores the
// previous state on exit and clears the cast cache when the outermost scope ends.
class AutocastScope {
 public:
  AutocastScope(Precision p, torch::Device device);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool active_ = false;
  c10::DeviceType type_ = c10::DeviceType::CPU;
  bool was_enabled_ = false;
  at::ScalarType was_dtype_ = at::kBFloat16;
};

// fp16's dynamic loss scale. A TrainHook only for its checkpointed state ("hook.loss_scaler").
class LossScaler : public TrainHook {
 public:
  explicit LossScaler(int64_t growth_interval = 2000, double initial = 65536.0, double growth = 2.0,
                      double backoff = 0.5);
  std::string name() const override { return "loss_scaler"; }

  double scale() const { return scale_; }
  int64_t growth_count() const { return good_in_a_row_; }
  int64_t overflow_steps() const { return overflows_; }  // since construction or the checkpoint

  // Divides every defined gradient by the scale (one fused pass); false when any gradient holds an
  // inf or a NaN (the step must be skipped). Then updates the scale: halved on overflow, doubled
  // after growth_interval good steps in a row.
  bool unscale_and_update(const std::vector<torch::Tensor>& params);
  // The scale rule alone (unscale_and_update calls it).
  void update(bool overflow);

  void save_state(torch::serialize::OutputArchive& a) const override;
  void load_state(torch::serialize::InputArchive& a) override;

 private:
  int64_t interval_;
  double scale_, growth_, backoff_;
  int64_t good_in_a_row_ = 0;
  int64_t overflows_ = 0;
};

}  // namespace qd
