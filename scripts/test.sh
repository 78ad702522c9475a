#!/usr/bin/env bash
# Builds qdistill and runs every test (ctest labels: unit, mpi, gpu, slow). Non-zero on failure.
# Extra arguments go to ctest, e.g. scripts/test.sh -L unit  or  scripts/test.sh -R Config
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

"$QD_ROOT/scripts/setup.sh"
qd_build
qd_note "running tests"
cd "$QD_BUILD"
ctest --output-on-failure -j "${QD_TEST_JOBS:-2}" "$@"
