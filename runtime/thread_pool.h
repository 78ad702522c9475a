// The runtime's worker threads: one process-wide pool that the ops split their independent
// outputs over (rows of a linear layer, heads of attention). Each output is computed by exactly
// the same operations whichever thread computes it, so results do not depend on the thread count
// (tests/runtime/text_ops_test.cpp runs 1 and 3 threads against each other). No LibTorch, no OpenMP.
#pragma once

#include <cstdint>
#include <functional>

namespace qd::rt {

// Threads used from now on, the calling thread included (1: everything on the caller). Clamped to
// [1, 256]; the workers start lazily and stay until the process exits.
void set_threads(int n);
int threads();

// Calls fn(begin, end) on disjoint ranges covering [0, n), in parallel on up to threads() threads
// (ranges of at least `grain` items); returns when all have run. An exception in fn reaches the
// caller (the first one; the other ranges still finish). Not reentrant: fn must not call it.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace qd::rt
