#include "runtime/model.h"

namespace qd::rt {

const char* op_name(OpKind k) {
  switch (k) {
    case OpKind::kConv2d: return "conv2d";
    case OpKind::kMaxPool2d: return "maxpool2d";
    case OpKind::kAdd: return "add";
    case OpKind::kGlobalAvgPool: return "global_avg_pool";
    case OpKind::kLinear: return "linear";
  }
  return "unknown";
}

}  // namespace qd::rt
