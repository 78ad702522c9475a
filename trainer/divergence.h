// The divergence guard: a step has diverged when its loss or the gradient norm is not finite, or
// when the loss's running average, with this step in it, rises above trainer.divergence_factor
// times the lowest running average of the run so far. trainer.on_divergence says what happens then:
// stop (the run ends with exit code 1, a message that names the step, the loss and what to try, and
// the last checkpoint on disk as it was) or skip_step (no optimizer step, counted in metrics; the
// run stops after kMaxConsecutiveSkips in a row).
//
// Why the lowest average and not the last: a learning rate far too high does not always blow the
// loss up to infinity. With BatchNorm the Fashion-MNIST student at lr 90 sits at a cross-entropy of
// 40 to 130 for ten epochs (chance is 2.3): the loss only creeps up, and an average that follows it
// never sees a jump. The average (decay 0.9, about ten steps) smooths single noisy batches.
//
// The trainer feeds it the step's loss averaged over micro-batches and ranks and the global gradient
// norm after the all-reduce, so every rank reaches the same verdict.
#pragma once

#include <cstdint>
#include <string>

namespace qd {

class DivergenceGuard {
 public:
  static constexpr int kMaxConsecutiveSkips = 25;
  static constexpr double kDecay = 0.9;
  // The reference is never below this: a run that fits its data to ~0 may rise by any factor of ~0.
  static constexpr double kFloor = 0.05;

  // factor <= 0: only non-finite losses and gradient norms diverge.
  explicit DivergenceGuard(double factor) : factor_(factor) {}

  // "" when the step is good (it then joins the running average), otherwise why it diverged, e.g.
  // "the loss's running average rose to 48.1 (this step's loss: 65.2), 20.9 times its lowest, 2.3".
  std::string check(double loss, double grad_norm);

  double running_average() const { return average_; }
  double lowest_average() const { return lowest_; }
  int64_t good_steps() const { return good_; }

 private:
  double factor_;
  double average_ = 0.0;
  double lowest_ = 0.0;
  int64_t good_ = 0;
};

}  // namespace qd
