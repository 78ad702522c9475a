// `qdistill inspect FILE [--json]`: what a model file holds, read by formats/ (the same readers the
// engine loads pretrained teachers with): a .gguf's metadata and tensors, or a .safetensors file's
// (or a folder's model.safetensors). A damaged or doctored file is one message and exit code 2.
#pragma once

#include <string>

namespace qd {

struct InspectCommand {
  std::string path;
  bool json = false;
};

int run_inspect(const InspectCommand& cmd);

}  // namespace qd
