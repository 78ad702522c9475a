// One training step of a Llama decoder (the llama_student_scratch shape by default): forward,
// next-token cross-entropy, backward, gradient clipping, AdamW, on random token batches, timed
// after warm-up. bench/run_transformer.sh runs it next to bench/transformer_step.py (the same model
// and step in Python PyTorch eager) with the same threads and prints the ratio.
//   bench_transformer_step [--steps N] [--warmup N] [--batch B] [--seq T] [--threads N] [--profile] [--unfused]
//                          [--device cpu|cuda] [--precision fp32|bf16|fp16]
// --precision: the forward under autocast (trainer/precision.h), fp16 with the engine's LossScaler.
// Prints one JSON line: tokens_per_second, ms_per_step, params.
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "models/llama.h"
#include "trainer/optim.h"
#include "trainer/precision.h"
#include "trainer/task.h"

int main(int argc, char** argv) {
  int steps = 20, warmup = 3, batch = 16, seq = 128, threads = 2;
  bool profile = false, fused = true;
  std::string device_name = "cpu", precision_name = "fp32";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto next = [&]() { return i + 1 < argc ? std::atoi(argv[++i]) : 0; };
    if (a == "--steps") steps = next();
    else if (a == "--warmup") warmup = next();
    else if (a == "--batch") batch = next();
    else if (a == "--seq") seq = next();
    else if (a == "--threads") threads = next();
    else if (a == "--profile") profile = true;
    else if (a == "--unfused") fused = false;
    else if (a == "--device" && i + 1 < argc) device_name = argv[++i];
    else if (a == "--precision" && i + 1 < argc) precision_name = argv[++i];
    else {
      std::fprintf(stderr, "usage: %s [--steps N] [--warmup N] [--batch B] [--seq T] [--threads N] [--profile] [--unfused] "
                   "[--device cpu|cuda] [--precision fp32|bf16|fp16]\n", argv[0]);
      return 2;
    }
  }
  if ((device_name != "cpu" && device_name != "cuda") ||
      (precision_name != "fp32" && precision_name != "bf16" && precision_name != "fp16")) {
    std::fprintf(stderr, "%s: --device cpu|cuda, --precision fp32|bf16|fp16\n", argv[0]);
    return 2;
  }
  if (device_name == "cuda" && !torch::cuda::is_available()) {
    std::fprintf(stderr, "%s: --device cuda, but no CUDA device is visible\n", argv[0]);
    return 2;
  }
  const torch::Device device = device_name == "cuda" ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU);
  const qd::Precision precision = precision_name == "bf16"   ? qd::Precision::kBf16
                                  : precision_name == "fp16" ? qd::Precision::kFp16
                                                             : qd::Precision::kFp32;
  const auto sync = [&] {
    if (device.is_cuda()) torch::cuda::synchronize();
  };
  torch::set_num_threads(threads);
  torch::manual_seed(0);
  qd::LlamaOptions o;  // configs/llama_student_scratch.yaml
  o.vocab = 49152, o.hidden = 256, o.layers = 6, o.heads = 4, o.kv_heads = 2, o.ffn = 768, o.max_positions = 512;
  o.rope_theta = 10000.0;
  qd::Llama model(o);
  for (auto& p : model->parameters())
    if (p.dim() >= 2) p.detach().normal_(0.0, 0.02);
  model->to(device);
  std::unique_ptr<qd::LossScaler> scaler;
  if (precision == qd::Precision::kFp16) scaler = std::make_unique<qd::LossScaler>();
  // The engine's optimizer (trainer/optim.h): AdamW, fused unless --unfused, no decay on norms.
  qd::OptimizerConfig oc;
  oc.name = qd::OptimizerKind::kAdamW;
  oc.lr = 1e-3, oc.weight_decay = 0.1, oc.beta2 = 0.95, oc.fused = fused;
  auto opt_ptr = qd::make_optimizer(oc, model->parameters());
  torch::optim::Optimizer& opt = *opt_ptr;
  int64_t params = 0;
  for (const auto& p : model->parameters()) params += p.numel();
  const torch::Tensor mask = torch::ones({batch, seq}, torch::TensorOptions().dtype(torch::kLong).device(device));

  // Phases of one step, summed over the timed steps (--profile).
  double t_data = 0, t_fwd = 0, t_bwd = 0, t_opt = 0;
  using clock = std::chrono::steady_clock;
  const auto secs = [](clock::time_point a, clock::time_point b) { return std::chrono::duration<double>(b - a).count(); };
  clock::time_point start;
  for (int s = 0; s < warmup + steps; ++s) {
    if (s == warmup) sync(), start = clock::now();
    const auto t0 = clock::now();
    const torch::Tensor tokens = torch::randint(0, o.vocab, {batch, seq + 1}, torch::kLong).to(device);
    const torch::Tensor ids = tokens.narrow(1, 0, seq), targets = tokens.narrow(1, 1, seq);
    if (profile) sync();
    const auto t1 = clock::now();
    opt.zero_grad();
    torch::Tensor loss;
    {
      qd::AutocastScope autocast(precision, device);
      loss = qd::causal_lm_loss(model(ids, mask).to(torch::kFloat32), targets);
    }
    if (profile) sync();
    const auto t2 = clock::now();
    (scaler ? loss * scaler->scale() : loss).backward();
    if (profile) sync();
    const auto t3 = clock::now();
    const bool step = !scaler || scaler->unscale_and_update(model->parameters());
    torch::nn::utils::clip_grad_norm_(model->parameters(), 1.0);
    if (step) opt.step();
    if (profile) sync();
    const auto t4 = clock::now();
    if (s >= warmup) t_data += secs(t0, t1), t_fwd += secs(t1, t2), t_bwd += secs(t2, t3), t_opt += secs(t3, t4);
  }
  sync();
  const double total = secs(start, clock::now());
  std::printf("{\"impl\": \"cpp%s\", \"device\": \"%s\", \"precision\": \"%s\", ", fused ? "" : " unfused adamw",
              device_name.c_str(), precision_name.c_str());
  std::printf("\"tokens_per_second\": %.1f, \"ms_per_step\": %.2f, \"params\": %lld, \"threads\": %d",
              static_cast<double>(steps) * batch * seq / total, 1e3 * total / steps, static_cast<long long>(params), threads);
  if (profile)
    std::printf(", \"ms_data\": %.2f, \"ms_forward\": %.2f, \"ms_backward\": %.2f, \"ms_clip_and_adamw\": %.2f",
                1e3 * t_data / steps, 1e3 * t_fwd / steps, 1e3 * t_bwd / steps, 1e3 * t_opt / steps);
  std::printf("}\n");
  return 0;
}
