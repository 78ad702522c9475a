// The `train` and `eval` commands: config -> data -> model -> run directory -> trainer -> summary.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "data/mnist.h"
#include "models/model.h"
#include "trainer/experiment_config.h"

namespace qd {

struct TrainCommand {
  std::string config_path;
  std::vector<std::string> overrides;  // "key.path=value"
  bool resume = false;
};

struct EvalCommand {
  std::string run_dir;
  bool int8 = false;
  bool json = false;
  std::string checkpoint = "best";  // best | last
};

// Both return the process exit code; bad input throws qd::UserError (exit code 2).
int run_train(const TrainCommand& cmd);
int run_eval(const EvalCommand& cmd);

InputSpec input_spec(const DataBundle& data);
std::shared_ptr<Model> build_model(const ExperimentConfig& cfg, const DataBundle& data);
void set_threads(int threads);

}  // namespace qd
