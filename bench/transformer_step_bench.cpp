// One training step of a Llama decoder (the llama_student_scratch shape by default): forward,
// next-token cross-entropy, backward, gradient clipping, AdamW, on random token batches, timed
// after warm-up. bench/run_transformer.sh runs it next to bench/transformer_step.py (the same model
// and step in Python PyTorch eager) with the same threads and prints the ratio.
//   bench_transformer_step [--steps N] [--warmup N] [--batch B] [--seq T] [--threads N] [--profile] [--unfused]
// Prints one JSON line: tokens_per_second, ms_per_step, params.
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "models/llama.h"
#include "trainer/optim.h"
#include "trainer/task.h"

int main(int argc, char** argv) {
  int steps = 20, warmup = 3, batch = 16, seq = 128, threads = 2;
  bool profile = false, fused = true;
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
    else {
      std::fprintf(stderr, "usage: %s [--steps N] [--warmup N] [--batch B] [--seq T] [--threads N] [--profile] [--unfused]\n", argv[0]);
      return 2;
    }
  }
  torch::set_num_threads(threads);
  torch::manual_seed(0);
  qd::LlamaOptions o;  // configs/llama_student_scratch.yaml
  o.vocab = 49152, o.hidden = 256, o.layers = 6, o.heads = 4, o.kv_heads = 2, o.ffn = 768, o.max_positions = 512;
  o.rope_theta = 10000.0;
  qd::Llama model(o);
  for (auto& p : model->parameters())
    if (p.dim() >= 2) p.detach().normal_(0.0, 0.02);
  // The engine's optimizer (trainer/optim.h): AdamW, fused unless --unfused, no decay on norms.
  qd::OptimizerConfig oc;
  oc.name = qd::OptimizerKind::kAdamW;
  oc.lr = 1e-3, oc.weight_decay = 0.1, oc.beta2 = 0.95, oc.fused = fused;
  auto opt_ptr = qd::make_optimizer(oc, model->parameters());
  torch::optim::Optimizer& opt = *opt_ptr;
  int64_t params = 0;
  for (const auto& p : model->parameters()) params += p.numel();
  const torch::Tensor mask = torch::ones({batch, seq}, torch::kLong);

  // Phases of one step, summed over the timed steps (--profile).
  double t_data = 0, t_fwd = 0, t_bwd = 0, t_opt = 0;
  using clock = std::chrono::steady_clock;
  const auto secs = [](clock::time_point a, clock::time_point b) { return std::chrono::duration<double>(b - a).count(); };
  clock::time_point start;
  for (int s = 0; s < warmup + steps; ++s) {
    if (s == warmup) start = clock::now();
    const auto t0 = clock::now();
    const torch::Tensor tokens = torch::randint(0, o.vocab, {batch, seq + 1}, torch::kLong);
    const torch::Tensor ids = tokens.narrow(1, 0, seq), targets = tokens.narrow(1, 1, seq);
    const auto t1 = clock::now();
    opt.zero_grad();
    const torch::Tensor loss = qd::causal_lm_loss(model(ids, mask), targets);
    const auto t2 = clock::now();
    loss.backward();
    const auto t3 = clock::now();
    torch::nn::utils::clip_grad_norm_(model->parameters(), 1.0);
    opt.step();
    const auto t4 = clock::now();
    if (s >= warmup) t_data += secs(t0, t1), t_fwd += secs(t1, t2), t_bwd += secs(t2, t3), t_opt += secs(t3, t4);
  }
  const double total = secs(start, clock::now());
  std::printf("{\"impl\": \"cpp%s\", ", fused ? "" : " unfused adamw");
  std::printf("\"tokens_per_second\": %.1f, \"ms_per_step\": %.2f, \"params\": %lld, \"threads\": %d",
              static_cast<double>(steps) * batch * seq / total, 1e3 * total / steps, static_cast<long long>(params), threads);
  if (profile)
    std::printf(", \"ms_data\": %.2f, \"ms_forward\": %.2f, \"ms_backward\": %.2f, \"ms_clip_and_adamw\": %.2f",
                1e3 * t_data / steps, 1e3 * t_fwd / steps, 1e3 * t_bwd / steps, 1e3 * t_opt / steps);
  std::printf("}\n");
  return 0;
}
