#include "trainer/experiment.h"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/log.h"
#include "common/progress.h"
#include "models/registry.h"
#include "trainer/checkpoint.h"
#include "trainer/trainer.h"

namespace qd {

namespace fs = std::filesystem;

InputSpec input_spec(const DataBundle& data) {
  InputSpec s;
  s.channels = data.train.channels();
  s.height = data.train.height();
  s.width = data.train.width();
  s.num_classes = data.train.num_classes;
  s.mean = data.mean;
  s.std = data.std;
  return s;
}

std::shared_ptr<Model> build_model(const ExperimentConfig& cfg, const DataBundle& data) {
  torch::manual_seed(static_cast<uint64_t>(cfg.experiment.seed));
  return make_model(cfg.model, input_spec(data));
}

void set_threads(int threads) {
  const int n = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  torch::set_num_threads(n);
}

namespace {

// Refuses to clobber a run the user did not ask to continue or replace; never loses a checkpoint.
void prepare_run_dir(const ExperimentConfig& cfg) {
  const fs::path dir = cfg.run_dir();
  const fs::path last = dir / "checkpoints" / "last.pt";
  if (fs::exists(last) && !cfg.trainer.resume && !cfg.experiment.overwrite) {
    throw UserError(detail::concat(
        dir.string(), ": already holds a run (", last.string(), "); continue it with --resume, replace it with "
        "--set experiment.overwrite=true, or choose another --set experiment.name=..."));
  }
  fs::create_directories(dir / "checkpoints");
  // summary.json marks a finished run; until this run finishes there must be none.
  fs::remove(dir / "summary.json");
  if (cfg.experiment.overwrite && !cfg.trainer.resume) {
    fs::remove(dir / "checkpoints" / "last.pt");
    fs::remove(dir / "checkpoints" / "best.pt");
  }
}

int64_t buffer_bytes(const torch::nn::Module& m) {
  int64_t n = 0;
  for (const auto& b : m.buffers()) n += b.numel() * static_cast<int64_t>(b.element_size());
  return n;
}

}  // namespace

int run_train(const TrainCommand& cmd) {
  const auto t0 = std::chrono::steady_clock::now();
  ExperimentConfig cfg = load_experiment_config(cmd.config_path, cmd.overrides);
  if (cmd.resume) cfg.trainer.resume = true;
  set_threads(cfg.trainer.threads);

  // Everything that can fail on bad input runs before the run directory is touched.
  const DataBundle data = load_data(cfg.data);
  std::shared_ptr<Model> model = build_model(cfg, data);
  const int64_t params = count_params(*model);
  log_info("experiment ", cfg.experiment.name, ": ", model->kind(), " with ", params, " parameters; ",
           data.train.size(), " train / ", data.test.size(), " test samples; ", torch::get_num_threads(),
           " threads");
  Trainer trainer(cfg, model, data, cfg.run_dir());

  prepare_run_dir(cfg);
  // Record the normalization actually used (measured when the config left it empty).
  cfg.data.mean = data.mean;
  cfg.data.std = data.std;
  write_file_atomic((fs::path(cfg.run_dir()) / "config.resolved.yaml").string(), to_yaml(cfg));
  const TrainResult r = trainer.fit();

  // Report the best checkpoint (what eval and export use).
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  nlohmann::json summary = {
      {"name", cfg.experiment.name},
      {"role", cfg.experiment.role == Role::kTeacher ? "teacher" : "student"},
      {"model", model->kind()},
      {"world_size", 1},
      {"epochs", r.epochs_completed},
      {"test_accuracy", r.best_accuracy},
      {"final_test_accuracy", r.final_accuracy},
      {"params", params},
      {"nonzero_params", count_nonzero_params(*model)},
      {"fp32_bytes", params * 4 + buffer_bytes(*model)},
      {"train_samples_per_second", r.samples_per_second},
      {"train_seconds", r.train_seconds},
      {"wall_seconds", wall},
      {"threads", torch::get_num_threads()},
  };
  write_file_atomic((fs::path(cfg.run_dir()) / "summary.json").string(), summary.dump(2) + "\n");
  std::printf("%s: test accuracy %.2f%% (last epoch %.2f%%), %lld params, %.0f samples/s, wall %s\n  run directory: %s\n",
              cfg.experiment.name.c_str(), r.best_accuracy, r.final_accuracy, static_cast<long long>(params),
              r.samples_per_second, format_duration(wall).c_str(), cfg.run_dir().c_str());
  return 0;
}

int run_eval(const EvalCommand& cmd) {
  const fs::path dir = cmd.run_dir;
  const fs::path cfg_path = dir / "config.resolved.yaml";
  QD_CHECK(fs::is_regular_file(cfg_path), UserError, cfg_path.string(),
           ": not found; expected a run directory made by `qdistill train`");
  QD_CHECK(!cmd.int8, UserError, "--int8: this run has no quantization-aware training (qat section); "
           "int8 simulation needs a QAT run");
  ExperimentConfig cfg = load_experiment_config(cfg_path.string());
  set_threads(cfg.trainer.threads);
  DataBundle data = load_data(cfg.data);
  std::shared_ptr<Model> model = build_model(cfg, data);
  const fs::path ckpt = dir / "checkpoints" / (cmd.checkpoint + ".pt");
  const CheckpointMeta meta = load_checkpoint(ckpt.string(), *model, nullptr, {});
  torch::Device device = torch::kCPU;
  if (cfg.trainer.device == DeviceKind::kCuda && torch::cuda::is_available()) device = torch::Device(torch::kCUDA, 0);
  model->to(device);
  if (cfg.trainer.channels_last) to_channels_last(*model);
  const EvalResult ev = evaluate(*model, data.test, cfg.data.eval_batch_size, device, cfg.trainer.channels_last);
  if (cmd.json) {
    nlohmann::json j = {{"run_dir", dir.string()}, {"checkpoint", ckpt.string()}, {"epoch", meta.epoch},
                        {"test_accuracy", ev.accuracy}, {"test_loss", ev.loss}, {"samples", ev.samples}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("%s (epoch %lld): test accuracy %.2f%%, loss %.4f on %lld samples\n", ckpt.string().c_str(),
                static_cast<long long>(meta.epoch), ev.accuracy, ev.loss, static_cast<long long>(ev.samples));
  }
  return 0;
}

}  // namespace qd
