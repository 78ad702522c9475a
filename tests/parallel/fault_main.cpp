// A 2-rank training job in which rank 1 throws at step 3. The job must end quickly with a
// non-zero exit code and a message naming the rank (tests/parallel/fault_test.sh checks it).
#include <cstdio>

#include "parallel/launch.h"
#include "parallel/mpi_communicator.h"
#include "trainer/experiment.h"
#include "trainer/trainer.h"

namespace {
class FailAtStep : public qd::TrainHook {
 public:
  std::string name() const override { return "fail"; }
  void on_step_begin(qd::TrainState& s) override {
    if (s.rank == 1 && s.global_step == 3) throw qd::Error("injected failure at step 3");
  }
};
}  // namespace

int main() {
  try {
    auto comm = std::make_shared<qd::MpiCommunicator>(600.0);
    qd::ExperimentConfig cfg = qd::parse_experiment_config(
        "experiment: {name: fault}\nmodel: {name: mlp, width: 8, depth: 1}\n"
        "data: {train_subset: 2048, test_subset: 100, batch_size: 32}\ntrainer: {epochs: 1, progress: false}\n",
        "fault.yaml");
    torch::set_num_threads(1);
    const qd::DataBundle data = qd::load_data(cfg.data);
    auto model = qd::build_model(cfg, data);
    qd::Trainer trainer(cfg, model, data, "", comm);
    trainer.add_hook(std::make_shared<FailAtStep>());
    trainer.fit();
  } catch (const std::exception& e) {
    qd::abort_job(1, e.what());
  }
  std::printf("fault_main: finished without the injected failure\n");
  return 0;
}
