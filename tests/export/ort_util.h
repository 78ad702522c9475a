// ONNX Runtime on an integer model's QDQ file, for the LibTorch-free export tests: write the file,
// run tests/export/ort_run.py (natively or under an emulated CPU, test::ort_python), read the
// logits back; and the tolerance within which two runtimes "give the same answers".
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include "export/onnx_writer.h"
#include "runtime/model.h"
#include "tests/test_util.h"

namespace qd::test {

inline void write_f32(const std::string& path, const std::vector<float>& v) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(float)));
  if (!f) throw std::runtime_error("cannot write " + path);
}

inline std::vector<float> read_f32(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  const std::string bytes{std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
  std::vector<float> v(bytes.size() / sizeof(float));
  std::copy(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(v.size() * sizeof(float)),
            reinterpret_cast<char*>(v.data()));
  return v;
}

// Skips (printing why) or fails the calling test when `py` cannot run; true when it can.
#define QD_REQUIRE_ORT(py)                                          \
  do {                                                              \
    if (!(py).error.empty()) FAIL() << (py).error;                  \
    if (!(py).skip.empty()) {                                       \
      std::printf("[  SKIPPED ] %s\n", (py).skip.c_str());          \
      GTEST_SKIP() << (py).skip;                                    \
    }                                                               \
  } while (0)

// ONNX Runtime's logits [n, classes] for `pixels` [n, c, h, w] on m's int8 QDQ file.
inline std::vector<float> ort_logits(const OrtPython& py, const rt::Model& m, const std::vector<float>& pixels, int n) {
  TempDir dir;
  const std::string model = dir.file("int8.onnx"), in = dir.file("input.f32"), out = dir.file("logits.f32");
  write_onnx(m, OnnxPrecision::kInt8Qdq, model);
  write_f32(in, pixels);
  const rt::TensorInfo& t = m.tensors.front();
  const std::string cmd = py.command + " " + quoted(std::string(QD_SOURCE_DIR) + "/tests/export/ort_run.py") + " " +
                          quoted(model) + " --input " + quoted(in) + " --shape " + std::to_string(n) + "," +
                          std::to_string(t.c) + "," + std::to_string(t.h) + "," + std::to_string(t.w) + " --output " +
                          quoted(out) + " 2>&1";
  const ProcResult r = run_command(cmd);
  if (r.code != 0) throw std::runtime_error("ONNX Runtime failed (" + py.cpu + "): " + cmd + "\n" + r.output);
  std::vector<float> logits = read_f32(out);
  if (logits.size() != static_cast<size_t>(n * m.num_classes()))
    throw std::runtime_error("ONNX Runtime wrote " + std::to_string(logits.size()) + " logits");
  return logits;
}

// How far apart two runtimes' logits may be and still be "the same answers": each value feeding the
// classifier 1 LSB off (a requantization tie rounded the other way upstream) moves logit o by
// in_scale * weight_scale[o] * sum_i |w[o, i]|; plus float rounding of the classifier.
inline std::vector<float> one_lsb_tolerance(const rt::Model& m) {
  const rt::Layer& fc = m.layers.back();
  const float in_scale = m.tensors[static_cast<size_t>(fc.input)].scale;
  std::vector<float> tol(static_cast<size_t>(fc.out_c));
  for (int32_t o = 0; o < fc.out_c; ++o) {
    int64_t sum = 0;
    for (int32_t i = 0; i < fc.in_c; ++i) sum += std::abs(fc.weight[static_cast<size_t>(o * fc.in_c + i)]);
    tol[static_cast<size_t>(o)] = in_scale * fc.weight_scale[static_cast<size_t>(o)] * static_cast<float>(sum);
  }
  return tol;
}

struct LogitAgreement {
  int images = 0, argmax_equal = 0, identical = 0, within_tolerance = 0;
  float max_diff = 0.0f, max_ratio = 0.0f;  // largest |a - b|, and relative to the tolerance
};

inline int argmax(const float* v, int n) { return static_cast<int>(std::max_element(v, v + n) - v); }

inline LogitAgreement compare_logits(const std::vector<float>& a, const std::vector<float>& b, int classes,
                                     const std::vector<float>& tol) {
  LogitAgreement r;
  r.images = static_cast<int>(a.size() / static_cast<size_t>(classes));
  for (int i = 0; i < r.images; ++i) {
    const float* x = &a[static_cast<size_t>(i * classes)];
    const float* y = &b[static_cast<size_t>(i * classes)];
    r.argmax_equal += argmax(x, classes) == argmax(y, classes);
    bool same = true, within = true;
    for (int o = 0; o < classes; ++o) {
      const float d = std::fabs(x[o] - y[o]), rounding = 1e-5f * (1.0f + std::fabs(y[o]));
      r.max_diff = std::max(r.max_diff, d);
      r.max_ratio = std::max(r.max_ratio, d / tol[static_cast<size_t>(o)]);
      same = same && d <= rounding;
      within = within && d <= tol[static_cast<size_t>(o)] + rounding;
    }
    r.identical += same;
    r.within_tolerance += within;
  }
  return r;
}

inline std::string describe(const LogitAgreement& r) {
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "argmax agrees on %d/%d, logits equal (float rounding) on %d/%d, within 1 LSB of the pooled features "
                "on %d/%d, max |diff| %g (%.2f of the tolerance)",
                r.argmax_equal, r.images, r.identical, r.images, r.within_tolerance, r.images,
                static_cast<double>(r.max_diff), static_cast<double>(r.max_ratio));
  return buf;
}

}  // namespace qd::test
