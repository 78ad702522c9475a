// NCCL backend for CUDA tensors (compiled when CUDA and NCCL are found; see CMakeLists.txt).
// CPU tensors given to it go to the MPI communicator it holds.
#pragma once

#include <memory>

#include "parallel/communicator.h"

namespace qd {

class MpiCommunicator;

// Builds the NCCL communicator for `device` (this rank's GPU): rank 0's ncclUniqueId is
// broadcast over MPI. Throws UserError when NCCL cannot run here.
std::shared_ptr<Communicator> make_nccl_communicator(torch::Device device, double timeout_seconds,
                                                     std::shared_ptr<MpiCommunicator> cpu);

}  // namespace qd
