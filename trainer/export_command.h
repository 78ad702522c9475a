// `qdistill export RUN_DIR [--format onnx|qdm|all]`: the run's int8 student as files for the edge.
#pragma once

#include <string>

namespace qd {

struct ExportCommand {
  std::string run_dir;
  std::string format = "all";  // onnx | qdm | all
  std::string checkpoint = "best";
  bool verify = true;  // the runtime next to the simulation on the test set
  std::string simulation_logits;  // if set (and verifying): the simulation's test logits, raw float32 [N, classes]
  // Transformer runs: held-out examples to verify on (sentences; or sequences of data.seq_len
  // tokens); 0: 1000 sentences, 16 sequences.
  int64_t verify_samples = 0;
};

// Writes <run>/export/{student.qdm, student.int8.onnx, student.fp32.onnx, report.json} (as the
// format asks) and records the runtime's accuracy in <run>/summary.json (int8_test_accuracy).
// A channel-pruned run exports its physically smaller <run>/pruned/ model. A transformer run
// (bert, llama) writes student.qdm (the op graph, `.qdm` version 2, its tokenizer inside) and
// report.json with the runtime verified against the simulation on held-out text. Returns the exit code;
// bad input throws UserError.
int run_export(const ExportCommand& cmd);

}  // namespace qd
