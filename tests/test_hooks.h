// Hooks shared by the tests that need the trainer to stop part-way.
#pragma once

#include <stdexcept>
#include <string>

#include "common/train_hook.h"

namespace qd::test {

// Simulates a job killed at the start of epoch `at` (after the previous epoch's checkpoint).
class KillAtEpoch : public TrainHook {
 public:
  explicit KillAtEpoch(int64_t at) : at_(at) {}
  std::string name() const override { return "kill"; }
  void on_epoch_begin(TrainState& s) override {
    if (s.epoch == at_) throw std::runtime_error("killed");
  }

 private:
  int64_t at_;
};

}  // namespace qd::test
