// MPI all-reduce throughput against message size (float32, in place), as the GradReducer uses
// it. Run: mpirun -np 2 build/bench/bench_allreduce   (or bench/run_parallel.sh)
// Prints per size: time per all-reduce, algorithm bandwidth (bytes / time) and bus bandwidth
// (algbw * 2 (n-1) / n, the traffic a ring all-reduce moves per rank; comparable across n).
#include <chrono>
#include <cstdio>

#include "parallel/mpi_communicator.h"

int main() {
  auto comm = std::make_shared<qd::MpiCommunicator>(600.0);
  const int n = comm->world_size();
  if (comm->rank() == 0) std::printf("%12s %12s %12s %12s   (%d ranks, float32)\n", "bytes", "usec", "algbw GB/s", "busbw GB/s", n);
  for (int64_t bytes = 4 << 10; bytes <= (int64_t{64} << 20); bytes *= 4) {
    torch::Tensor t = torch::ones({bytes / 4});
    const int iters = static_cast<int>(std::max<int64_t>(5, std::min<int64_t>(200, (int64_t{256} << 20) / bytes)));
    for (int i = 0; i < 3; ++i) comm->all_reduce(t, qd::ReduceOp::kSum)->wait();
    comm->barrier();
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; ++i) comm->all_reduce(t, qd::ReduceOp::kSum)->wait();
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / iters;
    if (comm->rank() == 0) {
      const double algbw = bytes / sec / 1e9;
      std::printf("%12lld %12.1f %12.3f %12.3f\n", static_cast<long long>(bytes), sec * 1e6, algbw,
                  algbw * 2.0 * (n - 1) / n);
    }
  }
  return 0;
}
