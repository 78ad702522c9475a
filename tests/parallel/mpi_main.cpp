// main() for tests run under mpiexec: initializes MPI, lets only rank 0 print results, and
// makes every rank return failure when any rank failed.
#include <gtest/gtest.h>
#include <mpi.h>

#include "parallel/launch.h"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  const qd::LaunchInfo& li = qd::mpi_runtime();
  if (li.rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int failed = RUN_ALL_TESTS() != 0 ? 1 : 0, any = 0;
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (any && !failed) std::fprintf(stderr, "rank %d: passed here, but another rank failed\n", li.rank);
  return any;
}
