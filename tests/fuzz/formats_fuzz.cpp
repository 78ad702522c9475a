// libFuzzer target of the model-file readers (formats/): whatever the bytes, GgufFile and
// SafetensorsFile either throw FormatError or describe tensors that lie inside the bytes, and
// reading every tensor (dequantizing GGUF's, converting safetensors' to float) stays in bounds
// without a leak or undefined behaviour (the build uses ASan and UBSan). Any other exception, a
// crash or a sanitizer report is a finding. `QD_FUZZ_TARGET=formats scripts/fuzz.sh` builds and
// runs it; `formats_fuzz --write-seeds DIR` writes the seed corpus (valid files of both formats).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "formats/gguf.h"
#include "formats/safetensors.h"
#include "tests/formats/format_builders.h"

namespace {

using namespace qd::fmt;

// Tensors larger than this are not read (a valid header may describe a huge file's tensors only if
// the bytes are there, so this bounds the time per input, not the checks).
constexpr int64_t kMaxValues = int64_t{1} << 22;

void write(const std::string& path, const std::string& bytes) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f || std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size()) {
    std::fprintf(stderr, "cannot write %s\n", path.c_str());
    std::exit(1);
  }
  std::fclose(f);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  // `formats_fuzz --write-seeds DIR`: libFuzzer calls this before it reads its own flags.
  if (*argc == 3 && std::strcmp((*argv)[1], "--write-seeds") == 0) {
    const std::string dir = (*argv)[2];
    using namespace qd::fmt::test_files;
    write(dir + "/valid.gguf", valid_gguf().build());
    std::string data;
    for (float v : {0.5f, -1.0f, 2.0f, 3.0f}) put(data, v);
    write(dir + "/valid.safetensors",
          safetensors_bytes(R"({"__metadata__": {"format": "pt"}, "w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}})",
                            data));
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<uint8_t> bytes(data, data + size);
  try {
    const GgufFile f(MappedFile::from_memory("fuzz.gguf", bytes));
    for (const GgufTensor& t : f.tensors())
      if (can_dequantize(t.type) && t.numel() <= kMaxValues) f.dequantize(t);
    for (const auto& kv : f.metadata()) (void)f.find_meta(kv.first);
  } catch (const FormatError&) {
  }
  try {
    const SafetensorsFile f(MappedFile::from_memory("fuzz.safetensors", bytes));
    for (const SafetensorsTensor& t : f.tensors())
      if (t.numel() <= kMaxValues) f.to_float(t);
  } catch (const FormatError&) {
  }
  return 0;
}
