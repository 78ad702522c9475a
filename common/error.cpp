#include "common/error.h"

namespace qd {

int exit_code_for(const std::exception& e) {
  return dynamic_cast<const UserError*>(&e) != nullptr ? 2 : 1;
}

}  // namespace qd
