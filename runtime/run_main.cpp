// qdistill-run: integer-only inference of an exported student (.qdm) on IDX images, with
// accuracy (given labels) and batch-1 latency. Links no LibTorch: only the runtime, zlib (for
// .gz files) and the header-only CLI11.
#include <CLI/CLI.hpp>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/interpreter.h"
#include "runtime/qdm.h"

namespace {

struct InputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// An IDX file (raw or gzip, zlib reads both): big-endian magic 0x000008DD (8: unsigned bytes,
// DD: dimensions), the dimensions, then the bytes.
struct Idx {
  std::vector<int64_t> dims;
  std::vector<uint8_t> data;
};

Idx read_idx(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) throw InputError(path + ": cannot open (" + std::strerror(errno) + ")");
  auto read = [&](void* dst, size_t n, const char* what) {
    const int got = gzread(f, dst, static_cast<unsigned>(n));
    if (got != static_cast<int>(n)) {
      gzclose(f);
      throw InputError(path + ": truncated IDX file (reading " + what + "); expected an IDX file such as "
                       "t10k-images-idx3-ubyte.gz");
    }
  };
  unsigned char magic[4];
  read(magic, 4, "the magic number");
  if (magic[0] != 0 || magic[1] != 0 || magic[2] != 0x08 || magic[3] < 1 || magic[3] > 4) {
    gzclose(f);
    throw InputError(path + ": not an IDX file of unsigned bytes (magic must be 00 00 08 0N)");
  }
  Idx idx;
  int64_t total = 1;
  for (int d = 0; d < magic[3]; ++d) {
    unsigned char b[4];
    read(b, 4, "the dimensions");
    const int64_t v = (int64_t{b[0]} << 24) | (int64_t{b[1]} << 16) | (int64_t{b[2]} << 8) | b[3];
    if (v <= 0 || v > (1 << 24)) {
      gzclose(f);
      throw InputError(path + ": dimension " + std::to_string(d) + " is " + std::to_string(v));
    }
    idx.dims.push_back(v);
    total *= v;
    if (total > (int64_t{1} << 31)) {
      gzclose(f);
      throw InputError(path + ": more than 2 GiB of data");
    }
  }
  idx.data.resize(static_cast<size_t>(total));
  read(idx.data.data(), idx.data.size(), "the data");
  gzclose(f);
  return idx;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0.0;
  const size_t k = std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())));
  std::nth_element(v.begin(), v.begin() + static_cast<long>(k), v.end());
  return v[k];
}

