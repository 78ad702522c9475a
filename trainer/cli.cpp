#include "trainer/cli.h"

#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>

#include <cstdio>
#include <iostream>

#include "common/error.h"
#include "trainer/experiment.h"
#include "trainer/experiment_config.h"

namespace qd {

namespace {

constexpr const char* kDescription =
    "qdistill: train a teacher, distill it into a small student, and prepare it for int8 edge devices.\n"
    "\n"
    "Examples:\n"
    "  qdistill train configs/fmnist_teacher.yaml\n"
    "  qdistill train configs/fmnist_teacher.yaml --set trainer.epochs=2 --set experiment.name=quick\n"
    "  qdistill train configs/fmnist_teacher.yaml --resume        # continue from checkpoints/last.pt\n"
    "  qdistill eval runs/fmnist_teacher                          # accuracy of the best checkpoint\n"
    "  qdistill keys                                              # every config key, its default and meaning\n"
    "\n"
    "Exit codes: 0 success, 2 bad input (config, data, arguments), 1 anything else.";

void print_keys() {
  size_t width = 0;
  const auto keys = list_config_keys();
  for (const auto& k : keys) width = std::max(width, k.path.size());
  std::string section;
  for (const auto& k : keys) {
    const std::string top = k.path.substr(0, k.path.find('.'));
    if (top != section) std::printf("%s%s:\n", section.empty() ? "" : "\n", top.c_str()), section = top;
    std::printf("  %-*s  %s\n  %-*s  default %s; %s\n", static_cast<int>(width), k.path.c_str(), k.help.c_str(),
                static_cast<int>(width), "", k.default_value.c_str(), k.expected.c_str());
  }
}

}  // namespace

int run_cli(int argc, char** argv) {
  CLI::App app{kDescription, "qdistill"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "qdistill 0.1.0");

  TrainCommand train;
  CLI::App* train_cmd = app.add_subcommand("train", "train a model from a YAML experiment");
  train_cmd->add_option("config", train.config_path, "experiment YAML, e.g. configs/fmnist_teacher.yaml")->required();
  train_cmd->add_option("--set", train.overrides,
                        "override a config key with a value of its type: --set trainer.epochs=5 (repeatable)")
      ->allow_extra_args(false)
      ->take_all();
  train_cmd->add_flag("--resume", train.resume, "continue from <run dir>/checkpoints/last.pt (trainer.resume=true)");

  EvalCommand eval;
  CLI::App* eval_cmd = app.add_subcommand("eval", "test accuracy of a run's checkpoint");
  eval_cmd->add_option("run_dir", eval.run_dir, "run directory, e.g. runs/fmnist_teacher")->required();
  eval_cmd->add_flag("--int8", eval.int8, "evaluate the int8 simulation (QAT runs)");
  eval_cmd->add_flag("--json", eval.json, "print one JSON object");
  eval_cmd->add_option("--checkpoint", eval.checkpoint, "which checkpoint")->check(CLI::IsMember({"best", "last"}));

  CLI::App* keys_cmd = app.add_subcommand("keys", "list every config key with its default and meaning");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }

  try {
    if (train_cmd->parsed()) return run_train(train);
    if (eval_cmd->parsed()) return run_eval(eval);
    if (keys_cmd->parsed()) return print_keys(), 0;
  } catch (const qd::Error& e) {
    std::fprintf(stderr, "qdistill: error: %s\n", e.what());
    return exit_code_for(e);
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "qdistill: internal error: %s\n", e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qdistill: error: %s\n", e.what());
    return 1;
  }
  return 1;
}

}  // namespace qd
