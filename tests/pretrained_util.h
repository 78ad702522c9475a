// For tests that need an installed teacher's files (the wheels scripts/setup.sh installs).
#pragma once

#include <string>

#include "common/error.h"
#include "models/text_model.h"

namespace qd::test {

// Why a test cannot run here (the teacher `name` is not installed), or empty.
inline std::string missing_teacher(const char* name) {
  try {
    resolve_pretrained(name);
    return "";
  } catch (const UserError& e) {
    return e.what();
  }
}

}  // namespace qd::test
