// The top-k KD loss of the GPT case, forward and backward, as the trainer runs it: the fused CPU
// function (distill/lm_kd_loss.cpp) against the composed tensor operations, on the student's logits
// of one batch (8 x 256 tokens over SmolLM2's 49,152 ids, a top-64 target), best of ROUNDS
// alternating rounds, and the ratio. Prints measurements; never passes or fails.
//
//   build/bench/bench_kd_loss [ROUNDS] [TOKENS] [VOCAB] [K]
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>

#include "distill/lm_kd_loss.h"

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 5;
  const int64_t n = argc > 2 ? std::atoll(argv[2]) : 2048, v = argc > 3 ? std::atoll(argv[3]) : 49152,
                k = argc > 4 ? std::atoll(argv[4]) : 64;
  torch::manual_seed(0);
  const torch::Tensor student = torch::randn({n, v}) * 3;
  const qd::TopKTarget target = qd::make_topk_target(torch::randn({n, v}) * 3, k, 1.0);
  const torch::Tensor valid = torch::ones({n}, torch::kBool);
  const qd::KdOptions o;
  using Loss = std::function<torch::Tensor(const torch::Tensor&)>;
  const Loss fused = [&](const torch::Tensor& s) { return qd::token_kd_loss(s, target, valid, o); };
  const Loss composed = [&](const torch::Tensor& s) { return qd::token_kd_loss_composed(s, target, valid, o); };
  const auto time_once = [&](const Loss& f) {
    const torch::Tensor s = student.clone().requires_grad_(true);
    const auto t0 = std::chrono::steady_clock::now();
    f(s).backward();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  double best_fused = 1e30, best_composed = 1e30;
  for (int r = 0; r < rounds; ++r) {
    best_composed = std::min(best_composed, time_once(composed));
    best_fused = std::min(best_fused, time_once(fused));
  }
  std::printf("top-%lld forward KL, %lld tokens x %lld ids, %d thread(s), loss + backward, best of %d:\n",
              static_cast<long long>(k), static_cast<long long>(n), static_cast<long long>(v), torch::get_num_threads(), rounds);
  std::printf("  composed tensor ops  %8.3f s\n  fused function       %8.3f s\n  speed-up             %8.2fx\n", best_composed,
              best_fused, best_composed / best_fused);
  return 0;
}
