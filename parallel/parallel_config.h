// The `parallel` section: data-parallel backend and gradient bucketing.
#pragma once

#include "common/config.h"

namespace qd {

enum class BackendKind { kAuto, kMpi, kNccl, kLocal };

struct ParallelConfig {
  BackendKind backend = BackendKind::kAuto;  // auto: NCCL on CUDA, MPI on CPU, Local without mpirun
  double bucket_mb = 25.0;                   // gradient bucket size (all-reduce granularity)
  double first_bucket_mb = 1.0;              // small first bucket: its all-reduce starts early in backward
  bool sync_bn = false;                      // all-reduce BatchNorm batch statistics across ranks
  double timeout_seconds = 600.0;            // a collective that takes longer aborts the job

  template <class V>
  void visit(V& v) {
    v.field("backend", backend, "communication backend (auto: nccl on cuda, mpi on cpu, local without mpirun)",
            Choices<BackendKind>{{{"auto", BackendKind::kAuto}, {"mpi", BackendKind::kMpi},
                                  {"nccl", BackendKind::kNccl}, {"local", BackendKind::kLocal}}});
    v.field("bucket_mb", bucket_mb, "gradient bucket size in MB", Range<double>{0.0, 4096.0, true, false});
    v.field("first_bucket_mb", first_bucket_mb, "size of the first (last-layers) bucket in MB",
            Range<double>{0.0, 4096.0, true, false});
    v.field("sync_bn", sync_bn, "all-reduce BatchNorm batch statistics (default: per-rank statistics)");
    v.field("timeout_seconds", timeout_seconds, "abort when a collective waits longer than this",
            Range<double>{1.0, 86400.0});
  }
};

}  // namespace qd
