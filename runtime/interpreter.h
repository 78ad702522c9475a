// Runs an integer model (runtime/model.h): integer-only arithmetic from the quantized input to the
// classifier's int32 accumulators; float only at the two ends (quantizing the float pixels, as
// training did, and scaling the accumulators to float logits). No LibTorch.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "runtime/kernels.h"
#include "runtime/model.h"

namespace qd::rt {

class Interpreter {
 public:
  // Validates the model (throws QdmError, from runtime/qdm.h, when invalid) and allocates every
  // activation buffer once.
  explicit Interpreter(Model model);

  // One image: `pixels` [c * h * w] floats in [0, 1] (CHW) -> `logits` [num_classes].
  void run(const float* pixels, float* logits);
  // The same, calling `after(id, values)` once tensor `id` (int8) is computed; the callback may
  // change the values (tests feed a layer the simulation's input to measure it alone).
  using TensorHook = std::function<void(int id, std::vector<int8_t>& values)>;
  void run(const float* pixels, float* logits, const TensorHook& after);
  // A batch of `n` images, one after another.
  void run_batch(const float* pixels, int64_t n, float* logits);

  const Model& model() const { return model_; }
  // The int8 values of tensor `id` (0: quantized input, i + 1: output of layer i, except the last)
  // from the latest run(): lets tests compare every layer with training's simulation.
  const std::vector<int8_t>& tensor(int id) const { return acts_[static_cast<size_t>(id)]; }

 private:
  Model model_;
  std::vector<std::vector<int8_t>> acts_;  // [tensors - 1]
  std::vector<PackedConvWeights> packed_;  // per layer (convolutions only)
  ConvScratch scratch_;
  std::vector<int32_t> acc_;
};

// The input quantization of training, bit for bit: clamp(round_half_even(((x - mean) * inv_std)
// * (1 / scale)) + zero_point, -128, 127), in float32 arithmetic.
int8_t quantize_input(float x, float mean, float inv_std, float inv_scale, int32_t zero_point);

}  // namespace qd::rt
