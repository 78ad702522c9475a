#include "parallel/launch.h"

#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>

#include "common/error.h"

namespace qd {

namespace {
int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v ? std::atoi(v) : fallback;
}

struct MpiState {
  LaunchInfo info;
  bool initialized_here = false;
  ~MpiState() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (initialized_here && !finalized) MPI_Finalize();
  }
};

MpiState& state() {
  static MpiState s;
  return s;
}
}  // namespace

LaunchInfo detect_launch() {
  LaunchInfo li;
  for (const char* size_var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"}) {
    if (std::getenv(size_var)) {
      li.under_mpirun = true;
      break;
    }
  }
  li.world_size = env_int("OMPI_COMM_WORLD_SIZE", env_int("PMI_SIZE", 1));
  li.rank = env_int("OMPI_COMM_WORLD_RANK", env_int("PMI_RANK", env_int("PMIX_RANK", 0)));
  li.local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK", env_int("MPI_LOCALRANKID", 0));
  li.local_size = env_int("OMPI_COMM_WORLD_LOCAL_SIZE", env_int("MPI_LOCALNRANKS", 1));
  return li;
}

bool mpi_initialized() {
  int init = 0;
  MPI_Initialized(&init);
  return init != 0;
}

const LaunchInfo& mpi_runtime() {
  static std::once_flag once;
  std::call_once(once, [] {
    MpiState& s = state();
    if (!mpi_initialized()) {
      int provided = 0;
      QD_CHECK(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided) == MPI_SUCCESS, Error,
               "MPI_Init_thread failed");
      s.initialized_here = true;
      QD_CHECK(provided >= MPI_THREAD_SERIALIZED, Error,
               "MPI provides thread level ", provided, "; qdistill needs at least MPI_THREAD_SERIALIZED");
    }
    s.info.under_mpirun = true;
    MPI_Comm_rank(MPI_COMM_WORLD, &s.info.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &s.info.world_size);
    MPI_Comm local;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, s.info.rank, MPI_INFO_NULL, &local);
    MPI_Comm_rank(local, &s.info.local_rank);
    MPI_Comm_size(local, &s.info.local_size);
    MPI_Comm_free(&local);
  });
  return state().info;
}

void abort_job(int exit_code, const std::string& message) {
  const LaunchInfo li = mpi_initialized() ? mpi_runtime() : detect_launch();
  if (li.world_size > 1) {
    std::fprintf(stderr, "qdistill: rank %d/%d: error: %s\n", li.rank, li.world_size, message.c_str());
  } else {
    std::fprintf(stderr, "qdistill: error: %s\n", message.c_str());
  }
  std::fflush(stderr);
  if (mpi_initialized() && li.world_size > 1) MPI_Abort(MPI_COMM_WORLD, exit_code);
  std::_Exit(exit_code);
}

}  // namespace qd
