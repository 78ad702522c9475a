// How this process was launched (mpirun or not) and the process-wide MPI runtime.
#pragma once

#include <string>

namespace qd {

struct LaunchInfo {
  bool under_mpirun = false;  // an MPI launcher set its environment (OpenMPI, MPICH/PMI, PMIx)
  int rank = 0, world_size = 1;
  int local_rank = 0, local_size = 1;  // within this node (set after MPI init)
};

// From the launcher's environment only; MPI is not initialized by this.
LaunchInfo detect_launch();

// Initializes MPI once per process (thread level MULTIPLE when available) and finalizes it at
// exit. Returns rank, world and node-local rank (MPI_Comm_split_type SHARED).
const LaunchInfo& mpi_runtime();
bool mpi_initialized();

// Last resort after an error on one rank: prints "rank R: error: MESSAGE" and aborts every
// rank (MPI_Abort), so no peer is left waiting in a collective. Never returns.
[[noreturn]] void abort_job(int exit_code, const std::string& message);

}  // namespace qd
