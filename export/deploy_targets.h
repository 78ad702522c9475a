// Which runtimes and CPUs compute an exported integer model exactly, proved from its integers,
// and an exact emulation of the int8 kernels that may not. No LibTorch.
//
// An int8 convolution or matrix product sums products of int8 activations and weights. Our
// runtime (qdistill-run), TensorRT, and ONNX Runtime on x86 with VNNI or on ARM64 with dot-product
// instructions accumulate every product in int32: exact. Two kernel families do not:
//
// - x86-64 without VNNI (AVX2, and AVX-512 without VNNI): ONNX Runtime's MLAS multiplies u8
//   activations by s8 weights with vpmaddubsw, which adds two adjacent products and SATURATES
//   the sum to int16 before widening. Activations reach it as raw bytes (our int8 values + 128,
//   any of 0..255, the padding of a convolution being the zero point), so a pair of weights of
//   the same sign with |w1| + |w2| > 128 can clip. The pairs are consecutive reduction indices
//   (2m, 2m + 1) in the order (ky, kx, c) of a convolution (MLAS works in NHWC: its im2col GEMM
//   packs K in quads, its "ConvSym" kernel packs 4 input channels per kernel position; both give
//   these pairs) and in the flattened order of the classifier.
// - ARM64 NEON without the dot product (Cortex-A53/A57/A72): two s8 x s8 products share a
//   wrapping int16 lane (smull + smlal); only two products of -128 * -128 overflow, which
//   symmetric weights ([-127, 127]) rule out.
//
// ONNX Runtime requantizes in float (round half to even) where qdistill-run uses a fixed-point
// multiplier; that differs only at exact ties and is the same on every CPU. The emulation below
// therefore changes only the accumulation and keeps qdistill-run's requantization: with exact
// accumulation it reproduces the interpreter bit for bit.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/model.h"

namespace qd {

// How a kernel sums the products of one dot product.
enum class DotProduct {
  kExact,           // int32 accumulation (VNNI vpdpbusd(s): four u8 x s8 products per int32 step)
  kPairSaturate16,  // x86 vpmaddubsw: u8 x s8, adjacent pairs summed with int16 saturation
  kPairWrap16,      // ARM64 NEON smull + smlal: two s8 x s8 products in a wrapping int16 lane
};

// A runtime on a class of CPUs that the exported files are meant for.
struct DeployPlatform {
  const char* id;           // "ort_x86_avx2"
  const char* name;         // "ONNX Runtime, x86-64 AVX2 without VNNI"
  const char* cpus;         // examples of such CPUs
  const char* kernel;       // the instruction doing the int8 products
  DotProduct dot;
  bool needs_symmetric_activations;  // TensorRT: int8 activations without zero points
};
// Every platform the export reports on, in a fixed order.
const std::vector<DeployPlatform>& deploy_platforms();
// The platform with this id, or nullptr.
const DeployPlatform* find_platform(const std::string& id);
// The ONNX Runtime platform of the CPU this process runs on ("ort_x86_vnni", ...); "ort_x86_sse"
// for an x86-64 without AVX2 and "other" elsewhere, which are not platforms of the report.
std::string this_cpu_platform();

// The static verdict for one platform: can any input make the kernel differ from int32 sums?
struct PlatformVerdict {
  const DeployPlatform* platform = nullptr;
  bool exact = true;
  std::string reason;        // why not exact, or "" when exact
  // Pair kernels (kPairSaturate16, kPairWrap16): the largest |sum of a pair| over all layers and
  // inputs, against the int16 lane's 32767, and the layer where it occurs.
  int64_t worst_pair = 0;
  std::string worst_layer;
};
// Proves or refutes exactness from the model's integers and the value range of every tensor.
// Throws std::invalid_argument for a model that rt::validate rejects.
PlatformVerdict check_platform(const rt::Model& m, const DeployPlatform& p);

// The u8 x s8 pair sums of x86 vpmaddubsw: a1 * w1 + a2 * w2, saturated to int16.
int32_t vpmaddubsw_pair(uint8_t a1, int8_t w1, uint8_t a2, int8_t w2);

// The values tensor t can hold ([lo, hi] of int8 q): the input and a global pool can take any
// int8 value; a conv or add output is clamped to [act_min, act_max]; max pooling keeps its input's.
struct ValueRange {
  int32_t lo = -128, hi = 127;
};
std::vector<ValueRange> tensor_ranges(const rt::Model& m);

// Runs an integer model the way a kernel family accumulates (kExact or kPairSaturate16), with
// qdistill-run's requantization. kExact reproduces rt::Interpreter bit for bit. kPairSaturate16
// models ONNX Runtime 1.23 on x86 without VNNI, including which layers it fuses into integer
// kernels: the classifier, and every conv whose output one layer reads with no clamp left between
// them (none, or a ReLU at the int8 minimum); a conv read by several layers (a residual block's
// input: one Q/DQ pair per reader) or clamped otherwise stays a float Conv and is exact. The
// static check above does not rely on that: it assumes every layer is fused.
class KernelEmulator {
 public:
  KernelEmulator(rt::Model m, DotProduct dot);
  ~KernelEmulator();
  KernelEmulator(const KernelEmulator&) = delete;
  KernelEmulator& operator=(const KernelEmulator&) = delete;

  // One image: `pixels` [c * h * w] floats in [0, 1] -> `logits` [num_classes].
  void run(const float* pixels, float* logits);

  // Pair sums computed and clipped so far, per layer (conv and linear layers; 0 elsewhere).
  const std::vector<int64_t>& pairs() const { return pairs_; }
  const std::vector<int64_t>& saturated() const { return saturated_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::vector<int64_t> pairs_, saturated_;
};

}  // namespace qd
