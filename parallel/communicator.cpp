#include "parallel/communicator.h"

#include "common/error.h"
#include "parallel/launch.h"
#include "parallel/mpi_communicator.h"
#ifdef QD_HAVE_NCCL
#include "parallel/nccl_communicator.h"
#endif

namespace qd {

namespace {
class DoneWork : public Work {
 public:
  void wait() override {}
  bool test() override { return true; }
};
}  // namespace

std::unique_ptr<Work> LocalCommunicator::all_reduce(torch::Tensor&, ReduceOp) { return std::make_unique<DoneWork>(); }

void all_reduce_now(Communicator& comm, torch::Tensor& t, ReduceOp op) { comm.all_reduce(t, op)->wait(); }

bool nccl_compiled() {
#ifdef QD_HAVE_NCCL
  return true;
#else
  return false;
#endif
}

std::shared_ptr<Communicator> make_communicator(const ParallelConfig& cfg, torch::Device device) {
  const LaunchInfo li = detect_launch();
  const bool multi = li.under_mpirun && li.world_size > 1;
  BackendKind kind = cfg.backend;
  if (kind == BackendKind::kAuto) kind = !multi ? BackendKind::kLocal : device.is_cuda() ? BackendKind::kNccl : BackendKind::kMpi;

  switch (kind) {
    case BackendKind::kLocal:
      QD_CHECK(!multi, UserError, "parallel.backend: local, but this process is one of ", li.world_size,
               " launched by mpirun; use parallel.backend: auto (or mpi / nccl)");
      return std::make_shared<LocalCommunicator>();
    case BackendKind::kMpi:
      QD_CHECK(!device.is_cuda(), UserError,
               "parallel.backend: mpi all-reduces CPU tensors, but trainer.device is cuda; use parallel.backend: "
               "nccl (or auto)");
      return std::make_shared<MpiCommunicator>(cfg.timeout_seconds);
    case BackendKind::kNccl:
      QD_CHECK(device.is_cuda(), UserError,
               "parallel.backend: nccl needs CUDA tensors, but trainer.device is cpu; use --set trainer.device=cuda "
               "on a GPU machine, or parallel.backend: mpi");
      QD_CHECK(nccl_compiled(), UserError,
               "parallel.backend: nccl, but this build has no NCCL (CUDA toolkit with NCCL not found at configure time)");
#ifdef QD_HAVE_NCCL
      return make_nccl_communicator(device, cfg.timeout_seconds, std::make_shared<MpiCommunicator>(cfg.timeout_seconds));
#endif
    case BackendKind::kAuto:
      break;
  }
  throw Error("make_communicator: unreachable backend");
}

}  // namespace qd
