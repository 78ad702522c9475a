#include "trainer/divergence.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"

namespace qd {

std::string DivergenceGuard::check(double loss, double grad_norm) {
  if (!std::isfinite(loss)) return concat("the loss is ", loss);
  if (!std::isfinite(grad_norm)) return concat("the gradient norm is ", grad_norm, " (loss ", loss, ")");
  const double average = good_ == 0 ? loss : kDecay * average_ + (1.0 - kDecay) * loss;
  const double reference = std::max(lowest_, kFloor);
  if (factor_ > 0 && good_ > 0 && average > factor_ * reference)
    return concat("the loss's running average rose to ", average, " (this step's loss: ", loss, "), ",
                  average / reference, " times its lowest, ", reference, " (trainer.divergence_factor: ", factor_, ")");
  average_ = average;
  lowest_ = good_ == 0 ? average : std::min(lowest_, average);
  ++good_;
  return "";
}

}  // namespace qd
