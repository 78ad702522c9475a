// Training throughput of a config through the real Trainer (data, augmentation, forward,
// backward, bucketed all-reduce, optimizer), excluding evaluation and start-up: the second of
// two short epochs is timed. Run alone or under mpirun; bench/run_parallel.sh compares 1 and 2
// ranks side by side and prints the scaling ratio.
//   bench_step_time CONFIG [STEPS] [key=value ...]
#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "common/log.h"
#include "parallel/communicator.h"
#include "parallel/launch.h"
#include "trainer/experiment.h"
#include "trainer/trainer.h"

namespace {
class Timer : public qd::TrainHook {
 public:
  std::string name() const override { return "timer"; }
  void on_step_begin(qd::TrainState& s) override {
    if (s.epoch == 1 && s.step_in_epoch == 0 && !started_) start_ = std::chrono::steady_clock::now(), started_ = true;
  }
  void on_after_optimizer_step(qd::TrainState& s) override {
    if (s.epoch == 1 && s.step_in_epoch == s.steps_per_epoch - 1) {
      seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
      steps = s.steps_per_epoch;
    }
  }
  double seconds = 0;
  int64_t steps = 0;

 private:
  bool started_ = false;
  std::chrono::steady_clock::time_point start_;
};
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CONFIG [STEPS] [key=value ...]\n", argv[0]);
    return 2;
  }
  try {
    const int64_t steps = argc > 2 ? std::atoll(argv[2]) : 20;
    std::vector<std::string> overrides(argv + std::min(argc, 3), argv + argc);
    qd::ExperimentConfig cfg = qd::load_experiment_config(argv[1], overrides);
    const qd::LaunchInfo launch = qd::detect_launch();
    qd::set_log_enabled(false);
    const int world = launch.under_mpirun ? launch.world_size : 1;
    cfg.data.train_subset = steps * cfg.data.batch_size * cfg.trainer.accumulate_steps * world;
    cfg.data.test_subset = 100;
    cfg.trainer.epochs = 2;
    cfg.trainer.progress = false;
    qd::set_threads(cfg.trainer.threads);
    const qd::DataBundle data = qd::load_data(cfg.data);
    auto model = qd::build_model(cfg, data);
    const torch::Device device = qd::select_device(cfg.trainer, launch);
    auto comm = qd::make_communicator(cfg.parallel, device);
    qd::Trainer trainer(cfg, model, data, "", comm);
    qd::add_experiment_hooks(trainer, cfg, *model, data, device);
    auto timer = std::make_shared<Timer>();
    trainer.add_hook(timer);
    trainer.fit();
    if (comm->rank() == 0) {
      const double global = static_cast<double>(timer->steps * cfg.data.batch_size * cfg.trainer.accumulate_steps * comm->world_size());
      std::printf("ranks %d (%s), threads/rank %d: %.1f ms/step, %.0f samples/s\n", comm->world_size(),
                  comm->backend().c_str(), torch::get_num_threads(), 1e3 * timer->seconds / timer->steps,
                  global / timer->seconds);
    }
  } catch (const std::exception& e) {
    qd::abort_job(1, e.what());
  }
  return 0;
}
