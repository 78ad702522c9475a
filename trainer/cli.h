// The `qdistill` command line (CLI11): train, eval, keys.
#pragma once

namespace qd {

// Parses arguments, runs the command, maps errors to exit codes (2: bad input, 1: other).
int run_cli(int argc, char** argv);

}  // namespace qd