int run(int argc, char** argv) {
  CLI::App app{
      "qdistill-run: integer-only int8 inference of an exported student (.qdm), without LibTorch.\n"
      "\n"
      "Examples:\n"
      "  qdistill-run runs/fmnist_student_full/export/student.qdm \\\n"
      "      --idx /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz \\\n"
      "      --labels /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz\n"
      "  qdistill-run student.qdm --idx images.gz --limit 100 --logits out.f32   # raw float32 [N, classes]\n"
      "\n"
      "Pixels are read as bytes and scaled to [0, 1]; the model holds its own normalization.\n"
      "Exit codes: 0 success, 2 bad input (model file, images, arguments), 1 anything else."};
  std::string model_path, images_path, labels_path, logits_path;
  int64_t limit = 0;
  int repeat = 1;
  bool json = false;
  app.add_option("model", model_path, "the .qdm file written by `qdistill export`")->required();
  app.add_option("--idx", images_path, "IDX images (uint8 [N, H, W] or [N, C, H, W]), .gz or raw")->required();
  app.add_option("--labels", labels_path, "IDX labels (uint8 [N]): prints accuracy");
  app.add_option("--limit", limit, "use only the first N images (0: all)")->check(CLI::NonNegativeNumber);
  app.add_option("--repeat", repeat, "run the images this many times (latency statistics)")->check(CLI::PositiveNumber);
  app.add_option("--logits", logits_path, "write the logits here as raw little-endian float32 [N, classes]");
  app.add_flag("--json", json, "print one JSON object instead of text");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }

  qd::rt::Interpreter interp(qd::rt::load_qdm(model_path));
  const qd::rt::Model& m = interp.model();
  const qd::rt::TensorInfo& in = m.tensors[0];
  const Idx images = read_idx(images_path);
  // [N, H, W] is one channel; [N, C, H, W] is explicit.
  const std::vector<int64_t>& d = images.dims;
  const bool shape_ok = (d.size() == 3 && in.c == 1 && d[1] == in.h && d[2] == in.w) ||
                        (d.size() == 4 && d[1] == in.c && d[2] == in.h && d[3] == in.w);
  if (!shape_ok) {
    std::string got;
    for (size_t i = 1; i < d.size(); ++i) got += (i > 1 ? "x" : "") + std::to_string(d[i]);
    throw InputError(images_path + ": images are " + got + ", the model takes " + std::to_string(in.c) + "x" +
                     std::to_string(in.h) + "x" + std::to_string(in.w) + " (CxHxW)");
  }
  int64_t n = d[0];
  if (limit > 0) n = std::min(n, limit);
  std::vector<uint8_t> labels;
  if (!labels_path.empty()) {
    Idx l = read_idx(labels_path);
    if (l.dims.size() != 1 || l.dims[0] < n)
      throw InputError(labels_path + ": expected IDX labels [N] with N >= " + std::to_string(n) + " images");
    labels = std::move(l.data);
  }

  const int64_t per = in.numel(), classes = m.num_classes();
  std::vector<float> pixels(static_cast<size_t>(per));
  std::vector<float> logits(static_cast<size_t>(n * classes));
  std::vector<double> us;
  us.reserve(static_cast<size_t>(n * repeat));
  int64_t correct = 0;
  for (int r = 0; r < repeat; ++r)
    for (int64_t i = 0; i < n; ++i) {
      const uint8_t* src = images.data.data() + i * per;
      // As training converts pixels: float(byte) / 255.
      for (int64_t k = 0; k < per; ++k) pixels[static_cast<size_t>(k)] = static_cast<float>(src[k]) / 255.0f;
      float* out = logits.data() + i * classes;
      const auto t0 = std::chrono::steady_clock::now();
      interp.run(pixels.data(), out);
      const auto t1 = std::chrono::steady_clock::now();
      us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
      if (r == 0 && !labels.empty())
        correct += (std::max_element(out, out + classes) - out) == labels[static_cast<size_t>(i)];
    }
  if (!logits_path.empty()) {
    std::ofstream f(logits_path, std::ios::binary);
    f.write(reinterpret_cast<const char*>(logits.data()), static_cast<std::streamsize>(logits.size() * sizeof(float)));
    if (!f) throw std::runtime_error(logits_path + ": cannot write the logits");
  }
  const double median = percentile(us, 0.5), p90 = percentile(us, 0.9);
  const double accuracy = labels.empty() ? -1.0 : 100.0 * static_cast<double>(correct) / static_cast<double>(n);
  if (json) {
    std::printf("{\"model\": \"%s\", \"images\": %lld, \"latency_us_median\": %.3f, \"latency_us_p90\": %.3f",
                model_path.c_str(), static_cast<long long>(n), median, p90);
    if (accuracy >= 0) std::printf(", \"accuracy\": %.4f", accuracy);
    std::printf("}\n");
  } else {
    std::printf("%s: %lld images, batch-1 latency median %.1f us, p90 %.1f us (%lld runs, 1 thread)\n",
                model_path.c_str(), static_cast<long long>(n), median, p90, static_cast<long long>(us.size()));
    if (accuracy >= 0) std::printf("accuracy %.2f%% (%lld / %lld)\n", accuracy, static_cast<long long>(correct),
                                   static_cast<long long>(n));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const qd::rt::QdmError& e) {
    std::fprintf(stderr, "qdistill-run: error: %s\n", e.what());
    return 2;
  } catch (const InputError& e) {
    std::fprintf(stderr, "qdistill-run: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qdistill-run: error: %s\n", e.what());
    return 1;
  }
}
